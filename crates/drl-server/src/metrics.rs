//! The node's Prometheus metrics, in one explicit [`Registry`] (no globals), served by
//! `GET /metrics` in the OpenMetrics text format.
//!
//! Every label is bounded: a decision is labelled by its result (allowed/denied) and by the
//! level of the rule that decided it (default/endpoint/user/pair), never by user or endpoint,
//! so the number of series is fixed whatever the traffic.
//!
//! The eight decision counters are created up front and kept by value: the hot path increments
//! an atomic, without the family's lock and hash.
//!
//! The node's own metrics are named `drl_*`; beside them, on Linux, the standard `process_*`
//! metrics (CPU time, resident memory, open file descriptors, start time), read from `/proc` at
//! each scrape.

use std::sync::Arc;
use std::time::Duration;

use drl_core::RuleLevel;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every prefix of a metric name: `drl_`.
const PREFIX: &str = "drl";

type Labels = [(&'static str, &'static str); 2];
type ResultLabel = [(&'static str, &'static str); 1];

/// The rule levels, in [`RuleLevel`]'s discriminant order.
const LEVELS: [RuleLevel; 4] = [
    RuleLevel::Default,
    RuleLevel::Endpoint,
    RuleLevel::User,
    RuleLevel::Pair,
];

/// What a node counts. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `[denied, allowed][level]`.
    decisions: [[Counter; 4]; 2],
    check_duration: Histogram,
    in_flight: Gauge,
    reload_ok: Counter,
    reload_error: Counter,
    config_version: Gauge,
    store_errors: Counter,
    /// Envoy-API descriptors by matched rule (a configured rule's label: bounded) and result.
    descriptors: Family<DescriptorLabels, Counter>,
    /// The `rule` label of a descriptor no rule matched.
    no_rule: Arc<str>,
    /// `[automatic, manual]`.
    bans: [Counter; 2],
    /// The store's own counts ([`Store::stats`](drl_core::Store::stats)), by event.
    store_events: Family<[(&'static str, &'static str); 1], Counter>,
    /// Each backend's adaptive factor (backends come from the config: bounded).
    factors: Family<[(&'static str, String); 1], Gauge<f64, AtomicU64>>,
    blocked: Counter,
    shadow_denied: Counter,
    /// `[in_flight, connections]`: requests and connections shed by the limits.
    shed: [Counter; 2],
    /// `[in_flight, connections]`: places of the gate taken now, and its budgets.
    gate_used: [Gauge; 2],
    gate_max: [Gauge; 2],
}

/// `(rule, result)` of a descriptor decision: the rule's label shared with the rule set, so
/// counting allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DescriptorLabels {
    rule: Arc<str>,
    result: &'static str,
}

