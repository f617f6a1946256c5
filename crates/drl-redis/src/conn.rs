//! Connections: one multiplexed connection to a single Redis, or redis-rs's cluster connection
//! (one multiplexed connection per node, slot routing, MOVED/ASK and reconnection handled). Both
//! are made lazily and remade after a failure, and every step is bounded by the store timeout:
//! redis-rs's defaults (no response timeout, 1.28 s minimum retry wait for clusters) are
//! replaced, and connecting is wrapped in a timeout as well (redis-rs#1953).
//!
//! In a cluster the connector also reaches single nodes by address (to ask each for its view of
//! the cluster) and can make a new cluster connection from chosen seeds, which
//! [`crate::follow`] swaps in when the current one routes slots to a master the cluster replaced.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, Pipeline, RedisError, TlsCertificates, Value,
};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, RedisTls};
use crate::error::ConfigError;

/// A connected handle, cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// One command, routed by its first key in a cluster.
    pub(crate) async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// PING the master of `slot` (the one instance, in single mode).
    pub(crate) async fn ping(&mut self, slot: u16) -> Result<(), RedisError> {
        self.on_master(redis::cmd("PING"), slot).await.map(drop)
    }

    /// One keyless command, sent where this connection routes `slot`: to its master (to the one
    /// instance, in single mode).
    pub(crate) async fn on_master(&mut self, cmd: Cmd, slot: u16) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                c.route_command(cmd, RoutingInfo::SingleNode(route)).await
            }
        }
    }

    /// A pipeline sent to the master of `slot` (a single Redis ignores the slot). Errors of
    /// single commands come back as [`Value::ServerError`].
    pub(crate) async fn pipeline_on(
        &mut self,
        pipe: Pipeline,
        slot: u16,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        match self {
            Conn::Single(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                c.route_pipeline(pipe, 0, count, route).await
            }
        }
    }
}

enum Target {
    // Boxed: with TLS compiled in, a `Client` carries its TLS parameters.
    Single(Box<Client>),
    Cluster(Box<ClusterClient>),
}

