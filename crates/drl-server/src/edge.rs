//! The edge of a node: how both listeners accept and serve connections, with the timeouts that
//! keep slow, silent or stalled clients from holding the node's budgets (docs/api.md, "Input
//! limits"; SECURITY.md).
//!
//! Every accepted connection, HTTP or gRPC, plaintext or TLS, is served by `serve`:
//!
//! - it takes a place in the [`Gate`]'s connection budget *before* its TLS handshake (a
//!   connection over the budget is closed at once), and holds it until it is closed;
//! - its TLS handshake must finish within [`EdgeLimits::header_read_timeout`];
//! - on the HTTP listener, its plain HTTP/1.1 checks are answered without hyper while they
//!   come (`h1.rs`, with the same timeouts and answers); from its first other request on,
//! - it is served by hyper (HTTP/1.1 and cleartext HTTP/2 on the HTTP listener, HTTP/2 only
//!   on the gRPC one) with an HTTP/1.1 header read timeout ([`EdgeLimits::header_read_timeout`],
//!   counted from when the connection is ready for a request: accepted, or its previous
//!   response sent), at most [`EdgeLimits::max_streams`] concurrent HTTP/2 streams, and HTTP/2
//!   keep-alive pings every [`EdgeLimits::keepalive_interval`] of silence (a peer that does not
//!   answer one within [`KEEPALIVE_TIMEOUT`] is dropped);
//! - each request's body must be in within [`EdgeLimits::body_read_timeout`] of its head
//!   ([`BodyTimedOut`] otherwise): the HTTP API takes the in-flight place only once the body
//!   is in, and the gRPC API decodes the whole message before taking it;
//! - a connection that has not begun a request within its first-request time (the header read
//!   timeout on the HTTP listener, the idle timeout on the gRPC one, whose clients may connect
//!   ahead of their first call), or that has had no request in progress for
//!   [`EdgeLimits::idle_timeout`], is closed: at once if it never sent a request, gracefully
//!   otherwise (HTTP/2 `GOAWAY`);
//! - on the gRPC listener, the answers of the streams that finish together are written together
//!   ([`Coalesce`]): one system call for many calls rather than one each;
//! - on shutdown, connections that never sent a request are closed at once; the others are
//!   closed gracefully, once their requests in progress are answered.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::coalesce::Coalesce;
use crate::h1::{self, Checks, Rewind};
use crate::limits::{EdgeLimits, Gate};
use crate::metrics::Metrics;
use crate::tls::{Api, ServerTls};

/// How long an HTTP/2 peer has to answer a keep-alive ping before its connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The body of a request read past [`EdgeLimits::body_read_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut(pub Duration);

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body was not received within {:?} (body_read_timeout)",
            self.0
        )
    }
}

impl StdError for BodyTimedOut {}

/// Serves `service` on the connections accepted on `listener` (over TLS with `tls`, which
/// offers the ALPN protocol of `api`) until `shutdown` completes; then stops accepting, closes
/// the connections that never sent a request, and returns once the others have answered their
/// requests in progress and closed. Dropping the future drops every connection.
#[allow(clippy::too_many_arguments)] // one listener's every part, each from its caller
pub(crate) async fn serve<Svc, B, C>(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    api: Api,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    service: Svc,
    checks: Option<Arc<C>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    Svc: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    C: Checks,
{
    let limits = *gate.limits();
    let builder = builder(api, &limits);
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            // Finished connections are reaped as they end, so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.as_mut() => break,
        };
        let Some(place) = gate.connection() else {
            crate::limits::refuse(&gate, &metrics);
            continue;
        };
        // TCP_NODELAY, so that no response waits for the acknowledgement of the previous one.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let connection = Connection {
            builder: builder.clone(),
            service: service.clone(),
            checks: checks.clone(),
            limits,
            api,
            stopped: stopped.clone(),
        };
        let tls = tls
            .as_ref()
            .map(|tls| TlsAcceptor::from(tls.server_config(api)));
        connections.spawn(async move {
            let _place = place;
            match tls {
                None => connection.run(tcp).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    let tls = tokio::select! {
                        done = tokio::time::timeout(limits.header_read_timeout, handshake) => match done {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake with {peer} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake with {peer} timed out");
                                return;
                            }
                        },
                        // A handshake in progress has sent no request: it goes at once.
                        () = stop_signal(connection.stopped.clone()) => return,
                    };
                    connection.run(tls).await;
                }
            }
        });
    }
    stop.send_replace(true);
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The hyper server of one listener.
fn builder(api: Api, limits: &EdgeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    match api {
        Api::Http => builder,
        // gRPC is HTTP/2 only (as tonic's server is by default), and its answers carry no
        // `date` header (as tonic's do not): one header less to build and encode per call.
        Api::Grpc => {
            builder.http2().auto_date_header(false);
            builder.http2_only()
        }
    }
}

