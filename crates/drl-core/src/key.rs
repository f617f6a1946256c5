//! The identity of a counter (DESIGN.md §5): (domain, rule level, user_id, endpoint).
//!
//! Identities are encoded **injectively**: every field is written as its byte length followed by
//! its bytes, so no choice of characters (`:`, `{`, newlines, empty strings, unicode) can make two
//! different identities encode alike. Stores use the encoding, or a keyed fingerprint of it:
//!
//! - [`CounterKey::encode`] gives the canonical bytes (the Redis store builds key names from them);
//! - [`Fingerprinter`] hashes the same bytes with SipHash-1-3 under a per-process random 128-bit
//!   key into a 128-bit map key for the memory store. Without the key an attacker cannot aim for
//!   collisions; by chance, two of 10⁹ live keys collide with probability about 10⁻²¹. And a
//!   collision could only merge two counters, which denies more, never admits more.

use std::hash::{BuildHasher, Hasher, RandomState};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::error::CheckError;

/// Largest user_id or endpoint, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// How specific the rule that set a counter's limit is. Part of the counter's identity, so a
/// counter survives a change of its rule's limit but not the appearance of a more specific rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleLevel {
    /// The default rule.
    Default = 0,
    /// A rule for one endpoint, any user.
    Endpoint = 1,
    /// A rule for one user, any endpoint.
    User = 2,
    /// A rule for one (user, endpoint) pair.
    Pair = 3,
}

impl RuleLevel {
    /// Name used in keys, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Endpoint => "endpoint",
            Self::User => "user",
            Self::Pair => "pair",
        }
    }
}

/// The identity of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterKey<'a> {
    /// Namespace: the built-in domain for the native API, the Envoy `domain` otherwise.
    pub domain: &'a str,
    /// The level of the rule in force.
    pub level: RuleLevel,
    pub user_id: &'a str,
    pub endpoint: &'a str,
}

impl CounterKey<'_> {
    /// The canonical injective encoding: version byte, level byte, then each of domain, user_id
    /// and endpoint as a 4-byte big-endian length and the bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            2 + 12 + self.domain.len() + self.user_id.len() + self.endpoint.len(),
        );
        self.write_to(|bytes| out.extend_from_slice(bytes));
        out
    }

    fn write_to(&self, mut sink: impl FnMut(&[u8])) {
        sink(&[1, self.level as u8]);
        for field in [self.domain, self.user_id, self.endpoint] {
            sink(&(field.len() as u32).to_be_bytes());
            sink(field.as_bytes());
        }
    }
}

/// Checks one identifier of a request: non-empty and at most [`MAX_ID_LEN`] bytes.
pub fn validate_id(field: &'static str, value: &str) -> Result<(), CheckError> {
    if value.is_empty() {
        return Err(CheckError::Empty { field });
    }
    if value.len() > MAX_ID_LEN {
        return Err(CheckError::TooLong {
            field,
            len: value.len(),
            max: MAX_ID_LEN,
        });
    }
    Ok(())
}

/// Keyed 128-bit fingerprints of counter identities, with a key drawn at random per instance.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    k0: u64,
    k1: u64,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random key (from the OS-seeded std `RandomState`).
    pub fn new() -> Self {
        let draw = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        Self {
            k0: draw(0x6472_6c30),
            k1: draw(0x6472_6c31),
        }
    }

    /// A fingerprinter with a fixed key, for reproducible tests.
    pub fn with_key(k0: u64, k1: u64) -> Self {
        Self { k0, k1 }
    }

    /// The 128-bit fingerprint of the canonical encoding of `key`, without allocating.
    #[inline]
    pub fn fingerprint(&self, key: &CounterKey<'_>) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        // One `write` of the whole encoding is about twice as fast as seven small ones; keys
        // too long for the stack buffer (rare: ids up to 1 KiB) stream in pieces instead.
        let mut buf = [0u8; 256];
        let mut len = 0;
        let fits = 14 + key.domain.len() + key.user_id.len() + key.endpoint.len() <= buf.len();
        if fits {
            key.write_to(|bytes| {
                buf[len..len + bytes.len()].copy_from_slice(bytes);
                len += bytes.len();
            });
            h.write(&buf[..len]);
        } else {
            key.write_to(|bytes| h.write(bytes));
        }
        h.finish128().as_u128()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(user_id: &'a str, endpoint: &'a str) -> CounterKey<'a> {
        CounterKey {
            domain: "drl",
            level: RuleLevel::Default,
            user_id,
            endpoint,
        }
    }

    #[test]
    fn separators_in_fields_cannot_collide() {
        let a = key("a:b", "c");
        let b = key("a", "b:c");
        assert_ne!(a.encode(), b.encode());
        let f = Fingerprinter::with_key(1, 2);
        assert_ne!(f.fingerprint(&a), f.fingerprint(&b));
        assert_ne!(key("", "ab").encode(), key("a", "b").encode());
    }

    #[test]
    fn long_keys_hash_like_their_encoding() {
        let f = Fingerprinter::with_key(3, 4);
        let long = "u".repeat(900);
        for user in ["alice", long.as_str()] {
            let k = key(user, "/e");
            let mut h = SipHasher13::new_with_keys(3, 4);
            h.write(&k.encode());
            assert_eq!(f.fingerprint(&k), h.finish128().as_u128());
        }
    }

    #[test]
    fn level_is_part_of_the_identity() {
        let mut a = key("u", "e");
        let b = a;
        a.level = RuleLevel::Pair;
        assert_ne!(a.encode(), b.encode());
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(validate_id("user_id", "alice").is_ok());
        assert_eq!(
            validate_id("user_id", ""),
            Err(CheckError::Empty { field: "user_id" })
        );
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            validate_id("endpoint", &long).unwrap_err().to_string(),
            "endpoint is 1025 bytes long; the maximum is 1024 bytes"
        );
    }
}
