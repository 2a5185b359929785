//! How `ctl` prints answers: JSON (the default, except for `get`, which
//! writes the value's bytes as they are) or tables.

use std::io::Write;

use anyhow::Context;
use base64::Engine;
use raft_client::{ClusterStatus, Entry, ListPage, MembershipChange, SnapshotTaken};
use serde_json::{json, Value};

use super::Format;

/// Prints in one format.
#[derive(Debug)]
pub(super) struct Printer {
    format: Option<Format>,
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{v}");
    Ok(())
}

/// `"value"` when it is text, `"value_base64"` otherwise (as the node's
/// listings do); the same for keys.
fn bytes_member(obj: &mut serde_json::Map<String, Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(name.into(), s.into()),
        Err(_) => obj.insert(
            format!("{name}_base64"),
            base64::engine::general_purpose::STANDARD.encode(b).into(),
        ),
    };
}

/// Text for a table cell: the bytes when they are printable text, else
/// `base64:…`.
fn cell(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

impl Printer {
    pub(super) fn new(format: Option<Format>) -> Self {
        Self { format }
    }

    pub(super) fn revision(&self, rev: u64) -> anyhow::Result<()> {
        match self.format {
            Some(Format::Table) => {
                println!("revision {rev}");
                Ok(())
            }
            Some(Format::Json) => print_json(&json!({ "rev": rev })),
            None => {
                eprintln!("revision {rev}");
                print_json(&json!({ "rev": rev }))
            }
        }
    }

    pub(super) fn entry(&self, key: &str, e: &Entry) -> anyhow::Result<()> {
        match self.format {
            None => {
                eprintln!("revision {}", e.rev);
                let mut out = std::io::stdout().lock();
                out.write_all(&e.value)
                    .and_then(|()| out.flush())
                    .context("writing the value to stdout")
            }
            Some(Format::Json) => {
                let mut obj = serde_json::Map::new();
                obj.insert("key".into(), key.into());
                obj.insert("rev".into(), e.rev.into());
                bytes_member(&mut obj, "value", &e.value);
                print_json(&Value::Object(obj))
            }
            Some(Format::Table) => {
                table(
                    &["KEY", "REV", "VALUE"],
                    &[vec![key.to_owned(), e.rev.to_string(), cell(&e.value)]],
                );
                Ok(())
            }
        }
    }

    pub(super) fn page(&self, page: &ListPage) -> anyhow::Result<()> {
        if self.format == Some(Format::Table) {
            let rows: Vec<Vec<String>> = page
                .items
                .iter()
                .map(|i| {
                    vec![
                        cell(&i.key),
                        i.rev.to_string(),
                        i.value.as_deref().map(cell).unwrap_or_default(),
                    ]
                })
                .collect();
            table(&["KEY", "REV", "VALUE"], &rows);
            if let Some(next) = page.next.as_ref().filter(|_| page.more) {
                println!("more: --cursor {next}");
            }
            return Ok(());
        }
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|i| {
                let mut obj = serde_json::Map::new();
                bytes_member(&mut obj, "key", &i.key);
                obj.insert("rev".into(), i.rev.into());
                if let Some(v) = &i.value {
                    bytes_member(&mut obj, "value", v);
                }
                Value::Object(obj)
            })
            .collect();
        let mut doc = json!({ "items": items, "more": page.more });
        if let Some(next) = &page.next {
            doc["next"] = next.clone().into();
        }
        print_json(&doc)
    }

    pub(super) fn status(&self, s: &ClusterStatus) -> anyhow::Result<()> {
        if self.format != Some(Format::Table) {
            return print_json(&s.raw);
        }
        let leader = s.leader.map(|l| l.to_string()).unwrap_or("none".into());
        table(
            &[
                "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "VOTERS", "LEARNERS",
            ],
            &[vec![
                s.id.to_string(),
                s.role.clone(),
                s.term.to_string(),
                leader,
                s.commit.to_string(),
                s.applied.to_string(),
                ids(&s.membership.voters),
                ids(&s.membership.learners),
            ]],
        );
        if s.membership.joint {
            println!(
                "joint change: outgoing voters {}",
                ids(&s.membership.outgoing_voters)
            );
        }
        println!(
            "cluster id {}",
            s.cluster_id
                .as_deref()
                .unwrap_or("none (written before cluster ids)")
        );
        if let Some(kv) = &s.kv {
            println!("keys {} digest {}", kv.keys, kv.digest);
        }
        println!();
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                let (peer, client) = m
                    .addresses
                    .as_ref()
                    .map(|a| (a.peer.clone(), a.client.clone()))
                    .unwrap_or_default();
                vec![m.id.to_string(), peer, client]
            })
            .collect();
        table(&["MEMBER", "PEER", "CLIENT"], &rows);
        Ok(())
    }

    pub(super) fn membership(&self, m: &MembershipChange) -> anyhow::Result<()> {
        if self.format != Some(Format::Table) {
            return print_json(&m.raw);
        }
        table(
            &["VOTERS", "LEARNERS", "OUTGOING", "JOINT"],
            &[vec![
                ids(&m.membership.voters),
                ids(&m.membership.learners),
                ids(&m.membership.outgoing_voters),
                m.membership.joint.to_string(),
            ]],
        );
        Ok(())
    }

    pub(super) fn leader(&self, leader: u64) -> anyhow::Result<()> {
        if self.format == Some(Format::Table) {
            println!("leader {leader}");
            return Ok(());
        }
        print_json(&json!({ "leader": leader }))
    }

    pub(super) fn snapshot(&self, s: SnapshotTaken) -> anyhow::Result<()> {
        if self.format == Some(Format::Table) {
            table(
                &["INDEX", "TERM"],
                &[vec![s.index.to_string(), s.term.to_string()]],
            );
            return Ok(());
        }
        print_json(&json!({ "index": s.index, "term": s.term }))
    }
}
