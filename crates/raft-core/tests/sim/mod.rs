//! The deterministic cluster simulation; see `tests/simulation.rs`.

mod checks;
mod clients;
mod model;
mod network;
mod runner;
mod trace;
mod world;

pub use runner::{env_u64, run_one, run_seeds};
