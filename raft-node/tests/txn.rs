//! `POST /v1/txn` on a 3-node cluster, through a follower: a transaction
//! over several keys, its errors as problems, and a compare-and-swap race
//! between several clients that exactly one wins.

mod common;

use common::{led_cluster, Proc};
use serde_json::{json, Value};

async fn txn(p: &Proc, body: Value) -> (u16, Option<u64>, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/txn", p.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let rev = resp
        .headers()
        .get("raft-revision")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, rev, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_through_a_follower_and_a_compare_and_swap_race_with_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _client, lead) = led_cluster(dir.path(), 3, &[]).await;
    let follower = procs.iter().find(|p| p.id != lead).unwrap();

    // Several keys at one revision, answered by the follower.
    let (status, rev, body) = txn(
        follower,
        json!({"success": [
            {"put": {"key": "a", "value": "1"}},
            {"put": {"key_base64": "/w==", "value": "2"}},
            {"range": {"key": "a", "range_end": "b"}}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rev = rev.expect("Raft-Revision");
    assert_eq!(body["revision"], json!(rev));
    assert_eq!(body["succeeded"], json!(true));
    let kvs = &body["responses"][2]["range"]["kvs"];
    assert_eq!(kvs[0]["key"], "a");
    assert_eq!(kvs[0]["mod_revision"], json!(rev));

    // A key put twice: refused as a problem, nothing applied.
    let (status, _, body) = txn(
        follower,
        json!({"success": [{"put": {"key": "a", "value": "x"}}, {"put": {"key": "a", "value": "y"}}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "urn:raft-node:problem:duplicate-key");

    // The race: every client swaps "c" from its current mod revision.
    let (_, _, body) = txn(
        follower,
        json!({"success": [{"put": {"key": "c", "value": "start"}}]}),
    )
    .await;
    let start = body["revision"].as_u64().unwrap();
    let clients = 8;
    let mut racers = Vec::new();
    for i in 0..clients {
        let p = &procs[i % procs.len()];
        let body = json!({
            "compare": [{"key": "c", "target": "mod_revision", "result": "equal", "mod_revision": start}],
            "success": [{"put": {"key": "c", "value": format!("client-{i}")}}],
            "failure": [{"range": {"key": "c"}}]
        });
        let url = format!("{}/v1/txn", p.http);
        racers.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let v: Value = resp.json().await.unwrap();
            (i, v)
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        let (i, v) = r.await.unwrap();
        if v["succeeded"] == json!(true) {
            winners.push(i);
        } else {
            let seen = &v["responses"][0]["range"]["kvs"][0];
            assert_ne!(seen["mod_revision"], json!(start), "{v}");
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (_, _, body) = txn(follower, json!({"success": [{"range": {"key": "c"}}]})).await;
    assert_eq!(
        body["responses"][0]["range"]["kvs"][0]["value"],
        json!(format!("client-{}", winners[0]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_prefixes_and_every_refusal_as_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--max-txn-range-keys".to_owned(), "2".to_owned()];
    let (procs, _client, _) = led_cluster(dir.path(), 1, &extra).await;
    let node = &procs[0];

    let (status, _, body) = txn(
        node,
        json!({"success": [
            {"put": {"key": "jobs/1", "value_base64": "AP8="}},
            {"put": {"key": "jobs/2", "value": "b"}},
            {"range": {"key": "jobs/", "prefix": true}}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let kvs = &body["responses"][2]["range"]["kvs"];
    assert_eq!(kvs[0]["value_base64"], "AP8=", "{body}");
    assert_eq!(kvs[1]["value"], "b", "{body}");

    // A range over more keys than --max-txn-range-keys: 422, nothing
    // applied.
    txn(
        node,
        json!({"success": [{"put": {"key": "jobs/3", "value": "c"}}]}),
    )
    .await;
    let (status, _, body) = txn(
        node,
        json!({"success": [{"delete_range": {"key": "jobs/", "prefix": true}}]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"], "urn:raft-node:problem:txn-refused");
    let (_, _, body) = txn(
        node,
        json!({"success": [{"range": {"key": "jobs/1", "range_end": "jobs/3", "count_only": true}}]}),
    )
    .await;
    assert_eq!(body["responses"][0]["range"]["count"], 2, "{body}");

    for (req, status, kind) in [
        (
            json!({"success": [{"put": {"key": "", "value": "x"}}]}),
            400,
            "empty-key",
        ),
        (
            json!({"compare": [{"key": "a", "target": "lease", "result": "equal"}]}),
            400,
            "lease-unsupported",
        ),
        (json!({"success": [{"frobnicate": {}}]}), 400, "bad-request"),
        (
            json!({"success": [{"put": {"key": "a", "key_base64": "YQ=="}}]}),
            400,
            "bad-request",
        ),
    ] {
        let (got, _, body) = txn(node, req.clone()).await;
        assert_eq!(got, status, "{req}: {body}");
        assert_eq!(
            body["type"],
            format!("urn:raft-node:problem:{kind}"),
            "{req}"
        );
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/txn", node.http))
        .header("idempotency-key", "t1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}
