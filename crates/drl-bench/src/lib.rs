//! `drl-bench`, the `drl bench` command: a load generator for a `drl` node — the Envoy gRPC API, the native batch gRPC
//! API, or HTTP `POST /v1/check` — and its report: decisions/s, requests/s,
//! allowed/denied/errors and latency percentiles from an HDR histogram.
//!
//! - **Closed loop** (no `rate`): `concurrency` workers each send a request, wait for the answer,
//!   and send the next, as fast as the server lets them. This finds the throughput; its
//!   latencies are those of a server kept exactly busy.
//! - **Open loop** (`rate` R): request `i` is due at `i / R` s, released by a [`Pacer`] thread;
//!   up to `concurrency` are in flight. Latency is measured from the time a request was due, so
//!   when the server (or the generator) falls behind, the wait counts
//!   (see [`schedule`](self::schedule)).
//! - Keys: uniform over K, Zipf-skewed over K, one hot key, or the K keys in order
//!   ([`keys`]), from `first_key` on; `hits` per check; optionally rolling: the K keys slide
//!   with the clock, so old keys fall out of use ([`Roll`], for soak tests of expiry).
//! - A run ends after a duration or a number of requests. An open loop of a fixed duration
//!   sends nothing after the duration plus the timeout: what is still due then counts as
//!   errors, so a run against a server far behind the rate stays bounded in time.
//!
//! A request of the native API carries `batch` checks; the others one. Each check gets a
//! decision or an error, so allowed + denied + errors = decisions = requests × batch.
//! Latencies are of requests the server answered (a refusal such as HTTP 400 included); calls
//! that failed in transport or timed out count as errors only.

pub mod keys;
pub mod schedule;
pub mod target;

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::Semaphore;

pub use keys::KeyDistribution;
use keys::KeyPicker;
pub use keys::Roll;
pub use schedule::{Pacer, Schedule};
pub use target::{Caller, Callers, Outcome, Target};

use drl_proto::MAX_BATCH;
use drl_proto::json::MAX_HITS;

/// Most workers of one run.
pub const MAX_CONCURRENCY: usize = 100_000;
/// Highest open-loop rate, far above what one generator can send; it keeps the pacer's permit
/// counts within what the semaphore holds.
pub const MAX_RATE: u64 = 100_000_000;
/// Most gRPC connections of one run.
pub const MAX_CONNECTIONS: usize = 1_000;
/// gRPC connections when none are asked for: enough that both cores of a small box can work on
/// the client's side of the connections at once (see docs/benchmarks.md).
pub const DEFAULT_CONNECTIONS: usize = 2;

/// Latencies are recorded in nanoseconds from 1 µs to 1 h, to 3 significant digits.
const LATENCY_LOW_NS: u64 = 1_000;
const LATENCY_HIGH_NS: u64 = 3_600 * 1_000_000_000;
const LATENCY_SIGFIG: u8 = 3;

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// After this long (requests in flight then are still answered and counted).
    Duration(Duration),
    /// After this many requests.
    Requests(u64),
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    pub target: Target,
    /// The node's URL; `None` for the target's default address.
    pub server: Option<String>,
    /// Workers: requests in flight at most.
    pub concurrency: usize,
    /// gRPC connections the workers share; `None` for [`DEFAULT_CONNECTIONS`]. HTTP workers
    /// have one connection each.
    pub connections: Option<usize>,
    /// Open loop at this many requests per second; `None` for a closed loop.
    pub rate: Option<u64>,
    /// Checks per request (native API only).
    pub batch: usize,
    /// How many distinct keys.
    pub keys: u64,
    pub distribution: KeyDistribution,
    /// Roll the key set: the keys in use slide by `keys` every this long ([`Roll`]).
    pub roll: Option<Duration>,
    /// Index of the first key: the run asks about keys `first_key..first_key + keys`.
    pub first_key: u64,
    /// Hits per check.
    pub hits: u32,
    pub length: Length,
    /// A request without an answer after this long is an error.
    pub timeout: Duration,
    /// Seeds the key choice of every worker (worker w uses seed + w).
    pub seed: u64,
    /// The domain of the Envoy requests ([`target::ENVOY_DOMAIN`] by default: the node's
    /// native rules decide them).
    pub domain: String,
    /// Count the admissions in any interval this long ([`Admissions`]): the over-admission
    /// check of a limit of N per this window.
    pub admission_window: Option<Duration>,
}

