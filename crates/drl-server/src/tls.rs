//! TLS for the HTTP and gRPC servers (rustls on *ring*), with certificate files reloaded while
//! the node runs.
//!
//! A [`ServerTls`] is loaded from the PEM files of a [`TlsConfig`] (the `server.tls` section of
//! the config): a certificate chain, its private key, and optionally the CA that client
//! certificates must chain to (mutual TLS). It holds one rustls [`ServerConfig`] per API (they
//! differ in ALPN only: `http/1.1` for HTTP, `h2` for gRPC) behind an [`ArcSwap`].
//!
//! Every accepted connection takes the configs in force at that moment, so a reload
//! ([`ServerTls::reload_if_changed`], run every [`POLL_INTERVAL`] by [`watch`]) changes what
//! *new* connections see and never touches established ones. The files are read and the whole
//! set is built before the swap: a certificate that does not match its key, a missing file or a
//! bad PEM is an error, logged, and the configs in force stay.
//!
//! Connections are accepted by [`crate::edge`], which runs each handshake in the connection's
//! own task, counted in the connection cap and bounded by the header read timeout, so a slow or
//! silent client never holds up the others.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio::task::JoinHandle;

/// How often [`watch`] looks at the files' modification times.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Where the server's PEM files are (`server.tls` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Set for mutual TLS: clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// TLS that could not be set up from the files.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// rustls refused the set (a key that does not match the certificate, a bad CA).
    #[error("{0}")]
    Rustls(String),
}

/// Which API a connection is for; decides the ALPN protocol offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// HTTP/1.1 (`http/1.1`).
    Http,
    /// gRPC over HTTP/2 (`h2`; gRPC clients such as grpc-go require it).
    Grpc,
}

/// The configs in force, one per API.
#[derive(Debug)]
struct Configs {
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

/// What the files looked like when they were last read: length, modification time and inode
/// of each (a file replaced by a rename has a new inode even within one tick of the clock).
type Stamp = Vec<Option<(u64, SystemTime, u64)>>;

/// The server side of TLS, shared by both listeners; reloads its files on demand.
pub struct ServerTls {
    files: TlsConfig,
    configs: ArcSwap<Configs>,
    /// The stamp of the files last tried, good or bad: a bad pair is reported once, not at
    /// every poll, and retried as soon as a file changes again.
    tried: Mutex<Stamp>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the configs; fails if they are not a usable set.
    pub fn load(files: TlsConfig) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let configs = build(&files)?;
        Ok(Self {
            files,
            configs: ArcSwap::from_pointee(configs),
            tried: Mutex::new(stamp),
        })
    }

    /// The files this TLS is read from.
    pub fn files(&self) -> &TlsConfig {
        &self.files
    }

    /// The rustls config that a new connection to `api` gets now.
    pub fn server_config(&self, api: Api) -> Arc<ServerConfig> {
        let configs = self.configs.load();
        match api {
            Api::Http => Arc::clone(&configs.http),
            Api::Grpc => Arc::clone(&configs.grpc),
        }
    }

    /// Rereads the files if any of them changed (length or modification time) since they were
    /// last tried. `Ok(true)`: new connections get the new certificate; `Ok(false)`: nothing
    /// changed; an error: the files are not a usable set and the configs in force stay.
    /// Blocking (file I/O).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        {
            let mut tried = self.tried.lock().unwrap_or_else(PoisonError::into_inner);
            if *tried == now {
                return Ok(false);
            }
            *tried = now;
        }
        self.reload().map(|()| true)
    }

    /// Rereads the files and swaps the new configs in, or changes nothing on error.
    /// Blocking (file I/O).
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.files)?;
        self.configs.store(Arc::new(configs));
        Ok(())
    }
}

/// Polls `tls`'s files every `every` and reloads them when they change, logging the outcome;
/// runs until the handle is aborted (or dropped with [`Watch`]).
pub fn watch(tls: Arc<ServerTls>, every: Duration) -> Watch {
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let tls = Arc::clone(&tls);
            let outcome = tokio::task::spawn_blocking(move || {
                let outcome = tls.reload_if_changed();
                (tls, outcome)
            })
            .await;
            match outcome {
                Ok((_, Ok(false))) => {}
                Ok((tls, Ok(true))) => tracing::info!(
                    "TLS certificate {} reloaded; new connections use it",
                    tls.files.cert.display()
                ),
                Ok((_, Err(e))) => {
                    tracing::error!("TLS files refused; the certificate in force stays: {e}");
                }
                Err(e) => tracing::error!("the TLS reload task failed: {e}"),
            }
        }
    });
    Watch { task }
}

/// The running poll of [`watch`]; stops when dropped.
#[derive(Debug)]
pub struct Watch {
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The length, modification time and inode of each file (`None` for one that cannot be read).
fn stamp(files: &TlsConfig) -> Stamp {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some((meta.len(), meta.modified().ok()?, inode))
    })
    .collect()
}

/// Reads the files and builds both configs.
fn build(files: &TlsConfig) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let client_ca = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?;
        let builder = match &client_ca {
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?,
            ),
            None => builder.with_no_client_auth(),
        };
        // `with_single_cert` checks that the key is the certificate's.
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError::Rustls(format!(
                    "{} with the key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Configs {
        http: config(b"http/1.1")?,
        grpc: config(b"h2")?,
    })
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn rustls_error(e: rustls::Error) -> TlsError {
    TlsError::Rustls(e.to_string())
}
