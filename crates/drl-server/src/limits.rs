//! The node's resource limits, enforced at the edge before the limiter sees a request
//! (docs/api.md, "Input limits"):
//!
//! - [`Limits`]: the configurable ones — HTTP body size, gRPC message size, header size,
//!   requests in flight and open connections — with defaults sized so a node serves tens of
//!   thousands of decisions per second without reaching them.
//! - [`Gate`]: the two budgets shared by the HTTP and gRPC APIs of one node: requests in flight
//!   ([`Gate::admit`]: a request over it is shed at once, 503 / UNAVAILABLE, rather than queued)
//!   and open connections ([`CappedListener`], [`capped_incoming`]: a connection over it is
//!   accepted and closed at once).
//!
//! The fixed limits of a request's contents (identifier lengths, descriptors, entries, batch
//! size, hits) live where they are checked: `drl_core::key::MAX_ID_LEN`,
//! `drl_core::limiter::{MAX_DESCRIPTORS, MAX_ENTRIES}`, [`crate::grpc::MAX_BATCH`] and
//! [`drl_proto::json::MAX_HITS`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::metrics::{Metrics, Shed};

/// Default of [`Limits::max_body_bytes`]: 64 KiB. A check is a few hundred bytes; an Envoy
/// request of 64 descriptors with short values a few KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default of [`Limits::max_message_bytes`]: 4 MiB, tonic's and Envoy's default. The largest
/// valid request (a batch of 1 000 checks, or 64 descriptors of 16 entries, with 1 KiB
/// identifiers) is about 2.1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Default of [`Limits::max_header_bytes`]: 16 KiB, hyper's HTTP/2 default.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default of [`Limits::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The configurable limits of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
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
    /// Open connections, HTTP and gRPC together: above it a new connection is closed as soon as
    /// it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The limits of a node and its two budgets (requests in flight, open connections), shared by
/// its HTTP and gRPC APIs. Each budget is one atomic counter: taking a place is a
/// compare-and-swap, giving it back a subtraction (no lock, no queue).
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    in_flight: AtomicUsize,
    connections: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Gate {
    /// Budgets of `limits` (a limit of 0 is taken as 1).
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_in_flight: limits.max_in_flight.max(1),
                max_connections: limits.max_connections.max(1),
                ..limits
            },
            in_flight: AtomicUsize::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn limits(&self) -> &Limits {
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

    /// A place for one open connection; `None` when all are taken.
    fn connection(&self) -> Option<ConnectionPlace> {
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
struct ConnectionPlace(Arc<AtomicUsize>);

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection holding its place in the [`Gate`]'s connection budget until it is closed.
#[derive(Debug)]
pub struct Capped<T> {
    io: T,
    _place: ConnectionPlace,
}

impl<T: AsyncRead + Unpin> AsyncRead for Capped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Capped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: Connected> Connected for Capped<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// An axum [`Listener`] that keeps at most the [`Gate`]'s connections open: one accepted
/// beyond them is closed at once (and counted in `drl_shed_total{reason="connections"}`).
#[derive(Debug)]
pub struct CappedListener<L> {
    inner: L,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
}

impl<L> CappedListener<L> {
    pub fn new(inner: L, gate: Arc<Gate>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            gate,
            metrics,
        }
    }
}

impl<L: Listener> Listener for CappedListener<L> {
    type Io = Capped<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.gate.connection() {
                Some(permit) => {
                    return (Capped { io, _place: permit }, addr);
                }
                None => refuse(&self.gate, &self.metrics),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// `incoming` (tonic's stream of accepted connections) keeping at most the [`Gate`]'s
/// connections open, like [`CappedListener`].
pub fn capped_incoming<S, T, E>(
    incoming: S,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Capped<T>, E>>
where
    S: Stream<Item = Result<T, E>>,
{
    incoming.filter_map(move |accepted| match accepted {
        Ok(io) => match gate.connection() {
            Some(permit) => Some(Ok(Capped { io, _place: permit })),
            None => {
                refuse(&gate, &metrics);
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}

/// Counts a connection closed for want of room (the caller drops it).
fn refuse(gate: &Gate, metrics: &Metrics) {
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
        let gate = Gate::new(Limits {
            max_in_flight: 3,
            max_connections: 7,
            ..Limits::default()
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
