//! A fleet over real processes: a real etcd (Debian's etcd-server, installed by
//! `scripts/setup.sh --train`) and three `moe serve` replicas (this build's binary) sharing its
//! registry on loopback ports, with the same flags as scripts/fleet.sh and deploy/k8s.
//!
//! What must hold: a swap sent to any replica reaches every replica, under load, with no failed
//! request and no answer that mixes two sets; with etcd down reads keep working and changes get
//! 503, and after it comes back everyone converges; a replica killed with SIGKILL comes back on
//! the committed revision.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "fleet-token";

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap().into()
}

struct Etcd {
    proc: Option<Proc>,
    port: u16,
    peer: u16,
    dir: PathBuf,
}

impl Etcd {
    fn start(dir: PathBuf) -> Etcd {
        let mut e = Etcd { proc: None, port: common::free_port(), peer: common::free_port(), dir };
        e.restart();
        e
    }

    /// Start (again) on the same ports and data folder.
    fn restart(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let client = format!("http://127.0.0.1:{}", self.port);
        let child = Command::new("etcd")
            .args(["--name", "fleet-test", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("fleet-test={peer}")])
            .stdout(log_file(&self.dir, "etcd.log"))
            .stderr(log_file(&self.dir, "etcd.log"))
            .spawn()
            .expect("etcd not found: scripts/setup.sh --train installs Debian's etcd-server");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen within 20 s ({})", self.dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn registry(&self) -> String {
        format!("etcd://127.0.0.1:{}/fleet-test", self.port)
    }
}

struct Replica {
    proc: Option<common::Server>,
    id: String,
    port: u16,
    state: PathBuf,
    root: PathBuf,
    registry: String,
}

impl Replica {
    fn new(id: &str, root: &Path, registry: &str, dir: &Path) -> Replica {
        let mut r = Replica {
            proc: None,
            id: id.into(),
            port: common::free_port(),
            state: dir.join(id),
            root: root.into(),
            registry: registry.into(),
        };
        r.start();
        r
    }

    /// The flags of scripts/fleet.sh and deploy/k8s: a shared registry, an id, own state.
    fn start(&mut self) {
        let envs: [(&str, &std::ffi::OsStr); 5] = [
            ("MOE_MODELS", self.root.as_os_str()),
            ("MOE_STATE", self.state.as_os_str()),
            ("MOE_REGISTRY", self.registry.as_ref()),
            ("MOE_REPLICA_ID", self.id.as_ref()),
            ("MOE_ADMIN_TOKEN", TOKEN.as_ref()),
        ];
        self.proc = Some(common::Server::spawn(self.port, &envs, &self.state.join("replica.log")));
    }

