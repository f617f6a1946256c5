//! `drl-server`: a `drl` node — its configuration, its HTTP API, and the client that `drl check`
//! uses to ask one.
//!
//! - [`config`]: the YAML config of DESIGN.md §4, validated once with line/column diagnostics.
//! - [`api`]: the JSON wire types, shared by the server and the client.
//! - [`http`]: the axum [`Router`](axum::Router) over a [`Limiter`](drl_core::Limiter):
//!   `POST /v1/check`, `GET /healthz`, `GET /readyz`, `GET /metrics`, and the admin routes
//!   `GET /v1/config` and `POST /v1/config/reload`.
//! - [`metrics`]: the node's Prometheus metrics, in one explicit registry.
//! - [`reload`]: hot reload of the config file, on a change of the file, on SIGHUP, or asked
//!   for by the admin route.
//! - [`client`]: a small HTTP client for `POST /v1/check`, and the `drl check` command.
//!
//! The library owns the server: [`serve`] takes a bound listener and a shutdown future, so the
//! binary only parses arguments and tests bind port 0 and talk to real sockets.

pub mod api;
pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod reload;

use std::future::Future;

use drl_core::Store;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, Diagnostic, StoreConfig};
pub use http::AppState;
pub use metrics::Metrics;

/// Serves the HTTP API of a node (a [`Limiter`](drl_core::Limiter), or an [`AppState`] with
/// its metrics, reloader and admin token) on `listener` until `shutdown` completes, then stops accepting connections and returns once the
/// requests in flight are answered.
pub async fn serve<S: Store>(
    listener: TcpListener,
    node: impl Into<AppState<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::router(node))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on Ctrl-C or, on Unix, `SIGTERM`: the signals that should stop a node gracefully.
///
/// If a handler cannot be installed, that signal is logged and ignored rather than treated as
/// a request to stop.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
