//! Helpers shared by the NAT lab tests (`nat_matrix`, `nat_rtt`): the cell
//! runner lives in the lab library (`xtcp_lab::peers`, which
//! `xtcp-lab run --set matrix,rtt` uses too); this module points it at the
//! `xtcp` and `xtcp-relay` binaries cargo built for these tests.
// Each test binary uses a different subset.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::Instant;
use xtcp_lab::nat::{Lab, SiteConfig};
pub use xtcp_lab::peers::*;

pub const XTCP: &str = env!("CARGO_BIN_EXE_xtcp");
pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_xtcp-relay");

/// The binaries under test.
pub fn bins() -> Bins {
    Bins {
        xtcp: XTCP.into(),
        relay: RELAY_BIN.into(),
    }
}

pub fn new_token() -> (String, String) {
    xtcp_lab::peers::new_token(&bins())
}

pub fn start_lab_relay(
    lab: &Lab,
    dir: &Path,
    token_line: &str,
    t0: Instant,
) -> (Proc, String, String) {
    xtcp_lab::peers::start_lab_relay(&bins(), lab, dir, token_line, t0)
}

pub fn run_cell(
    a: SiteConfig,
    b: SiteConfig,
    token: &str,
    token_line: &str,
    n: u64,
    plan: &HostPlan<'_>,
) -> CellResult {
    xtcp_lab::peers::run_cell(&bins(), a, b, token, token_line, n, plan)
}

pub fn run_cell_in(
    lab: &Lab,
    token: &str,
    token_line: &str,
    n: u64,
    plan: &HostPlan<'_>,
    bytes: (usize, usize),
    t0: Instant,
) -> CellResult {
    xtcp_lab::peers::run_cell_in(&bins(), lab, token, token_line, n, plan, bytes, t0)
}