    /// SIGKILL: no shutdown, no lease revoked.
    fn kill(&mut self) {
        self.proc = None;
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn get(c: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let res = c.get(url).send().await.ok()?;
    let status = res.status().as_u16();
    Some((status, res.json().await.ok()?))
}

/// The revision a replica serves, once it is ready.
async fn revision(c: &reqwest::Client, r: &Replica) -> Option<i64> {
    match get(c, &format!("{}/readyz", r.base())).await {
        Some((200, v)) => v["revision"].as_i64(),
        _ => None,
    }
}

async fn wait_until_all_serve(c: &reqwest::Client, replicas: &[Replica], at_least: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut behind = Vec::new();
        for r in replicas {
            let rev = revision(c, r).await;
            if rev.is_none_or(|v| v < at_least) {
                behind.push(format!("{} at {rev:?}", r.id));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "not serving revision {at_least} after {within:?}: {behind:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /fleet` (announcements refresh every 250 ms) reports every replica on the latest revision.
async fn wait_converged(c: &reqwest::Client, r: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, fleet) = get(c, &format!("{}/fleet", r.base())).await.unwrap();
        if fleet["converged"] == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "/fleet never reported converged: {fleet}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(c: &reqwest::Client, r: &Replica, class: &str, bundle: &str) -> (u16, Value) {
    let res = c
        .put(format!("{}/experts/{class}", r.base()))
        .bearer_auth(TOKEN)
        .json(&json!({"bundle": bundle}))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

fn swap_target(i: usize) -> (&'static str, String) {
    let class = if i.is_multiple_of(2) { "Travel" } else { "Health" };
    let slug = class.to_lowercase();
    let bundle = if (i / 2).is_multiple_of(2) { format!("{slug}--tokenbag-b") } else { format!("{slug}--tokenbag") };
    (class, bundle)
}

/// Clients classifying round-robin over `bases` until `done`: (non-2xx or failed requests,
/// per (replica, generation) the versions answered).
type Seen = Vec<((usize, u64), Vec<(String, String)>)>;

fn load(
    bases: Vec<String>,
    done: Arc<AtomicBool>,
    clients: usize,
) -> Vec<tokio::task::JoinHandle<(Vec<String>, Seen)>> {
    (0..clients)
        .map(|k| {
            let (bases, done, c) = (bases.clone(), done.clone(), client());
            tokio::spawn(async move {
                let (mut failures, mut seen) = (Vec::new(), Seen::new());
                let mut i = k;
                while !done.load(Ordering::Relaxed) {
                    i += 1;
                    let r = i % bases.len();
                    let body = json!({"texts": [format!("how to plan a trip {k} {i}"), "how to cure a cold"]});
                    let res = match c.post(format!("{}/classify?experts=all", bases[r])).json(&body).send().await {
                        Ok(res) => res,
                        Err(e) => {
                            failures.push(format!("replica {r}: {e}"));
                            continue;
                        }
                    };
                    if !res.status().is_success() {
                        failures.push(format!(
                            "replica {r}: {} {}",
                            res.status(),
                            res.text().await.unwrap_or_default()
                        ));
                        continue;
                    }
                    let v: Value = res.json().await.unwrap();
                    let versions = v["results"][0]["experts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| (e["class"].as_str().unwrap().to_string(), e["version"].as_str().unwrap().to_string()))
                        .collect();
                    seen.push(((r, v["generation"].as_u64().unwrap()), versions));
                }
                (failures, seen)
            })
        })
        .collect()
}

/// Every answer of one replica's generation shows the same versions; returns the answer count.
async fn check_answers(handles: Vec<tokio::task::JoinHandle<(Vec<String>, Seen)>>) -> usize {
    let mut by_generation: HashMap<(usize, u64), Vec<(String, String)>> = HashMap::new();
    let mut answers = 0;
    for h in handles {
        let (failures, seen) = h.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} requests failed during the swaps: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        for (key, versions) in seen {
            answers += 1;
            let first = by_generation.entry(key).or_insert_with(|| versions.clone());
            assert_eq!(*first, versions, "replica {} generation {} answered with two sets", key.0, key.1);
        }
    }
    answers
}

fn fleet_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-fleet-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start_fleet(tag: &str) -> (PathBuf, Etcd, Vec<Replica>) {
    let dir = fleet_dir(tag);
    let root = common::copy_root(&common::fixture_models(), &format!("fleet-{tag}"));
    let etcd = Etcd::start(dir.clone());
    let replicas: Vec<Replica> =
        (1..=3).map(|i| Replica::new(&format!("replica-{i}"), &root, &etcd.registry(), &dir)).collect();
    let c = client();
    wait_until_all_serve(&c, &replicas, 1, Duration::from_secs(60)).await;
    (dir, etcd, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_on_any_replica_reach_every_replica_under_load() {
    let (dir, _etcd, replicas) = start_fleet("load").await;
    let c = client();
    let done = Arc::new(AtomicBool::new(false));
    let handles = load(replicas.iter().map(Replica::base).collect(), done.clone(), 3);
    let mut last = 0;
    for i in 0..100 {
        let (class, bundle) = swap_target(i);
        let r = &replicas[(i * 7 + i / 3) % 3];
        let (status, v) = put(&c, r, class, &bundle).await;
        assert_eq!(status, 200, "swap {i} on {}: {v}", r.id);
        let rev = v["revision"].as_i64().expect("a fleet swap answers its registry revision");
        assert!(rev > last, "revisions grow: {rev} after {last}");
        last = rev;
        // The next swap may go to another replica: every replica serves this one first.
        wait_until_all_serve(&c, &replicas, rev, Duration::from_secs(10)).await;
    }
    done.store(true, Ordering::Relaxed);
    let answers = check_answers(handles).await;
    assert!(answers > 100, "clients ran during the swaps ({answers} answers)");
    // Every replica ends on the same revision, with the same bundles, and says so.
    let (status, fleet) = get(&c, &format!("{}/fleet", replicas[2].base())).await.unwrap();
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["revision"].as_i64(), Some(last), "{fleet}");
    assert_eq!(fleet["replicas"].as_array().unwrap().len(), 3, "{fleet}");
    wait_converged(&c, &replicas[0]).await;
    let mut sets = Vec::new();
    for r in &replicas {
        let (_, v) = get(&c, &format!("{}/experts", r.base())).await.unwrap();
        assert_eq!(v["revision"].as_i64(), Some(last));
        let bundles: Vec<String> =
            v["experts"].as_array().unwrap().iter().map(|e| e["bundle"].as_str().unwrap().to_string()).collect();
        sets.push(bundles);
    }
    assert!(sets.windows(2).all(|w| w[0] == w[1]), "replicas serve different sets: {sets:?}");
    // History is shared: 50 swaps of Travel recorded once each, whichever replica took them.
    let (_, h) = get(&c, &format!("{}/experts/Travel/history", replicas[1].base())).await.unwrap();
    let swaps = h["history"].as_array().unwrap().iter().filter(|e| e["action"] == "swap").count();
    assert_eq!(swaps, 50, "{h}");
    drop(replicas);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outages_and_killed_replicas_lose_nothing() {
    let (dir, mut etcd, mut replicas) = start_fleet("faults").await;
    let c = client();
    // Reads on replicas 1 and 2 must never fail, whatever happens to etcd and replica 3.
    let done = Arc::new(AtomicBool::new(false));
    let handles = load(replicas[..2].iter().map(Replica::base).collect(), done.clone(), 2);

    // etcd down: changes are refused with 503 and say why; reads keep working.
    etcd.stop();
    let (status, v) = put(&c, &replicas[0], "Travel", "travel--tokenbag-b").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "registry_unavailable", "{v}");
    let (status, v) = get(&c, &format!("{}/fleet", replicas[1].base())).await.unwrap();
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("registry_unavailable")));
    for r in &replicas {
        let (status, v) = get(&c, &format!("{}/experts", r.base())).await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["experts"][1]["bundle"], "travel--tokenbag", "the refused change left nothing behind");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // etcd back: the same change works again and every replica (their watches reconnected)
    // converges to it.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rev = loop {
        let (status, v) = put(&c, &replicas[1], "Travel", "travel--tokenbag-b").await;
        if status == 200 {
            break v["revision"].as_i64().unwrap();
        }
        assert_eq!(status, 503, "only 'unavailable' while etcd restarts: {v}");
        assert!(Instant::now() < deadline, "changes still refused 20 s after etcd came back: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_until_all_serve(&c, &replicas, rev, Duration::from_secs(20)).await;

    // A replica killed with SIGKILL while it handles a swap, and others swapping meanwhile: it
    // comes back on the revision committed last.
    let pending = {
        let (c, base) = (c.clone(), replicas[2].base());
        tokio::spawn(async move {
            c.put(format!("{base}/experts/Health"))
                .bearer_auth(TOKEN)
                .json(&json!({"bundle": "health--tokenbag-b"}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(3)).await;
    replicas[2].kill();
    let _ = pending.await; // answered or cut off: either is allowed, a half-applied change is not
    let mut last = rev;
    for i in 0..6 {
        let (class, bundle) = swap_target(i + 1);
        let (status, v) = put(&c, &replicas[i % 2], class, &bundle).await;
        assert_eq!(status, 200, "{v}");
        last = v["revision"].as_i64().unwrap();
    }
    replicas[2].start();
    wait_until_all_serve(&c, &replicas, last, Duration::from_secs(60)).await;
    let mut sets = Vec::new();
    for r in &replicas {
        let (_, v) = get(&c, &format!("{}/experts", r.base())).await.unwrap();
        assert_eq!(v["revision"].as_i64(), Some(last), "{}: {v}", r.id);
        sets.push(v["experts"].clone());
    }
    let bundles = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|e| e["bundle"].as_str().unwrap().to_string()).collect()
    };
    assert!(sets.iter().all(|s| bundles(s) == bundles(&sets[0])), "replicas disagree after the restart");
    done.store(true, Ordering::Relaxed);
    check_answers(handles).await;
    drop(replicas);
    drop(etcd);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_load_a_revision_keeps_its_set_and_catches_up() {
    let dir = fleet_dir("broken");
    let root = common::copy_root(&common::fixture_models(), "fleet-broken");
    // Replica 3 has its own model root, where the bundle the swap names is damaged.
    let own = common::copy_root(&common::fixture_models(), "fleet-broken-own");
    let graph = own.join("travel--tokenbag-b/model.onnx");
    let good = std::fs::read(&graph).unwrap();
    common::replace_file(&graph, b"not an onnx graph");
    let etcd = Etcd::start(dir.clone());
    let replicas = vec![
        Replica::new("replica-1", &root, &etcd.registry(), &dir),
        Replica::new("replica-2", &root, &etcd.registry(), &dir),
        Replica::new("replica-3", &own, &etcd.registry(), &dir),
    ];
    let c = client();
    wait_until_all_serve(&c, &replicas, 1, Duration::from_secs(60)).await;
    let (status, v) = put(&c, &replicas[0], "Travel", "travel--tokenbag-b").await;
    assert_eq!(status, 200, "{v}");
    let rev = v["revision"].as_i64().unwrap();
    wait_until_all_serve(&c, &replicas[..2], rev, Duration::from_secs(10)).await;
    // Replica 3 says why it is behind, keeps answering with its old set, and the fleet is not
    // converged.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fleet = loop {
        let (_, fleet) = get(&c, &format!("{}/fleet", replicas[1].base())).await.unwrap();
        let r3 = fleet["replicas"].as_array().unwrap().iter().find(|r| r["id"] == "replica-3").cloned();
        if r3.as_ref().is_some_and(|r| r["last_error"].is_string()) {
            break fleet;
        }
        assert!(Instant::now() < deadline, "replica-3 never reported its failed load: {fleet}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(fleet["converged"], json!(false), "{fleet}");
    let r3 = fleet["replicas"].as_array().unwrap().iter().find(|r| r["id"] == "replica-3").unwrap();
    assert!(r3["last_error"].as_str().unwrap().contains("travel--tokenbag-b"), "{r3}");
    assert!(r3["failed_loads"].as_u64().unwrap() >= 1, "{r3}");
    assert!(r3["revision"].as_i64().unwrap() < rev, "{r3}");
    let (status, v) = get(&c, &format!("{}/experts", replicas[2].base())).await.unwrap();
    assert_eq!((status, v["experts"][1]["bundle"].as_str()), (200, Some("travel--tokenbag")), "{v}");
    let res = c.post(format!("{}/classify", replicas[2].base())).json(&json!({"text": "how to fly cheap"}));
    assert_eq!(res.send().await.unwrap().status(), 200);
    // Repaired: it retries on its own and catches up.
    common::replace_file(&graph, &good);
    wait_until_all_serve(&c, &replicas, rev, Duration::from_secs(10)).await;
    wait_converged(&c, &replicas[0]).await;
    drop(replicas);
    drop(etcd);
    for d in [dir, root, own] {
        let _ = std::fs::remove_dir_all(d);
    }
}