impl BenchOptions {
    /// 10 s of a closed loop of 64 workers on `target`, 10 000 uniform keys, 1 hit, batch 1.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            server: None,
            concurrency: 64,
            connections: None,
            rate: None,
            batch: 1,
            keys: 10_000,
            distribution: KeyDistribution::Uniform,
            roll: None,
            first_key: 0,
            hits: 1,
            length: Length::Duration(Duration::from_secs(10)),
            timeout: Duration::from_secs(5),
            seed: 1,
            domain: target::ENVOY_DOMAIN.to_owned(),
            admission_window: None,
        }
    }

    /// The server URL the run asks.
    pub fn server(&self) -> &str {
        self.server
            .as_deref()
            .unwrap_or(self.target.default_server())
    }

    /// gRPC connections of the run (0 for HTTP, whose workers connect on their own).
    pub fn connections(&self) -> usize {
        match self.target {
            Target::Http => 0,
            _ => self.connections.unwrap_or(DEFAULT_CONNECTIONS),
        }
    }

    /// Every option in range, or what is wrong, in the words of the command line.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |message: String| Err(BenchError::Invalid(message));
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return invalid(format!(
                "--concurrency must be from 1 to {MAX_CONCURRENCY}, not {}",
                self.concurrency
            ));
        }
        match (self.target, self.connections) {
            (Target::Http, Some(_)) => {
                return invalid(
                    "--connections is for the gRPC targets; HTTP workers have one connection each \
                     (set --concurrency)"
                        .into(),
                );
            }
            (_, Some(c)) if !(1..=MAX_CONNECTIONS).contains(&c) => {
                return invalid(format!(
                    "--connections must be from 1 to {MAX_CONNECTIONS}, not {c}"
                ));
            }
            _ => {}
        }
        if let Some(rate) = self.rate
            && !(1..=MAX_RATE).contains(&rate)
        {
            return invalid(format!(
                "--rate must be from 1 to {MAX_RATE} requests per second, not {rate}"
            ));
        }
        if self.batch != 1 && self.target != Target::Native {
            return invalid(format!(
                "--batch is for --target native; {} sends one check per request",
                self.target.name()
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return invalid(format!(
                "--batch must be from 1 to {MAX_BATCH}, not {}",
                self.batch
            ));
        }
        if self.keys == 0 {
            return invalid("--keys must be at least 1".into());
        }
        if self.first_key.checked_add(self.keys).is_none() {
            return invalid(format!(
                "--first-key {} + --keys {} is past the last key index {}",
                self.first_key,
                self.keys,
                u64::MAX
            ));
        }
        if let KeyDistribution::Zipf(s) = self.distribution
            && !(s.is_finite() && s > 0.0)
        {
            return invalid(format!(
                "--zipf must be a positive exponent such as 1.1, not {s}"
            ));
        }
        if self.roll.is_some_and(|r| r.is_zero()) {
            return invalid("--roll must be longer than 0".into());
        }
        if self.hits > MAX_HITS {
            return invalid(format!(
                "--hits must be from 0 to {MAX_HITS}, not {}",
                self.hits
            ));
        }
        match self.length {
            Length::Duration(d) if d.is_zero() => {
                return invalid("--duration must be longer than 0".into());
            }
            Length::Requests(0) => return invalid("--requests must be at least 1".into()),
            _ => {}
        }
        if self.timeout.is_zero() {
            return invalid("--timeout must be longer than 0".into());
        }
        if self.domain != target::ENVOY_DOMAIN && self.target != Target::Envoy {
            return invalid(format!(
                "--domain is for --target envoy; {} has no domain",
                self.target.name()
            ));
        }
        if self.domain.is_empty() {
            return invalid("--domain must not be empty".into());
        }
        if self.admission_window.is_some_and(|w| w.is_zero()) {
            return invalid("--admission-window must be longer than 0".into());
        }
        Ok(())
    }
}

/// A run that could not take place.
#[derive(Debug, Error)]
pub enum BenchError {
    /// An option out of range.
    #[error("{0}")]
    Invalid(String),
    /// The server could not be reached before the run.
    #[error("{0}")]
    Connect(String),
    /// The pacer thread could not be started.
    #[error("cannot start the pacer thread: {0}")]
    Pacer(#[source] std::io::Error),
    /// A worker stopped abnormally (a bug).
    #[error("a worker failed: {0}")]
    Worker(String),
}

/// Whether to show the live progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Quiet,
    /// Once a second on stderr (for a terminal: the line is redrawn in place).
    Stderr,
}

/// Runs the benchmark `options` describe against a live server.
pub async fn run(options: &BenchOptions, progress: Progress) -> Result<Report, BenchError> {
    options.validate()?;
    let callers = Callers::connect(
        options.target,
        options.server(),
        options.concurrency,
        options.connections(),
        &options.domain,
    )
    .await?;
    match callers {
        Callers::Envoy(callers) => drive(options, callers, progress).await,
        Callers::Native(callers) => drive(options, callers, progress).await,
        Callers::Http(callers) => drive(options, callers, progress).await,
    }
}

