//! `POST /v1/check` over HTTP/1.1 answered without hyper and axum: the request an HTTP client
//! sends for every request it guards, so the one whose transport cost decides the node's CPU per
//! check.
//!
//! Through hyper and axum a check becomes an `http::Request` (its headers hashed into a map, its
//! URI parsed), passes boxed services and a middleware, has its body read frame by frame, and
//! its answer becomes a `Response` with a header map that hyper encodes again; hyper also arms
//! and drops a header read timer per request. Here a connection of the HTTP listener is first
//! read into a buffer of its own, and each request in it that is a whole `POST /v1/check` in
//! the plain form (HTTP/1.1, one `Content-Length`, no `Transfer-Encoding`, `Expect` or
//! `Upgrade`, `Connection` absent or `close` or `keep-alive`, within [`EdgeLimits::max_header_bytes`] and
//! [`EdgeLimits::max_body_bytes`], head and body already read) is parsed in place (httparse) and
//! answered by the route ([`Checks`], `http.rs`) in the bytes hyper would write for the same
//! response (with `connection: close` after a request that asked it, and then the connection
//! closed, as hyper does); the answers of pipelined requests leave in one write.
//!
//! At the first request that is anything else (another route, a body not all in yet, a parse
//! error, HTTP/2's preface) the connection is handed to hyper with the bytes read and not
//! answered ([`Rewind`]), and hyper serves it to its end like any other: every other case keeps
//! its one implementation. The waits match hyper's: the next request's head must be in within
//! [`EdgeLimits::header_read_timeout`] of the connection being ready for it (accepted, or its
//! previous answer written), and within [`EdgeLimits::idle_timeout`]; on a stop signal a
//! connection waiting for a request is closed, as hyper closes an idle one.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::edge::Activity;
use crate::limits::EdgeLimits;

/// What answers the checks [`serve`] reads whole: the HTTP API's check route.
pub(crate) trait Checks: Send + Sync + 'static {
    /// Writes to `out` the response to a `POST /v1/check` whose `Content-Type` is
    /// `content_type` and whose body is `body`.
    fn answer(
        &self,
        content_type: Option<&[u8]>,
        body: &[u8],
        out: Out<'_>,
    ) -> impl Future<Output = ()> + Send;
}

/// The [`Checks`] of a listener without a check route (gRPC, the admin listener): none.
#[derive(Debug)]
pub(crate) enum NoChecks {}

impl Checks for NoChecks {
    async fn answer(&self, _: Option<&[u8]>, _: &[u8], _: Out<'_>) {
        match *self {}
    }
}

/// Size of a connection's read buffer: a check is a few hundred bytes (2 KiB with both ids at
/// their longest); a request that does not fit, head and body, goes to hyper.
const BUFFER: usize = 4 * 1024;

/// Most headers in a request answered here; one with more goes to hyper (which allows 100).
const MAX_HEADERS: usize = 32;

