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
    /// The canonical injective encoding: a 16-byte header (version 1, the level, two zero bytes,
    /// then the byte lengths of domain, user_id and endpoint as little-endian `u32`s) followed by
    /// the three fields' bytes. The lengths fix where each field ends, so no two identities
    /// share an encoding.
    pub fn encode(&self) -> Vec<u8> {
        let (head, tail) = self.header();
        let mut out =
            Vec::with_capacity(16 + self.domain.len() + self.user_id.len() + self.endpoint.len());
        out.extend_from_slice(&head.to_le_bytes());
        out.extend_from_slice(&tail.to_le_bytes());
        for field in [self.domain, self.user_id, self.endpoint] {
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    /// The header as two little-endian words. Fields are at most 4 GiB (ids are checked to
    /// 1 KiB long before they get here; the cast only matters for a domain that large).
    fn header(&self) -> (u64, u64) {
        let len = |s: &str| s.len() as u32;
        let head = 1 | (u64::from(self.level as u8) << 8) | (u64::from(len(self.domain)) << 32);
        let tail = u64::from(len(self.user_id)) | (u64::from(len(self.endpoint)) << 32);
        (head, tail)
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

    /// The 128-bit fingerprint of the canonical encoding of `key`, streamed without building
    /// it: the header as two words, then each field straight from its `&str`.
    #[inline]
    pub fn fingerprint(&self, key: &CounterKey<'_>) -> u128 {
        let mut sip = SipHash13::new(self.k0, self.k1);
        let (head, tail) = key.header();
        sip.word(head);
        sip.word(tail);
        sip.absorb(key.domain.as_bytes());
        sip.absorb(key.user_id.as_bytes());
        sip.absorb(key.endpoint.as_bytes());
        sip.finish128()
    }
}

/// SipHash-1-3 with 128-bit output (Aumasson and Bernstein's keyed PRF, in the variant Rust's
/// std map hasher uses, with the 128-bit finalisation), streaming whole words where it can.
/// Written here because a streaming `Hasher` fed seven small writes cost twice as much on the
/// hot path; `tests::siphash_matches_the_reference` checks it against the `siphasher` crate.
struct SipHash13 {
    v: [u64; 4],
    /// Bytes not yet compressed (fewer than 8), little-endian from the low byte.
    pending: u64,
    pending_len: usize,
    total_len: u64,
}

impl SipHash13 {
    #[inline]
    fn new(k0: u64, k1: u64) -> Self {
        Self {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            pending: 0,
            pending_len: 0,
            total_len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.v[0] ^= m;
    }

    /// Absorbs 8 bytes given as a little-endian word; only valid on a word boundary.
    #[inline]
    fn word(&mut self, m: u64) {
        debug_assert_eq!(self.pending_len, 0);
        self.total_len += 8;
        self.compress(m);
    }

    #[inline]
    fn absorb(&mut self, mut bytes: &[u8]) {
        self.total_len += bytes.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(bytes.len());
            for (i, &b) in bytes[..take].iter().enumerate() {
                self.pending |= u64::from(b) << (8 * (self.pending_len + i));
            }
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 8 {
                return;
            }
            let m = self.pending;
            self.compress(m);
            self.pending = 0;
            self.pending_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.compress(u64::from_le_bytes(word));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.pending |= u64::from(b) << (8 * i);
        }
        self.pending_len = words.remainder().len();
    }

    #[inline]
    fn finish128(mut self) -> u128 {
        let m = self.pending | (self.total_len << 56);
        self.compress(m);
        self.v[2] ^= 0xee;
        for _ in 0..3 {
            self.round();
        }
        let low = self.v.iter().fold(0, |acc, x| acc ^ x);
        self.v[1] ^= 0xdd;
        for _ in 0..3 {
            self.round();
        }
        let high = self.v.iter().fold(0, |acc, x| acc ^ x);
        (u128::from(high) << 64) | u128::from(low)
    }
}

/// SipHash-1-3-128 of one contiguous input.
#[cfg(test)]
fn siphash13_128(k0: u64, k1: u64, input: &[u8]) -> u128 {
    let mut sip = SipHash13::new(k0, k1);
    sip.absorb(input);
    sip.finish128()
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
    fn siphash_matches_the_reference() {
        use siphasher::sip128::{Hasher128, SipHasher13};
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let (k0, k1) = (0x0706_0504_0302_0100 ^ len as u64, 0x0f0e_0d0c_0b0a_0908);
            let mut reference = SipHasher13::new_with_keys(k0, k1);
            reference.write(&data[..len]);
            assert_eq!(
                siphash13_128(k0, k1, &data[..len]),
                reference.finish128().as_u128(),
                "length {len}"
            );
        }
    }

    #[test]
    fn long_keys_hash_like_their_encoding() {
        let f = Fingerprinter::with_key(3, 4);
        // Every alignment of the three fields against SipHash's 8-byte words.
        let text = "u".repeat(900);
        for (a, b) in (0..24)
            .flat_map(|a| (0..24).map(move |b| (a, b)))
            .chain([(900, 17)])
        {
            let k = key(&text[..a], &text[..b]);
            assert_eq!(
                f.fingerprint(&k),
                siphash13_128(3, 4, &k.encode()),
                "{a} {b}"
            );
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