impl EncodeLabelSet for DescriptorLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("rule", &*self.rule).encode(encoder.encode_label())?;
        ("result", self.result).encode(encoder.encode_label())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero (config version 0 until one is loaded).
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix(PREFIX);

        let decisions_family = Family::<Labels, Counter>::default();
        let decisions = [false, true].map(|allowed| {
            LEVELS.map(|level| {
                let result = if allowed { "allowed" } else { "denied" };
                decisions_family.get_or_create_owned(&[("result", result), ("rule", level.name())])
            })
        });
        registry.register(
            "decisions",
            "Rate-limit decisions, by result and by the level of the rule that decided",
            decisions_family,
        );

        let descriptors = Family::<DescriptorLabels, Counter>::default();
        registry.register(
            "descriptor_decisions",
            "Envoy API descriptors, by the configured rule that matched them and the result \
             (allowed, denied, shadow_denied, unlimited, no_rule)",
            descriptors.clone(),
        );

        let bans_family = Family::<ResultLabel, Counter>::default();
        let bans =
            ["automatic", "manual"].map(|kind| bans_family.get_or_create_owned(&[("kind", kind)]));
        registry.register(
            "bans",
            "Users banned: automatically (too many denials) or manually (admin API)",
            bans_family,
        );
        let factors = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
        registry.register(
            "adaptive_factor",
            "The factor the limits of the rules naming a backend are scaled by, in [min_factor, 1]",
            factors.clone(),
        );
        let store_events = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "store_events",
            "What the store counts about itself: Redis errors, on_error fallbacks, deny-cache hits, WAIT shortfalls",
            store_events.clone(),
        );
        let blocked = Counter::default();
        registry.register(
            "blocked_requests",
            "Requests denied because their user is banned or blocked (no counter touched)",
            blocked.clone(),
        );
        let shadow_denied = Counter::default();
        registry.register(
            "shadow_denials",
            "Requests a limit or ban would have denied, answered allowed in shadow mode",
            shadow_denied.clone(),
        );

        // 1 µs to ~4 s, ×4 per bucket: a memory-store check is around a microsecond, a
        // networked store's tens of milliseconds.
        let check_duration = Histogram::new(exponential_buckets(1e-6, 4.0, 12));
        registry.register_with_unit(
            "check_duration",
            "Time to decide one check, from validated input to decision",
            Unit::Seconds,
            check_duration.clone(),
        );

        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being answered",
            in_flight.clone(),
        );

        let reloads = Family::<ResultLabel, Counter>::default();
        let reload_ok = reloads.get_or_create_owned(&[("result", "ok")]);
        let reload_error = reloads.get_or_create_owned(&[("result", "error")]);
        registry.register(
            "config_reloads",
            "Config reloads, by result; a failed reload leaves the previous config in force",
            reloads,
        );

        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Version of the config in force: 1 at start, +1 per successful reload",
            config_version.clone(),
        );

        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Checks that failed because the store did not answer",
            store_errors.clone(),
        );

        let shed_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let shed = [Shed::InFlight, Shed::Connections]
            .map(|why| shed_family.get_or_create_owned(&[("reason", why.name())]));
        registry.register(
            "shed",
            "Requests refused at once because max_in_flight were in flight (reason=in_flight), \
             and connections closed at once because max_connections were open (reason=connections)",
            shed_family,
        );

        let used_family = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        let max_family = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        let gate_used = [Shed::InFlight, Shed::Connections]
            .map(|what| used_family.get_or_create_owned(&[("budget", what.name())]));
        let gate_max = [Shed::InFlight, Shed::Connections]
            .map(|what| max_family.get_or_create_owned(&[("budget", what.name())]));
        registry.register(
            "gate_used",
            "Requests in flight (budget=in_flight, HTTP and gRPC, health and metrics excepted) and \
             connections open (budget=connections) now, read at each scrape",
            used_family,
        );
        registry.register(
            "gate_limit",
            "The node's max_in_flight (budget=in_flight) and max_connections (budget=connections): \
             beyond them requests and connections are shed",
            max_family,
        );

        Self {
            registry: root,
            decisions,
            check_duration,
            in_flight,
            reload_ok,
            reload_error,
            config_version,
            store_errors,
            descriptors,
            no_rule: Arc::from("none"),
            bans,
            store_events,
            factors,
            blocked,
            shadow_denied,
            shed,
            gate_used,
            gate_max,
        }
    }

    /// Sets `drl_gate_used` and `drl_gate_limit` of one budget (see `Gate::report`).
    pub fn set_gate(&self, budget: Shed, used: usize, max: usize) {
        self.gate_used[budget as usize].set(i64::try_from(used).unwrap_or(i64::MAX));
        self.gate_max[budget as usize].set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// Counts a request or connection shed by the limits.
    pub fn shed(&self, why: Shed) {
        self.shed[why as usize].inc();
    }

    /// Counts one decision and how long it took.
    #[inline]
    pub fn decision(&self, allowed: bool, level: RuleLevel, took: Duration) {
        self.decisions[usize::from(allowed)][level as usize].inc();
        self.check_duration.observe(took.as_secs_f64());
    }

    /// Counts one descriptor of an Envoy request: `rule` is the matched rule's label (from the
    /// config, never from the request; `None`: no rule, counted as `none`), `result` one of the
    /// documented results.
    pub fn descriptor(&self, rule: Option<&Arc<str>>, result: &'static str) {
        let rule = Arc::clone(rule.unwrap_or(&self.no_rule));
        self.descriptors
            .get_or_create(&DescriptorLabels { rule, result })
            .inc();
    }

    /// Counts a new ban: `manual` from the admin API, else automatic.
    pub fn ban(&self, manual: bool) {
        self.bans[usize::from(manual)].inc();
    }

    /// Brings `drl_store_events_total` up to the store's own totals (read at each scrape).
    pub fn sync_store(&self, stats: &[(&'static str, u64)]) {
        for &(event, total) in stats {
            let counter = self.store_events.get_or_create(&[("event", event)]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Sets a backend's adaptive factor.
    pub fn set_factor(&self, backend: &str, factor: f64) {
        self.factors
            .get_or_create(&[("backend", backend.to_owned())])
            .set(factor);
    }

    /// Counts a request denied by a ban or block.
    pub fn blocked(&self) {
        self.blocked.inc();
    }

    /// Counts a request that shadow mode let through.
    pub fn shadow_denied(&self) {
        self.shadow_denied.inc();
    }

    /// Records how long a check took (for checks counted per descriptor).
    pub fn observe_check(&self, took: Duration) {
        self.check_duration.observe(took.as_secs_f64());
    }

    /// Counts a check the store could not answer.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Counts a successful reload; `version` is the version now in force.
    pub fn reload_succeeded(&self, version: u64) {
        self.reload_ok.inc();
        self.set_config_version(version);
    }

    /// Counts a reload that was refused (the previous config stays in force).
    pub fn reload_failed(&self) {
        self.reload_error.inc();
    }

    /// Records the version of the config in force.
    pub fn set_config_version(&self, version: u64) {
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Marks an HTTP request as in flight until the returned guard is dropped.
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// The exposition, in the OpenMetrics text format (ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Decisions counted so far with this result and level (for tests and diagnostics).
    pub fn decisions(&self, allowed: bool, level: RuleLevel) -> u64 {
        self.decisions[usize::from(allowed)][level as usize].get()
    }
}

/// An in-flight HTTP request; decrements the gauge when dropped, whatever way the request ends.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The standard `process_*` metrics of the running process, read at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Elsewhere than Linux, or if /proc is unreadable: no process metrics, not an error.
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                stats.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// What `/proc` says about this process.
#[derive(Debug, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    open_fds: f64,
    start_time_seconds: f64,
}

/// Clock ticks per second of `/proc/*/stat` times: `USER_HZ`, 100 on every Linux platform
/// (fixed by the kernel ABI, whatever the kernel's own tick rate).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Self::parse(&stat, &status, &boot, open_fds)
    }

    /// From the text of `/proc/self/stat`, `/proc/self/status` and `/proc/stat`.
    fn parse(stat: &str, status: &str, boot: &str, open_fds: usize) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces: count fields from
        // the last ')'. Field 3 (state) is then the first.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
        let resident_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        let boot_time: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            cpu_seconds: (utime + stime) / USER_HZ,
            resident_bytes: resident_kib * 1024.0,
            open_fds: open_fds as f64,
            start_time_seconds: boot_time + start_ticks / USER_HZ,
        })
    }
}

