//! `drl serve` nodes on one real `redis-server` (`store.kind: redis`): two share their counters
//! (what one node admits counts against the other), and `kill -9` of one of three under load,
//! clients retrying on the others, loses or doubles nothing beyond what the store recorded.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

mod fleet;

use drl_testkit::redis as support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drl_client::ClientError;
use drl_testkit::process::DrlProcess;

const DRL: &str = env!("CARGO_BIN_EXE_drl");

/// The config of this file's nodes, written for test `test`: `store.redis` on `redis` in fast
/// mode (2 s timeout, `store_extra` lines added), then `rules` (the default and any rules).
fn redis_config(test: &str, redis: &support::Redis, store_extra: &str, rules: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("drl.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  kind: redis\n  redis:\n    urls: [\"{}\"]\n    consistency: fast\n\
             {store_extra}    timeout: 2s\n{rules}",
            redis.url()
        ),
    )
    .unwrap();
    config
}

#[test]
fn two_nodes_share_one_budget_in_redis() {
    let redis = support::Redis::start();
    let config = redis_config(
        "redis-nodes",
        &redis,
        "",
        "default:\n  limit: 3\n  window: 1m\n",
    );
    let (a, b) = (
        DrlProcess::start(DRL, &config),
        DrlProcess::start(DRL, &config),
    );
    let codes = [
        a.check("alice", "/x").0,
        b.check("alice", "/x").0,
        a.check("alice", "/x").0,
        b.check("alice", "/x").0,
        a.check("alice", "/x").0,
    ];
    assert_eq!(codes, [Some(0), Some(0), Some(0), Some(1), Some(1)]);
    // Another user has a budget of its own, on either node.
    assert_eq!(b.check("bob", "/x").0, Some(0));
    // The counters are in Redis.
    assert_ne!(redis.cli(&["DBSIZE"]), "0");
}

/// libfaketime's preload library, where Debian's `faketime` package puts it.
fn libfaketime() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
    .expect("libfaketime (scripts/test.sh installs Debian's faketime package)")
}

