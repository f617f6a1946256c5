//! Fault injection on the Redis store: a real `redis-server` on loopback, `Limiter`s on their
//! own `RedisStore`s standing for separate `drl` nodes, a bounded load (one check at a time per
//! node, so every answer is known to come from Redis, from the deny cache or from `on_error`),
//! and one fault at a time:
//!
//! - **hung**: SIGSTOP of the Redis mid-load, SIGCONT 1.5 s later, with nodes of each
//!   `on_error` policy (`deny`, `allow`, `local`) on it at once;
//! - **restarted with its data**: `kill -9` mid-load and a restart on the same port with
//!   `appendonly yes` and `appendfsync always`, the setting under which Redis loses nothing it
//!   answered (its script cache empty: the first EVALSHA meets `NOSCRIPT`);
//! - **slow**: a delaying TCP proxy (written here) between the nodes and Redis, first below the
//!   timeout, then above it, then gone.
//!
//! Each run is checked against
//! - the oracle, P: never more than N admissions of one key in any interval of length T, from the
//!   [sent, received] interval of every admission the clients saw;
//! - the timeout: every check answered within the store timeout plus scheduling slack, and many
//!   answered while the fault lasts (nothing hangs);
//! - the `on_error` policy: its answers are the policy's;
//! - the store's own record: the `sliding_log` ring counts every admission it ever made, so per
//!   key `seen ≤ recorded ≤ seen + failed`, where `seen` counts the admissions Redis answered and
//!   `failed` the checks that went to Redis and got no answer in time (their script may still
//!   have run, late: counted but never admitted; nothing runs twice).
//!
//! Times to recover are printed (`--nocapture`); docs/faults.md has the figures. The tests take
//! one lock, so they run one after another (each measures times).

use drl_testkit::redis as support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use drl_core::{Algorithm, Limiter, LimiterError, Policy, Rules};
use drl_redis::{Consistency, OnError, RedisConfig, RedisStore};
use support::Redis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::block_in_place;

/// The limit of every key here: N admissions per window (`sliding_log`).
const N: u32 = 20;
/// Scheduling slack over the store timeout for "answered within the timeout", on a 2-core
/// machine whose load average reaches 8.
const SLACK: Duration = Duration::from_millis(400);
/// Pause between one node's checks.
const PACE: Duration = Duration::from_millis(3);

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `test` on its own runtime, one test at a time.
fn serial(test: impl Future<Output = ()>) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test);
}

/// One `drl` node: a limiter on its own store (own connection, prober and deny cache), and the
/// ledger: a limiter on the same store with a limit never reached (so never answered by the deny
/// cache, and its keys never expire during a test), whose key counts every check Redis ran.
struct Node {
    limiter: Limiter<RedisStore>,
    ledger: Limiter<RedisStore>,
    /// The user it checks; the nodes of one group share it, so they share one counter.
    user: String,
    /// The ledger's user, shared by the nodes of one group.
    ledger_user: String,
}