/// What the workers of one run share.
#[derive(Debug)]
struct Plan {
    start: Instant,
    /// Requests of the run, if counted (`--requests`, or any open-loop run).
    total: Option<u64>,
    /// End of a closed loop of a fixed duration.
    deadline: Option<Instant>,
    /// Open loop of a fixed duration: requests still unsent at this time (the duration plus
    /// the timeout) are not sent but counted as errors, so a server far behind the rate cannot
    /// make the run last for as long as it takes to drain the backlog.
    send_by: Option<Instant>,
    /// Open loop: when each request is due, and the permits the pacer releases.
    schedule: Option<(Schedule, Arc<Semaphore>)>,
    /// The next request's index.
    tickets: AtomicU64,
    batch: usize,
    /// Where the rolling key set is now, if it rolls.
    roll: Option<Roll>,
    first_key: u64,
    hits: u32,
    timeout: Duration,
    /// Record when each admitted request was sent and answered.
    admissions: bool,
}

/// Runs `callers` (one per worker) as `options` say, and reports.
async fn drive<C: Caller>(
    options: &BenchOptions,
    callers: Vec<C>,
    progress: Progress,
) -> Result<Report, BenchError> {
    let workers = callers.len();
    let cpu_before = process_cpu();
    let start = Instant::now();
    let schedule = options.rate.map(Schedule::new);
    let total = match (options.length, schedule) {
        (Length::Requests(n), _) => Some(n),
        (Length::Duration(d), Some(schedule)) => Some(schedule.count_within(d)),
        (Length::Duration(_), None) => None,
    };
    let deadline = match options.length {
        Length::Duration(d) if schedule.is_none() => Some(start + d),
        _ => None,
    };
    let send_by = match options.length {
        Length::Duration(d) if schedule.is_some() => Some(start + d + options.timeout),
        _ => None,
    };
    let permits = schedule.map(|_| Arc::new(Semaphore::new(0)));
    let pacer = match (schedule, &permits) {
        (Some(schedule), Some(permits)) => Some(
            Pacer::start(
                schedule,
                start,
                total.unwrap_or(0),
                workers,
                Arc::clone(permits),
            )
            .map_err(BenchError::Pacer)?,
        ),
        _ => None,
    };
    let plan = Arc::new(Plan {
        start,
        total,
        deadline,
        send_by,
        schedule: schedule.zip(permits),
        tickets: AtomicU64::new(0),
        batch: options.batch,
        roll: options.roll.map(|period| Roll::new(options.keys, period)),
        first_key: options.first_key,
        hits: options.hits,
        timeout: options.timeout,
        admissions: options.admission_window.is_some(),
    });

    let stats: Vec<Arc<Mutex<WorkerStats>>> = (0..workers)
        .map(|_| Arc::new(Mutex::new(WorkerStats::new())))
        .collect();
    let handles: Vec<_> = callers
        .into_iter()
        .zip(&stats)
        .enumerate()
        .map(|(w, (caller, stats))| {
            let picker = KeyPicker::new(
                options.keys,
                options.distribution,
                options.seed.wrapping_add(w as u64),
            );
            tokio::spawn(worker(caller, Arc::clone(&plan), Arc::clone(stats), picker))
        })
        .collect();
    let reporter = (progress == Progress::Stderr)
        .then(|| tokio::spawn(report_progress(start, stats.clone(), options.batch)));

    let mut failure = None;
    for handle in handles {
        if let Err(e) = handle.await {
            failure.get_or_insert(e.to_string());
        }
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    if let Some(reporter) = reporter {
        reporter.abort();
        let _ = reporter.await;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "\r\x1b[2K");
        let _ = stderr.flush();
    }
    if let Some(pacer) = pacer {
        pacer.finish();
    }
    if let Some(failure) = failure {
        return Err(BenchError::Worker(failure));
    }
    let mut total = WorkerStats::new();
    for stats in &stats {
        total.add(&stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
    Ok(Report::new(options, elapsed, cpu, &total))
}

/// This process's CPU time so far (user + system, all threads), from `/proc/self/stat`; `None`
/// where there is no such file.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_of_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in `USER_HZ` ticks: 100 a
/// second on every Linux platform (the kernel ABI's, whatever the kernel's tick rate).
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses:
    // count from the last ')', after which field 3 comes first.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(14 - 3);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    let (utime, stime) = (ticks()?, ticks()?);
    Some(Duration::from_millis((utime + stime) * 10))
}

/// One worker: takes the next request, sends it, records its outcome, until the run ends.
async fn worker<C: Caller>(
    mut caller: C,
    plan: Arc<Plan>,
    stats: Arc<Mutex<WorkerStats>>,
    mut picker: KeyPicker,
) {
    let mut keys = Vec::with_capacity(plan.batch);
    loop {
        if let Some((_, permits)) = &plan.schedule {
            match permits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        let ticket = plan.tickets.fetch_add(1, Ordering::Relaxed);
        if plan.total.is_some_and(|total| ticket >= total) {
            break;
        }
        // The latency clock starts when the request is due: now in a closed loop, at its
        // scheduled time in an open loop (which has passed: the pacer released it).
        let due = match &plan.schedule {
            Some((schedule, _)) => plan.start + schedule.due_at(ticket),
            None => {
                let now = Instant::now();
                if plan.deadline.is_some_and(|deadline| now >= deadline) {
                    break;
                }
                now
            }
        };
        if plan.send_by.is_some_and(|send_by| Instant::now() > send_by) {
            let unsent = Outcome::failed(plan.batch, UNSENT.to_owned());
            stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(&unsent, Duration::ZERO);
            continue;
        }
        keys.clear();
        picker.fill(ticket, plan.batch, &mut keys);
        let offset = plan
            .roll
            .map_or(0, |roll| roll.offset_now())
            .wrapping_add(plan.first_key);
        for key in &mut keys {
            *key = key.wrapping_add(offset);
        }
        let sent = Instant::now();
        let outcome = match tokio::time::timeout(plan.timeout, caller.call(&keys, plan.hits)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::failed(keys.len(), format!("no answer within {:?}", plan.timeout)),
        };
        let answered = Instant::now();
        let latency = answered - due;
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.record(&outcome, latency);
        if plan.admissions && outcome.allowed > 0 {
            let at = |t: Instant| u64::try_from((t - plan.start).as_nanos()).unwrap_or(u64::MAX);
            stats.admit(at(sent), at(answered), outcome.allowed);
        }
    }
}

/// The error of an open-loop request that was still waiting for a worker when the run ended.
const UNSENT: &str = "due but not sent by the end of the run (duration + timeout): the server \
                      fell behind the rate";

/// Prints a progress line once a second until aborted.
async fn report_progress(start: Instant, stats: Vec<Arc<Mutex<WorkerStats>>>, batch: usize) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last_requests = 0;
    let mut last = start;
    loop {
        ticks.tick().await;
        let mut sum = WorkerStats::new();
        for stats in &stats {
            sum.add(&stats.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let now = Instant::now();
        let rate = (sum.requests - last_requests) as f64 / (now - last).as_secs_f64();
        (last_requests, last) = (sum.requests, now);
        let decisions = if batch > 1 {
            format!("  ({:.0} decisions/s)", rate * batch as f64)
        } else {
            String::new()
        };
        let mut stderr = std::io::stderr();
        let _ = write!(
            stderr,
            "\r\x1b[2K{:>6.1} s  {rate:>9.0} requests/s{decisions}  {} errors  p99 {}",
            (now - start).as_secs_f64(),
            sum.errors,
            format_latency(sum.latency.value_at_quantile(0.99)),
        );
        let _ = stderr.flush();
    }
}

/// What one worker (or a whole run) counted.
#[derive(Debug, Clone)]
struct WorkerStats {
    requests: u64,
    allowed: u64,
    denied: u64,
    errors: u64,
    /// Nanoseconds, of the answered requests.
    latency: Histogram<u64>,
    first_error: Option<String>,
    /// With an admission window: `(sent, answered)` of each admitted check, in ns from the start
    /// (at most [`MAX_ADMISSIONS`]; more are counted in `admissions_dropped`).
    admissions: Vec<(u64, u64)>,
    admissions_dropped: u64,
}

/// Most admissions a run records for [`Admissions`].
pub const MAX_ADMISSIONS: usize = 1_000_000;

impl WorkerStats {
    fn new() -> Self {
        Self {
            requests: 0,
            allowed: 0,
            denied: 0,
            errors: 0,
            latency: new_histogram(),
            first_error: None,
            admissions: Vec::new(),
            admissions_dropped: 0,
        }
    }

    fn admit(&mut self, sent: u64, answered: u64, checks: u64) {
        for _ in 0..checks {
            if self.admissions.len() < MAX_ADMISSIONS {
                self.admissions.push((sent, answered));
            } else {
                self.admissions_dropped += 1;
            }
        }
    }

    fn record(&mut self, outcome: &Outcome, latency: Duration) {
        self.requests += 1;
        self.allowed += outcome.allowed;
        self.denied += outcome.denied;
        self.errors += outcome.errors;
        if outcome.answered {
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            self.latency.saturating_record(ns);
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&outcome.error);
        }
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
        // Same bounds on both sides, so adding cannot fail; if it did, the figures would be
        // short, never wrong.
        let _ = self.latency.add(&other.latency);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        let room = MAX_ADMISSIONS.saturating_sub(self.admissions.len());
        let taken = other.admissions.len().min(room);
        self.admissions
            .extend_from_slice(&other.admissions[..taken]);
        self.admissions_dropped +=
            other.admissions_dropped + (other.admissions.len() - taken) as u64;
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: low ≥ 1, high ≥ 2·low, sigfig ≤ 5.
    Histogram::new_with_bounds(LATENCY_LOW_NS, LATENCY_HIGH_NS, LATENCY_SIGFIG)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// The result of a run; [`fmt::Display`] is the human summary, serde the `--json` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub target: &'static str,
    pub server: String,
    /// `"closed"` or `"open"`.
    pub mode: &'static str,
    pub concurrency: usize,
    /// gRPC connections (0 for HTTP: one per worker).
    pub connections: usize,
    /// Open loop: requests per second asked for.
    pub rate: Option<u64>,
    pub batch: usize,
    pub keys: u64,
    pub key_distribution: String,
    /// Seconds in which the key set slides by `keys`, if it rolls.
    pub roll_s: Option<f64>,
    pub first_key: u64,
    pub hits: u32,
    pub elapsed_s: f64,
    pub requests: u64,
    /// allowed + denied + errors = requests × batch.
    pub decisions: u64,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub decisions_per_s: f64,
    /// Of the answered requests, from the time each was due.
    pub latency_us: Latency,
    /// The latency distribution: `[percentile, µs]` at each of [`CURVE_PERCENTILES`] (0 is
    /// the least, 100 the most); empty when no request was answered. For plotting.
    pub percentiles_us: Vec<[f64; 2]>,
    /// The first error of the run, if any.
    pub first_error: Option<String>,
    /// With `--admission-window`: the most admissions in any interval of that length.
    pub admissions: Option<Admissions>,
    /// The generator's own CPU time (user + system, this process, connecting excluded) per
    /// request: what the load took from a machine it shares with the server. `None` where
    /// `/proc/self/stat` cannot be read. Resolution 10 ms over the run.
    pub generator_cpu_us_per_request: Option<f64>,
}

/// The over-admission check of a run against a limit of N per `window_s`: how many admitted
/// checks fall in one interval of that length. A limiter that keeps N per window can never
/// show more than N in `proven`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Admissions {
    pub window_s: f64,
    /// Admitted checks recorded.
    pub admitted: u64,
    /// Admitted checks past [`MAX_ADMISSIONS`], not in the figures.
    pub dropped: u64,
    /// The most admissions whose answers arrived within one window. An answer can arrive after
    /// its decision's window ended, so this may exceed N without an over-admission.
    pub most_by_answer: u64,
    /// The most admissions whose whole `[sent, answered]` lies in one window: their decisions
    /// certainly fell in it, so a value above N proves an over-admission.
    pub most_proven: u64,
}

impl Admissions {
    fn of(window: Duration, admitted: &[(u64, u64)], dropped: u64) -> Self {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let mut answers: Vec<u64> = admitted.iter().map(|&(_, r)| r).collect();
        answers.sort_unstable();
        let mut most_by_answer = 0;
        let mut first = 0;
        for (i, &r) in answers.iter().enumerate() {
            while r - answers[first] >= window_ns {
                first += 1;
            }
            most_by_answer = most_by_answer.max(i - first + 1);
        }
        // Windows that open at a send time: the pairs sent from then on and answered within it.
        let mut pairs = admitted.to_vec();
        pairs.sort_unstable();
        let mut most_proven = 0;
        for (i, &(start, _)) in pairs.iter().enumerate() {
            let end = start.saturating_add(window_ns);
            let inside = pairs[i..]
                .iter()
                .take_while(|&&(s, _)| s <= end)
                .filter(|&&(_, r)| r <= end)
                .count();
            most_proven = most_proven.max(inside);
        }
        Self {
            window_s: window.as_secs_f64(),
            admitted: admitted.len() as u64,
            dropped,
            most_by_answer: most_by_answer as u64,
            most_proven: most_proven as u64,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// The percentiles of [`Report::percentiles_us`]: denser towards the tail, where latency
/// distributions differ.
pub const CURVE_PERCENTILES: [f64; 19] = [
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.0, 99.0, 99.5, 99.9, 99.95,
    99.99, 99.999, 100.0,
];

/// `[percentile, µs]` of `histogram` at each of [`CURVE_PERCENTILES`].
fn percentile_curve(histogram: &Histogram<u64>) -> Vec<[f64; 2]> {
    if histogram.is_empty() {
        return Vec::new();
    }
    CURVE_PERCENTILES
        .iter()
        .map(|&p| {
            let ns = if p <= 0.0 {
                histogram.min()
            } else if p >= 100.0 {
                histogram.max()
            } else {
                histogram.value_at_percentile(p)
            };
            [p, ns as f64 / 1_000.0]
        })
        .collect()
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1_000.0;
        let at = |q: f64| us(histogram.value_at_quantile(q));
        Self {
            count: histogram.len(),
            mean: histogram.mean() / 1_000.0,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            max: us(histogram.max()),
        }
    }
}

impl Report {
    fn new(
        options: &BenchOptions,
        elapsed: Duration,
        cpu: Option<Duration>,
        stats: &WorkerStats,
    ) -> Self {
        let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let decisions = stats.allowed + stats.denied + stats.errors;
        Self {
            target: options.target.name(),
            server: options.server().to_owned(),
            mode: if options.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            concurrency: options.concurrency,
            connections: options.connections(),
            rate: options.rate,
            batch: options.batch,
            keys: match options.distribution {
                KeyDistribution::Hot => 1,
                _ => options.keys,
            },
            key_distribution: options.distribution.to_string(),
            roll_s: options.roll.map(|r| r.as_secs_f64()),
            first_key: options.first_key,
            hits: options.hits,
            elapsed_s: elapsed.as_secs_f64(),
            requests: stats.requests,
            decisions,
            allowed: stats.allowed,
            denied: stats.denied,
            errors: stats.errors,
            requests_per_s: stats.requests as f64 / seconds,
            decisions_per_s: decisions as f64 / seconds,
            latency_us: Latency::of(&stats.latency),
            percentiles_us: percentile_curve(&stats.latency),
            first_error: stats.first_error.clone(),
            admissions: options
                .admission_window
                .map(|w| Admissions::of(w, &stats.admissions, stats.admissions_dropped)),
            generator_cpu_us_per_request: cpu
                .filter(|_| stats.requests > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / stats.requests as f64),
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Plain numbers and strings only; serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}

/// A latency in nanoseconds as µs or ms, three significant digits.
fn format_latency(ns: u64) -> String {
    format_us(ns as f64 / 1_000.0)
}

fn format_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else if us < 100_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{:.0} ms", us / 1_000.0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = match self.rate {
            Some(rate) => format!(
                "open loop at {rate} requests/s, up to {} in flight",
                self.concurrency
            ),
            None => format!("closed loop, {} workers", self.concurrency),
        };
        let connections = match self.connections {
            0 => "one HTTP/1.1 connection per worker".to_owned(),
            1 => "1 HTTP/2 connection".to_owned(),
            n => format!("{n} HTTP/2 connections"),
        };
        let batch = if self.batch > 1 {
            format!(", batches of {}", self.batch)
        } else {
            String::new()
        };
        writeln!(f, "drl bench: {} at {}", self.target, self.server)?;
        writeln!(f, "  {load}, {connections}{batch}")?;
        let roll = match self.roll_s {
            Some(s) => format!(", rolling by {} every {s} s", self.keys),
            None => String::new(),
        };
        writeln!(
            f,
            "  keys: {}{} ({}{roll}), {} hit{} per check",
            self.keys,
            if self.first_key > 0 {
                format!(" from u{}", self.first_key)
            } else {
                String::new()
            },
            self.key_distribution,
            self.hits,
            if self.hits == 1 { "" } else { "s" }
        )?;
        writeln!(f, "  elapsed     {:.2} s", self.elapsed_s)?;
        writeln!(
            f,
            "  requests    {:>12}  {:>12.0} /s",
            self.requests, self.requests_per_s
        )?;
        writeln!(
            f,
            "  decisions   {:>12}  {:>12.0} /s",
            self.decisions, self.decisions_per_s
        )?;
        writeln!(f, "  allowed     {:>12}", self.allowed)?;
        writeln!(f, "  denied      {:>12}", self.denied)?;
        writeln!(f, "  errors      {:>12}", self.errors)?;
        let l = &self.latency_us;
        if l.count > 0 {
            writeln!(
                f,
                "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                format_us(l.p50),
                format_us(l.p90),
                format_us(l.p99),
                format_us(l.p99_9),
                format_us(l.max)
            )?;
        } else {
            writeln!(f, "  latency     (no request was answered)")?;
        }
        if let Some(a) = &self.admissions {
            writeln!(
                f,
                "  admissions  most in any {} s: {} by answer time, {} proven ([sent, answered] inside it); {} admitted",
                a.window_s, a.most_by_answer, a.most_proven, a.admitted
            )?;
        }
        if let Some(cpu) = self.generator_cpu_us_per_request {
            writeln!(
                f,
                "  generator   {cpu:.1} µs of CPU per request (this process)"
            )?;
        }
        if let Some(e) = &self.first_error {
            writeln!(f, "  first error {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_from_a_stat_line_whatever_the_command_name() {
        // Fields 14 and 15 (utime 250, stime 30 ticks) after a name with spaces and ')'.
        let stat = "4242 (drl (bench) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0";
        assert_eq!(cpu_of_stat(stat), Some(Duration::from_millis(2_800)));
        assert_eq!(cpu_of_stat("4242 (drl) S 1"), None);
        assert_eq!(cpu_of_stat("no parenthesis"), None);
        // On Linux this process's own line reads.
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
        }
    }

    #[test]
    fn admissions_count_answers_and_proven_spans_per_window() {
        let s = 1_000_000_000;
        // Two bursts 10 s apart, two answers each; one answer of the first burst arrives late.
        let admitted = [
            (0, 1_000),
            (5, 11 * s),
            (10 * s, 10 * s + 1),
            (10 * s + 2, 10 * s + 3),
        ];
        let a = Admissions::of(Duration::from_secs(10), &admitted, 0);
        assert_eq!(a.admitted, 4);
        // By answer time, [10 s, 20 s) holds three answers (10 s + 1, 10 s + 3, 11 s).
        assert_eq!(a.most_by_answer, 3);
        // But the late one was sent at 5 ns: no 10 s interval holds all three whole spans.
        assert_eq!(a.most_proven, 2);
    }

    /// A server that answers every check `allowed` after `delay`.
    struct FakeServer {
        delay: Duration,
    }

    impl Caller for FakeServer {
        async fn call(&mut self, keys: &[u64], _hits: u32) -> Outcome {
            tokio::time::sleep(self.delay).await;
            Outcome {
                allowed: keys.len() as u64,
                answered: true,
                ..Outcome::default()
            }
        }
    }

    fn fake(workers: usize, delay: Duration) -> Vec<FakeServer> {
        (0..workers).map(|_| FakeServer { delay }).collect()
    }

    #[tokio::test]
    async fn closed_loop_counts_add_up() {
        let mut options = BenchOptions::new(Target::Native);
        options.batch = 7;
        options.concurrency = 3;
        options.length = Length::Requests(50);
        let report = drive(&options, fake(3, Duration::ZERO), Progress::Quiet)
            .await
            .unwrap();
        assert_eq!(report.requests, 50);
        assert_eq!(report.decisions, 350);
        assert_eq!(report.allowed, 350);
        assert_eq!(report.latency_us.count, 50);
        assert_eq!(report.mode, "closed");
    }

    /// The coordinated-omission check: a server that takes 20 ms per request, asked at 1 000
    /// requests per second by one worker. Request i is due at i ms but can only start at
    /// 20·i ms, so it completes no earlier than 20·(i + 1) ms: its latency is at least
    /// 19·i + 20 ms, however fast the machine. A generator that timed from the send would see
    /// 20 ms for every request.
    #[tokio::test]
    async fn open_loop_latency_includes_the_wait_for_a_late_server() {
        let mut options = BenchOptions::new(Target::Envoy);
        options.concurrency = 1;
        options.rate = Some(1_000);
        options.length = Length::Requests(20);
        let report = drive(
            &options,
            fake(1, Duration::from_millis(20)),
            Progress::Quiet,
        )
        .await
        .unwrap();
        assert_eq!(report.requests, 20);
        assert_eq!(report.mode, "open");
        let lowest_max_ms = 19.0 * 19.0 + 20.0;
        assert!(
            report.latency_us.max >= lowest_max_ms * 1_000.0 * 0.999,
            "max {} µs",
            report.latency_us.max
        );
        // The median request (i = 9 or 10) waited at least 19·9 + 20 ms.
        assert!(
            report.latency_us.p50 >= (19.0 * 9.0 + 20.0) * 1_000.0 * 0.999,
            "p50 {} µs",
            report.latency_us.p50
        );
    }

    #[tokio::test]
    async fn an_open_loop_of_a_fixed_duration_sends_rate_times_duration() {
        let mut options = BenchOptions::new(Target::Envoy);
        options.concurrency = 4;
        options.rate = Some(2_000);
        options.length = Length::Duration(Duration::from_millis(100));
        let report = drive(&options, fake(4, Duration::ZERO), Progress::Quiet)
            .await
            .unwrap();
        assert_eq!(report.requests, 200);
    }

    /// 50 requests due within 50 ms, a server taking 20 ms each, one worker, a 100 ms timeout:
    /// whatever is still waiting at 150 ms is not sent, and counts as an error.
    #[tokio::test]
    async fn an_open_loop_run_stops_sending_after_its_duration_and_timeout() {
        let mut options = BenchOptions::new(Target::Envoy);
        options.concurrency = 1;
        options.rate = Some(1_000);
        options.length = Length::Duration(Duration::from_millis(50));
        options.timeout = Duration::from_millis(100);
        let report = drive(
            &options,
            fake(1, Duration::from_millis(20)),
            Progress::Quiet,
        )
        .await
        .unwrap();
        assert_eq!(report.requests, 50);
        assert_eq!(report.allowed + report.errors, 50, "{report:?}");
        // At most 150 ms / 20 ms + 1 requests can have been sent.
        assert!(report.allowed <= 9, "{report:?}");
        assert_eq!(report.latency_us.count, report.allowed);
        assert_eq!(report.first_error.as_deref(), Some(UNSENT));
    }

    /// Records the keys it is asked about.
    struct KeyRecorder {
        seen: Arc<Mutex<Vec<u64>>>,
    }

    impl Caller for KeyRecorder {
        async fn call(&mut self, keys: &[u64], _hits: u32) -> Outcome {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(keys);
            tokio::time::sleep(Duration::from_millis(1)).await;
            Outcome {
                allowed: keys.len() as u64,
                answered: true,
                ..Outcome::default()
            }
        }
    }

    /// 10 keys rolling every 10 ms (one key per ms), 30 requests one after another, each
    /// answered no sooner than 1 ms later: at least 29 ms pass between the first request and
    /// the last, so the set moves by at least 28 keys and the last key is at least 19 above the
    /// first, however slow the machine. Without the roll every key stays below 10.
    #[tokio::test]
    async fn a_rolling_key_set_moves_during_the_run() {
        for roll in [Some(Duration::from_millis(10)), None] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mut options = BenchOptions::new(Target::Native);
            options.concurrency = 1;
            options.keys = 10;
            options.roll = roll;
            options.length = Length::Requests(30);
            let callers = vec![KeyRecorder {
                seen: Arc::clone(&seen),
            }];
            let report = drive(&options, callers, Progress::Quiet).await.unwrap();
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
            assert_eq!(seen.len() as u64, report.requests);
            let (first, last) = (seen[0], seen[seen.len() - 1]);
            match roll {
                Some(_) => {
                    assert!(last >= first + 19, "from {first} to {last}");
                    assert_eq!(report.roll_s, Some(0.01));
                }
                None => assert!(seen.iter().all(|&k| k < 10), "{seen:?}"),
            }
        }
    }

    #[test]
    fn options_are_checked() {
        let ok = BenchOptions::new(Target::Native);
        assert!(ok.validate().is_ok());
        type Change = fn(&mut BenchOptions);
        let cases: Vec<(Change, &str)> = vec![
            (|o| o.concurrency = 0, "--concurrency"),
            (|o| o.connections = Some(0), "--connections"),
            (|o| o.rate = Some(0), "--rate"),
            (|o| o.rate = Some(MAX_RATE + 1), "--rate"),
            (|o| o.batch = 0, "--batch"),
            (|o| o.batch = MAX_BATCH + 1, "--batch"),
            (|o| o.keys = 0, "--keys"),
            (|o| o.distribution = KeyDistribution::Zipf(0.0), "--zipf"),
            (
                |o| o.distribution = KeyDistribution::Zipf(f64::NAN),
                "--zipf",
            ),
            (|o| o.hits = MAX_HITS + 1, "--hits"),
            (|o| o.roll = Some(Duration::ZERO), "--roll"),
            (|o| o.length = Length::Requests(0), "--requests"),
            (
                |o| o.length = Length::Duration(Duration::ZERO),
                "--duration",
            ),
            (|o| o.timeout = Duration::ZERO, "--timeout"),
            (
                |o| {
                    o.target = Target::Envoy;
                    o.batch = 10;
                },
                "--batch is for --target native",
            ),
            (
                |o| {
                    o.target = Target::Http;
                    o.connections = Some(2);
                },
                "--connections is for the gRPC targets",
            ),
        ];
        for (change, expected) in cases {
            let mut options = ok.clone();
            change(&mut options);
            let message = options.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    /// The histogram: percentiles of a known distribution within its 3 significant digits,
    /// merged over workers; calls without an answer are counted but not timed; a latency past
    /// the 1 h range is kept at the top, not dropped.
    #[test]
    fn the_latency_histogram_reports_percentiles_over_all_workers() {
        let answered = Outcome {
            allowed: 1,
            answered: true,
            ..Outcome::default()
        };
        let (mut odd, mut even) = (WorkerStats::new(), WorkerStats::new());
        for ms in 1..=1_000u64 {
            let stats = if ms % 2 == 1 { &mut odd } else { &mut even };
            stats.record(&answered, Duration::from_millis(ms));
        }
        even.record(
            &Outcome::failed(1, "lost".into()),
            Duration::from_millis(5_000),
        );
        odd.add(&even);
        assert_eq!((odd.requests, odd.allowed, odd.errors), (1_001, 1_000, 1));
        assert_eq!(odd.first_error.as_deref(), Some("lost"));
        let latency = Latency::of(&odd.latency);
        assert_eq!(latency.count, 1_000);
        let near = |us: f64, ms: f64| (us - ms * 1_000.0).abs() <= ms * 1_000.0 * 0.001;
        for (us, ms) in [
            (latency.mean, 500.5),
            (latency.p50, 500.0),
            (latency.p90, 900.0),
            (latency.p99, 990.0),
            (latency.p99_9, 999.0),
            (latency.max, 1_000.0),
        ] {
            assert!(near(us, ms), "{us} µs, expected {ms} ms: {latency:?}");
        }

        let curve = percentile_curve(&odd.latency);
        assert_eq!(curve.len(), CURVE_PERCENTILES.len());
        assert_eq!(curve[0][0], 0.0);
        assert!(near(curve[0][1], 1.0), "{curve:?}");
        assert_eq!(curve[curve.len() - 1][0], 100.0);
        assert!(near(curve[curve.len() - 1][1], 1_000.0), "{curve:?}");
        assert!(
            curve
                .windows(2)
                .all(|w| w[0][0] < w[1][0] && w[0][1] <= w[1][1])
        );
        assert!(percentile_curve(&new_histogram()).is_empty());

        let mut slow = WorkerStats::new();
        slow.record(&answered, Duration::from_secs(7_200));
        let top = Latency::of(&slow.latency).max;
        assert!(top >= 3_600e6 * 0.999, "{top} µs");
    }

    #[test]
    fn latencies_are_formatted_in_readable_units() {
        assert_eq!(format_us(87.4), "87 µs");
        assert_eq!(format_us(1_234.0), "1.23 ms");
        assert_eq!(format_us(12_345.0), "12.3 ms");
        assert_eq!(format_us(123_456.0), "123 ms");
    }
}
