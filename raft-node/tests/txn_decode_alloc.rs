//! A transaction entry declares how many compares and operations its lists
//! hold before their bytes; decoding one must allocate for the items that
//! actually arrive, not for the count declared. A hostile or corrupt entry
//! of 1 MiB must not make every replica's apply allocate a hundred times
//! that.
//!
//! Its own test binary: the process's allocator (the `cap` crate over the
//! system allocator) is capped a few MiB above what it holds while an
//! entry is decoded, so an allocation for the declared count fails (and
//! aborts the test) instead of passing unseen.

use bytes::Bytes;
use raft_node::txn::codec::{TxnCommand, TXN_TAG};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Far less than a list's capacity for the declared count.
const BOUND: usize = 4 << 20;

/// The header of a transaction entry (version 1, any limits).
fn header() -> Vec<u8> {
    let mut e = vec![TXN_TAG, 1];
    e.extend_from_slice(&10u32.to_be_bytes());
    e.extend_from_slice(&4096u64.to_be_bytes());
    e
}

/// `prefix`, then a list declaring as many items as bytes follow, each
/// byte invalid as the start of an item.
fn declaring_a_huge_list(prefix: &[u8]) -> Bytes {
    let mut e = header();
    e.extend_from_slice(prefix);
    let n: u32 = 1 << 20;
    e.extend_from_slice(&n.to_be_bytes());
    e.extend(std::iter::repeat_n(0xEEu8, n as usize));
    Bytes::from(e)
}

#[test]
fn an_entry_declaring_huge_lists_is_refused_without_allocating_them() {
    let no_compares = 0u32.to_be_bytes();
    let mut nested = Vec::new();
    // No compares, one success operation: a transaction with no compares,
    // whose success list is the huge one.
    nested.extend_from_slice(&0u32.to_be_bytes());
    nested.extend_from_slice(&1u32.to_be_bytes());
    nested.push(4);
    nested.extend_from_slice(&0u32.to_be_bytes());
    for (what, entry) in [
        ("compares", declaring_a_huge_list(&[])),
        ("success operations", declaring_a_huge_list(&no_compares)),
        ("nested operations", declaring_a_huge_list(&nested)),
    ] {
        eprintln!("{what}: {} bytes declaring 1 Mi items", entry.len());
        ALLOCATOR
            .set_limit(ALLOCATOR.allocated() + BOUND)
            .expect("set the limit");
        let result = TxnCommand::decode(entry);
        ALLOCATOR.set_limit(usize::MAX).expect("lift the limit");
        assert!(result.is_err(), "{what}: {result:?}");
    }
}
