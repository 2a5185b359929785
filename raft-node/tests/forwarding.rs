//! Follower requests reach the leader inside the cluster: a write through
//! one follower and a linearizable read through another travel over the
//! peer transport (`ForwardPropose`, `ReadIndexRequest`), never as a
//! second HTTP request to the leader.

mod common;

use common::{led_cluster, put, via, Proc};

async fn metrics_text(p: &Proc) -> String {
    reqwest::get(format!("{}/metrics", p.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name` whose labels include `label`, 0 when absent.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_and_a_read_through_followers_travel_over_the_peer_transport() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, client, lead) = led_cluster(dir.path(), 3, &[]).await;
    let followers: Vec<&Proc> = procs.iter().filter(|p| p.id != lead).collect();
    let (writer, reader) = (followers[0], followers[1]);

    let rev = put(&client, writer, "k", "v").await.expect("written");
    // Read-your-writes on the member that took the write (stale is local).
    let at_writer = via(&client, writer);
    let e = at_writer.get("k").await.unwrap().expect("present");
    assert_eq!((&e.value[..], e.rev), (&b"v"[..], rev));
    // A linearizable read through the other follower sees it.
    let e = via(&client, reader)
        .get("k")
        .await
        .unwrap()
        .expect("present");
    assert_eq!((&e.value[..], e.rev), (&b"v"[..], rev));

    let w = metrics_text(writer).await;
    let r = metrics_text(reader).await;
    for (who, text) in [("writer", &w), ("reader", &r)] {
        assert_eq!(
            metric(text, "raft_node_http_forwarded_total", "kind="),
            0.0,
            "{who} relayed over HTTP:\n{text}"
        );
    }
    assert!(
        metric(&w, "raft_forwarded_total", "kind=\"propose\"") >= 1.0,
        "the write was not forwarded over the transport:\n{w}"
    );
    assert!(
        metric(&r, "raft_forwarded_total", "kind=\"read\"") >= 1.0,
        "the read was not forwarded over the transport:\n{r}"
    );
}