/// What a connection's task needs.
pub(crate) struct Connection<Svc, C> {
    builder: auto::Builder<TokioExecutor>,
    service: Svc,
    /// The checks answered without hyper (`h1.rs`), on the HTTP listener's connections.
    checks: Option<Arc<C>>,
    limits: EdgeLimits,
    api: Api,
    stopped: watch::Receiver<bool>,
}

impl<Svc, B, C> Connection<Svc, C>
where
    Svc: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    C: Checks,
{
    /// Serves `io` as [`serve`] serves a connection it accepted on a listener of `api` (without
    /// TLS, a connection budget or a stop signal), until it closes: for the fuzz target that
    /// compares the checks answered without hyper with hyper's answers (`fuzzing.rs`).
    #[cfg(feature = "fuzzing")]
    pub(crate) async fn serve_one<Io>(
        io: Io,
        api: Api,
        limits: EdgeLimits,
        service: Svc,
        checks: Option<Arc<C>>,
    ) where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Kept until the connection ends: a dropped sender reads as a stop.
        let (_stop, stopped) = watch::channel(false);
        let connection = Self {
            builder: builder(api, &limits),
            service,
            checks,
            limits,
            api,
            stopped,
        };
        connection.run(io).await;
    }

    /// Serves the connection until it closes, is found idle, or the server stops: its plain
    /// checks without hyper while they come (`h1.rs`), then with hyper.
    async fn run<Io>(self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let mut stop = std::pin::pin!(stop_signal(self.stopped));
        let io = match &self.checks {
            Some(checks) => {
                match h1::serve(io, &**checks, &self.limits, &activity, stop.as_mut()).await {
                    Some(io) => io,
                    None => return,
                }
            }
            None => Rewind::new(io),
        };
        // A connection whose checks were answered is HTTP/1.1: hyper takes it up as it would in
        // the middle of one (its first read brings what is buffered and what has arrived),
        // not as a new connection whose first bytes it reads apart to tell the version.
        let builder = if self.api == Api::Http && activity.served() {
            self.builder.http1_only()
        } else {
            self.builder
        };
        let hyper_service = {
            let activity = Arc::clone(&activity);
            let service = self.service;
            let body_timeout = self.limits.body_read_timeout;
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let guard = activity.begin();
                let request = request.map(|body| TimedBody::new(body, body_timeout));
                let mut service = service.clone();
                async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    let response = service.call(request).await?;
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        body,
                        _guard: guard,
                    }))
                }
            })
        };
        let first_request = match self.api {
            Api::Http => self.limits.header_read_timeout,
            Api::Grpc => self.limits.idle_timeout,
        };
        let connection = builder.serve_connection(
            TokioIo::new(Coalesce::new(io, self.api == Api::Grpc)),
            hyper_service,
        );
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!("connection closed: {e}");
                }
                return;
            }
            () = activity.idle(first_request, self.limits.idle_timeout) => {}
            () = stop.as_mut() => {}
        }
        if !activity.served() {
            // Never sent a request: nothing to answer, nothing to say goodbye to.
            return;
        }
        connection.as_mut().graceful_shutdown();
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    }
}

/// Completes once `stopped` says so (or its sender is gone).
async fn stop_signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|&stop| stop).await;
}

/// The requests of one connection: how many are in progress, whether there ever was one, and
/// since when none is.
#[derive(Debug)]
pub(crate) struct Activity(Mutex<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    in_progress: usize,
    served: bool,
    idle_since: Instant,
}

impl Activity {
    fn new() -> Self {
        Self(Mutex::new(ActivityState {
            in_progress: 0,
            served: false,
            idle_since: Instant::now(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request begins; it ends when the guard is dropped (with its response body).
    pub(crate) fn begin(self: &Arc<Self>) -> InProgress {
        let mut state = self.state();
        state.in_progress += 1;
        state.served = true;
        InProgress(Arc::clone(self))
    }

    fn served(&self) -> bool {
        self.state().served
    }

    /// Completes once no request has been in progress for `idle` (for `first` if there never
    /// was one).
    async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let wake = {
                let state = self.state();
                let now = Instant::now();
                if state.in_progress > 0 {
                    now + idle
                } else {
                    let deadline = state.idle_since + if state.served { idle } else { first };
                    if deadline <= now {
                        return;
                    }
                    deadline
                }
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in progress on its connection ([`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_progress -= 1;
        if state.in_progress == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request in progress until it is sent (or dropped): a
/// streaming gRPC response is not an idle connection.
#[derive(Debug)]
struct Tracked<B> {
    body: B,
    _guard: InProgress,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails with [`BodyTimedOut`] if it is not all in within the
/// body read timeout of the request's head.
pub struct TimedBody {
    body: Incoming,
    timeout: Duration,
    /// When the head was received.
    started: Instant,
    /// Armed the first time the body is waited for: a body already in (the common case)
    /// costs no timer.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TimedBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            started: Instant::now(),
            deadline: None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let at = self.started + self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An error of `accept`: a connection reset before it was accepted is skipped; anything else
/// (out of file descriptors) is logged and waited out for a second, as axum and tonic do.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