/// Serves the checks that come whole on `io` (see the module) until the connection closes (then
/// `None`), or until a request that hyper must serve: then the connection, with the bytes read
/// and not answered in front.
pub(crate) async fn serve<Io, C>(
    mut io: Io,
    checks: &C,
    limits: &EdgeLimits,
    activity: &Arc<Activity>,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Option<Rewind<Io>>
where
    Io: AsyncRead + AsyncWrite + Unpin,
    C: Checks,
{
    let mut buf = vec![0u8; BUFFER];
    let (mut start, mut end) = (0, 0);
    let mut out = Vec::new();
    // hyper's header read timeout, and the idle timeout, from when the connection is ready for
    // a request; one timer for the connection's life, moved on only when it fires early.
    let wait = limits.header_read_timeout.min(limits.idle_timeout);
    let mut deadline = Instant::now() + wait;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline));
    // How much of the unanswered bytes was parsed and found an unfinished head: they are parsed
    // again only once a read may have brought the head's end, as hyper does (a head sent a byte
    // at a time would otherwise be parsed once per byte).
    let mut unfinished: Option<usize> = None;
    loop {
        // Every whole request in the buffer, answered in order.
        let mut in_progress = None;
        let next = loop {
            let pending = &buf[start..end];
            let parsed = match unfinished {
                Some(parsed) if !head_may_end(pending, parsed) => Parsed::Partial,
                _ => parse(pending, limits),
            };
            unfinished = (parsed == Parsed::Partial).then_some(pending.len());
            match parsed {
                Parsed::Check {
                    content_type,
                    body,
                    close,
                } => {
                    in_progress.get_or_insert_with(|| activity.begin());
                    let request = &buf[start..start + body.end];
                    let content_type = content_type.map(|r| &request[r]);
                    let out = Out {
                        buf: &mut out,
                        close,
                    };
                    start += body.end;
                    checks.answer(content_type, &request[body], out).await;
                    if close {
                        break Next::Close;
                    }
                }
                Parsed::Partial => break Next::Read,
                Parsed::Other => break Next::Hyper,
            }
        };
        if !out.is_empty() {
            if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
                return None;
            }
            out.clear();
            deadline = Instant::now() + wait;
        }
        drop(in_progress);
        if next == Next::Close {
            // What follows a request that asked to close is not read, as hyper does not.
            let _ = io.shutdown().await;
            return None;
        }
        if next == Next::Hyper {
            return Some(Rewind::after(&buf[start..end], io));
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            if start == 0 {
                // A request larger than the buffer: hyper's.
                return Some(Rewind::after(&buf[..end], io));
            }
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        // Wait for more of the next request.
        loop {
            tokio::select! {
                biased;
                read = io.read(&mut buf[end..]) => match read {
                    Ok(0) if start == end => return None,
                    // Closed within a request: hyper says what it says of that.
                    Ok(0) => return Some(Rewind::after(&buf[start..end], io)),
                    Ok(n) => {
                        end += n;
                        break;
                    }
                    Err(_) => return None,
                },
                () = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    timer.as_mut().reset(deadline);
                }
                () = stop.as_mut() => return None,
            }
        }
    }
}

/// What a connection does once the requests in its buffer are answered.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Read more of the next request.
    Read,
    /// Go to hyper.
    Hyper,
    /// Close: the last request answered asked it.
    Close,
}

/// What the buffer holds at its start.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole `POST /v1/check` answered here, ending with its body; the ranges are from the
    /// request's first byte. `close`: it asked to close the connection.
    Check {
        content_type: Option<Range<usize>>,
        body: Range<usize>,
        close: bool,
    },
    /// Not all of a request's head yet.
    Partial,
    /// A request hyper serves, or bytes that are no request.
    Other,
}

fn parse(bytes: &[u8], limits: &EdgeLimits) -> Parsed {
    if bytes.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if request.method != Some("POST")
        || request.path != Some("/v1/check")
        || request.version != Some(1)
    {
        return Parsed::Other;
    }
    let mut content_length = None;
    let mut content_type = None;
    let mut connection = None;
    let mut size = 0usize;
    for header in &*request.headers {
        size += header.name.len() + header.value.len();
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length, decimal(header.value)) {
                (None, Some(length)) => content_length = Some(length),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if content_type.is_some() {
                return Parsed::Other;
            }
            content_type = Some(offset_in(bytes, header.value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            let value = header.value.trim_ascii();
            connection = match connection {
                None if value.eq_ignore_ascii_case(b"close") => Some(true),
                None if value.eq_ignore_ascii_case(b"keep-alive") => Some(false),
                _ => return Parsed::Other,
            };
        } else if [&b"transfer-encoding"[..], b"expect", b"upgrade"]
            .iter()
            .any(|other| name.eq_ignore_ascii_case(other))
        {
            return Parsed::Other;
        }
    }
    let Some(body_len) = content_length else {
        return Parsed::Other;
    };
    if size > limits.max_header_bytes || body_len > limits.max_body_bytes {
        return Parsed::Other;
    }
    let len = head_len + body_len;
    if bytes.len() < len {
        // The body is not all in: hyper reads it, within the body read timeout.
        return Parsed::Other;
    }
    Parsed::Check {
        content_type,
        body: head_len..len,
        close: connection == Some(true),
    }
}

/// Whether `bytes`, of which the first `parsed` were found an unfinished head, may now hold the
/// head's end (an empty line, `\r\n` or `\n` terminated), looking from just before the new
/// bytes: hyper's test before it parses again.
fn head_may_end(bytes: &[u8], parsed: usize) -> bool {
    let from = parsed.saturating_sub(3);
    bytes[from..]
        .windows(2)
        .enumerate()
        .any(|(i, pair)| match pair {
            b"\n\n" => true,
            b"\n\r" => bytes.get(from + i + 2) == Some(&b'\n'),
            _ => false,
        })
}

/// A `Content-Length` value: digits only, as hyper reads it.
fn decimal(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
}

/// Where `part`, a slice of `whole`, lies in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Where a response goes, written as hyper writes it: the status line, the headers in order,
/// `content-length`, `connection: close` if the request asked it, `date`, the body.
#[derive(Debug)]
pub(crate) struct Out<'a> {
    buf: &'a mut Vec<u8>,
    close: bool,
}