/// Makes and keeps the connection.
pub(crate) struct Connector {
    target: Target,
    timeout: Duration,
    current: Mutex<Option<Conn>>,
    /// The cluster's seed URLs, parsed: a node found later is reached with the first one's
    /// credentials and TLS settings, as redis-rs reaches every node.
    seeds: Vec<ConnectionInfo>,
    certs: Option<TlsCertificates>,
    /// Connections to single cluster nodes, by address.
    nodes: std::sync::Mutex<HashMap<(String, u16), MultiplexedConnection>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let (urls, cluster, timeout) = (&config.urls, config.cluster, config.timeout);
        if urls.is_empty() {
            return Err(ConfigError::NoUrls);
        }
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        let bad = |url: &String, e: RedisError| ConfigError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        };
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            use_ring();
        }
        let certs = config
            .tls
            .as_ref()
            .map(|tls| certificates(urls, tls))
            .transpose()?;
        let open = |url: &String| match &certs {
            Some(certs) => Client::build_with_tls(url.as_str(), certs.clone()),
            None => Client::open(url.as_str()),
        };
        let mut seeds = Vec::new();
        let target = if cluster {
            for url in urls {
                open(url).map_err(|e| bad(url, e))?;
                seeds.push(
                    url.as_str()
                        .into_connection_info()
                        .map_err(|e| bad(url, e))?,
                );
            }
            let client = cluster_client(seeds.clone(), certs.clone(), timeout)
                .map_err(|e| bad(&urls[0], e))?;
            Target::Cluster(Box::new(client))
        } else {
            if urls.len() > 1 {
                return Err(ConfigError::TooManyUrls(urls.len()));
            }
            Target::Single(Box::new(open(&urls[0]).map_err(|e| bad(&urls[0], e))?))
        };
        Ok(Self {
            target,
            timeout,
            current: Mutex::new(None),
            seeds,
            certs,
            nodes: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The configured seeds' addresses (cluster only).
    pub(crate) fn seed_addresses(&self) -> Vec<(String, u16)> {
        self.seeds
            .iter()
            .filter_map(|info| match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect()
    }

    /// How to reach the cluster node at `host:port`: the first seed's settings, that address.
    fn node_info(&self, host: &str, port: u16) -> Option<ConnectionInfo> {
        let seed = self.seeds.first()?;
        let mut addr = seed.addr().clone();
        match &mut addr {
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => {
                *h = host.to_owned();
                *p = port;
            }
            _ => return None,
        }
        Some(seed.clone().set_addr(addr))
    }

    /// A connection to the single cluster node at `host:port`, made if there is none (bounded by
    /// the timeout) and kept until [`Connector::forget_node`].
    pub(crate) async fn node(
        &self,
        host: &str,
        port: u16,
    ) -> Result<MultiplexedConnection, RedisError> {
        let key = (host.to_owned(), port);
        if let Some(conn) = lock(&self.nodes).get(&key) {
            return Ok(conn.clone());
        }
        let info = self.node_info(host, port).ok_or_else(|| {
            RedisError::from((redis::ErrorKind::InvalidClientConfig, "no TCP seed"))
        })?;
        let client = match &self.certs {
            Some(certs) => Client::build_with_tls(info, certs.clone())?,
            None => Client::open(info)?,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let conn = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| timed_out())??;
        lock(&self.nodes).insert(key, conn.clone());
        Ok(conn)
    }

    /// Drops the connections to nodes not in `addresses` (nodes that left the cluster).
    pub(crate) fn retain_nodes(&self, addresses: &[(String, u16)]) {
        lock(&self.nodes).retain(|address, _| addresses.contains(address));
    }

    /// Drops the connection to one node (after it failed: the next use reconnects).
    pub(crate) fn forget_node(&self, host: &str, port: u16) {
        lock(&self.nodes).remove(&(host.to_owned(), port));
    }

    /// A new cluster connection seeded with `nodes` (bounded by `budget`), not yet in use.
    pub(crate) async fn connect_cluster(
        &self,
        nodes: &[(String, u16)],
        budget: Duration,
    ) -> Result<Conn, RedisError> {
        let seeds: Vec<ConnectionInfo> = nodes
            .iter()
            .filter_map(|(host, port)| self.node_info(host, *port))
            .collect();
        if seeds.is_empty() {
            return Err((redis::ErrorKind::InvalidClientConfig, "no seeds").into());
        }
        let client = cluster_client(seeds, self.certs.clone(), self.timeout)?;
        let conn = tokio::time::timeout(budget, client.get_async_connection())
            .await
            .map_err(|_| timed_out())??;
        Ok(Conn::Cluster(conn))
    }

    /// Makes `conn` the connection every later check uses. Calls in flight on the previous one
    /// finish there; it closes when the last of them drops it.
    pub(crate) async fn replace(&self, conn: Conn) {
        *self.current.lock().await = Some(conn);
    }

    /// The connection, connecting first if there is none (bounded by the timeout).
    pub(crate) async fn get(&self) -> Result<Conn, RedisError> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                let connect = client.get_multiplexed_async_connection_with_config(&config);
                Conn::Single(
                    tokio::time::timeout(self.timeout, connect)
                        .await
                        .map_err(|_| timed_out())??,
                )
            }
            Target::Cluster(client) => Conn::Cluster(
                tokio::time::timeout(self.timeout, client.get_async_connection())
                    .await
                    .map_err(|_| timed_out())??,
            ),
        };
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Drops a single instance's connection after an error that may have broken it, so the next
    /// check reconnects. (The cluster connection repairs itself.)
    pub(crate) async fn reset_after(&self, error: &RedisError) {
        if matches!(self.target, Target::Single(_))
            && (error.is_io_error() || error.is_connection_dropped() || error.is_timeout())
        {
            *self.current.lock().await = None;
        }
    }
}

/// redis-rs's cluster client for `seeds`, with every step bounded by `timeout`.
fn cluster_client(
    seeds: Vec<ConnectionInfo>,
    certs: Option<TlsCertificates>,
    timeout: Duration,
) -> Result<ClusterClient, RedisError> {
    let mut builder = ClusterClient::builder(seeds);
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    builder
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait(50)
        .build()
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The PEM files of `tls`, read, as redis-rs takes them; every URL must be `rediss://`.
fn certificates(urls: &[String], tls: &RedisTls) -> Result<TlsCertificates, ConfigError> {
    if let Some(url) = urls.iter().find(|u| !u.starts_with("rediss://")) {
        return Err(ConfigError::TlsWithoutRediss(url.clone()));
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ConfigError::TlsFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let root_cert = tls.ca.as_deref().map(read).transpose()?;
    let client_tls = match &tls.client {
        Some(client) => Some(ClientTlsConfig {
            client_cert: read(&client.cert)?,
            client_key: read(&client.key)?,
        }),
        None => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// redis-rs builds its rustls configs with the process-wide crypto provider: make it *ring*
/// unless the process chose one already (rustls cannot pick by itself once more than one
/// provider is compiled in).
fn use_ring() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
