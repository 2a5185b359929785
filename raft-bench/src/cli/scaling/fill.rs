//! Filling a store quickly: the keys the load generator reads (`k00000000`
//! on), written in `POST /v1/txn` transactions of as many puts as
//! raft-node takes in one (`--max-txn-ops`, and a JSON body within
//! `--max-value-bytes`), several in flight, through the leader.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::NodeLimits;
use crate::cli::load::{key_name, value};

/// JSON bytes of one put around its key and value:
/// `{"put":{"key":"","value":""}},`.
const PUT_OVERHEAD: u64 = 32;
/// Bytes of a key name (`k` and 8 digits).
const KEY_BYTES: u64 = 9;

/// Puts per transaction for values of `value_bytes`: at most
/// `--max-txn-ops`, in a body of at most three quarters of
/// `--max-value-bytes` (0: not even one fits).
pub(super) fn batch_size(value_bytes: u64, limits: NodeLimits) -> u64 {
    let body = limits.max_value_bytes / 4 * 3;
    (body / (PUT_OVERHEAD + KEY_BYTES + value_bytes)).min(limits.max_txn_ops)
}

/// A store to fill.
#[derive(Debug, Clone)]
pub(super) struct Fill {
    /// Keys `0..keys`.
    pub(super) keys: u64,
    /// Bytes per value.
    pub(super) value_bytes: u64,
    /// Puts per transaction.
    pub(super) batch: u64,
    /// Transactions in flight.
    pub(super) writers: u64,
    /// Seeds the values.
    pub(super) seed: u64,
}

/// The transaction putting keys `first..end` (values from `rng`).
fn txn_body(first: u64, end: u64, value_bytes: u64, rng: &mut ChaCha8Rng) -> String {
    let mut s = String::from("{\"success\":[");
    for k in first..end {
        if k > first {
            s.push(',');
        }
        let v = value(value_bytes as usize, rng);
        // The values are ASCII letters and digits: JSON strings as they are.
        let v = std::str::from_utf8(&v).expect("an ASCII value");
        let _ = write!(
            s,
            "{{\"put\":{{\"key\":\"{}\",\"value\":\"{v}\"}}}}",
            key_name(k)
        );
    }
    s.push_str("]}");
    s
}

/// Sends one transaction until it succeeds (its puts are the same each
/// time, so one applied twice changes nothing), for up to 20 attempts.
async fn send(http: &reqwest::Client, url: &str, body: String) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..20 {
        let r = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                last = format!("{status}: {}", resp.text().await.unwrap_or_default());
                if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("a fill transaction to {url} failed: {last}")
}

/// Fills the store through the member at `url` (the leader); the seconds
/// it took.
///
/// # Errors
///
/// When a transaction fails 20 times, or is refused.
pub(super) async fn fill(url: &str, f: &Fill) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building an HTTP client")?;
    let txn_url = format!("{}/v1/txn", url.trim_end_matches('/'));
    let batches = f.keys.div_ceil(f.batch);
    let next = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(f.keys).with_style(
        ProgressStyle::with_template(
            "{prefix:>22} [{bar:30}] {human_pos}/{human_len} keys, {per_sec}, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("filling");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..f.writers {
        let (http, url, next, bar, f) = (
            http.clone(),
            txn_url.clone(),
            next.clone(),
            bar.clone(),
            f.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(f.seed ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<(), anyhow::Error>(());
                }
                let (first, end) = (b * f.batch, ((b + 1) * f.batch).min(f.keys));
                send(&http, &url, txn_body(first, end, f.value_bytes, &mut rng)).await?;
                bar.inc(end - first);
            }
        }));
    }
    let mut result = Ok(());
    for t in tasks {
        let r = t.await.context("a fill writer failed")?;
        if result.is_ok() {
            result = r;
        }
        if result.is_err() {
            // The others stop at their next batch.
            next.store(batches, Ordering::Relaxed);
        }
    }
    bar.finish_and_clear();
    result?;
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "filled {} keys of {} B in {s:.1} s ({:.0} keys/s)",
        f.keys,
        f.value_bytes,
        f.keys as f64 / s.max(1e-9)
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_json_transaction_of_distinct_puts() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let body = txn_body(10, 13, 5, &mut rng);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let puts = v["success"].as_array().unwrap();
        assert_eq!(puts.len(), 3);
        assert_eq!(puts[0]["put"]["key"], "k00000010");
        assert_eq!(puts[2]["put"]["key"], "k00000012");
        assert_eq!(puts[1]["put"]["value"].as_str().unwrap().len(), 5);
        // The estimate of a put's JSON is not below the real size.
        let per_put = (body.len() - "{\"success\":[]}".len()) as u64 / 3;
        assert!(per_put <= PUT_OVERHEAD + KEY_BYTES + 5, "{per_put}");
    }

    #[test]
    fn batches_respect_both_limits() {
        let l = NodeLimits {
            max_value_bytes: 1 << 20,
            max_txn_ops: 128,
        };
        assert_eq!(batch_size(128, l), 128);
        assert_eq!(batch_size(65536, l), 11);
        assert_eq!(batch_size(1 << 20, l), 0);
    }
}