/// Which budget of the edge shed a request or connection: the label of `drl_shed_total`, and
/// of `drl_gate_used` / `drl_gate_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The requests in flight (`--max-in-flight`).
    InFlight,
    /// The open connections (`--max-connections`).
    Connections,
}

impl Shed {
    pub fn name(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Connections => "connections",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_under_bounded_labels() {
        let metrics = Metrics::new();
        metrics.decision(true, RuleLevel::User, Duration::from_micros(3));
        metrics.decision(false, RuleLevel::Pair, Duration::from_micros(3));
        metrics.decision(false, RuleLevel::Pair, Duration::from_micros(3));
        assert_eq!(metrics.decisions(true, RuleLevel::User), 1);
        assert_eq!(metrics.decisions(false, RuleLevel::Pair), 2);
        let text = metrics.encode();
        assert!(
            text.contains("drl_decisions_total{result=\"denied\",rule=\"pair\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_decisions_total{result=\"allowed\",rule=\"default\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_check_duration_seconds_count 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn process_stats_are_read_from_proc_text() {
        let stat = "4242 (drl (serve) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 8 0 12345 100000000 2560 18446744073709551615";
        let status = "Name:\tdrl\nVmPeak:\t  20000 kB\nVmRSS:\t   10240 kB\nThreads:\t8\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 10\n";
        assert_eq!(
            ProcessStats::parse(stat, status, boot, 12),
            Some(ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 10_485_760.0,
                open_fds: 12.0,
                start_time_seconds: 1_700_000_123.45,
            })
        );
        assert_eq!(ProcessStats::parse("garbage", status, boot, 1), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exposed_on_linux() {
        let text = Metrics::new().encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(&format!("\n{name}")), "{name}: {text}");
        }
    }

    #[test]
    fn the_in_flight_gauge_follows_its_guards() {
        let metrics = Metrics::new();
        let a = metrics.request_started();
        let b = metrics.request_started();
        assert!(metrics.encode().contains("drl_http_requests_in_flight 2\n"));
        drop((a, b));
        assert!(metrics.encode().contains("drl_http_requests_in_flight 0\n"));
    }

    #[test]
    fn reloads_move_the_counters_and_the_version() {
        let metrics = Metrics::new();
        metrics.set_config_version(1);
        metrics.reload_succeeded(2);
        metrics.reload_failed();
        let text = metrics.encode();
        assert!(
            text.contains("drl_config_reloads_total{result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_config_reloads_total{result=\"error\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("drl_config_version 2\n"), "{text}");
    }
}
