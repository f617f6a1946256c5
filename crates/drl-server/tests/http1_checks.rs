//! `POST /v1/check` over HTTP/1.1 is answered without hyper while it comes whole and plain
//! (src/h1.rs), and by hyper once anything else has come on the connection: both must give the
//! same answers, byte for byte (the `date` header aside), in order, pipelined or not.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use std::time::Duration;

use drl_core::{Algorithm, Policy, Rules};
use drl_testkit::DEADLINE;
use drl_testkit::node::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn per_minute(n: u64) -> Rules {
    Rules::only_default(Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap())
}

/// A `POST /v1/check` with `content_type`, an optional `connection` header, and `body`.
fn check(body: &str, content_type: &str, connection: Option<&str>) -> Vec<u8> {
    let connection = connection.map_or(String::new(), |c| format!("connection: {c}\r\n"));
    format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n{connection}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn check_of(user: &str) -> String {
    format!(r#"{{"user_id":"{user}","endpoint":"/e"}}"#)
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

/// A connection and what was read from it beyond the responses taken so far.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Client {
    async fn connect(server: &TestServer) -> Self {
        Self {
            stream: TcpStream::connect(server.addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next whole response (head and `content-length` body), its `date` value masked.
    async fn response(&mut self) -> String {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(response) = self.take() {
                    return response;
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed within a response: {:?}", self.read);
                self.read.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("a response in time")
    }

    fn take(&mut self) -> Option<String> {
        let text = std::str::from_utf8(&self.read).unwrap();
        let head_end = text.find("\r\n\r\n")? + 4;
        let length: usize = text[..head_end]
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        if self.read.len() < head_end + length {
            return None;
        }
        let response: Vec<u8> = self.read.drain(..head_end + length).collect();
        let response = String::from_utf8(response).unwrap();
        Some(
            response
                .lines()
                .map(|l| {
                    if l.starts_with("date: ") {
                        "date: *"
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// Whether the server closes the connection (within the deadline), with nothing more sent.
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(DEADLINE, self.stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        ) && self.read.is_empty()
    }
}

fn status(response: &str) -> u16 {
    response[9..12].parse().unwrap()
}

#[tokio::test]
async fn a_check_answered_without_hyper_is_the_answer_hyper_gives_byte_for_byte() {
    let server = TestServer::start(per_minute(2)).await;
    // The same requests for two users with the same rule: the clock stands still, so their
    // answers are the same.
    let requests = |user: &str| {
        let ok = check_of(user);
        vec![
            check(&ok, "application/json", None),
            check(&ok, "application/json", Some("keep-alive")),
            check(&ok, "application/json", None),
            check(r#"{"user_id": "u", "#, "application/json", None),
            check(&ok, "text/plain", None),
            check(&ok, "application/json\u{a0}", None),
            check(
                &format!(r#"{{"user_id":"{user}","endpoint":"/e","hits":4294967296}}"#),
                "application/json",
                None,
            ),
            check(r#"["a", "/e"]"#, "application/json", None),
            check(
                r#"{"user_id":"","endpoint":"/e"}"#,
                "application/json",
                None,
            ),
            check(
                r#"{"user_id":"u","endpoint":"/e","extra":1}"#,
                "application/json",
                None,
            ),
            check(&ok, "Application/JSON; charset=utf-8", Some("close")),
        ]
    };
    // `a` is answered without hyper; `b`'s connection goes to hyper at its first request.
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    b.send(HEALTH).await;
    assert_eq!(status(&b.response().await), 200);
    let mut statuses = Vec::new();
    for (for_a, for_b) in requests("a").into_iter().zip(requests("b")) {
        a.send(&for_a).await;
        b.send(&for_b).await;
        let (from_a, from_b) = (a.response().await, b.response().await);
        assert_eq!(from_a, from_b);
        statuses.push(status(&from_a));
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 400, 400, 400, 400, 400, 400, 400, 429]
    );
    assert!(a.closed().await && b.closed().await, "connection: close");
    server.stop().await;
}

#[tokio::test]
async fn pipelined_checks_are_answered_in_order_also_around_another_route() {
    let server = TestServer::start(per_minute(2)).await;
    let mut client = Client::connect(&server).await;
    let ok = check_of("u");
    let mut pipeline = Vec::new();
    for _ in 0..2 {
        pipeline.extend(check(&ok, "application/json", None));
    }
    pipeline.extend(HEALTH);
    pipeline.extend(check(&ok, "application/json", Some("close")));
    client.send(&pipeline).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(client.response().await);
    }
    let remaining: Vec<_> = answers
        .iter()
        .map(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("ratelimit-remaining: "))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        answers.iter().map(|r| status(r)).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    assert_eq!(
        remaining,
        [Some("1".into()), Some("0".into()), None, Some("0".into())]
    );
    assert!(answers[2].ends_with("ok"), "{}", answers[2]);
    assert!(client.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn a_check_split_over_writes_is_answered_and_counted_once() {
    let server = TestServer::start(per_minute(5)).await;
    let mut client = Client::connect(&server).await;
    let request = check(&check_of("u"), "application/json", None);
    let body_at = request.len() - check_of("u").len();
    // The head in two writes (answered without hyper), then the body after the head (hyper
    // reads it), then a whole one (hyper's from then on). The pauses only let each write
    // leave on its own.
    for cut in [20, body_at] {
        client.send(&request[..cut]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(&request[cut..]).await;
        assert_eq!(status(&client.response().await), 200);
    }
    client.send(&request).await;
    let third = client.response().await;
    assert!(third.contains("ratelimit-remaining: 2"), "{third}");
    assert_eq!(
        server.limiter.check("u", "/e", 0).unwrap().remaining,
        2,
        "each check counted once"
    );
    server.stop().await;
}
