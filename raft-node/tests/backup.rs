//! Backup, restore and recovery from a lost quorum, on real processes:
//! `ctl snapshot save` under a steady write load, the cluster destroyed and
//! restored from the file into fresh directories with every write
//! acknowledged before the backup there; corrupted files refused; the
//! backup route closed without the admin token; and a survivor of a lost
//! quorum recovered as a single-voter cluster that members rejoin.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw_http::{json_of, send_json};
use common::{free_tcp, free_udp, node_command, proc_for, Proc};
use raft_client::launcher::initial_cluster;
use raft_client::{Backup, BackupConsistency, Client, Error, ListOptions, ReadConsistency};

const USER: &str = "user-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

fn token_file(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs `raft-node` with `args`; (success, stdout, stderr).
fn raft_node(args: &[String]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(args)
        .output()
        .expect("run raft-node");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Every key under `prefix` with its value and revision, read through the
/// leader.
async fn everything(client: &Client, prefix: &str) -> BTreeMap<String, (String, u64)> {
    let mut pages = client.lister(ListOptions::prefix(prefix).limit(1000));
    let mut all = BTreeMap::new();
    while let Some(page) = pages.next_page().await.expect("a listing") {
        for item in page.items {
            let key = String::from_utf8(item.key.to_vec()).unwrap();
            let value = String::from_utf8(item.value.unwrap_or_default().to_vec()).unwrap();
            all.insert(key, (value, item.rev));
        }
    }
    all
}

/// Every key under `prefix` as of revision `rev`, with its value and
/// `mod_revision`, read from node `url` itself (stale), page by page.
async fn everything_at(url: &str, prefix: &str, rev: u64) -> BTreeMap<String, (String, u64)> {
    let http = reqwest::Client::new();
    let mut all = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page = json_of(
            http.get(format!(
                "{url}/v1/kv?prefix={prefix}&revision={rev}&consistency=stale&limit=1000{cursor}"
            ))
            .bearer_auth(USER),
        )
        .await;
        assert_eq!(page["revision"], rev, "{page}");
        for item in page["items"].as_array().unwrap() {
            let key = item["key"].as_str().unwrap().replace("%2F", "/");
            let value = item["value"].as_str().unwrap().to_owned();
            all.insert(key, (value, item["mod_revision"].as_u64().unwrap()));
        }
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

/// Compacts the revision history up to `rev` through node `url`: the
/// values deleted before are gone from the store, and from backups.
async fn compact_history(url: &str, rev: u64) {
    let (status, body) = send_json(
        reqwest::Client::new().post(format!("{url}/v1/cluster/compact")),
        &serde_json::json!({ "revision": rev }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Acknowledged writes: when the answer came, key, value.
type Acked = Arc<Mutex<Vec<(Instant, String, String)>>>;

/// Writers putting unique keys until `stop`; each acknowledged write is
/// recorded with the moment its answer came.
fn start_writers(
    client: &Client,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..n)
        .map(|w| {
            let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (key, value) = (format!("k/{w}/{i:06}"), format!("v{w}-{i}"));
                    if client.put(&key, value.clone()).await.is_ok() {
                        acked.lock().unwrap().push((Instant::now(), key, value));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    (acked, tasks)
}

/// A token-protected three-node cluster in `dir` (ids 1..=3).
fn cluster_with_tokens(dir: &Path) -> (Vec<Proc>, PathBuf, PathBuf) {
    let (user, admin) = (dir.join("user.token"), dir.join("admin.token"));
    token_file(&user, USER);
    token_file(&admin, ADMIN);
    let extra = [
        format!("--auth-token-file={}", user.display()),
        format!("--admin-token-file={}", admin.display()),
        "--snapshot-entries=40".to_string(),
        "--snapshot-keep-entries=5".to_string(),
    ];
    let procs = common::cluster_with(dir, 3, &extra, &[], "http");
    (procs, user, admin)
}

async fn backup_status(url: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(format!("{url}/v1/cluster/backup?consistency=stale"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("an answer").status().as_u16()
}

/// The development certificates of `from` in `to` too.
fn copy_certs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("certs")).unwrap();
    for e in std::fs::read_dir(from.join("certs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("certs").join(e.file_name())).unwrap();
    }
}

/// `raft-node restore` of node `id` into `dir/node-<id>`.
fn restore(file: &Path, dir: &Path, id: u64, cluster: &str) -> (bool, String, String) {
    raft_node(&[
        s("restore"),
        format!("--from={}", file.display()),
        format!("--data-dir={}", dir.join(format!("node-{id}")).display()),
        format!("--id={id}"),
        format!("--initial-cluster={cluster}"),
    ])
}

/// The files and tokens of the backup test.
struct Setup {
    tmp: PathBuf,
    user: PathBuf,
    admin: PathBuf,
}

impl Setup {
    fn token_flags(&self) -> [String; 2] {
        [
            format!("--auth-token-file={}", self.user.display()),
            format!("--admin-token-file={}", self.admin.display()),
        ]
    }
}

/// What the backup holds: its index, the writes acknowledged before it
/// was asked for, and the state at its index.
struct Saved {
    index: u64,
    before: Vec<(String, String)>,
    expected: BTreeMap<String, (String, u64)>,
}

/// The route: a follower relays the leader's backup (a client that cannot
/// reach the leader's address, or does not follow redirections, gets it
/// all the same), a request already relayed once gets the 421 naming the
/// leader, 401 without a token, 403 with the user token; through
/// raft_client, a backup asked of the follower comes from the leader, and
/// one without a token is a typed 401; a stale backup of one node
/// verifies.
async fn check_route(procs: &[Proc], leader: u64, tmp: &Path) {
    let follower = procs.iter().find(|p| p.id != leader).unwrap();
    let url = format!("{}/v1/cluster/backup", follower.http);
    let relayed = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status().as_u16(), 200);
    let header = |name: &str| relayed.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-raft-backup-node"), leader.to_string());
    assert_eq!(header("x-raft-backup-consistency"), "linearizable");
    let relayed_file = tmp.join("relayed.bak");
    std::fs::write(&relayed_file, relayed.bytes().await.unwrap()).unwrap();
    let v = raft_node::backup::verify(&relayed_file).expect("a valid relayed backup");
    assert_eq!(
        (v.header.node, v.header.consistency.as_str()),
        (leader, "linearizable")
    );

    let answer = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN)
        .header("x-raft-forwarded-by", "9")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 421);
    let problem: serde_json::Value = answer.json().await.unwrap();
    let leader_http = &procs.iter().find(|p| p.id == leader).unwrap().http;
    assert_eq!(problem["leader"], leader);
    assert_eq!(
        format!("http://{}", problem["leader_client_addr"].as_str().unwrap()),
        *leader_http
    );
    assert_eq!(backup_status(&procs[0].http, None).await, 401);
    assert_eq!(backup_status(&procs[0].http, Some(USER)).await, 403);
    assert_eq!(backup_status(&procs[0].http, Some(ADMIN)).await, 200);

    let admin = Client::builder([follower.http.clone()])
        .token(ADMIN)
        .build()
        .unwrap();
    let file = tmp.join("via-follower.bak");
    let b = fetch(&admin, BackupConsistency::Linearizable, &file).await;
    assert_eq!((b.node, &b.endpoint), (leader, &follower.http));
    let v = raft_node::backup::verify(&file).expect("a valid backup");
    assert_eq!((v.header.index, v.header.node), (b.index, leader));
    assert_eq!(v.header.read_index, b.read_index);
    let anonymous = Client::builder([follower.http.clone()]).build().unwrap();
    match anonymous.backup(BackupConsistency::Linearizable).await {
        Err(Error::Api { problem }) => assert_eq!(problem.status, 401, "{problem}"),
        other => panic!("a backup without a token: {other:?}"),
    }

    let stale = tmp.join("stale.bak");
    let one = admin.at(&procs[0].http).unwrap();
    let b = fetch(&one, BackupConsistency::Stale, &stale).await;
    assert_eq!(b.consistency, BackupConsistency::Stale);
    let v = raft_node::backup::verify(&stale).expect("a valid backup");
    assert_eq!(v.header.consistency, "stale");
    assert_eq!(v.header.node, procs[0].id);
    assert_eq!(v.header.voters, vec![1, 2, 3]);
}

/// A backup through `client` into `file`.
async fn fetch(client: &Client, consistency: BackupConsistency, file: &Path) -> Backup {
    let mut b = client.backup(consistency).await.expect("a backup");
    let mut bytes = Vec::new();
    while let Some(chunk) = b.chunk().await.expect("the whole backup") {
        bytes.extend_from_slice(&chunk);
    }
    assert_eq!(b.received(), bytes.len() as u64);
    std::fs::write(file, &bytes).unwrap();
    b
}

/// `ctl snapshot save` to `file` while 4 writers write.
async fn save_under_load(
    client: &Client,
    procs: &[Proc],
    leader: u64,
    admin: &Path,
    file: &Path,
) -> Saved {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked, writers) = start_writers(client, 4, stop.clone());
    // A load under way: at least 100 acknowledged writes first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "fewer than 100 writes in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Followers first: the first one relays the leader's backup.
    let mut endpoints: Vec<&Proc> = procs.iter().collect();
    endpoints.sort_by_key(|p| p.id == leader);
    let endpoints: Vec<String> = endpoints.iter().map(|p| p.http.clone()).collect();
    let started = Instant::now();
    let (ok, out, err) = raft_node(&[
        s("ctl"),
        format!("--endpoints={}", endpoints.join(",")),
        format!("--token-file={}", admin.display()),
        s("snapshot"),
        s("save"),
        file.display().to_string(),
    ]);
    assert!(ok, "ctl snapshot save failed: {err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let saved: serde_json::Value = serde_json::from_str(out.trim()).expect("ctl's JSON");
    let index = saved["index"].as_u64().unwrap();
    assert_eq!(saved["consistency"], "linearizable");
    assert!(saved["read_index"].as_u64().unwrap() <= index, "{saved}");
    let size = std::fs::metadata(file).unwrap().len();
    assert_eq!(saved["bytes"].as_u64().unwrap(), size);
    let acked = acked.lock().unwrap().clone();
    let before: Vec<(String, String)> = acked
        .iter()
        .filter(|(at, _, _)| *at < started)
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(
        before.len() > 50,
        "{} writes before the backup",
        before.len()
    );
    eprintln!(
        "backup at index {index}: {size} bytes; {} writes acknowledged before it, {} in all",
        before.len(),
        acked.len()
    );
    // Keys are written once: the state at the backup's index is every key
    // of revision at most that index.
    let expected = everything(client, "k/")
        .await
        .into_iter()
        .filter(|(_, (_, rev))| *rev <= index)
        .collect();
    Saved {
        index,
        before,
        expected,
    }
}

/// Refused: a truncated file, a flipped bit, a non-empty directory.
fn check_refusals(tmp: &Path, file: &Path, new_dir: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let cut = tmp.join("cut.bak");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let one = "1=127.0.0.1:1/127.0.0.1:2";
    let (ok, _, err) = restore(&cut, new_dir, 1, one);
    assert!(!ok && err.contains("truncated"), "{err}");
    let flipped = tmp.join("flipped.bak");
    let mut bad = bytes.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x04;
    std::fs::write(&flipped, &bad).unwrap();
    let (ok, _, err) = restore(&flipped, new_dir, 1, one);
    assert!(!ok && err.contains("corrupted"), "{err}");
    let target = new_dir.join("node-1");
    assert!(!target.exists(), "a refused restore left a directory");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("x"), b"x").unwrap();
    let (ok, _, err) = restore(file, new_dir, 1, one);
    assert!(!ok && err.contains("not empty"), "{err}");
    std::fs::remove_dir_all(&target).unwrap();
}

/// A data directory that is a mount point (the image's /data volume, a
/// disk mounted at the data directory): restored into in place, nothing
/// written beside it. Runs in a user and mount namespace (`unshare -Urm`)
/// with a tmpfs mounted on the directory; skipped, saying so, where such
/// namespaces cannot be made.
fn restore_into_a_mount_point(tmp: &Path, file: &Path) {
    let probe = std::process::Command::new("unshare")
        .args(["-Urm", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED restore into a mount point: `unshare -Urm` is not available here");
        return;
    }
    let parent = tmp.join("mounts");
    let data = parent.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let script = r#"mount -t tmpfs tmpfs "$1"
"$2" restore --from="$3" --data-dir="$1" --id=1 --initial-cluster=1=127.0.0.1:1/127.0.0.1:2
test -f "$1/CURRENT" || { echo "no store in $1"; ls -la "$1"; exit 1; }"#;
    let out = std::process::Command::new("unshare")
        .args(["-Urm", "sh", "-ec", script, "sh"])
        .arg(&data)
        .arg(env!("CARGO_BIN_EXE_raft-node"))
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "restore into a mount point: {text}");
    let beside: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["data"], "written beside the mount point");
}

/// Every node of a new cluster (new addresses) restored from `file` into
/// `new_dir`: the store is the state at the backup's index on each.
async fn restore_cluster(setup: &Setup, file: &Path, new_dir: &Path, saved: &Saved) {
    let index = saved.index;
    let addrs: Vec<_> = (1..=3u64).map(|id| (id, free_udp(), free_tcp())).collect();
    let cluster = initial_cluster(addrs.iter().map(|(id, p, c)| (*id, p, c)));
    let mut restored: Vec<Proc> = Vec::new();
    for (id, peer, http) in &addrs {
        let (ok, out, err) = restore(file, new_dir, *id, &cluster);
        assert!(ok, "restore of node {id} failed: {err}");
        assert!(out.contains(&format!("index {index}")), "{out}");
        let cmd = node_command(new_dir, *id, *peer, *http).args(setup.token_flags());
        let mut p = proc_for(new_dir, &cmd, format!("http://{http}"));
        p.start();
        restored.push(p);
    }
    let client = common::builder_of(&restored).token(USER).build().unwrap();
    common::leader(&client, &restored, None).await;
    let now = everything(&client, "k/").await;
    for (k, v) in &saved.before {
        let got = now.get(k).map(|(v, _)| v);
        assert_eq!(got, Some(v), "acknowledged write {k} lost");
    }
    assert_eq!(now, saved.expected, "not the state at index {index}");
    // It takes writes, after the backup's index.
    let rev = client.put("after-restore", "yes").await.unwrap();
    assert!(rev > index, "revision {rev} not after the index {index}");
    // Every restored node holds the same state.
    let mut digests = Vec::new();
    for p in &restored {
        common::wait_status(&client, p, 30, "caught up", |s| s.applied >= rev).await;
        digests.push(common::status_of(&client, p).await.kv.unwrap());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_eq!(digests[0].keys as usize, saved.expected.len() + 1);
    // The backup carried the revisions: every restored node reads the
    // state at the backup's index as of that revision, also after a key
    // of it is overwritten.
    let (key, _) = saved.expected.iter().next().expect("keys were backed up");
    let over = client.put(key.as_str(), "overwritten").await.unwrap();
    for p in &restored {
        common::wait_status(&client, p, 30, "caught up", |s| s.applied >= over).await;
        assert_eq!(
            everything_at(&p.http, "k/", index).await,
            saved.expected,
            "node {} as of revision {index}",
            p.id
        );
    }
    common::assert_running_without_panic(&mut restored, "after the restore");
}

/// One node restored alone, a second one joining it: it catches up from
/// the restored node's snapshot and holds the same state.
async fn restore_one_and_join(setup: &Setup, file: &Path, solo_dir: &Path, saved: &Saved) {
    let (peer, http) = (free_udp(), free_tcp());
    let (ok, _, err) = restore(file, solo_dir, 1, &initial_cluster([(1, peer, http)]));
    assert!(ok, "restore of a single node failed: {err}");
    let cmd = node_command(solo_dir, 1, peer, http).args(setup.token_flags());
    let mut solo = vec![proc_for(solo_dir, &cmd, format!("http://{http}"))];
    solo[0].start();
    let client = common::builder_of(&solo).token(ADMIN).build().unwrap();
    common::leader(&client, &solo, None).await;
    let url = solo[0].http.clone();
    solo.push(common::joiner(solo_dir, 2, &url, &setup.token_flags()));
    common::wait_status(&client, &solo[0], 60, "learner added", |st| {
        st.membership.learners.contains(&2)
    })
    .await;
    let rev = client.put("after-join", "1").await.unwrap();
    common::wait_status(&client, &solo[1], 60, "joiner caught up", |st| {
        st.applied >= rev
    })
    .await;
    let (d0, d1) = (
        common::status_of(&client, &solo[0]).await.kv.unwrap(),
        common::status_of(&client, &solo[1]).await.kv.unwrap(),
    );
    assert_eq!(d0, d1);
    assert_eq!(d0.keys as usize, saved.expected.len() + 1);
    common::assert_running_without_panic(&mut solo, "after a node joined a restored one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_write_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    let (mut procs, user, admin) = cluster_with_tokens(&dir);
    let setup = Setup {
        tmp: tmp.path().to_path_buf(),
        user,
        admin,
    };
    let client = common::builder_of(&procs).token(USER).build().unwrap();
    let leader = common::leader(&client, &procs, None).await;
    check_route(&procs, leader, &setup.tmp).await;
    let file = setup.tmp.join("cluster.bak");
    let saved = save_under_load(&client, &procs, leader, &setup.admin, &file).await;
    let new_dir = setup.tmp.join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    check_refusals(&setup.tmp, &file, &new_dir);
    restore_into_a_mount_point(&setup.tmp, &file);
    // Destroy the cluster.
    for p in &mut procs {
        p.kill9();
    }
    for id in 1..=3 {
        std::fs::remove_dir_all(dir.join(format!("node-{id}"))).unwrap();
    }
    copy_certs(&dir, &new_dir);
    restore_cluster(&setup, &file, &new_dir, &saved).await;
    let solo_dir = setup.tmp.join("solo");
    copy_certs(&dir, &solo_dir);
    restore_one_and_join(&setup, &file, &solo_dir, &saved).await;
}

async fn via_stale(client: &Client, p: &Proc, key: &str) -> Option<String> {
    common::via(client, p)
        .get_with(key, ReadConsistency::Stale)
        .await
        .ok()
        .flatten()
        .map(|e| String::from_utf8(e.value.to_vec()).unwrap())
}

/// Writes 200 keys; kills every node but a follower holding them all,
/// deleting their directories; the survivor, stopped, and what was written.
async fn lose_quorum(dir: &Path) -> (Proc, Vec<u64>, Vec<(String, String)>) {
    let mut procs = common::cluster(dir, 3);
    let client = common::client_of(&procs);
    let leader = common::leader(&client, &procs, None).await;
    let mut acked = Vec::new();
    let mut last = 0;
    for i in 0..200 {
        let (k, v) = (format!("q/{i:04}"), format!("v{i}"));
        last = client.put(&k, v.clone()).await.unwrap();
        acked.push((k, v));
    }
    // The survivor: a follower holding every acknowledged write (the
    // operator picks the member with the highest applied index).
    let survivor = procs.iter().position(|p| p.id != leader).unwrap();
    common::wait_status(&client, &procs[survivor], 30, "applied all", |s| {
        s.applied >= last
    })
    .await;
    let mut lost = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        if i != survivor {
            p.kill9();
            std::fs::remove_dir_all(dir.join(format!("node-{}", p.id))).unwrap();
            lost.push(p.id);
        }
    }
    let mut node = procs.swap_remove(survivor);
    // Alone it cannot commit.
    let alone = common::via(&client, &node).with_retry(raft_client::RetryPolicy::none());
    assert!(alone.put("lost", "x").await.is_err());
    node.sigterm();
    (node, lost, acked)
}

/// Promotes learner `id` through `leader`, until the configuration says
/// it is a voter (a promotion whose answer was lost may have happened).
async fn promote(client: &Client, leader: &Proc, learner: &Proc) {
    let id = learner.id;
    common::wait_status(client, leader, 60, "learner added", |st| {
        st.membership.learners.contains(&id)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = common::status_of(client, leader).await;
        if st.membership.voters.contains(&id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} not promoted: {:#}\nlog:\n{}",
            st.raw,
            learner.log_text()
        );
        if let Err(e) = client.promote(id).await {
            eprintln!("promote {id}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_of_a_lost_quorum_recovers_as_a_single_voter_and_members_rejoin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut node, lost, acked) = lose_quorum(dir).await;
    let sid = node.id;
    let data = dir.join(format!("node-{sid}"));
    let mut args = vec![
        s("recover"),
        format!("--data-dir={}", data.display()),
        format!("--id={sid}"),
    ];
    let (ok, _, err) = raft_node(&args);
    assert!(!ok && err.contains("--force-new-cluster"), "{err}");
    args.push(s("--force-new-cluster"));
    let (ok, _, err) = raft_node(&args);
    assert!(ok && err.contains("ONLY voter"), "{err}");

    node.start();
    let client = common::client_of(std::slice::from_ref(&node));
    common::wait_status(&client, &node, 60, "leader alone", |st| {
        st.leader == Some(sid) && st.membership.voters == vec![sid]
    })
    .await;
    assert!(node.log_text().contains("force-new-cluster"));
    client.put("after-recovery", "1").await.unwrap();

    // Two members join and are promoted: one takes a lost member's id, the
    // other a new one.
    let mut all = vec![node];
    let (reused, fresh) = (lost[0], 4u64);
    for id in [reused, fresh] {
        let p = common::joiner(dir, id, &all[0].http.clone(), &[]);
        promote(&client, &all[0], &p).await;
        all.push(p);
    }
    let st = common::wait_status(&client, &all[0], 60, "three voters", |st| {
        st.membership.voters.len() == 3 && !st.membership.joint
    })
    .await;
    let mut voters = vec![sid, reused, fresh];
    voters.sort_unstable();
    assert_eq!(st.membership.voters, voters);
    let client = common::client_of(&all);
    let rev = client.put("after-rejoin", "1").await.unwrap();
    let mut digests = Vec::new();
    for p in &all {
        common::wait_status(&client, p, 60, "caught up", |st| st.applied >= rev).await;
        digests.push(common::status_of(&client, p).await.kv.unwrap());
        for (k, v) in acked.iter().step_by(17) {
            let got = via_stale(&client, p, k).await;
            assert_eq!(got.as_deref(), Some(v.as_str()), "node {}", p.id);
        }
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    let now = everything(&client, "q/").await;
    for (k, v) in &acked {
        let got = now.get(k).map(|(v, _)| v);
        assert_eq!(got, Some(v), "acknowledged write {k} lost");
    }
    common::assert_running_without_panic(&mut all, "after the recovery");
}

/// The first backup `url` serves whole and valid within 5 s (retried: on a
/// loaded machine a backup slot may take that long to come free), saved in
/// `file`.
async fn next_backup(
    http: &reqwest::Client,
    url: &str,
    file: &Path,
) -> Option<raft_node::backup::VerifiedBackup> {
    for _ in 0..50 {
        let resp = http.get(url).send().await.unwrap();
        if resp.status().as_u16() == 200 {
            if let Ok(bytes) = resp.bytes().await {
                std::fs::write(file, &bytes).unwrap();
                if let Ok(v) = raft_node::backup::verify(file) {
                    return Some(v);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Reads the answer to `GET /v1/cluster/backup` one chunk per `pause`:
/// (bytes received, whether the body ended cleanly). Gives up after 60 s.
async fn read_slowly(resp: reqwest::Response, pause: Duration) -> (Vec<u8>, bool) {
    let mut resp = resp;
    let mut body = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => return (body, true),
            Err(_) => return (body, false),
        }
        tokio::time::sleep(pause).await;
    }
    (body, false)
}

/// `--max-concurrent-backups 1`: a second backup while one is being sent
/// gets 503 `overloaded`. `--backup-max-duration-ms`: a client reading the
/// backup too slowly is cut off (the RocksDB view it pinned is let go), and
/// the slot is free again for the next backup, which verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_read_too_slowly_is_cut_off_and_the_backup_limit_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        "--max-concurrent-backups=1".to_string(),
        "--backup-max-duration-ms=500".to_string(),
    ];
    let procs = common::cluster_with(tmp.path(), 1, &extra, &[], "http");
    let client = common::client_of(&procs);
    common::leader(&client, &procs, None).await;
    // 32 MiB: more than the answer's queue and the sockets' buffers hold.
    let value = vec![b'x'; 512 << 10];
    for i in 0..64 {
        client
            .put(format!("big/{i:03}"), value.clone())
            .await
            .unwrap();
    }
    let url = format!("{}/v1/cluster/backup", procs[0].http);
    let http = reqwest::Client::new();
    let slow = http.get(&url).send().await.unwrap();
    assert_eq!(slow.status().as_u16(), 200);
    let second = http.get(&url).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 503, "one backup at a time");
    let started = Instant::now();
    let (body, clean) = read_slowly(slow, Duration::from_millis(100)).await;
    println!(
        "slow reader: {} bytes in {:?}, ended cleanly: {clean}",
        body.len(),
        started.elapsed()
    );
    assert!(
        !clean && body.len() < 32 << 20,
        "a backup read for {:?} past --backup-max-duration-ms was not cut off ({} bytes)",
        started.elapsed(),
        body.len()
    );
    // The slot is free again: a backup read at full speed completes (of a
    // small store, well within the 500 ms even in a debug build: the big
    // values are deleted and their history compacted).
    for i in 0..64 {
        client.delete(format!("big/{i:03}")).await.unwrap();
    }
    let rev = client.put("small", "v").await.unwrap();
    compact_history(&procs[0].http, rev).await;
    // (Retried: on a loaded machine even a small backup may take 500 ms.)
    let v = next_backup(&http, &url, &tmp.path().join("fast.bak"))
        .await
        .expect("the next backup is served once the slow one is cut off");
    assert!(v.records >= 1, "{} records", v.records);
}

/// A follower relays the leader's backup: when the leader cuts it off
/// mid-stream (here its `--backup-max-duration-ms` passes while the client
/// reads slowly), the follower's client sees a cut-off body, never one that
/// ends cleanly, and the follower's backup slot is free again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_backup_the_leader_cuts_off_is_cut_off_at_the_follower() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        "--max-concurrent-backups=1".to_string(),
        "--backup-max-duration-ms=500".to_string(),
    ];
    let procs = common::cluster_with(tmp.path(), 3, &extra, &[], "http");
    let client = common::client_of(&procs);
    let leader = common::leader(&client, &procs, None).await;
    // 32 MiB: more than the relay's queue, the leader's and the sockets'
    // buffers hold.
    let value = vec![b'x'; 512 << 10];
    for i in 0..64 {
        client
            .put(format!("big/{i:03}"), value.clone())
            .await
            .unwrap();
    }
    let follower = procs.iter().find(|p| p.id != leader).unwrap();
    let url = format!("{}/v1/cluster/backup", follower.http);
    let http = reqwest::Client::new();
    let slow = http.get(&url).send().await.unwrap();
    assert_eq!(slow.status().as_u16(), 200);
    assert_eq!(
        slow.headers()["x-raft-backup-node"].to_str().unwrap(),
        leader.to_string(),
        "relayed from the leader"
    );
    let (body, clean) = read_slowly(slow, Duration::from_millis(100)).await;
    println!(
        "slow reader through node {}: {} bytes, ended cleanly: {clean}",
        follower.id,
        body.len()
    );
    assert!(
        !clean && body.len() < 32 << 20,
        "a relayed backup the leader cut off ended cleanly ({} bytes)",
        body.len()
    );
    // The follower's slot (and the leader's) are free again.
    for i in 0..64 {
        client.delete(format!("big/{i:03}")).await.unwrap();
    }
    let rev = client.put("small", "v").await.unwrap();
    compact_history(&follower.http, rev).await;
    let v = next_backup(&http, &url, &tmp.path().join("relayed.bak"))
        .await
        .expect("a relayed backup is served once the cut-off one ended");
    assert_eq!(v.header.node, leader);
}

/// A backup holds every key and value of the store: `ctl snapshot save`
/// writes it (and its `.part`) readable and writable by its owner only,
/// whatever the umask, as the node keeps its own data directory (0700).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_backup_is_readable_by_its_owner_only() {
    // The usual umask, whatever the test runner's: files are 0644 by default.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let tmp = tempfile::tempdir().unwrap();
    let procs = common::cluster_with(tmp.path(), 1, &[], &[], "http");
    let client = common::client_of(&procs);
    common::leader(&client, &procs, None).await;
    client.put("secret", "s3cr3t").await.unwrap();
    let file = tmp.path().join("cluster.bak");
    let (ok, _, err) = raft_node(&[
        s("ctl"),
        format!("--endpoints={}", procs[0].http),
        s("snapshot"),
        s("save"),
        file.display().to_string(),
    ]);
    assert!(ok, "ctl snapshot save failed: {err}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup's mode is {mode:04o}");
}
