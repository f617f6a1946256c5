//! The node's resource limits, enforced at the edge before the limiter sees a request
//! (docs/api.md, "Input limits"):
//!
//! - [`EdgeLimits`]: the configurable ones — HTTP body size, gRPC message size, header size,
//!   requests in flight and open connections — with defaults sized so a node serves tens of
//!   thousands of decisions per second without reaching them.
//! - [`Gate`]: the two budgets shared by the HTTP and gRPC APIs of one node: requests in flight
//!   ([`Gate::admit`]: a request over it is shed at once, 503 / UNAVAILABLE, rather than queued)
//!   and open connections (taken by [`crate::edge`] as a connection is accepted, before its TLS
//!   handshake: a connection over it is closed at once).
//! - The timeouts of [`EdgeLimits`] ([`EdgeLimits::header_read_timeout`],
//!   [`EdgeLimits::body_read_timeout`], [`EdgeLimits::idle_timeout`],
//!   [`EdgeLimits::keepalive_interval`]) and the HTTP/2 stream cap ([`EdgeLimits::max_streams`]),
//!   applied to every connection by [`crate::edge`].
//!
//! The fixed limits of a request's contents (identifier lengths, descriptors, entries, batch
//! size, hits) live where they are checked: `drl_core::key::MAX_ID_LEN`,
//! `drl_core::limiter::{MAX_DESCRIPTORS, MAX_ENTRIES}`, [`crate::grpc::MAX_BATCH`] and
//! [`drl_proto::json::MAX_HITS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::metrics::{Metrics, Shed};

/// Default of [`EdgeLimits::max_body_bytes`]: 64 KiB. A check is a few hundred bytes; an Envoy
/// request of 64 descriptors with short values a few KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default of [`EdgeLimits::max_message_bytes`]: 4 MiB, tonic's and Envoy's default. The largest
/// valid request (a batch of 1 000 checks, or 64 descriptors of 16 entries, with 1 KiB
/// identifiers) is about 2.1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Default of [`EdgeLimits::max_header_bytes`]: 16 KiB, hyper's HTTP/2 default.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default of [`EdgeLimits::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// Default of [`EdgeLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of [`EdgeLimits::header_read_timeout`]: 5 s. A check's head is a few hundred bytes.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`EdgeLimits::body_read_timeout`]: 5 s. A check's body is a few hundred bytes.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`EdgeLimits::idle_timeout`]: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`EdgeLimits::keepalive_interval`]: 30 s.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default of [`EdgeLimits::max_streams`]: 100, as nginx and most gRPC servers.
pub const DEFAULT_MAX_STREAMS: u32 = 100;

/// The longest of the timeouts of [`EdgeLimits`]: a day (a longer one is taken as a day).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The configurable limits of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Largest HTTP request body, in bytes: above it, 413.
    pub max_body_bytes: usize,
    /// Largest gRPC request message, in bytes (tonic's `max_decoding_message_size`): above it,
    /// OUT_OF_RANGE (tonic's code).
    pub max_message_bytes: usize,
    /// Largest request header section: on HTTP/1.1 the sum of the header names and values, in
    /// bytes (above it, 431); on gRPC the HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` (names, values
    /// and 32 bytes per field, pseudo-headers included; above it the stream is refused).
    pub max_header_bytes: usize,
    /// Requests being answered at once, HTTP and gRPC together (health and metrics routes
    /// excepted): above it, 503 with `Retry-After` / UNAVAILABLE, at once.
    pub max_in_flight: usize,
    /// Open connections, HTTP and gRPC together, TLS handshakes in progress included: above it a
    /// new connection is closed as soon as it is accepted.
    pub max_connections: usize,
    /// The time a connection has to send a request's head: on HTTP/1.1 from when it is ready
    /// for one (accepted, or its previous response sent), so it is also the HTTP/1.1 keep-alive
    /// time; a new connection on the HTTP listener has it to begin its first request (HTTP/2
    /// included), and a TLS connection to finish its handshake, on both listeners.
    pub header_read_timeout: Duration,
    /// The time a request's body has to arrive, from its head: past it, 408 / the call fails,
    /// and the request never took an in-flight place.
    pub body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (gracefully: HTTP/2
    /// `GOAWAY`); on the gRPC listener also the time a new connection has to begin its first
    /// call.
    pub idle_timeout: Duration,
    /// An HTTP/2 connection silent for this long is sent a ping, and dropped if the peer does
    /// not answer within [`crate::edge::KEEPALIVE_TIMEOUT`]; `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// Concurrent streams (requests) per HTTP/2 connection, on both listeners.
    pub max_streams: u32,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// The limits of a node and its two budgets (requests in flight, open connections), shared by
/// its HTTP and gRPC APIs. Each budget is one atomic counter: taking a place is a
/// compare-and-swap, giving it back a subtraction (no lock, no queue).
#[derive(Debug)]
pub struct Gate {
    limits: EdgeLimits,
    in_flight: AtomicUsize,
    connections: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(EdgeLimits::default())
    }
}

