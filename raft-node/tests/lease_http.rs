//! Leases over the HTTP API on real node processes: grant (a short TTL
//! clamped up, a chosen id, a duplicate refused), `PUT ?lease=` and
//! `PUT ?ttl=` (the key shows its lease in `Raft-Lease`), time to live with
//! keys, keep-alive through a follower, the list, revoke deleting the keys,
//! and the problems for a lease that does not exist.

mod common;

use common::raw_http::{get_json, problem_kind};
use common::{by_id, led_cluster, raw_http};
use reqwest::{Client, Response};
use serde_json::{json, Value};

fn lease_header(r: &Response) -> Option<u64> {
    r.headers()
        .get("raft-lease")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

async fn grant(c: &Client, base: &str, body: Value) -> Response {
    c.post(format!("{base}/v1/leases"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _client, lead) = led_cluster(dir.path(), 3, &[]).await;
    let c = raw_http::client();
    let base = by_id(&procs, lead).http.clone();
    let follower = procs.iter().find(|p| p.id != lead).unwrap().http.clone();

    // Grant: the TTL asked, or the minimum (three 0.4 s election timeouts
    // with the tests' 20 ms ticks: 2 s) when less.
    let r = grant(&c, &base, json!({ "ttl": 30 })).await;
    assert_eq!(r.status(), 200);
    let g: Value = r.json().await.unwrap();
    let id = g["id"].as_u64().unwrap();
    assert_eq!(g["ttl"], 30);
    let short: Value = grant(&c, &follower, json!({ "ttl": 1 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(short["ttl"], 2, "{short}");
    let r = grant(&c, &base, json!({ "ttl": 30, "id": 777 })).await;
    assert_eq!(r.json::<Value>().await.unwrap()["id"], 777);
    let r = grant(&c, &base, json!({ "ttl": 30, "id": 777 })).await;
    assert_eq!(r.status(), 409);
    assert_eq!(problem_kind(r).await, "lease-exists");

    // PUT ?lease=: the key shows its lease; a missing lease is a 404 and
    // writes nothing.
    let r = c
        .put(format!("{base}/v1/kv/a?lease={id}"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), lease_header(&r)), (200, Some(id)));
    let r = c.get(format!("{follower}/v1/kv/a")).send().await.unwrap();
    assert_eq!(lease_header(&r), Some(id));
    let list = get_json(&c, format!("{follower}/v1/kv?prefix=a")).await;
    assert_eq!(list["items"][0]["lease"], id, "{list}");
    let r = c
        .put(format!("{base}/v1/kv/b?lease=999999"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(problem_kind(r).await, "lease-not-found");
    let r = c.get(format!("{base}/v1/kv/b")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // PUT ?ttl=: a new lease of that TTL, the key attached to it.
    let r = c
        .put(format!("{follower}/v1/kv/t?ttl=40"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = lease_header(&r).expect("the new lease");
    let r = c
        .get(format!("{follower}/v1/leases/{t}?keys=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ttl: Value = r.json().await.unwrap();
    assert_eq!(
        (ttl["granted_ttl"].clone(), ttl["keys"].clone()),
        (json!(40), json!(["t"]))
    );
    assert!(ttl["ttl"].as_u64().unwrap() <= 40, "{ttl}");

    // Keep-alive through a follower (forwarded to the leader).
    let r = c
        .post(format!("{follower}/v1/leases/{t}/keepalive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "id": t, "ttl": 40 })
    );

    // The list.
    let list = get_json(&c, format!("{follower}/v1/leases")).await;
    let ids: Vec<u64> = list["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    for want in [id, t, 777] {
        assert!(ids.contains(&want), "{list}");
    }

    // Revoke: the key goes at the revoke's revision.
    let r = c
        .delete(format!("{follower}/v1/leases/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rev = r.headers()["raft-revision"].to_str().unwrap().to_owned();
    assert_eq!(r.json::<Value>().await.unwrap()["rev"].to_string(), rev);
    let r = c.get(format!("{base}/v1/kv/a")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    for r in [
        c.delete(format!("{base}/v1/leases/{id}"))
            .send()
            .await
            .unwrap(),
        c.get(format!("{base}/v1/leases/{id}"))
            .send()
            .await
            .unwrap(),
        c.post(format!("{follower}/v1/leases/{id}/keepalive"))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), 404);
        assert_eq!(problem_kind(r).await, "lease-not-found");
    }
    let r = c.get(format!("{base}/v1/leases/abc")).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

/// `PUT ?ttl=` grants a new lease each time it is sent, so a retry with
/// the same `Idempotency-Key` could never match the first attempt (it
/// answered 422 and left a lease behind): the combination is refused
/// before anything is written; `PUT ?lease=` retries idempotently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_put_cannot_carry_an_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _client, lead) = led_cluster(dir.path(), 1, &[]).await;
    let c = raw_http::client();
    let base = by_id(&procs, lead).http.clone();
    let put = |url: String| {
        c.put(url)
            .header("idempotency-key", "retry-me")
            .body("v")
            .send()
    };
    let r = put(format!("{base}/v1/kv/k?ttl=40")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(problem_kind(r).await, "bad-request");
    let leases = get_json(&c, format!("{base}/v1/leases")).await;
    assert_eq!(leases["leases"], json!([]), "a lease was granted");
    let r = c.get(format!("{base}/v1/kv/k")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // A lease granted first, then a put naming it: retried, same answer.
    let g: Value = grant(&c, &base, json!({ "ttl": 40 }))
        .await
        .json()
        .await
        .unwrap();
    let id = g["id"].as_u64().unwrap();
    let mut revs = Vec::new();
    for _ in 0..2 {
        let r = put(format!("{base}/v1/kv/k?lease={id}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(lease_header(&r), Some(id));
        revs.push(r.headers()["raft-revision"].to_str().unwrap().to_owned());
    }
    assert_eq!(revs[0], revs[1]);
}
