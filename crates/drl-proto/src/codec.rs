//! The gRPC codec of the generated services: prost's, except that a request that does not
//! decode (invalid UTF-8 in a string field, a truncated or malformed message) is answered
//! INVALID_ARGUMENT, the caller's error, rather than the INTERNAL that tonic-prost uses, which
//! would read as a fault of the server.

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// gRPC's length prefix of a message: the compressed flag and the message's length, big-endian.
pub const MESSAGE_PREFIX: usize = 5;

/// `message` as one uncompressed gRPC message: its [`MESSAGE_PREFIX`], then its bytes, in one
/// buffer of the exact size (what a unary call's body carries).
pub fn frame<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(MESSAGE_PREFIX + len);
    buf.push(0);
    // A message of these APIs is far below 4 GiB.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message
        .encode(&mut buf)
        .unwrap_or_else(|_| unreachable!("the buffer has room for encoded_len bytes"));
    buf
}

/// The message of a body that holds exactly one uncompressed gRPC message, or `None` for
/// anything else (compressed, truncated, or with bytes after it).
pub fn unframe(body: &[u8]) -> Option<&[u8]> {
    let ([0, length @ ..], message) = body.split_first_chunk::<MESSAGE_PREFIX>()? else {
        return None;
    };
    (message.len() == u32::from_be_bytes(*length) as usize).then_some(message)
}

/// [`ProstCodec`] with decode failures as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = StrictDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.0.decoder())
    }
}

/// Wraps a decoder, turning its INTERNAL errors (prost's decode errors) into INVALID_ARGUMENT.
#[derive(Debug)]
pub struct StrictDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for StrictDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D::Item>, Status> {
        self.0.decode(src).map_err(|status| {
            if status.code() == Code::Internal {
                Status::new(
                    Code::InvalidArgument,
                    format!("invalid request message: {}", status.message()),
                )
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drl::v1 as native;

    #[test]
    fn a_framed_message_unframes_to_itself_and_nothing_else_does() {
        let message = native::Check {
            user_id: "alice".into(),
            endpoint: "/api".into(),
            hits: Some(3),
        };
        let framed = frame(&message);
        assert_eq!(framed[0], 0);
        assert_eq!(framed.len(), MESSAGE_PREFIX + message.encoded_len());
        let inner = unframe(&framed).unwrap();
        assert_eq!(native::Check::decode(inner).unwrap(), message);
        // An empty message is a prefix alone.
        assert_eq!(
            unframe(&frame(&native::CheckRequest::default())),
            Some(&[][..])
        );

        let mut compressed = framed.clone();
        compressed[0] = 1;
        assert_eq!(unframe(&compressed), None);
        assert_eq!(unframe(&framed[..framed.len() - 1]), None, "truncated");
        let mut longer = framed.clone();
        longer.push(0);
        assert_eq!(unframe(&longer), None, "bytes after the message");
        assert_eq!(unframe(&framed[..4]), None, "no whole prefix");
        assert_eq!(unframe(&[]), None);
    }
}
