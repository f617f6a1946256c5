//! The `store:` and `server.tls:` sections: the memory or Redis store (URLs, consistency,
//! failure policy, timeouts, pool, TLS) and the server's certificate files.

use drl_redis::{ClientCert, RedisTls};
use serde_saphyr::{Location, Spanned};

use super::raw::{RawLeases, RawRedis, RawRedisTls, RawServerAdmin, RawServerTls, RawStore, Text};
use super::validate::Validator;
use super::{AdminConfig, StoreConfig};
use crate::tls::TlsConfig;

impl Validator<'_> {
    pub(crate) fn store(&mut self, store: &RawStore) -> Option<StoreConfig> {
        let used = store.kind.as_ref().is_some_and(|k| k.value == "redis");
        let redis = store
            .redis
            .as_ref()
            .map(|redis| self.redis(&redis.value, redis.referenced, used));
        match &store.kind {
            None => Some(StoreConfig::Memory),
            Some(kind) => match kind.value.as_str() {
                "memory" => Some(StoreConfig::Memory),
                "redis" => match redis {
                    Some(redis) => redis.map(StoreConfig::Redis),
                    None => {
                        self.error(
                            kind.referenced,
                            "kind: redis needs a `redis:` section with at least `urls`",
                        );
                        None
                    }
                },
                other => {
                    self.error(
                        kind.referenced,
                        format_args!("unknown store kind {other:?}: expected memory or redis"),
                    );
                    None
                }
            },
        }
    }

    /// `store.redis`, with the defaults of [`drl_redis::RedisConfig::new`] for what is not set.
    /// Every value is checked; what only matters to a running store (URLs present, one URL for a
    /// single instance) only when it is `used` (`kind: redis`).
    pub(crate) fn redis(
        &mut self,
        redis: &RawRedis,
        at: Location,
        used: bool,
    ) -> Option<drl_redis::RedisConfig> {
        let mut ok = true;
        let mut urls = Vec::new();
        for url in redis.urls.iter().flatten() {
            if !(url.value.starts_with("redis://") || url.value.starts_with("rediss://")) {
                self.error(
                    url.referenced,
                    format_args!(
                        "invalid Redis URL {:?}: expected redis://host:port or rediss://host:port",
                        url.value
                    ),
                );
                ok = false;
            }
            urls.push(url.value.clone());
        }
        let cluster = redis.cluster.unwrap_or(false);
        match redis.urls.as_deref() {
            _ if !used => {}
            None | Some([]) => {
                self.error(
                    at,
                    "store.redis needs `urls`: the instance, or seed nodes of a cluster",
                );
                ok = false;
            }
            Some([_, second, ..]) if !cluster => {
                self.error(
                    second.referenced,
                    "several URLs with `cluster: false`: a single Redis takes one URL",
                );
                ok = false;
            }
            Some(_) => {}
        }
        let mut config = drl_redis::RedisConfig::new(urls);
        config.cluster = cluster;
        config.read_old_keys = redis.read_old_keys.unwrap_or(false);
        if let Some(value) = &redis.consistency {
            match drl_redis::Consistency::from_name(&value.value) {
                Some(c) => config.consistency = c,
                None => {
                    self.one_of(Some(value), "consistency", &["strict", "fast"]);
                    ok = false;
                }
            }
        }
        if let Some(value) = &redis.on_error {
            match drl_redis::OnError::from_name(&value.value) {
                Some(o) => config.on_error = o,
                None => {
                    self.one_of(Some(value), "on_error", &["deny", "allow", "local"]);
                    ok = false;
                }
            }
        }
        if let Some(timeout) = &redis.timeout {
            match drl_core::parse_duration(&timeout.value) {
                Ok(t) if t.is_zero() => {
                    self.error(
                        timeout.referenced,
                        "the store timeout must be more than zero",
                    );
                    ok = false;
                }
                Ok(t) => config.timeout = t,
                Err(e) => {
                    self.error(timeout.referenced, e);
                    ok = false;
                }
            }
        }
        if let Some(tls) = &redis.tls {
            match self.redis_tls(tls, redis.urls.as_deref().unwrap_or_default()) {
                Some(tls) => config.tls = Some(tls),
                None => ok = false,
            }
        }
        if let Some(leases) = &redis.leases {
            match self.leases(&leases.value) {
                Some(leases) => config.leases = Some(leases),
                None => ok = false,
            }
        }
        ok.then_some(config)
    }

    /// `store.redis.leases`: a threshold above zero (checks per second of one key on one node)
    /// and a fraction of N in (0, 1].
    fn leases(&mut self, raw: &RawLeases) -> Option<drl_redis::LeaseConfig> {
        let mut config = drl_redis::LeaseConfig::default();
        let mut ok = true;
        if let Some(threshold) = &raw.threshold {
            if threshold.value.is_finite() && threshold.value > 0.0 {
                config.threshold = threshold.value;
            } else {
                self.error(
                    threshold.referenced,
                    format_args!(
                        "leases.threshold must be a number of checks per second above 0, got {}",
                        threshold.value
                    ),
                );
                ok = false;
            }
        }
        if let Some(fraction) = &raw.max_fraction {
            if fraction.value > 0.0 && fraction.value <= 1.0 {
                config.max_fraction = fraction.value;
            } else {
                self.error(
                    fraction.referenced,
                    format_args!(
                        "leases.max_fraction must be more than 0 and at most 1 (a share of the \
                         limit), got {}",
                        fraction.value
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(config)
    }

    /// `server.tls`.
    pub(crate) fn server_tls(&mut self, raw: &RawServerTls) -> Option<TlsConfig> {
        let cert = self.path(&raw.cert);
        let key = self.path(&raw.key);
        let client_ca = match &raw.client_ca {
            Some(ca) => self.path(ca).map(Some),
            None => Some(None),
        };
        Some(TlsConfig {
            cert: cert?,
            key: key?,
            client_ca: client_ca?,
        })
    }

    /// `server.admin`: an address to listen on, and TLS files if it has its own.
    pub(crate) fn server_admin(&mut self, raw: &RawServerAdmin) -> Option<AdminConfig> {
        let addr = self.listen_addr(&raw.addr);
        let tls = match &raw.tls {
            Some(tls) => self.server_tls(&tls.value).map(Some),
            None => Some(None),
        };
        Some(AdminConfig {
            addr: addr?,
            tls: tls?,
        })
    }

    /// An address to listen on: `host:port`, the port a number up to 65535 (0: any free one).
    fn listen_addr(&mut self, raw: &Text) -> Option<String> {
        let port = raw
            .value
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if let Some((host, Ok(_))) = port
            && !host.is_empty()
        {
            return Some(raw.value.clone());
        }
        self.error(
            raw.referenced,
            format_args!(
                "{:?} is not an address to listen on: write host:port (e.g. 127.0.0.1:9090)",
                raw.value
            ),
        );
        None
    }

    /// `store.redis.tls`; `urls` are the store's, which must all be `rediss://`.
    pub(crate) fn redis_tls(
        &mut self,
        raw: &Spanned<RawRedisTls>,
        urls: &[Text],
    ) -> Option<RedisTls> {
        let mut ok = true;
        if let Some(url) = urls.iter().find(|u| !u.value.starts_with("rediss://")) {
            self.error(
                url.referenced,
                format_args!(
                    "{:?} is not a rediss:// URL: store.redis.tls needs TLS URLs",
                    url.value
                ),
            );
            ok = false;
        }
        let tls = &raw.value;
        let ca = tls.ca.as_ref().map(|ca| self.path(ca));
        let client = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (self.path(cert), self.path(key));
                Some(cert.zip(key).map(|(cert, key)| ClientCert { cert, key }))
            }
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                self.error(
                    raw.referenced,
                    "store.redis.tls: a client certificate needs both `cert` and `key`",
                );
                ok = false;
                None
            }
        };
        let ca = match ca {
            Some(ca) => Some(ca?),
            None => None,
        };
        let client = match client {
            Some(client) => Some(client?),
            None => None,
        };
        ok.then_some(RedisTls { ca, client })
    }
}
