//! A whole node, wired as `drl serve` runs it: the config loaded (or the built-in rules), the
//! store it names (memory, or Redis with the state shared between nodes), TLS and its file
//! watch, the reload triggers (file changes, SIGHUP, the admin route), the admin token, both
//! APIs served on the listeners given, until `shutdown`. The binary parses arguments and binds;
//! tests run a whole node in process the same way.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use drl_core::{Limiter, Rules, Store};
use drl_redis::RedisStore;
use drl_redis::shared::SharedState;
use tokio::net::TcpListener;

use crate::limits::EdgeLimits;
use crate::metrics::Metrics;
use crate::node::{AdminToken, Node};
use crate::reload::{self, Reloader};
use crate::tls::{self, ServerTls};
use crate::{Config, StoreConfig};
use drl_redis::shared::Coordination;

/// What a node is started with.
#[derive(Debug, Default)]
pub struct Settings {
    /// The config file or directory; `None` runs the built-in rules on the memory store.
    pub config: Option<PathBuf>,
    /// The edge's input limits and budgets.
    pub limits: EdgeLimits,
    /// Enables the admin routes.
    pub admin_token: Option<AdminToken>,
}

/// The bound listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// The HTTP API: checks and health, and the admin API unless `admin` is set.
    pub http: TcpListener,
    /// The gRPC API.
    pub grpc: TcpListener,
    /// The admin API on its own listener (`--admin-addr`): the status page, `/metrics`, health
    /// and the admin routes, which then answer 404 on `http`. When `None`, [`run`] binds the
    /// config's `server.admin.addr` if it has one.
    pub admin: Option<TcpListener>,
}

/// Runs a node with `settings` on `listeners` until `shutdown` completes, then drains it.
pub async fn run(
    settings: Settings,
    mut listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Settings {
        config,
        limits,
        admin_token,
    } = settings;
    let (store, rules, tls, admin, native_file) = match &config {
        Some(path) => {
            let config = Config::load(path)?;
            tracing::info!(
                "config {} loaded: {} rules",
                path.display(),
                config.rules.rules().len()
            );
            for warning in config.warnings() {
                tracing::warn!("config {}: {warning}", path.display());
            }
            let native_file = config.native_file().map(str::to_owned);
            let Config {
                store,
                rules,
                tls,
                admin,
                ..
            } = config;
            (store, rules, tls, admin, native_file)
        }
        None => (StoreConfig::Memory, Rules::builtin(), None, None, None),
    };
    let tls = match tls {
        Some(files) => Some(Arc::new(ServerTls::load(files).context("server.tls")?)),
        None => None,
    };
    let admin_tls = match admin.as_ref().and_then(|admin| admin.tls.clone()) {
        Some(files) => Some(Arc::new(
            ServerTls::load(files).context("server.admin.tls")?,
        )),
        None => None,
    };
    // `--admin-addr` (already bound) wins over the config's address.
    if let (None, Some(admin)) = (&listeners.admin, &admin) {
        let listener = TcpListener::bind(&admin.addr)
            .await
            .with_context(|| format!("server.admin.addr: cannot listen on {}", admin.addr))?;
        listeners.admin = Some(listener);
    }
    let wiring = Wiring {
        config: config.as_deref(),
        native_file,
        tls,
        admin_tls,
        limits,
        admin_token,
    };
    match store {
        StoreConfig::Memory => {
            run_node(Limiter::new(rules), None, wiring, listeners, shutdown).await
        }
        StoreConfig::Redis(redis) => {
            let store = RedisStore::new(&redis).context("store.redis")?;
            // Connecting is lazy: a node starts while Redis is down and answers by `on_error`.
            match store.ping().await {
                Ok(()) => tracing::info!("Redis store at {}", redis.urls.join(", ")),
                Err(e) => tracing::warn!("Redis store not reachable yet: {e}"),
            }
            // Reachable is not ready: strict mode on a master without a replica denies all.
            if let Err(e) = drl_core::Store::ready(&store).await {
                tracing::warn!("the node is not ready (/readyz, gRPC health): {e}");
            }
            let limiter = Limiter::builder(rules).build_with_store(store);
            // Bans, blocks and load factors are shared by every node on this Redis.
            let shared = SharedState::new(&redis).context("store.redis")?;
            let coordination = Arc::new(Coordination::new(shared));
            run_node(limiter, Some(coordination), wiring, listeners, shutdown).await
        }
    }
}

/// What the node is wired with besides its limiter.
struct Wiring<'a> {
    config: Option<&'a Path>,
    /// The file of `config` that held the native part, if any (see `Config::native_file`).
    native_file: Option<String>,
    tls: Option<Arc<ServerTls>>,
    /// The admin listener's own TLS (`server.admin.tls`).
    admin_tls: Option<Arc<ServerTls>>,
    limits: EdgeLimits,
    admin_token: Option<AdminToken>,
}

/// Runs a node on `limiter` until `shutdown`.
async fn run_node<S: Store>(
    limiter: Limiter<S>,
    coordination: Option<Arc<Coordination>>,
    wiring: Wiring<'_>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Wiring {
        config,
        native_file,
        tls,
        admin_tls,
        limits,
        admin_token,
    } = wiring;
    let metrics = Arc::new(Metrics::new());
    metrics.set_config_version(1);
    let mut node = Node::new(limiter.clone(), Arc::clone(&metrics))
        .with_admin_token(admin_token)
        .with_shared(coordination)
        .with_tls(tls.clone())
        .with_admin_tls(admin_tls.clone())
        .with_limits(limits);
    // The certificate files are polled while the node runs; a new pair serves new connections.
    let _tls_watches: Vec<_> = [&tls, &admin_tls]
        .into_iter()
        .flatten()
        .map(|tls| tls::watch(Arc::clone(tls), tls::POLL_INTERVAL))
        .collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin_scheme = if admin_tls.is_some() || tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Reload triggers run until they are dropped, after the server has stopped.
    let mut triggers = Vec::new();
    if let Some(path) = config {
        let reloader = Arc::new(Reloader::new(
            path,
            native_file.as_deref(),
            limiter,
            metrics,
        ));
        triggers.push(
            reload::watch_file(Arc::clone(&reloader)).context("cannot watch the config file")?,
        );
        #[cfg(unix)]
        triggers.push(
            reload::reload_on_sighup(Arc::clone(&reloader)).context("cannot listen for SIGHUP")?,
        );
        node = node.with_reloader(reloader);
    } else {
        #[cfg(unix)]
        triggers.push(reload::ignore_sighup().context("cannot listen for SIGHUP")?);
    }
    tracing::info!("listening on {scheme}://{}", listeners.http.local_addr()?);
    tracing::info!("gRPC listening on {}", listeners.grpc.local_addr()?);
    if let Some(admin) = &listeners.admin {
        tracing::info!(
            "admin listening on {admin_scheme}://{}",
            admin.local_addr()?
        );
    }
    if let Some(tls) = &tls {
        tracing::info!(
            "TLS on both APIs with {}{}",
            tls.files().cert.display(),
            if tls.files().client_ca.is_some() {
                "; client certificates required"
            } else {
                ""
            }
        );
    }
    if let Some(tls) = &admin_tls {
        tracing::info!(
            "TLS on the admin listener with {}{}",
            tls.files().cert.display(),
            if tls.files().client_ca.is_some() {
                "; client certificates required"
            } else {
                ""
            }
        );
    }
    crate::serve_listeners(listeners, node, shutdown, crate::DRAIN_TIMEOUT).await?;
    drop(triggers);
    tracing::info!("stopped");
    Ok(())
}