fn node(url: &str, on_error: OnError, timeout: Duration, window: Duration, group: usize) -> Node {
    let mut config = RedisConfig::new(vec![url.to_owned()]);
    config.consistency = Consistency::Fast;
    config.on_error = on_error;
    config.timeout = timeout;
    let store = RedisStore::new(&config).expect("store");
    let policy = Policy::per(u64::from(N), window, Algorithm::SlidingLog).expect("policy");
    let never = Policy::per(10_000, Duration::from_secs(3_600), Algorithm::SlidingLog);
    Node {
        limiter: Limiter::builder(Rules::only_default(policy)).build_with_store(store.clone()),
        ledger: Limiter::builder(Rules::only_default(never.expect("policy")))
            .build_with_store(store),
        user: format!("user-{group}"),
        ledger_user: format!("ledger-{group}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Redis,
    DenyCache,
    OnError,
}

/// One answered check.
#[derive(Debug, Clone, Copy)]
struct Answer {
    node: usize,
    sent: Instant,
    received: Instant,
    allowed: bool,
    source: Source,
    /// It went to Redis and got no answer in time (its script may have run, or run later).
    failed: bool,
}

impl Answer {
    fn took(&self) -> Duration {
        self.received - self.sent
    }
}

/// One check, and where its answer came from (the node runs one check at a time).
async fn check(limiter: &Limiter<RedisStore>, index: usize, user: &str) -> Answer {
    let store = limiter.store();
    let before = store.stats();
    let sent = Instant::now();
    let decision = limiter.check_async(user, "/faults", 1).await;
    let received = Instant::now();
    let after = store.stats();
    let source = if after.fallbacks > before.fallbacks {
        Source::OnError
    } else if after.deny_cache_hits > before.deny_cache_hits {
        Source::DenyCache
    } else {
        Source::Redis
    };
    // `on_error: deny` answers the store's error, which admits nothing; nothing else errs.
    let allowed = match decision {
        Ok(d) => d.allowed,
        Err(LimiterError::Store(_)) if source == Source::OnError => false,
        Err(e) => panic!("check: {e} ({source:?})"),
    };
    Answer {
        node: index,
        sent,
        received,
        allowed,
        source,
        failed: after.errors > before.errors,
    }
}

/// Polls `done` every 10 ms until it holds; fails after `within`.
async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Until each node has had an answer from Redis (connection made, scripts loaded), on a key of
/// its own.
async fn warm_up(nodes: &[Node]) {
    for (i, node) in nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while check(&node.limiter, i, &format!("warm-{i}")).await.source != Source::Redis {
            assert!(Instant::now() < deadline, "node {i} never reached Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The load: one task per node checking its user every [`PACE`] until stopped, and every
/// [`PROBE_EVERY`]th round a probe: a check of the ledger, which only Redis (or `on_error`) can
/// answer, unlike the user's key whose denials the deny cache answers while Redis is away. The
/// probes time the recovery and are counted in the ledger's key.
struct Load {
    stop: Arc<AtomicBool>,
    origin: Instant,
    /// Per node: the latest send time (µs since `origin`, plus 1) of a probe Redis answered.
    redis_sent: Arc<Vec<AtomicU64>>,
    tasks: tokio::task::JoinSet<(Vec<Answer>, Vec<Answer>)>,
}

/// Rounds of the load per probe.
const PROBE_EVERY: usize = 4;

impl Load {
    fn start(nodes: &Arc<Vec<Node>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let redis_sent: Arc<Vec<AtomicU64>> =
            Arc::new(nodes.iter().map(|_| AtomicU64::new(0)).collect());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..nodes.len() {
            let (nodes, stop, redis_sent) = (
                Arc::clone(nodes),
                Arc::clone(&stop),
                Arc::clone(&redis_sent),
            );
            tasks.spawn(async move {
                let node = &nodes[i];
                let (mut answers, mut probes) = (Vec::new(), Vec::new());
                for round in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    answers.push(check(&node.limiter, i, &node.user).await);
                    if round % PROBE_EVERY == 0 {
                        let probe = check(&node.ledger, i, &node.ledger_user).await;
                        if probe.source == Source::Redis {
                            let at = (probe.sent - origin).as_micros() as u64 + 1;
                            redis_sent[i].fetch_max(at, Ordering::Relaxed);
                        }
                        probes.push(probe);
                    }
                    tokio::time::sleep(PACE).await;
                }
                (answers, probes)
            });
        }
        Self {
            stop,
            origin,
            redis_sent,
            tasks,
        }
    }

    /// Waits until every node has had an answer from Redis to a probe sent after `since`.
    async fn wait_recovered(&self, since: Instant, within: Duration) {
        let since = (since - self.origin).as_micros() as u64 + 1;
        let sent = Arc::clone(&self.redis_sent);
        wait_for("every node answered by Redis again", within, || {
            sent.iter().all(|s| s.load(Ordering::Relaxed) > since)
        })
        .await;
    }

    /// Stops the load: the answers to the users' checks, and to the probes.
    async fn stop(mut self) -> (Vec<Answer>, Vec<Answer>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut all, mut all_probes) = (Vec::new(), Vec::new());
        while let Some(done) = self.tasks.join_next().await {
            let (answers, probes) = done.expect("load task");
            all.extend(answers);
            all_probes.extend(probes);
        }
        (all, all_probes)
    }
}

/// Per node: how long after `since` its first answer from Redis to a probe sent after `since`
/// came.
fn recovery_times(probes: &[Answer], nodes: usize, since: Instant) -> Vec<Duration> {
    (0..nodes)
        .map(|i| {
            probes
                .iter()
                .filter(|a| a.node == i && a.sent >= since && a.source == Source::Redis)
                .map(|a| a.received - since)
                .min()
                .expect("recovered (waited for)")
        })
        .collect()
}

/// P's oracle over the admissions among `answers` that `pick` selects.
fn worst(answers: &[Answer], window: Duration, pick: impl Fn(&Answer) -> bool) -> usize {
    let admissions = answers
        .iter()
        .filter(|a| a.allowed && pick(a))
        .map(|a| (a.sent, a.received))
        .collect();
    support::worst_window(admissions, window)
}

/// The store's record against the clients': `seen ≤ recorded ≤ seen + failed` for the ledger
/// of the nodes in `group` (`probes` are its checks). Returns (seen, recorded, failed).
fn check_record(
    redis: &Redis,
    nodes: &[Node],
    probes: &[Answer],
    group: &[usize],
) -> (u64, u64, u64) {
    let user = &nodes[group[0]].ledger_user;
    let mine: Vec<&Answer> = probes.iter().filter(|a| group.contains(&a.node)).collect();
    let seen = mine
        .iter()
        .filter(|a| a.allowed && a.source == Source::Redis)
        .count() as u64;
    let failed = mine.iter().filter(|a| a.failed).count() as u64;
    let recorded = block_in_place(|| support::admissions_recorded(redis, user));
    assert!(
        seen <= recorded && recorded <= seen + failed,
        "{user}: {seen} admissions answered by Redis, {recorded} recorded, {failed} failed checks"
    );
    (seen, recorded, failed)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn max_ms(times: &[Duration]) -> u128 {
    times.iter().max().map_or(0, |d| d.as_millis())
}

#[test]
fn a_hung_redis_is_answered_by_on_error_within_the_timeout_and_recovers() {
    serial(async {
        let timeout = Duration::from_millis(200);
        let window = Duration::from_secs(1);
        // Longer than MAX_DOWN (1 s): a check then tries the hung store again (and times out).
        let hang = Duration::from_millis(1_500);
        let redis = Redis::start();
        let policies = [OnError::Deny, OnError::Allow, OnError::Local];
        let per_group = 2;
        let nodes: Arc<Vec<Node>> = Arc::new(
            policies
                .iter()
                .enumerate()
                .flat_map(|(g, &p)| {
                    let url = redis.url();
                    (0..per_group).map(move |_| node(&url, p, timeout, window, g))
                })
                .collect(),
        );
        warm_up(&nodes).await;
        let load = Load::start(&nodes);
        tokio::time::sleep(Duration::from_millis(800)).await;
        block_in_place(|| redis.pause());
        let paused = Instant::now();
        tokio::time::sleep(hang).await;
        block_in_place(|| redis.resume());
        let resumed = Instant::now();
        load.wait_recovered(resumed, Duration::from_secs(10)).await;
        // A full window of normal service after recovery, under the oracle too.
        tokio::time::sleep(window).await;
        let (answers, probes) = load.stop().await;

        let slowest = answers
            .iter()
            .chain(&probes)
            .map(Answer::took)
            .max()
            .unwrap_or_default();
        assert!(
            slowest <= timeout + SLACK,
            "a check took {slowest:?} (timeout {timeout:?})"
        );
        let recovered = recovery_times(&probes, nodes.len(), resumed);
        for (g, &policy) in policies.iter().enumerate() {
            let group: Vec<usize> = (g * per_group..(g + 1) * per_group).collect();
            let mine = |a: &Answer| group.contains(&a.node);
            let during = |a: &Answer| a.sent >= paused && a.received <= resumed;
            assert!(
                !answers
                    .iter()
                    .any(|a| mine(a) && during(a) && a.source == Source::Redis),
                "{policy:?}: Redis answered while stopped"
            );
            for &i in &group {
                let fallbacks = answers
                    .iter()
                    .filter(|a| a.node == i && during(a) && a.source == Source::OnError)
                    .count();
                assert!(
                    fallbacks >= 10,
                    "{policy:?} node {i}: {fallbacks} on_error answers in {hang:?}"
                );
            }
            let on_error = |a: &Answer| mine(a) && a.source == Source::OnError;
            let fallback_admitted = answers.iter().filter(|a| on_error(a) && a.allowed).count();
            let fallback_denied = answers.iter().filter(|a| on_error(a) && !a.allowed).count();
            let by_redis = worst(&answers, window, |a| mine(a) && a.source != Source::OnError);
            let all = worst(&answers, window, mine);
            match policy {
                OnError::Deny => {
                    assert_eq!(fallback_admitted, 0, "deny admitted");
                    assert!(all <= N as usize, "deny: {all} admissions within T");
                }
                OnError::Allow => {
                    assert_eq!(fallback_denied, 0, "allow denied");
                    assert!(by_redis <= N as usize, "allow: Redis admitted {by_redis}");
                }
                OnError::Local => {
                    // Each node's own memory store limits its share; Redis its own.
                    for &i in &group {
                        let local = worst(&answers, window, |a| {
                            a.node == i && a.source == Source::OnError
                        });
                        assert!(
                            (1..=N as usize).contains(&local),
                            "local node {i}: {local} admissions within T"
                        );
                    }
                    assert!(by_redis <= N as usize, "local: Redis admitted {by_redis}");
                    assert!(
                        all <= N as usize * (per_group + 1),
                        "local: {all} admissions within T"
                    );
                }
            }
            let (seen, recorded, failed) = check_record(&redis, &nodes, &probes, &group);
            let hang_slowest = answers
                .iter()
                .filter(|a| mine(a) && during(a))
                .map(Answer::took)
                .max()
                .unwrap_or_default();
            println!(
                "hung {hang:?} (timeout {timeout:?}), on_error {policy:?}: {} on_error answers \
                 ({fallback_admitted} admitted), slowest during the hang {} ms; recovered {} ms \
                 after SIGCONT (slowest node); worst in T: {all} all, {by_redis} by Redis \
                 (N = {N}); Redis admitted {seen} seen, {recorded} recorded, {failed} failed checks",
                fallback_admitted + fallback_denied,
                ms(hang_slowest),
                max_ms(&recovered[g * per_group..(g + 1) * per_group]),
            );
        }
    });
}

#[test]
fn a_restarted_redis_keeps_its_counters_and_nodes_reconnect() {
    serial(async {
        let timeout = Duration::from_millis(200);
        // Longer than the outage: had the counters been lost, the restarted Redis would admit
        // N more inside one window and the oracle would see it.
        let window = Duration::from_secs(2);
        // `appendfsync always` is the setting under which Redis promises that a reply leaves only
        // after its write reached the append-only file (written and fdatasync'ed in the same
        // event-loop turn, before the replies are sent), so a killed process loses nothing it
        // answered. `everysec` makes no such promise even for kill -9: while a background fsync
        // is still running, Redis holds its writes back for up to 2 s yet still sends the
        // replies (`flushAppendOnlyFile`), and a kill then loses answered admissions.
        let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
        let nodes: Arc<Vec<Node>> = Arc::new(
            (0..3)
                .map(|_| node(&redis.url(), OnError::Deny, timeout, window, 0))
                .collect(),
        );
        warm_up(&nodes).await;
        let load = Load::start(&nodes);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let killed = Instant::now();
        block_in_place(|| redis.restart());
        let ready = Instant::now();
        // Read at once: the user's key expires a window after its newest admission.
        let recorded_at_restart = block_in_place(|| {
            [
                support::admissions_recorded(&redis, "user-0"),
                support::admissions_recorded(&redis, "ledger-0"),
            ]
        });
        let read = Instant::now();
        load.wait_recovered(ready, Duration::from_secs(10)).await;
        tokio::time::sleep(window).await;
        let (answers, probes) = load.stop().await;

        let admitted_before = |answers: &[Answer]| {
            answers
                .iter()
                .filter(|a| a.allowed && a.source == Source::Redis && a.received <= killed)
                .count() as u64
        };
        let seen_before = [admitted_before(&answers), admitted_before(&probes)];
        // The user's key may have expired by the time it was read if the restart took nearly
        // a window (a loaded machine): its count is then only asserted if the read came before
        // the newest admission's expiry could have passed. The ledger never expires.
        let newest_user_admission = answers
            .iter()
            .filter(|a| a.allowed && a.source == Source::Redis && a.received <= killed)
            .map(|a| a.sent)
            .max();
        let user_alive = newest_user_admission.is_some_and(|sent| read < sent + window);
        for (k, key) in ["user", "ledger"].iter().enumerate() {
            assert!(
                seen_before[k] > 0,
                "{key}: nothing admitted before the kill"
            );
            if k == 0 && !user_alive {
                continue;
            }
            assert!(
                recorded_at_restart[k] >= seen_before[k],
                "{key}: counters lost: {} admitted (and answered) before the kill, {} recorded \
                 after the restart",
                seen_before[k],
                recorded_at_restart[k]
            );
        }
        let slowest = answers
            .iter()
            .chain(&probes)
            .map(Answer::took)
            .max()
            .unwrap_or_default();
        assert!(slowest <= timeout + SLACK, "a check took {slowest:?}");
        assert!(
            answers
                .iter()
                .all(|a| a.source != Source::OnError || !a.allowed),
            "on_error: deny admitted"
        );
        let all = worst(&answers, window, |_| true);
        assert!(all <= N as usize, "{all} admissions within T");
        // The restarted Redis had no scripts: the nodes met NOSCRIPT and loaded them.
        let noscript = block_in_place(|| support::error_replies(&redis, "NOSCRIPT"));
        let loads = block_in_place(|| support::command_calls(&redis, "script|load"));
        assert!(
            noscript >= 1 && loads >= 1,
            "NOSCRIPT {noscript}, SCRIPT LOAD {loads}"
        );
        let group: Vec<usize> = (0..nodes.len()).collect();
        let (seen, recorded, failed) = check_record(&redis, &nodes, &probes, &group);
        let reconnected = recovery_times(&probes, nodes.len(), ready);
        println!(
            "restart (kill -9, appendfsync always): down {} ms until the new process answered; nodes \
             answered by Redis again {} ms later (slowest of {}); admissions (user, ledger) \
             before the kill {seen_before:?}, recorded at restart {recorded_at_restart:?} (user's read in time: {user_alive}); NOSCRIPT {noscript}, SCRIPT LOAD \
             {loads}; worst in T: {all} (N = {N}); Redis admitted {seen} seen, {recorded} \
             recorded, {failed} failed checks",
            ms(ready - killed),
            max_ms(&reconnected),
            nodes.len(),
        );
    });
}

/// A TCP proxy on loopback that holds every chunk, each way, for `delay` (changeable while it
/// runs) before passing it on, in order. Stops with its runtime.
struct SlowProxy {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
}

impl SlowProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, Arc::clone(&delay)));
                tokio::spawn(forward(server_read, client_write, Arc::clone(&delay)));
            }
        });
        Self { addr, delay_ms }
    }

    fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, each chunk sent `delay` after it was read; order kept (a later chunk
/// with a shorter delay waits for the earlier ones).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0_u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let at = tokio::time::Instant::now()
                        + Duration::from_millis(delay.load(Ordering::Relaxed));
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[test]
fn a_slow_redis_is_answered_by_redis_below_the_timeout_and_by_on_error_above() {
    serial(async {
        let timeout = Duration::from_millis(500);
        let window = Duration::from_secs(1);
        let (below, above) = (Duration::from_millis(50), Duration::from_millis(700));
        let redis = Redis::start();
        let proxy = SlowProxy::start(([127, 0, 0, 1], redis.port).into()).await;
        let url = format!("redis://{}", proxy.addr);
        let nodes: Arc<Vec<Node>> = Arc::new(
            (0..3)
                .map(|_| node(&url, OnError::Deny, timeout, window, 0))
                .collect(),
        );
        warm_up(&nodes).await;
        let load = Load::start(&nodes);
        // Below the timeout: each way `below`, so a round trip of at least 2 × below.
        proxy.set_delay(below);
        let slow_start = Instant::now();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // Above: a round trip of 2 × above > timeout.
        proxy.set_delay(above);
        let over_start = Instant::now();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        proxy.set_delay(Duration::ZERO);
        let fixed = Instant::now();
        load.wait_recovered(fixed, Duration::from_secs(10)).await;
        tokio::time::sleep(window).await;
        let (answers, probes) = load.stop().await;

        let slow = |a: &Answer| a.sent >= slow_start && a.received <= over_start;
        let over = |a: &Answer| a.sent >= over_start && a.received <= fixed;
        let slow_answers: Vec<&Answer> =
            answers.iter().chain(&probes).filter(|a| slow(a)).collect();
        assert!(
            slow_answers.iter().all(|a| a.source != Source::OnError),
            "below the timeout: {} of {} answered by on_error",
            slow_answers
                .iter()
                .filter(|a| a.source == Source::OnError)
                .count(),
            slow_answers.len()
        );
        let slow_redis: Vec<Duration> = slow_answers
            .iter()
            .filter(|a| a.source == Source::Redis)
            .map(|a| a.took())
            .collect();
        assert!(
            !slow_redis.is_empty(),
            "Redis answered nothing below the timeout"
        );
        let fastest = slow_redis.iter().min().copied().unwrap_or_default();
        assert!(fastest >= 2 * below, "the proxy did not delay: {fastest:?}");
        for i in 0..nodes.len() {
            let fallbacks = answers
                .iter()
                .filter(|a| a.node == i && over(a) && a.source == Source::OnError)
                .count();
            assert!(
                fallbacks >= 10,
                "node {i}: {fallbacks} on_error answers above the timeout"
            );
        }
        assert!(
            !answers
                .iter()
                .chain(&probes)
                .any(|a| over(a) && (a.source == Source::Redis || a.allowed)),
            "above the timeout: answered by Redis, or admitted under on_error: deny"
        );
        let slowest = answers
            .iter()
            .chain(&probes)
            .map(Answer::took)
            .max()
            .unwrap_or_default();
        assert!(slowest <= timeout + SLACK, "a check took {slowest:?}");
        let all = worst(&answers, window, |_| true);
        assert!(all <= N as usize, "{all} admissions within T");
        let group: Vec<usize> = (0..nodes.len()).collect();
        let (seen, recorded, failed) = check_record(&redis, &nodes, &probes, &group);
        let recovered = recovery_times(&probes, nodes.len(), fixed);
        let over_slowest = answers
            .iter()
            .chain(&probes)
            .filter(|a| over(a))
            .map(Answer::took)
            .max()
            .unwrap_or_default();
        println!(
            "slow Redis (timeout {timeout:?}): +{below:?} each way: {} checks by Redis, none by \
             on_error, {}–{} ms; +{above:?} each way: slowest answer {} ms, all by on_error \
             (deny) or the deny cache; delay removed: answered by Redis again {} ms later \
             (slowest node); worst in T: {all} (N = {N}); Redis admitted {seen} seen, \
             {recorded} recorded (late scripts of timed-out checks included), {failed} failed \
             checks",
            slow_redis.len(),
            ms(fastest),
            max_ms(&slow_redis),
            ms(over_slowest),
            max_ms(&recovered),
        );
    });
}
