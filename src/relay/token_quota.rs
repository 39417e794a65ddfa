//! Quotas per operator token (`spec/relay.md` §9.1): how many waiting and
//! paired sessions the hosts of one token hold now, each capped, so one
//! token's holder (or a leaked token) cannot take the whole relay.
//!
//! Tokens are few (the operator's list), so the table is one map under a
//! mutex held only for one lookup; an entry exists only while its token holds
//! something. Each unit held is a [`TokenUnit`] given back on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a unit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A session waiting for its guest.
    Waiting = 0,
    /// A paired session (counted once, on its host's token).
    Paired = 1,
}

/// The key of a token: the SHA-256 of it, as configured; anonymous hosts
/// share the all-zero key.
pub type TokenKey = [u8; 32];

/// Per-token counts and their limits.
#[derive(Debug)]
pub struct TokenQuotas {
    held: Mutex<HashMap<TokenKey, [u32; 2]>>,
    limits: [u32; 2],
}

/// One unit of a token's quota, given back on drop.
#[derive(Debug)]
pub struct TokenUnit {
    table: Arc<TokenQuotas>,
    key: TokenKey,
    kind: TokenKind,
}

impl TokenQuotas {
    /// Limits per token: `[waiting, paired]`.
    pub fn new(limits: [u32; 2]) -> Arc<TokenQuotas> {
        Arc::new(TokenQuotas {
            held: Mutex::new(HashMap::new()),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKey, [u32; 2]>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A unit of `kind` for `key`, or `None` if the token holds its quota.
    pub fn try_take(self: &Arc<Self>, key: TokenKey, kind: TokenKind) -> Option<TokenUnit> {
        let mut m = self.lock();
        let c = m.entry(key).or_default();
        let k = kind as usize;
        if c[k] >= self.limits[k] {
            if *c == [0, 0] {
                m.remove(&key);
            }
            return None;
        }
        c[k] += 1;
        Some(TokenUnit {
            table: self.clone(),
            key,
            kind,
        })
    }

    /// A unit of `kind` for `key` even over its quota (a pairing already
    /// under way, admitted when its CREATE was).
    pub fn take(self: &Arc<Self>, key: TokenKey, kind: TokenKind) -> TokenUnit {
        let mut m = self.lock();
        let c = m.entry(key).or_default();
        c[kind as usize] = c[kind as usize].saturating_add(1);
        TokenUnit {
            table: self.clone(),
            key,
            kind,
        }
    }

    /// What `key` holds now: `[waiting, paired]`.
    pub fn held(&self, key: TokenKey) -> [u32; 2] {
        self.lock().get(&key).copied().unwrap_or_default()
    }

    /// Tokens holding anything now.
    pub fn tokens(&self) -> usize {
        self.lock().len()
    }
}

impl TokenUnit {
    /// The token this unit belongs to.
    pub fn key(&self) -> TokenKey {
        self.key
    }
}

impl Drop for TokenUnit {
    fn drop(&mut self) {
        let mut m = self.table.lock();
        if let Some(c) = m.get_mut(&self.key) {
            let k = self.kind as usize;
            c[k] = c[k].saturating_sub(1);
            if *c == [0, 0] {
                m.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_held_to_its_quota_and_others_are_not() {
        let q = TokenQuotas::new([2, 1]);
        let (a, b) = ([1; 32], [2; 32]);
        let w1 = q.try_take(a, TokenKind::Waiting).unwrap();
        let _w2 = q.try_take(a, TokenKind::Waiting).unwrap();
        assert!(q.try_take(a, TokenKind::Waiting).is_none());
        // Another token, and another kind of the same token, are unaffected.
        let _w3 = q.try_take(b, TokenKind::Waiting).unwrap();
        let p = q.try_take(a, TokenKind::Paired).unwrap();
        assert!(q.try_take(a, TokenKind::Paired).is_none());
        assert_eq!(q.held(a), [2, 1]);
        drop(w1);
        assert!(q.try_take(a, TokenKind::Waiting).is_some());
        drop(p);
        assert_eq!(q.held(a), [1, 0]);
    }

    #[test]
    fn entries_exist_only_while_something_is_held() {
        let q = TokenQuotas::new([1, 1]);
        let u = q.try_take([7; 32], TokenKind::Paired).unwrap();
        assert_eq!(q.tokens(), 1);
        drop(u);
        assert_eq!(q.tokens(), 0);
        let q0 = TokenQuotas::new([0, 0]);
        assert!(q0.try_take([7; 32], TokenKind::Waiting).is_none());
        assert_eq!(q0.tokens(), 0, "a refusal leaves no entry behind");
    }
}
