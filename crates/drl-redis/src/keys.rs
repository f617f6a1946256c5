//! Redis key names for counters (docs/design.md, "Keys").
//!
//! A key is `drl:` + the algorithm's letter + `{` + a hash tag + `}` + the raw bytes of
//! [`CounterKey::encode`]. The encoding is injective, and everything before it has a fixed
//! length, so the name is injective too; it is binary-safe because Redis keys are byte strings.
//! The hash tag is 16 hex digits of a fixed-key SipHash of the identity's group
//! ([`CounterKey::group`]: the identity without the limit's index), so Redis Cluster hashes only
//! the tag: every limit of one identity lives in one slot whatever characters the user sends (a
//! user id full of `{` and `}` cannot choose its slot), and identities spread evenly over slots.
//! The algorithm's letter keeps states of different shapes apart when a reload switches a key's
//! algorithm (the memory store keeps one table per algorithm for the same reason). It is upper
//! case for the states this version writes as one string (`W`, `F`, `T`); older versions kept
//! hashes under the lower-case letters, which the scripts read once when a key is new, and the
//! sliding log's ring (`l`) has not changed.

use std::hash::Hasher;

use drl_core::Algorithm;
use drl_core::CounterKey;
use siphasher::sip::SipHasher13;

/// The prefix of every key `drl` writes.
pub const PREFIX: &str = "drl:";

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16_384;

/// A counter's Redis key and its cluster slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKey {
    /// The full key name.
    pub name: Vec<u8>,
    /// The hash slot Redis Cluster assigns it (computed from the tag alone).
    pub slot: u16,
}

/// The hash tag of an identity: 16 lowercase hex digits. Stable across processes and versions
/// (SipHash-1-3 with a fixed zero key), since every `drl` node must name a counter alike.
pub fn hash_tag(identity: &[u8]) -> [u8; 16] {
    let mut hasher = SipHasher13::new_with_keys(0, 0);
    hasher.write(identity);
    let hash = hasher.finish();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let nibble = ((hash >> (60 - 4 * i)) & 0xf) as u8;
        *byte = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    out
}

/// The key of `key` under `algorithm`.
pub fn redis_key(key: &CounterKey<'_>, algorithm: Algorithm) -> RedisKey {
    // The tag hashes the group (the identity without the limit's index), so every limit of one
    // descriptor shares a slot and an all-or-nothing check of them is one atomic script.
    key_for(&key.encode(), &key.group(), algorithm)
}

/// The key of the encoded `identity`, tagged with the hash of `group`.
pub fn key_for(identity: &[u8], group: &[u8], algorithm: Algorithm) -> RedisKey {
    let tag = hash_tag(group);
    let letter = match algorithm {
        Algorithm::SlidingWindow { .. } => b'W',
        Algorithm::SlidingLog => b'l',
        Algorithm::FixedWindow => b'F',
        Algorithm::TokenBucket { .. } => b'T',
    };
    let mut name = Vec::with_capacity(PREFIX.len() + 3 + tag.len() + identity.len());
    name.extend_from_slice(PREFIX.as_bytes());
    name.push(letter);
    name.push(b'{');
    name.extend_from_slice(&tag);
    name.push(b'}');
    name.extend_from_slice(identity);
    RedisKey {
        name,
        slot: key_slot(&tag),
    }
}

/// The Redis Cluster slot of a hash tag: CRC16 (XMODEM) mod 16 384, as the cluster spec defines.
pub fn key_slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_spec_example() {
        // The cluster spec's reference value: CRC16("123456789") = 0x31C3.
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"foo"), 12_182);
    }

    #[test]
    fn the_tag_is_hex_and_the_name_ends_with_the_identity() {
        let identity = b"\x01{u}\n:}";
        let k = key_for(identity, identity, Algorithm::default());
        let tag = &k.name[6..22];
        assert!(tag.iter().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&k.name[..6], b"drl:W{");
        assert_eq!(k.name[22], b'}');
        assert!(k.name.ends_with(identity));
        assert_eq!(k.name.len(), 23 + identity.len());
        assert_eq!(k.slot, key_slot(tag));
    }
}
