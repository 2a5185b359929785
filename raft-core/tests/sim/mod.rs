//! The deterministic cluster simulation; see `tests/simulation.rs`.

mod checks;
mod clients;
mod model;
mod network;
mod runner;
mod stats;
mod trace;
mod world;

pub use runner::{env_u64, params_for, run_one, run_seeds};
pub use world::{history_verdict, World};
