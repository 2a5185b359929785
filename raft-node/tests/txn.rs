//! `POST /v1/txn` on a 3-node cluster, through a follower: a transaction
//! over several keys, its errors as problems, and a compare-and-swap race
//! between several clients that exactly one wins; `lease` compares and
//! puts keeping the key's value or lease.

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
            "bad-request",
        ),
        (
            json!({"success": [{"put": {"key": "a", "value": "x", "ignore_value": true}}]}),
            400,
            "value-provided",
        ),
        (
            json!({"success": [{"put": {"key": "a", "lease": 7, "ignore_lease": true}}]}),
            400,
            "lease-provided",
        ),
        // A lease id over i64::MAX names no lease (etcd's ids are int64):
        // refused before the log, as the gRPC API refuses a negative one.
        (
            json!({"success": [{"put": {"key": "a", "value": "x", "lease": 9_223_372_036_854_775_808u64}}]}),
            404,
            "lease-not-found",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_compares_and_puts_keeping_the_value_or_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _client, lead) = led_cluster(dir.path(), 3, &[]).await;
    let node = procs.iter().find(|p| p.id != lead).unwrap();
    let grant = || async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/leases", node.http))
            .json(&json!({"ttl": 60}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
    };
    let (id, id2) = (grant().await, grant().await);
    let (status, _, body) = txn(
        node,
        json!({"success": [
            {"put": {"key": "l/a", "value": "v", "lease": id}},
            {"put": {"key": "l/b", "value": "v"}}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // `lease` compares: the key's lease, 0 without one or when absent.
    let holds = |compare: Value| async move {
        let (status, _, body) = txn(node, json!({"compare": [compare]})).await;
        assert_eq!(status, 200, "{body}");
        body["succeeded"].as_bool().unwrap()
    };
    let lease_of = |key: &str, result: &str, lease: u64| json!({"key": key, "target": "lease", "result": result, "lease": lease});
    assert!(holds(lease_of("l/a", "equal", id)).await);
    assert!(!holds(lease_of("l/a", "equal", id2)).await);
    assert!(holds(lease_of("l/a", "greater", id - 1)).await);
    assert!(holds(lease_of("l/b", "equal", 0)).await);
    assert!(holds(lease_of("l/none", "equal", 0)).await);
    assert!(!holds(lease_of("l/none", "not_equal", 0)).await);
    let mut over = lease_of("l/", "less", id + 1);
    over["prefix"] = json!(true);
    assert!(holds(over.clone()).await);
    over["result"] = json!("greater");
    over["lease"] = json!(0);
    assert!(!holds(over).await);

    // ignore_value keeps the value, ignore_lease the lease.
    let (status, rev, body) = txn(
        node,
        json!({"success": [
            {"put": {"key": "l/a", "ignore_value": true, "lease": id2, "prev_kv": true}},
            {"put": {"key": "l/b", "value": "w", "ignore_lease": true}},
            {"range": {"key": "l/", "prefix": true}}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["responses"][0]["put"]["prev_kv"]["lease"], json!(id));
    let kvs = &body["responses"][2]["range"]["kvs"];
    assert_eq!(
        (&kvs[0]["value"], &kvs[0]["lease"], &kvs[0]["mod_revision"]),
        (&json!("v"), &json!(id2), &json!(rev.unwrap())),
        "{body}"
    );
    assert_eq!(
        (&kvs[1]["value"], &kvs[1]["lease"]),
        (&json!("w"), &Value::Null)
    );

    // A key that does not exist: 404, nothing applied.
    let (status, _, body) = txn(
        node,
        json!({"success": [
            {"put": {"key": "l/c", "value": "x"}},
            {"put": {"key": "l/none", "ignore_value": true}}
        ]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "urn:raft-node:problem:not-found");
    let (_, _, body) = txn(
        node,
        json!({"success": [{"range": {"key": "l/c"}}, {"range": {"key": "l/none"}}]}),
    )
    .await;
    assert_eq!(body["responses"][0]["range"]["count"], 0, "{body}");
    assert_eq!(body["responses"][1]["range"]["count"], 0, "{body}");
}