impl Gate {
    /// Budgets of `limits` (a limit of 0 is taken as 1, for streams too; a timeout above
    /// [`MAX_TIMEOUT`] as [`MAX_TIMEOUT`]).
    pub fn new(limits: EdgeLimits) -> Self {
        Self {
            limits: EdgeLimits {
                max_in_flight: limits.max_in_flight.max(1),
                max_connections: limits.max_connections.max(1),
                max_streams: limits.max_streams.max(1),
                header_read_timeout: limits.header_read_timeout.min(MAX_TIMEOUT),
                body_read_timeout: limits.body_read_timeout.min(MAX_TIMEOUT),
                idle_timeout: limits.idle_timeout.min(MAX_TIMEOUT),
                keepalive_interval: limits.keepalive_interval.map(|d| d.min(MAX_TIMEOUT)),
                ..limits
            },
            in_flight: AtomicUsize::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn limits(&self) -> &EdgeLimits {
        &self.limits
    }

    /// Requests in flight now, HTTP and gRPC together.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Connections open now, HTTP and gRPC together.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Sets the gate's gauges in `metrics` to its state now (at each scrape).
    pub fn report(&self, metrics: &Metrics) {
        metrics.set_gate(Shed::InFlight, self.in_flight(), self.limits.max_in_flight);
        metrics.set_gate(
            Shed::Connections,
            self.connections(),
            self.limits.max_connections,
        );
    }

    /// A place for one request in flight, held until it is dropped; `None` when all are taken
    /// (the request is to be shed, not queued).
    pub fn admit(&self) -> Option<Place<'_>> {
        take(&self.in_flight, self.limits.max_in_flight).then(|| Place(&self.in_flight))
    }

    /// A place for one open connection (TLS handshake included); `None` when all are taken.
    pub(crate) fn connection(&self) -> Option<ConnectionPlace> {
        take(&self.connections, self.limits.max_connections)
            .then(|| ConnectionPlace(Arc::clone(&self.connections)))
    }
}

/// Adds one to `used` unless it is at `max`.
fn take(used: &AtomicUsize, max: usize) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    })
    .is_ok()
}

/// A request's place in flight ([`Gate::admit`]), given back when dropped.
#[derive(Debug)]
pub struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPlace(Arc<AtomicUsize>);

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection closed for want of room (the caller drops it).
pub(crate) fn refuse(gate: &Gate, metrics: &Metrics) {
    metrics.shed(Shed::Connections);
    tracing::debug!(
        "connection closed: {} connections are open, the maximum",
        gate.limits.max_connections
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_gauges_follow_the_gate_at_each_report() {
        let metrics = Metrics::new();
        let gate = Gate::new(EdgeLimits {
            max_in_flight: 3,
            max_connections: 7,
            ..EdgeLimits::default()
        });
        let place = gate.admit();
        gate.report(&metrics);
        let text = metrics.encode();
        for line in [
            "drl_gate_used{budget=\"in_flight\"} 1\n",
            "drl_gate_used{budget=\"connections\"} 0\n",
            "drl_gate_limit{budget=\"in_flight\"} 3\n",
            "drl_gate_limit{budget=\"connections\"} 7\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        drop(place);
        gate.report(&metrics);
        assert!(
            metrics
                .encode()
                .contains("drl_gate_used{budget=\"in_flight\"} 0\n")
        );
    }
}
