//! The XTCP application node now lives in the library (`xtcp_sim::bulk`),
//! where `xtcp-lab` uses it too.
#![allow(unused_imports)]

pub use xtcp_sim::bulk::{payload, sha256, sim_config, App};
