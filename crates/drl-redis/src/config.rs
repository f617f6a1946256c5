//! The store's settings: `store.redis` of the config file (docs/configuration.md).

use std::path::PathBuf;
use std::time::Duration;

/// How an admission is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Answer "allowed" only after `WAIT 1` on the key's master confirms that a replica holds
    /// the admission; a shortfall or an error answers denied. Bounds what a failover can forget.
    #[default]
    Strict,
    /// Answer as soon as the master has run the script (replication stays asynchronous).
    Fast,
}

impl Consistency {
    /// The config name's value: `strict` or `fast`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "strict" => Some(Self::Strict),
            "fast" => Some(Self::Fast),
            _ => None,
        }
    }
}

/// What a check answers while the store fails (error or timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Deny (fail closed).
    #[default]
    Deny,
    /// Allow (fail open): admissions are not counted anywhere.
    Allow,
    /// Decide with an in-memory store of this node, with the same rules, until Redis answers
    /// again. Each node then enforces the limits on its own share of the traffic.
    Local,
}

impl OnError {
    /// The config value: `deny`, `allow` or `local`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "deny" => Some(Self::Deny),
            "allow" => Some(Self::Allow),
            "local" => Some(Self::Local),
            _ => None,
        }
    }
}

/// Settings of a [`RedisStore`](crate::RedisStore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port` URLs: the one instance, or seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Redis Cluster (true) or a single instance (false).
    pub cluster: bool,
    pub consistency: Consistency,
    pub on_error: OnError,
    /// Bound on connecting and on every check's round trip (WAIT included); past it the check is
    /// answered by `on_error`.
    pub timeout: Duration,
    /// Most denials held in the local deny cache.
    pub deny_cache_capacity: usize,
    /// TLS settings for `rediss://` URLs (without them: the system's root CAs, no client
    /// certificate).
    pub tls: Option<RedisTls>,
    /// Leases of hot keys (`store.redis.leases`, docs/hot-keys.md); `None`: off.
    pub leases: Option<LeaseConfig>,
    /// Read an older drl's state (hashes under lower-case letters) when a counter's key is made,
    /// so windows keep running across an upgrade from that layout (`store.redis.read_old_keys`,
    /// docs/redis.md "Upgrading"). Off by default: it costs each new key one more read.
    pub read_old_keys: bool,
}

/// `store.redis.leases`: when a node answers a hot key's checks from a slice of its window held
/// in memory (sliding_window and fixed_window only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseConfig {
    /// Checks per second of one key on this node above which the node asks for slices.
    pub threshold: f64,
    /// Most of N one slice may hold (0 < max_fraction ≤ 1).
    pub max_fraction: f64,
}

// Never NaN: the configuration refuses it.
impl Eq for LeaseConfig {}

impl LeaseConfig {
    /// Default `threshold`: checks per second of one key on one node.
    pub const DEFAULT_THRESHOLD: f64 = 1000.0;
    /// Default `max_fraction`.
    pub const DEFAULT_MAX_FRACTION: f64 = 0.1;
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            threshold: Self::DEFAULT_THRESHOLD,
            max_fraction: Self::DEFAULT_MAX_FRACTION,
        }
    }
}

/// `store.redis.tls`: the PEM files of a TLS connection to Redis (`rediss://` URLs only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// The CA that Redis's certificate must chain to, instead of the system's root CAs.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for a Redis that asks for one (`tls-auth-clients`).
    pub client: Option<ClientCert>,
}

/// A client certificate (chain, leaf first) and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Default store timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default deny-cache capacity.
pub const DEFAULT_DENY_CACHE: usize = 65_536;

impl RedisConfig {
    /// Defaults for everything but the URLs: a single instance, strict, deny, 50 ms.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            cluster: false,
            consistency: Consistency::default(),
            on_error: OnError::default(),
            timeout: DEFAULT_TIMEOUT,
            deny_cache_capacity: DEFAULT_DENY_CACHE,
            tls: None,
            leases: None,
            read_old_keys: false,
        }
    }
}
