//! Errors of the Redis store.

use thiserror::Error;

/// A script answered something that is not a decision (a bug or a foreign key of that name).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unexpected script reply: {0}")]
pub struct ReplyError(pub String);

/// The store could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No URL was given.
    #[error("store.redis.urls: at least one URL is required")]
    NoUrls,
    /// A single-instance store was given several URLs.
    #[error("store.redis.urls: {0} URLs given with cluster: false; a single Redis takes one")]
    TooManyUrls(usize),
    /// A URL redis-rs does not accept.
    #[error("store.redis.urls: {url}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The timeout is zero.
    #[error("store.redis.timeout must be more than zero")]
    ZeroTimeout,
    /// `store.redis.tls` with a `redis://` URL: TLS settings need `rediss://`.
    #[error("store.redis.tls: {0} is not a rediss:// URL")]
    TlsWithoutRediss(String),
    /// A TLS file could not be read.
    #[error("store.redis.tls: {path}: {reason}")]
    TlsFile { path: String, reason: String },
}
