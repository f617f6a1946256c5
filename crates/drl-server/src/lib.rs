//! `drl-server`: a `drl` node — its configuration, and its HTTP and gRPC APIs over a limiter.
//! (The clients are the `drl-client` crate, the load generator `drl-bench`.)
//!
//! - [`node`]: the [`Node`] every API answers through: limiter, metrics, reloader, admin token.
//! - [`config`]: the YAML config of docs/configuration.md (native and Envoy formats), validated
//!   once with line/column diagnostics.
//! - [`edge`]: how both listeners serve connections: the connection cap, TLS handshakes, and
//!   the header, body, idle and keep-alive timeouts.
//! - [`limits`]: the input limits and the in-flight and connection budgets, enforced at the edge.
//! - [`http`]: the axum [`Router`](axum::Router) of a node: `POST /v1/check`, `POST /json`,
//!   `GET /healthz`, `GET /readyz`, `GET /metrics`, the status page and the admin routes.
//! - [`grpc`]: the gRPC services over the same state: `drl.v1.RateLimiter`,
//!   `envoy.service.ratelimit.v3.RateLimitService` and `grpc.health.v1.Health`.
//! - `envoy`: Envoy's `ShouldRateLimit` (over gRPC, and as JSON on `POST /json`) on the node.
//! - [`metrics`]: the node's Prometheus metrics, in one explicit registry.
//! - [`reload`]: hot reload of the config file, on a change of the file, on SIGHUP, or asked
//!   for by the admin route.
//! - [`tls`]: TLS for both servers, its files reloaded when they change.
//! - `status`: the status page at `GET /`, reading the other routes from the browser.
//!
//! The library owns the node: [`run`] wires a whole node from its [`Settings`] (config, store,
//! reload, TLS) on two bound listeners, as `drl serve` does; [`serve`] (HTTP), [`grpc::serve`]
//! and [`serve_all`] (both) serve a [`Node`] built by hand. All take bound listeners and a
//! shutdown future, so the binary only parses arguments and tests bind port 0 and talk to real
//! sockets.

mod coalesce;
pub mod config;
pub mod edge;
mod envoy;
mod h1;
mod unary;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod reload;
mod run;
mod status;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drl_core::Store;
use limits::Gate;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, Diagnostic, StoreConfig};
pub use metrics::Metrics;
pub use node::{AdminToken, Node};
pub use run::{Listeners, Settings, run};

/// Serves the HTTP API of a node (a [`Limiter`](drl_core::Limiter), or an [`Node`] with
/// its metrics, reloader and admin token) on `listener` until `shutdown` completes, then stops
/// accepting connections, closes those that never sent a request and returns once the requests
/// in flight are answered. Over TLS if the node has [`Node::tls`]. The connections are served
/// as [`edge`] says (timeouts, connection cap).
pub async fn serve<S: Store>(
    listener: TcpListener,
    node: impl Into<Node<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let node = node.into();
    let gate = Arc::clone(&node.gate);
    let checks = Some(http::CheckRoute::new(node.clone()));
    serve_routes(
        listener,
        node.clone(),
        http::router(node),
        checks,
        gate,
        shutdown,
    )
    .await
}

/// Serves `routes` of `node` on `listener` over HTTP, as [`serve`] does, its connections
/// counted in `gate`; with `checks`, the checks that come plainly over HTTP/1.1 are answered
/// without hyper (`h1.rs`).
async fn serve_routes<S: Store>(
    listener: TcpListener,
    node: Node<S>,
    routes: axum::Router,
    checks: Option<Arc<http::CheckRoute<S>>>,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    edge::serve(
        listener,
        node.tls,
        tls::Api::Http,
        gate,
        node.metrics,
        routes,
        checks,
        shutdown,
    )
    .await
}

/// How long [`serve_all`] lets requests in flight finish after a shutdown signal before it
/// drops the connections that still hold one (a stalled client must not hold a node forever).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the HTTP API on `http` and the gRPC API on `grpc`, for one node, until `shutdown`
/// completes; then both stop accepting and drain their requests in flight, for at most
/// [`DRAIN_TIMEOUT`]. If either server fails, the other is stopped too, and the error is
/// returned (the HTTP one if both failed).
pub async fn serve_all<S: Store>(
    http: TcpListener,
    grpc: TcpListener,
    node: impl Into<Node<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_all_draining(http, grpc, node, shutdown, DRAIN_TIMEOUT).await
}

/// [`serve_all`] with a chosen drain timeout.
pub async fn serve_all_draining<S: Store>(
    http: TcpListener,
    grpc: TcpListener,
    node: impl Into<Node<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let listeners = Listeners {
        http,
        grpc,
        admin: None,
    };
    serve_listeners(listeners, node, shutdown, drain).await
}

