//! A node on a real loopback socket (port 0), with a manual clock, and a raw HTTP/1.1 client
//! that can send anything, malformed requests included.

use std::net::SocketAddr;

use drl_core::{Limiter, ManualClock, Rules};
use drl_server::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::DEADLINE;

/// A running node.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    /// Shares its store with the server's limiter, to inspect counters directly.
    pub limiter: Limiter,
    /// The server's clock; time moves only when a test advances it.
    pub clock: ManualClock,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Serves `rules` on a fresh loopback port.
    pub async fn start(rules: Rules) -> Self {
        Self::start_with(rules, Node::from).await
    }

    /// Serves `rules` on a fresh loopback port, with the state `node` makes of the limiter.
    pub async fn start_with(rules: Rules, node: impl FnOnce(Limiter) -> Node) -> Self {
        let (limiter, clock) = crate::manual_limiter(rules, 0);
        let state = node(limiter.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(drl_server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            limiter,
            clock,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the server down gracefully and waits for it, boundedly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(DEADLINE, &mut self.task).await;
        result.expect("server stops").unwrap().unwrap();
    }

    /// `POST /v1/check` with a JSON body.
    pub async fn check(&self, body: &str) -> RawResponse {
        self.post("/v1/check", "application/json", body.as_bytes())
            .await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: &[u8]) -> RawResponse {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.send(&request).await
    }

    /// A request with extra header lines (`"name: value"`) and an optional body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> RawResponse {
        request(self.addr, method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> RawResponse {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.addr
        );
        self.send(request.as_bytes()).await
    }

    /// Sends `request` as is and reads the response until the server closes.
    pub async fn send(&self, request: &[u8]) -> RawResponse {
        send(self.addr, request).await
    }
}

/// An HTTP/1.1 request to `addr` with extra header lines (`"name: value"`) and a body (may be
/// empty), on a connection of its own.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> RawResponse {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    send(addr, &request).await
}

/// Sends `request` to `addr` as is and reads the response until the server closes.
pub async fn send(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("server answers");
    RawResponse::parse(&response)
}

/// A parsed HTTP/1.1 response (bodies with content-length only, which is what the server sends).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    /// Parses a whole response as read until the server closed.
    pub fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8(raw.to_vec()).expect("UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("complete response");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("an error message")
            .to_owned()
    }
}

/// Both APIs of a node (HTTP and gRPC), and the admin API if it has its own listener, on fresh
/// loopback ports.
#[derive(Debug)]
pub struct TestNode {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The admin listener of [`TestNode::start_with_admin`].
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestNode {
    /// Serves `node` on two fresh loopback ports, the admin API on the HTTP one.
    pub async fn start<S: drl_core::Store>(node: drl_server::Node<S>) -> Self {
        Self::serve(node, false).await
    }

    /// Serves `node` on three fresh loopback ports: HTTP, gRPC and the admin API.
    pub async fn start_with_admin<S: drl_core::Store>(node: drl_server::Node<S>) -> Self {
        Self::serve(node, true).await
    }

    async fn serve<S: drl_core::Store>(node: drl_server::Node<S>, admin: bool) -> Self {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = match admin {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let admin_addr = admin.as_ref().map(|a| a.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = drl_server::Listeners { http, grpc, admin };
        let task = tokio::spawn(drl_server::serve_listeners(
            listeners,
            node,
            async {
                let _ = stopped.await;
            },
            drl_server::DRAIN_TIMEOUT,
        ));
        Self {
            http: http_addr,
            grpc: grpc_addr,
            admin: admin_addr,
            stop: Some(stop),
            task,
        }
    }

    /// Shuts the node down gracefully and waits for it, boundedly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(DEADLINE, &mut self.task).await;
        result.expect("node stops").unwrap().unwrap();
    }
}