/// `PUT path` with a JSON body and the admin token; the status code.
fn admin_put(node: &DrlProcess, path: &str, token: &str, body: &str) -> u16 {
    let addr = node.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Shared bans and blocks end on Redis's clock, not a node's: a node whose wall clock runs 2 h
/// ahead (libfaketime) syncs a 1 h block made through another node, enforces it, and does not
/// lift it. (Ends on each node's own clock made that node see the block as long over and delete
/// it from Redis, for every node.)
#[test]
fn a_node_whose_clock_runs_two_hours_ahead_keeps_a_one_hour_block() {
    let redis = support::Redis::start();
    let config = redis_config(
        "redis-nodes-clock",
        &redis,
        "",
        "default:\n  limit: 1000\n  window: 1m\n",
    );
    let token = "clock-test-token";
    let a = DrlProcess::start_with(DRL, &config, &[], &[("DRL_ADMIN_TOKEN", token)]);
    let ahead = DrlProcess::start_with(
        DRL,
        &config,
        &[],
        &[
            ("LD_PRELOAD", libfaketime()),
            ("FAKETIME", "+2h"),
            // Timers and timeouts run on the monotonic clock: only the wall clock is moved.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    assert_eq!(ahead.check("mallory", "/x").0, Some(0));
    assert_eq!(
        admin_put(&a, "/v1/blocks/mallory", token, r#"{"duration":"1h"}"#),
        200
    );
    // The node ahead picks the block up at its next sync (once a second) and enforces it.
    drl_testkit::wait_within_blocking(
        Duration::from_secs(20),
        "the node ahead to enforce the block",
        || ahead.check("mallory", "/x").0 == Some(1),
    );
    // Several more syncs of the node ahead: the block stays, on both nodes and in Redis.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ahead.check("mallory", "/x").0, Some(1));
    assert_eq!(a.check("mallory", "/x").0, Some(1));
    assert_eq!(a.check("someone-else", "/x").0, Some(0));
}

/// Rounds of a client per check of its ledger.
const LEDGER_EVERY: usize = 4;

/// One answered check, as a client saw it.
struct Seen {
    user: usize,
    sent: Instant,
    received: Instant,
    allowed: bool,
}

/// `kill -9` of one of three nodes under load while the clients retry a check on the next node
/// when theirs fails. Each client checks its user (N per second, `sliding_log`) and, every
/// [`LEDGER_EVERY`]th round, the user's **ledger**: a key of its own under a limit never reached
/// (10 000 per hour), whose ring counts every admission it ever made and never expires during
/// the test. (The user's own key expires a window after its newest admission: read after the
/// load, it may be gone, depending on where the last window stood when the load stopped.) What
/// is allowed, per ledger, with `recorded` the admissions Redis counted:
///
/// - `seen ≤ recorded`: every admission a client was answered is in the store (none lost);
/// - `recorded ≤ seen + lost + failed`: an admission the store counted but no client saw is
///   either a check whose answer died with the node (`lost`: the request was sent, the
///   connection broke; its retry on another node is a second request and may be counted too) or
///   one a node answered by `on_error` after its timeout (`failed`, from the nodes' metrics; the
///   script may have run late). A check refused at connect was never sent and counts nothing;
/// - P for the users' admissions clients saw: never more than N in any interval of length T.
#[test]
fn killing_a_node_under_load_loses_or_doubles_nothing_the_store_did_not_record() {
    const N: usize = 20;
    const WINDOW: Duration = Duration::from_secs(1);
    let redis = support::Redis::start();
    let config = redis_config(
        "node-kill",
        &redis,
        "    on_error: deny\n",
        &format!(
            "default:\n  limit: {N}\n  window: 1s\n  algorithm: sliding_log\nrules:\n  \
             - endpoint: /ledger\n    limit: 10000\n    window: 1h\n    algorithm: sliding_log\n"
        ),
    );
    let (mut nodes, clients) = fleet::start(DRL, &config, 3);
    let users = ["alpha", "bravo"];
    let ledgers = ["ledger-alpha", "ledger-bravo"];
    let dead: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
    // Per user, then per ledger: answers that died with the node.
    let lost: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let refused = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen_ledger: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = fleet::runtime();
    let in_runtime = runtime.enter();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6_usize {
        let (clients, dead, lost) = (Arc::clone(&clients), Arc::clone(&dead), Arc::clone(&lost));
        let (refused, stop) = (Arc::clone(&refused), Arc::clone(&stop));
        let (seen, seen_ledger) = (Arc::clone(&seen), Arc::clone(&seen_ledger));
        tasks.spawn(async move {
            let user = t % users.len();
            let mut target = t;
            for round in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (id, endpoint, log, lost) = if round % LEDGER_EVERY == 0 {
                    (ledgers[user], "/ledger", &seen_ledger, &lost[2 + user])
                } else {
                    (users[user], "/kill", &seen, &lost[user])
                };
                // One request, retried on the next node until one answers.
                for _ in 0..30 {
                    target = (target + 1) % clients.len();
                    if dead[target].load(Ordering::Relaxed) {
                        continue;
                    }
                    let sent = Instant::now();
                    match clients[target].check(id, endpoint, 1).await {
                        Ok(d) => {
                            log.lock().unwrap().push(Seen {
                                user,
                                sent,
                                received: Instant::now(),
                                allowed: d.allowed,
                            });
                            break;
                        }
                        Err(ClientError::Connect { .. }) => {
                            dead[target].store(true, Ordering::Relaxed);
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    drop(in_runtime);
    std::thread::sleep(Duration::from_millis(1_500));
    let answered_before = seen.lock().unwrap().len();
    // Its failed store checks so far (none expected with a 2 s timeout; read just before).
    let failed_killed = nodes[0].store_event("errors");
    nodes[0].kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(2_500));
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    let failed = failed_killed + nodes[1].store_event("errors") + nodes[2].store_event("errors");
    let seen = seen.lock().unwrap();
    let seen_ledger = seen_ledger.lock().unwrap();
    let after = seen.iter().filter(|s| s.sent >= killed).count();
    assert!(
        answered_before >= 20,
        "only {answered_before} checks before the kill"
    );
    assert!(after >= 20, "only {after} checks answered after the kill");
    let refused = refused.load(Ordering::Relaxed);
    assert!(refused >= 1, "no client noticed the kill");
    for (u, user) in users.iter().enumerate() {
        let admissions: Vec<(Instant, Instant)> = seen
            .iter()
            .filter(|s| s.user == u && s.allowed)
            .map(|s| (s.sent, s.received))
            .collect();
        let admitted = admissions.len() as u64;
        let worst = support::worst_window(admissions, WINDOW);
        let ledger = ledgers[u];
        let ledger_seen = seen_ledger
            .iter()
            .filter(|s| s.user == u && s.allowed)
            .count() as u64;
        let recorded = support::admissions_recorded(&redis, ledger);
        let (lost, ledger_lost) = (
            lost[u].load(Ordering::Relaxed),
            lost[2 + u].load(Ordering::Relaxed),
        );
        println!(
            "drl node kill -9, {user}: {admitted} admissions seen, {lost} answers lost with the \
             node, worst {worst} in T (N = {N}); {ledger}: {ledger_seen} admissions seen, \
             {recorded} recorded in Redis, {ledger_lost} answers lost with the node; {failed} \
             store timeouts (all keys), {refused} connects refused (all keys)"
        );
        assert!(admitted >= 2 * N as u64, "{user}: only {admitted} admitted");
        assert!(worst <= N, "{user}: {worst} admissions within T");
        assert!(ledger_seen > 0, "{ledger}: nothing admitted");
        assert!(
            ledger_seen <= recorded && recorded <= ledger_seen + ledger_lost + failed,
            "{ledger}: {ledger_seen} seen, {recorded} recorded, {ledger_lost} lost, {failed} \
             failed"
        );
    }
}
