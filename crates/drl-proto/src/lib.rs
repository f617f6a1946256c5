//! `drl-proto`: the wire types of drl. The gRPC APIs are generated at build time from the
//! `.proto` files in `proto/` (see its README for where the vendored ones come from).
//!
//! - [`drl::v1`]: the native API, `drl.v1.RateLimiter/Check`, a batch of checks per call.
//! - [`envoy::service::ratelimit::v3`]: Envoy's rate limit service,
//!   `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, and the types it uses.
//! - [`json`]: the JSON bodies of the HTTP API (docs/api.md), shared by the server and the client
//!   so the two cannot drift apart.
//!
//! Both gRPC APIs have a server trait with its tonic service, and a client over a channel the caller
//! provides. The generated types stay at the edge: the server converts them to and from the
//! core's types.

pub mod codec;
pub mod json;

/// Everything generated, as one module tree per protobuf package.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    unreachable_pub
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub use generated::*;

/// Largest number of checks in one `drl.v1.RateLimiter/Check` call.
pub const MAX_BATCH: usize = 1000;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    use super::envoy::service::ratelimit::v3::RateLimitRequest;

    /// The field numbers Envoy sends: domain = 1, descriptors = 2, hits_addend = 3; a
    /// descriptor's entries = 1 (key = 1, value = 2) and hits_addend = 3 (a UInt64Value).
    #[test]
    fn rate_limit_request_has_envoys_wire_format() {
        let request = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![rate_limit_descriptor::Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                hits_addend: Some(2),
                ..Default::default()
            }],
            hits_addend: 3,
        };
        let entry = [0x0a, 1, b'k', 0x12, 1, b'v'];
        let mut descriptor = vec![0x0a, entry.len() as u8];
        descriptor.extend_from_slice(&entry);
        descriptor.extend_from_slice(&[0x1a, 2, 0x08, 2]);
        let mut expected = vec![0x0a, 1, b'd', 0x12, descriptor.len() as u8];
        expected.extend_from_slice(&descriptor);
        expected.extend_from_slice(&[0x18, 3]);
        assert_eq!(request.encode_to_vec(), expected);
    }
}