/// [`serve_all_draining`] on `listeners`: with [`Listeners::admin`], the admin API (the status
/// page, `/metrics` and the admin routes, and health) is served there and answers 404 on the
/// HTTP listener. The admin listener has budgets of its own (connections, requests in flight)
/// with the node's limits, so that a flood of the public listeners cannot shed the operator's
/// requests, and is served over [`Node::admin_tls`] if set, else over [`Node::tls`]. It stops and drains with the others, and its failure stops them too.
pub async fn serve_listeners<S: Store>(
    listeners: Listeners,
    node: impl Into<Node<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let Listeners { http, grpc, admin } = listeners;
    let node = node.into();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Completes once `stop` says so (or is gone).
    let stop_signal = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|&stop| stop).await;
    };
    let (public_routes, admin_server) = match admin {
        Some(admin) => {
            // Budgets of its own, with the same limits: a flood of the public listeners
            // cannot lock the operator out.
            let gate = Arc::new(Gate::new(*node.gate.limits()));
            let routes = http::admin_router(node.clone(), Arc::clone(&gate));
            let tls = node.admin_tls.clone().or_else(|| node.tls.clone());
            let admin_node = node.clone().with_tls(tls);
            let server = serve_routes(
                admin,
                admin_node,
                routes,
                None,
                gate,
                stop_signal(stopped.clone()),
            );
            (http::public_router(node.clone()), Some(server))
        }
        None => (http::router(node.clone()), None),
    };
    let ticker_node = node.clone();
    let http_server = serve_routes(
        http,
        node.clone(),
        public_routes,
        Some(http::CheckRoute::new(node.clone())),
        Arc::clone(&node.gate),
        stop_signal(stopped.clone()),
    );
    let grpc_server = grpc::serve(grpc, node, stop_signal(stopped.clone()));
    let trigger = async {
        let mut stopped = stop.subscribe();
        tokio::select! {
            () = shutdown => {}
            _ = stopped.wait_for(|&stop| stop) => {}
        }
        stop.send_replace(true);
    };
    let servers = async {
        let admin_server = async {
            match admin_server {
                Some(server) => stop_after(server, &stop).await,
                None => Ok(()),
            }
        };
        let (http, grpc, admin) = tokio::join!(
            stop_after(http_server, &stop),
            stop_after(grpc_server, &stop),
            admin_server
        );
        http.and(grpc).and(admin)
    };
    let housekeeping = tokio::spawn(housekeeping(ticker_node, stopped.clone()));
    let deadline = async {
        stop_signal(stopped).await;
        tokio::time::sleep(drain).await;
    };
    let ((), result) = tokio::join!(trigger, async {
        tokio::select! {
            result = servers => result,
            () = deadline => {
                tracing::warn!(
                    "requests still in flight {drain:?} after the shutdown signal; closing their connections"
                );
                Ok(())
            }
        }
    });
    housekeeping.abort();
    result
}

/// Once a second while the node runs: silent backends' adaptive factors recover (and the
/// metric follows), ended bans are dropped, and on Redis the shared bans and factors are synced.
async fn housekeeping<S: Store>(node: Node<S>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every_second.tick() => {}
            _ = stopped.wait_for(|&stop| stop) => return,
        }
        if node.limiter.tick_adaptive() {
            for (backend, factor, _) in node.limiter.load_factors() {
                node.metrics.set_factor(&backend, factor);
            }
        }
        node.limiter.sweep_bans();
        if let Some(shared) = &node.shared {
            match shared.sync(&node.limiter).await {
                Ok(()) => {
                    for (backend, factor, _) in node.limiter.load_factors() {
                        node.metrics.set_factor(&backend, factor);
                    }
                }
                Err(e) => tracing::warn!("shared bans and factors not synced: {e}"),
            }
        }
    }
}

/// Runs `server`, then tells the other servers of [`serve_all`] to stop.
async fn stop_after(
    server: impl Future<Output = std::io::Result<()>>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let result = server.await;
    stop.send_replace(true);
    result
}

/// Completes on Ctrl-C or, on Unix, `SIGTERM`: the signals that should stop a node gracefully.
///
/// On Unix the handlers are installed by this call, not when the future is first polled: a
/// signal sent between the two (a node told to stop right after it said it listens, on a busy
/// machine) would otherwise meet the default action and kill the process. Must be called
/// within a Tokio runtime.
///
/// If a handler cannot be installed, that signal is logged and ignored rather than treated as
/// a request to stop.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (ctrl_c, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        let wait = |kind: SignalKind, name: &'static str| {
            let installed = signal(kind);
            async move {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(e) => {
                        tracing::warn!("cannot listen for {name}: {e}");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        (
            wait(SignalKind::interrupt(), "Ctrl-C"),
            wait(SignalKind::terminate(), "SIGTERM"),
        )
    };
    #[cfg(not(unix))]
    let (ctrl_c, terminate) = (
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!("cannot listen for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! {
            () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
            () = terminate => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}
