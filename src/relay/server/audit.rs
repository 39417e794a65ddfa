//! The audit log (`spec/relay.md` §9.3): one JSON line per event, also
//! emitted as a structured log event, with repeated refusals from one source
//! aggregated per log interval.

use super::{Shared, ABORT};
use crate::relay::refusals::{Refusal, KINDS};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Where audit events go.
pub type AuditSink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A short, non-reversible session label for logs: logging the rendezvous id
/// itself would let anyone who reads the log join a waiting session.
pub(super) fn session_label(rid: &[u8; 16]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    //= spec/relay.md#RL-AUDIT-1
    //# The log MUST NOT contain `rendezvous_id` itself
    ctx.update(b"xtcp relay audit label");
    ctx.update(rid);
    crate::tls::hex(&ctx.finish().as_ref()[..8])
}

/// Sources whose refusals are counted one by one per log interval; beyond,
/// they share one line (`spec/relay.md` §9.3).
pub(super) const MAX_LOGGED_SOURCES: usize = 16_384;

impl Shared {
    /// Write an audit event: a structured log event, and a JSON line to
    /// the audit sink if there is one.
    pub(super) fn audit(
        &self,
        event: &str,
        label: Option<&str>,
        peer: Option<SocketAddr>,
        extra: serde_json::Value,
    ) {
        // Every audit event is also a structured log event.
        tracing::info!(
            event,
            session = label.unwrap_or("-"),
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
            detail = %extra,
        );
        let Some(sink) = &self.audit else { return };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut v = serde_json::json!({ "ts": ts, "event": event });
        if let Some(l) = label {
            v["session"] = serde_json::Value::from(l);
        }
        if let Some(p) = peer {
            v["peer"] = serde_json::Value::from(p.to_string());
        }
        if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        // One write per event: a queued writer (`AuditFile`) takes it as one line.
        let line = format!("{v}\n");
        if let Ok(mut w) = sink.lock() {
            let _ = w.write_all(line.as_bytes());
            let _ = w.flush();
        }
    }

    /// Log a refusal: in full if it is the first of its kind from its
    /// source in this interval, else only counted (`spec/relay.md` §9.3).
    pub(super) fn refusal(&self, peer: SocketAddr, kind: Refusal, extra: serde_json::Value) {
        if self.refusals.record(self.source(peer.ip()), kind) {
            self.audit(kind.event(), None, Some(peer), extra);
        }
    }

    /// End a log interval: one `refusals` line per source with suppressed refusals.
    pub(super) fn flush_refusals(&self) {
        const NAMES: [&str; KINDS] = [
            "refused_source_share",
            "join_failed",
            "create_refused",
            "refused_locked_out",
            "refused_over_source_share",
        ];
        for (source, counts) in self.refusals.take() {
            let mut v = serde_json::json!({
                "source": source.map_or_else(|| "*".to_string(), |k| k.addr().to_string()),
                "interval_secs": self.limits.log_interval.as_secs_f64(),
            });
            for (name, n) in NAMES.iter().zip(counts) {
                if n > 0 {
                    v[*name] = serde_json::Value::from(n);
                }
            }
            self.audit("refusals", None, None, v);
        }
    }
}

/// Aggregated refusal lines, once per interval, until the relay stops (and
/// once more then).
pub(super) fn spawn_refusal_log(shared: &Arc<Shared>) {
    let mut phase = shared.phase.subscribe();
    let shared = shared.clone();
    tokio::spawn(async move {
        let every = shared.limits.log_interval;
        let mut tick = tokio::time::interval_at(
            Instant::now()
                .checked_add(every)
                .unwrap_or_else(Instant::now),
            every,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => shared.flush_refusals(),
                _ = phase.wait_for(|p| *p == ABORT) => {
                    shared.flush_refusals();
                    return;
                }
            }
        }
    });
}
