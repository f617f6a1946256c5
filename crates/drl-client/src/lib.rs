//! `drl-client`: the clients of a `drl` node. [`Client`] is a minimal HTTP/1 client for
//! `POST /v1/check` (what `drl check` uses); [`grpc`] is the client of the native gRPC API.
//!
//! One connection per check, `http://` or `https://` (the system's root CAs, or a CA file given
//! with [`Client::with_ca`]): it is a command-line tool and a test aid, not a load generator.

pub mod grpc;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use drl_proto::json::{CheckRequest, CheckResponse, ErrorResponse};

/// The server `drl check` asks when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// How long a check may take, connection included, before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body the client reads.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A check that got no decision.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server URL is not usable.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The request could not be encoded (cannot happen with string ids; kept total).
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// No TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The CA file given for `https://` is not usable.
    #[error("CA file {path}: {reason}")]
    Ca { path: String, reason: String },
    /// The TLS handshake failed (e.g. a certificate the client does not trust).
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server refused the request (e.g. 400 for an empty user_id).
    #[error("the server refused the request ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    /// The server answered something that is not a check response.
    #[error("unexpected answer from the server ({status}): {reason}")]
    BadResponse { status: StatusCode, reason: String },
}

/// A client of one `drl` node.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header.
    authority: String,
    /// The check URL's path: the server URL's path (if any) + `/v1/check`.
    check_path: String,
    timeout: Duration,
    /// Set for `https://`.
    tls: Option<Tls>,
}

/// The client side of TLS: whom to trust, and the name the certificate must carry.
#[derive(Debug, Clone)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

/// A client config trusting `roots`.
fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Not input-dependent: fails only for a provider without those versions.
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl Client {
    /// A client of the node at `server`, e.g. `http://127.0.0.1:8080`.
    pub fn new(server: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: server.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = server
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(invalid("only http:// and https:// are supported")),
            None => return Err(invalid("expected a URL such as http://127.0.0.1:8080")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("it has no host"))?;
        if uri.query().is_some() {
            return Err(invalid("it must not have a query"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| invalid(&format!("not a TLS server name: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            // Certificates the system store cannot parse are skipped, as browsers do.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            Some(Tls {
                config: client_config(roots),
                name,
            })
        } else {
            None
        };
        Ok(Self {
            addr: format!("{}:{port}", authority.host()),
            authority: authority.as_str().to_owned(),
            check_path: format!("{}/v1/check", uri.path().trim_end_matches('/')),
            timeout: DEFAULT_TIMEOUT,
            tls,
        })
    }

    /// For `https://`: trusts the CA certificates in the PEM file `ca` instead of the system's
    /// root CAs. An error for an `http://` client, where it would silently do nothing.
    pub fn with_ca(mut self, ca: &Path) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Ca {
            path: ca.display().to_string(),
            reason,
        };
        let Some(tls) = &mut self.tls else {
            return Err(bad("a CA is for https:// servers".to_owned()));
        };
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad("no usable CERTIFICATE in the file".to_owned()));
        }
        tls.config = client_config(roots);
        Ok(self)
    }

    /// Gives up on a check after `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Asks whether `user_id` may call `endpoint` `hits` times now (and counts them if so).
    pub async fn check(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u64,
    ) -> Result<CheckResponse, ClientError> {
        let request = CheckRequest {
            user_id: user_id.to_owned(),
            endpoint: endpoint.to_owned(),
            hits,
        };
        tokio::time::timeout(self.timeout, self.exchange(&request))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn exchange(&self, request: &CheckRequest) -> Result<CheckResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let http_request = Request::builder()
            .method(Method::POST)
            .uri(self.check_path.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::InvalidUrl {
                url: self.check_path.clone(),
                reason: e.to_string(),
            })?;

        let stream =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        let response = match &self.tls {
            Some(tls) => {
                let stream = TlsConnector::from(Arc::clone(&tls.config))
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(|source| ClientError::Tls {
                        addr: self.addr.clone(),
                        source,
                    })?;
                send(stream, http_request).await?
            }
            None => send(stream, http_request).await?,
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::BadResponse {
                status,
                reason: format!("cannot read the body: {e}"),
            })?
            .to_bytes();
        decode(status, &body)
    }
}

/// Sends `request` on a new HTTP/1 connection over `io`.
async fn send(
    io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Drives the connection; ends when the sender is dropped after the response.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection to the drl server ended: {e}");
        }
    });
    Ok(sender.send_request(request).await?)
}

/// A check response from its status and body.
fn decode(status: StatusCode, body: &[u8]) -> Result<CheckResponse, ClientError> {
    let bad = |reason: String| ClientError::BadResponse { status, reason };
    match status {
        StatusCode::OK | StatusCode::TOO_MANY_REQUESTS => {
            let decision: CheckResponse = serde_json::from_slice(body)
                .map_err(|e| bad(format!("not a check response: {e}")))?;
            if decision.allowed != (status == StatusCode::OK) {
                return Err(bad(format!(
                    "the body says allowed={} but the status says otherwise",
                    decision.allowed
                )));
            }
            Ok(decision)
        }
        _ => {
            let message = serde_json::from_slice::<ErrorResponse>(body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
            Err(ClientError::Refused { status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_parsed() {
        let c = Client::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(c.addr, "127.0.0.1:8080");
        assert_eq!(c.check_path, "/v1/check");
        let c = Client::new("http://example.com/drl/").unwrap();
        assert_eq!(c.addr, "example.com:80");
        assert_eq!(c.authority, "example.com");
        assert_eq!(c.check_path, "/drl/v1/check");
        let c = Client::new("http://[::1]:9000").unwrap();
        assert_eq!(c.addr, "[::1]:9000");
        let c = Client::new("https://localhost:8443").unwrap();
        assert_eq!(c.addr, "localhost:8443");
        assert!(c.tls.is_some());
        assert_eq!(Client::new("https://[::1]").unwrap().addr, "[::1]:443");
        assert!(matches!(
            Client::new("http://x")
                .unwrap()
                .with_ca(Path::new("ca.pem")),
            Err(ClientError::Ca { .. })
        ));
        for bad in [
            "ftp://x",
            "127.0.0.1:8080",
            "",
            "http://x/?q=1",
            "ht tp://x",
        ] {
            assert!(
                matches!(Client::new(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn responses_are_decoded_by_status() {
        let allowed = br#"{"allowed":true,"limit":5,"remaining":4,"reset_after_ms":10,"retry_after_ms":0,"new":1}"#;
        assert!(decode(StatusCode::OK, allowed).unwrap().allowed);
        assert!(matches!(
            decode(StatusCode::TOO_MANY_REQUESTS, allowed),
            Err(ClientError::BadResponse { .. })
        ));
        let e = decode(
            StatusCode::BAD_REQUEST,
            br#"{"error":"user_id must not be empty"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server refused the request (400 Bad Request): user_id must not be empty"
        );
        assert!(matches!(
            decode(StatusCode::OK, b"not json"),
            Err(ClientError::BadResponse { .. })
        ));
    }
}
