//! Envoy's `ShouldRateLimit` served without tonic's general machinery: the one call Envoy makes
//! for every request it guards, so the one whose transport cost decides the CPU per call.
//!
//! tonic serves a unary call as a stream of one message: a decoder with an 8 KiB buffer the
//! body is copied into, the request's headers turned into metadata, two boxed futures, an encoder
//! with another 8 KiB buffer, and a status turned into trailers. A `ShouldRateLimit` request is
//! one small message, almost always in one DATA frame: here it is read as it arrives (no copy
//! when it is one frame), decoded from that slice, and the answer is written into one buffer of
//! its exact size, followed by the `grpc-status: 0` trailers.
//!
//! Only identity-encoded calls come here (the router sends any call with a `grpc-encoding` to
//! tonic, which answers it as before). The errors are those of the tonic path, word for word: a
//! message over the size limit is OUT_OF_RANGE as soon as its length prefix is in, a set
//! compressed flag or a body without a whole message is INTERNAL, a message that does not decode
//! is INVALID_ARGUMENT (`drl_proto::codec`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::Status;

/// gRPC's length prefix: the compressed flag and the message's length, big-endian.
const PREFIX: usize = drl_proto::codec::MESSAGE_PREFIX;

/// The one message of a unary call's request body, checked as tonic checks it.
pub(crate) async fn read_message<B>(body: B, max_message_bytes: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    // The first frame is kept as it is; only a message split over frames is copied.
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut message_len: Option<usize> = None;
    let mut message: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // request trailers: tonic merges them into metadata nobody reads here
        };
        if message.is_some() || data.is_empty() {
            continue; // what follows the one message is read and dropped, as tonic does
        }
        let buffered: &[u8] = if first.is_none() {
            &first.insert(data)[..]
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(first.as_deref().unwrap_or_default());
            }
            joined.extend_from_slice(&data);
            &joined[..]
        };
        if buffered.len() < PREFIX {
            continue;
        }
        let len = match message_len {
            Some(len) => len,
            None => {
                let len = prefix(buffered, max_message_bytes)?;
                message_len = Some(len);
                len
            }
        };
        if buffered.len() < PREFIX + len {
            continue;
        }
        message = Some(match &first {
            Some(first) if joined.is_empty() => first.slice(PREFIX..PREFIX + len),
            _ => Bytes::copy_from_slice(&joined[PREFIX..PREFIX + len]),
        });
        joined = Vec::new();
    }
    match message {
        Some(message) => Ok(message),
        None if first.is_some() => Err(Status::internal("Unexpected EOF decoding stream.")),
        None => Err(Status::internal("Missing request message.")),
    }
}

/// The message length of a length prefix, or tonic's error for its flag or length.
fn prefix(buffered: &[u8], max_message_bytes: usize) -> Result<usize, Status> {
    match buffered[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]) as usize;
    if len > max_message_bytes {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max_message_bytes} bytes"
        )));
    }
    Ok(len)
}

/// The message decoded, or the error of the generated services' codec
/// (`drl_proto::codec::StrictCodec`) for a message that is not one: INVALID_ARGUMENT, the
/// caller's error.
pub(crate) fn decode<M: Message + Default>(message: Bytes) -> Result<M, Status> {
    M::decode(message)
        .map_err(|e| Status::invalid_argument(format!("invalid request message: {e}")))
}

/// The response of a unary call that succeeded: `message`, then the `grpc-status: 0` trailers.
pub(crate) fn ok<M: Message>(message: &M) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Unary {
        data: Some(Bytes::from(drl_proto::codec::frame(message))),
        done: false,
    }));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// One DATA frame, then the trailers of a call that succeeded.
struct Unary {
    data: Option<Bytes>,
    done: bool,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    async fn read_split(bytes: &[u8], at: &[usize], max: usize) -> Result<Bytes, Status> {
        let mut chunks = Vec::new();
        let mut from = 0;
        for &to in at.iter().chain([&bytes.len()]) {
            chunks.push(Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(
                &bytes[from..to],
            ))));
            from = to;
        }
        read_message(StreamBody::new(futures_util::stream::iter(chunks)), max).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_or_split_anywhere_reads_the_same() {
        let bytes = framed(b"hello, limiter");
        let whole = read_message(Full::new(Bytes::from(bytes.clone())), 100)
            .await
            .unwrap();
        assert_eq!(&whole[..], b"hello, limiter");
        for a in 1..bytes.len() {
            for b in a..bytes.len() {
                let got = read_split(&bytes, &[a, b], 100).await.unwrap();
                assert_eq!(&got[..], b"hello, limiter", "split at {a}, {b}");
            }
        }
    }

    #[tokio::test]
    async fn the_errors_are_tonics() {
        let over = read_message(Full::new(Bytes::from(framed(&[1; 11]))), 10)
            .await
            .unwrap_err();
        assert_eq!(over.code(), tonic::Code::OutOfRange);
        assert!(
            over.message()
                .contains("found 11 bytes, the limit is: 10 bytes")
        );
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        let e = read_message(Full::new(Bytes::from(compressed)), 10)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let e = read_message(Full::new(Bytes::new()), 10).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let short = framed(b"abc");
        let e = read_message(Full::new(Bytes::copy_from_slice(&short[..6])), 10)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn the_answer_is_the_message_then_status_ok() {
        let message = drl_proto::envoy::service::ratelimit::v3::RateLimitResponse {
            overall_code: 1,
            ..Default::default()
        };
        let response = ok(&message);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let body = collected.to_bytes();
        assert_eq!(&body[..], &framed(&message.encode_to_vec())[..]);
    }
}
