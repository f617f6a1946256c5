//! Leases of a hot key (`store.redis.leases`, docs/hot-keys.md) with real processes: three
//! `drl serve` nodes on a real Redis Cluster of 3 masters with a replica each, one key checked at
//! many times its limit from many connections, one node killed with `kill -9` while it may hold
//! a slice, and the limit lowered by a reload mid-run. What leases promise: no interval of T
//! holds more than N admissions (N the limit in force), and hot keys are answered from slices.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

mod fleet;

use drl_testkit::redis as support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drl_client::ClientError;

const DRL: &str = env!("CARGO_BIN_EXE_drl");

fn write_config(path: &Path, cluster: &support::Cluster, limit: u32) {
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    std::fs::write(
        path,
        format!(
            "store:\n  kind: redis\n  redis:\n    urls: [{}]\n    cluster: true\n    \
             consistency: fast\n    timeout: 2s\n    leases: {{threshold: 20, max_fraction: \
             0.25}}\ndefault:\n  limit: {limit}\n  window: 1s\n  algorithm: sliding_window\n",
            urls.join(", ")
        ),
    )
    .unwrap();
}

#[test]
fn a_leased_hot_key_survives_a_kill_and_a_reload_without_breaking_the_limit() {
    const N: usize = 100;
    const LOWER: usize = 60;
    const WINDOW: Duration = Duration::from_secs(1);
    let cluster = support::Cluster::start(3, 1);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-hot-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("drl.yaml");
    write_config(&config, &cluster, N as u32);
    let (mut nodes, clients) = fleet::start(DRL, &config, 3);
    let dead: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
    let seen: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = fleet::runtime();
    let in_runtime = runtime.enter();
    let mut tasks = tokio::task::JoinSet::new();
    // 12 connections, each a check every 4 ms at most: up to 3 000 a second, 30 N.
    for t in 0..12_usize {
        let (clients, dead) = (Arc::clone(&clients), Arc::clone(&dead));
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        tasks.spawn(async move {
            let mut target = t % 3;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..6 {
                    if dead[target].load(Ordering::Relaxed) {
                        target = (target + 1) % 3;
                        continue;
                    }
                    let sent = Instant::now();
                    match clients[target].check("hot", "/api", 1).await {
                        Ok(d) => {
                            if d.allowed {
                                seen.lock().unwrap().push((sent, Instant::now()));
                            }
                            break;
                        }
                        Err(ClientError::Connect { .. }) => {
                            dead[target].store(true, Ordering::Relaxed);
                        }
                        // An answer lost with the killed node: not seen, so not counted here.
                        Err(_) => {}
                    }
                    target = (target + 1) % 3;
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        });
    }
    drop(in_runtime);
    std::thread::sleep(Duration::from_millis(1_500));
    let answers_before_kill = nodes[0].store_event("lease_answers");
    nodes[0].kill();
    std::thread::sleep(Duration::from_millis(1_000));
    write_config(&config, &cluster, LOWER as u32);
    nodes[1].signal("-HUP");
    nodes[2].signal("-HUP");
    nodes[1].wait_for_log("reloaded: version 2");
    nodes[2].wait_for_log("reloaded: version 2");
    let reloaded = Instant::now();
    std::thread::sleep(Duration::from_millis(2_000));
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    let answers = answers_before_kill
        + nodes[1].store_event("lease_answers")
        + nodes[2].store_event("lease_answers");
    let seen = seen.lock().unwrap().clone();
    let after: Vec<_> = seen.iter().copied().filter(|a| a.0 >= reloaded).collect();
    let worst = support::worst_window(seen.clone(), WINDOW);
    let worst_after = support::worst_window(after.clone(), WINDOW);
    eprintln!(
        "hot key over 3 nodes: {} admitted ({} after the reload), worst interval of T {worst} \
         (after the reload {worst_after}), {answers} decisions from leases",
        seen.len(),
        after.len()
    );
    assert!(seen.len() >= 2 * N, "only {} admitted", seen.len());
    assert!(worst <= N, "{worst} admissions within T (N = {N})");
    assert!(
        worst_after <= LOWER,
        "{worst_after} admissions within T after the reload (N = {LOWER})"
    );
    assert!(
        after.len() >= LOWER,
        "only {} admitted after the reload",
        after.len()
    );
    assert!(answers > 0, "no decision answered from a lease");
}