impl Out<'_> {
    /// The status line.
    pub(crate) fn status(&mut self, status: StatusCode) {
        self.buf.extend_from_slice(b"HTTP/1.1 ");
        self.buf.extend_from_slice(status.as_str().as_bytes());
        self.buf.push(b' ');
        self.buf
            .extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// One header line.
    pub(crate) fn header(&mut self, name: &str, value: &[u8]) {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The headers hyper adds, then the body.
    pub(crate) fn body(mut self, body: &[u8]) {
        self.header(
            "content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
        if self.close {
            self.header("connection", b"close");
        }
        DATE.with_borrow_mut(|date| self.header("date", date.now()));
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(body);
    }

    /// Any response of the API (an error's, built by axum).
    pub(crate) async fn response(mut self, response: Response) {
        let (parts, body) = response.into_parts();
        // The API's responses are whole bodies in memory: reading them cannot fail or wait.
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        self.status(parts.status);
        for (name, value) in &parts.headers {
            self.header(name.as_str(), value.as_bytes());
        }
        self.body(&body);
    }
}

thread_local! {
    /// The `date` header's value, rendered once a second per thread (as hyper caches it).
    static DATE: std::cell::RefCell<CachedDate> = const { std::cell::RefCell::new(CachedDate { second: 0, text: Vec::new() }) };
}

struct CachedDate {
    /// The Unix second `text` is for.
    second: u64,
    text: Vec<u8>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

/// A connection with bytes already read from it in front: what [`serve`] read and did not
/// answer, handed to hyper.
#[derive(Debug)]
pub(crate) struct Rewind<Io> {
    prefix: Bytes,
    io: Io,
}

impl<Io> Rewind<Io> {
    /// `io` with nothing in front.
    pub(crate) fn new(io: Io) -> Self {
        Self::after(&[], io)
    }

    /// `io` with `read`, the bytes read from it and not answered, in front.
    fn after(read: &[u8], io: Io) -> Self {
        Self {
            prefix: Bytes::copy_from_slice(read),
            io,
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Rewind<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix = self.prefix.slice(n..);
        // Then what the connection has now: the read brings what one read of it would have
        // brought without the handover (hyper's parser decides when to parse a head by what
        // each read added). An error is met again by the next read.
        if self.prefix.is_empty() && buf.remaining() > 0 {
            let _ = Pin::new(&mut self.io).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Rewind<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(extra: &str, body: &str) -> String {
        format!(
            "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn parsed(request: &str) -> Parsed {
        parse(request.as_bytes(), &EdgeLimits::default())
    }

    #[test]
    fn a_whole_plain_check_is_answered_here_with_its_parts_located() {
        let body = r#"{"user_id":"u","endpoint":"/e"}"#;
        let request = check("", body);
        let Parsed::Check {
            content_type,
            body: at,
            close,
        } = parsed(&request)
        else {
            panic!("{:?}", parsed(&request));
        };
        assert_eq!(at.end, request.len());
        assert_eq!(&request[content_type.unwrap()], "application/json");
        assert_eq!(&request[at], body);
        assert!(!close);
        // Followed by the next request: only the first is taken.
        let two = format!("{request}{request}");
        assert!(matches!(parsed(&two), Parsed::Check { body, .. } if body.end == request.len()));
        // Asking to close, in any case; keep-alive is the default said aloud.
        for (header, close) in [
            ("Connection: Close\r\n", true),
            ("connection: keep-alive\r\n", false),
        ] {
            assert!(
                matches!(parsed(&check(header, body)), Parsed::Check { close: c, .. } if c == close),
                "{header}"
            );
        }
    }

    #[test]
    fn a_head_not_all_in_is_partial() {
        let request = check("", "{}");
        let head_end = request.find("\r\n\r\n").unwrap();
        for cut in [0, 1, 10, head_end] {
            assert_eq!(parsed(&request[..cut]), Parsed::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn an_unfinished_head_is_parsed_again_only_once_its_end_may_be_in() {
        let head = b"POST /v1/check HTTP/1.1\r\nhost: x\r\n\r\n";
        // Parsed up to each point, then the rest arrived: the end is seen whatever the cut
        // (also when the cut splits "\r\n\r\n"), and not before it is in.
        for parsed in 0..head.len() {
            assert!(head_may_end(head, parsed), "parsed up to {parsed}");
            assert!(!head_may_end(
                &head[..head.len() - 1],
                parsed.min(head.len() - 1)
            ));
        }
        assert!(head_may_end(b"GET / HTTP/1.1\n\n", 5));
        assert!(head_may_end(b"GET / HTTP/1.1\r\n\n", 5));
        assert!(!head_may_end(b"GET / HTTP/1.1\r\nhost: x\r\n", 0));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let body = r#"{"user_id":"u","endpoint":"/e"}"#;
        let plain = check("", body);
        let limits = EdgeLimits {
            max_header_bytes: 100,
            max_body_bytes: 10,
            ..EdgeLimits::default()
        };
        let cases = [
            ("another route", plain.replace("/v1/check", "/json")),
            ("a query", plain.replace("/v1/check", "/v1/check?x=1")),
            ("another method", plain.replace("POST", "PUT")),
            ("HTTP/1.0", plain.replace("HTTP/1.1", "HTTP/1.0")),
            (
                "HTTP/2's preface",
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            ),
            ("not HTTP", "hello\r\n\r\n".to_owned()),
            ("the body not all in", plain[..plain.len() - 1].to_owned()),
            ("no length", plain.replace("content-length", "x-length")),
            ("two lengths", check("content-length: 31\r\n", body)),
            (
                "a signed length",
                plain.replace("length: 31", "length: +31"),
            ),
            (
                "two content types",
                check("content-type: text/plain\r\n", body),
            ),
            ("chunked", check("transfer-encoding: chunked\r\n", body)),
            ("expect", check("expect: 100-continue\r\n", body)),
            ("upgrade", check("upgrade: websocket\r\n", body)),
            (
                "another connection option",
                check("connection: close, te\r\n", body),
            ),
            (
                "two connection headers",
                check("connection: close\r\nconnection: close\r\n", body),
            ),
            (
                "too many headers",
                check(&"x: y\r\n".repeat(MAX_HEADERS), body),
            ),
        ];
        for (what, request) in cases {
            assert_eq!(parsed(&request), Parsed::Other, "{what}");
        }
        let big_headers = check(&format!("x: {}\r\n", "y".repeat(60)), "{}");
        assert_eq!(parse(big_headers.as_bytes(), &limits), Parsed::Other);
        assert_eq!(
            parse(plain.as_bytes(), &limits),
            Parsed::Other,
            "body over the max"
        );
        assert!(matches!(
            parse(check("", "{}").as_bytes(), &limits),
            Parsed::Check { .. }
        ));
    }

    #[tokio::test]
    async fn a_rewound_connection_reads_what_was_read_first() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut rewound = Rewind {
            prefix: Bytes::from_static(b"already "),
            io: server,
        };
        client.write_all(b"then the rest").await.unwrap();
        drop(client);
        let mut read = Vec::new();
        rewound.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"already then the rest");
    }
}
