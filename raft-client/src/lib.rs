//! A typed client of raft-node's HTTP API: keys and values (binary-safe),
//! compare-and-set by revision, paged listings, cluster status, leadership
//! transfer, membership changes, snapshots and streamed backups
//! ([`Client::backup`]), over HTTP or HTTPS with a bearer token and client
//! certificates.
//!
//! ```no_run
//! use raft_client::{CasResult, Client, ListOptions};
//!
//! # async fn demo() -> Result<(), raft_client::Error> {
//! let client = Client::builder(["http://127.0.0.1:8081", "http://127.0.0.1:8082"])
//!     .build()?;
//! let rev = client.put("greeting", "hello").await?;
//! let entry = client.get("greeting").await?.expect("just written");
//! assert_eq!(&entry.value[..], b"hello");
//! // Replace it only if nobody wrote it since.
//! match client.compare_and_set("greeting", Some(rev), "hello again").await? {
//!     CasResult::Swapped(new_rev) => println!("now at revision {new_rev}"),
//!     CasResult::Mismatch(current) => println!("someone else wrote it: {current:?}"),
//! }
//! let mut pages = client.lister(ListOptions::prefix("greet").limit(100));
//! while let Some(page) = pages.next_page().await? {
//!     for item in page.items {
//!         println!("{:?} at {}", item.key, item.rev);
//!     }
//! }
//! println!("leader: {:?}", client.status().await?.leader);
//! # Ok(())
//! # }
//! ```
//!
//! # Retries and the outcome of a write
//!
//! raft-node's status codes say whether a write happened: 2xx done,
//! 4xx refused (nothing applied), 503 with `Retry-After` not applied,
//! 504 unknown. The client sends a request again (to another endpoint,
//! or to the leader's once it knows it) when nothing was applied, waiting
//! at least what `Retry-After` asks ([`RetryPolicy`]). A write whose
//! outcome is unknown (504, a timeout, a connection lost after sending) is
//! sent again only with an idempotency key, which makes the node answer
//! the second attempt with the first result. By default every write gets a
//! random key ([`IdempotencyKeys::Generate`]); with
//! [`IdempotencyKeys::Off`] a write without a key of its own fails with
//! [`Error::OutcomeUnknown`] instead, and [`Error::outcome`] tells any
//! failure's [`Outcome`].
//!
//! With the `launcher` feature, [`launcher::NodeCommand`] builds
//! `raft-node run` command lines.
//!
//! This crate does not link raft-node (nor RocksDB): it speaks HTTP only.

mod backup;
mod builder;
mod client;
mod cluster;
mod endpoints;
mod error;
mod kv;
#[cfg(feature = "launcher")]
pub mod launcher;

pub use backup::{Backup, BackupConsistency};
pub use builder::{read_token_file, ClientBuilder, IdempotencyKeys, RetryPolicy};
pub use client::Client;
pub use cluster::{
    Addresses, ClusterStatus, Digest, MemberRecord, MemberStatus, Membership, MembershipChange,
    Readiness, SnapshotTaken,
};
pub use error::{Error, Outcome, Problem, Result, PROBLEM_TYPE_PREFIX};
pub use kv::{
    CasResult, Entry, Item, ListOptions, ListPage, Lister, Precondition, ReadConsistency,
    WriteOptions,
};
