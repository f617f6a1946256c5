//! The identity of a counter (docs/design.md, "Keys"): (domain, rule, limit, values).
//!
//! - `domain`: the built-in domain of the native API, or the Envoy request's `domain`;
//! - `rule`: the identity of the rule that matched (its path in the rule tree, see
//!   [`Rules`](crate::Rules)), so a counter survives a change of its rule's limit but not the
//!   appearance of a more specific rule;
//! - `limit`: which of the rule's limits (a rule may have several, e.g. 10/s and 10 000/day);
//! - `values`: the request's values at each level of the rule (user_id and endpoint for the native
//!   API), or the wildcard pattern at a level whose counter is shared.
//!
//! Identities are encoded **injectively**: every variable-length field is written after its byte
//! length, so no choice of characters (`:`, `{`, newlines, empty strings, unicode) can make two
//! different identities encode alike. Stores use the encoding, or a keyed fingerprint of it:
//!
//! - [`CounterKey::encode`] gives the canonical bytes (the Redis store builds key names from them),
//!   and [`CounterKey::group`] the same without the limit index: every limit of one descriptor
//!   shares it, so a store can keep them together (one Redis slot, one atomic script);
//! - [`Fingerprinter`] hashes the same fields, in another injective order (the rule first, so
//!   that a rule's share of the work is done once: [`RulePrefix`]), with SipHash-1-3 under a
//!   per-process random 128-bit key into a 128-bit map key for the memory store. Without the key
//!   an attacker cannot aim for collisions; by chance, two of 10⁹ live keys collide with
//!   probability about 10⁻²¹. And a collision could only merge two counters, which denies more,
//!   never admits more.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::LazyLock;

use crate::error::CheckError;

/// The domain of the native (user_id, endpoint) API; Envoy requests bring their own.
pub const NATIVE_DOMAIN: &str = "drl";

/// Key of the first level of the native domain.
pub const USER_KEY: &str = "user_id";
/// Key of the second level of the native domain.
pub const ENDPOINT_KEY: &str = "endpoint";

/// Largest user_id, endpoint or descriptor value, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// Version byte of a counter's encoding.
const KEY_VERSION: u64 = 2;
/// Version byte of a group's encoding (distinct, so a group never encodes like a counter).
const GROUP_VERSION: u64 = 3;
/// Tag of a fingerprint's first word (with the rule's length).
const FINGERPRINT_VERSION: u64 = 4;

/// The identity of one counter.
#[derive(Debug, Clone, Copy)]
pub struct CounterKey<'a> {
    /// Namespace: the built-in domain for the native API, the Envoy `domain` otherwise.
    pub domain: &'a str,
    /// The matched rule's identity ([`Target::id`](crate::rules::Target::id)).
    pub rule: &'a [u8],
    /// Which of the rule's limits this counter enforces.
    pub limit: u16,
    /// The request's value at each level of the rule.
    pub values: &'a [&'a str],
    /// `rule`'s share of the fingerprint, hashed once when the rule was made
    /// ([`Target::counter_key`](crate::rules::Target::counter_key)); `None` hashes `rule` on
    /// every fingerprint, to the same result. Not part of the identity.
    pub prefix: Option<&'a RulePrefix>,
}

/// Equal identities, with or without a [`RulePrefix`].
impl PartialEq for CounterKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.domain, self.rule, self.limit, self.values)
            == (other.domain, other.rule, other.limit, other.values)
    }
}

impl Eq for CounterKey<'_> {}

impl std::hash::Hash for CounterKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.domain, self.rule, self.limit, self.values).hash(state);
    }
}

impl<'a> CounterKey<'a> {
    /// A key without a [`RulePrefix`] (its fingerprint hashes `rule` each time).
    pub fn new(domain: &'a str, rule: &'a [u8], limit: u16, values: &'a [&'a str]) -> Self {
        Self {
            domain,
            rule,
            limit,
            values,
            prefix: None,
        }
    }
}

impl CounterKey<'_> {
    /// The canonical injective encoding: a 16-byte header (version 2, the limit index, the
    /// number of values, the byte lengths of domain and rule, all little-endian), the domain
    /// and rule bytes, then each value as a little-endian `u32` length and its bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(KEY_VERSION, self.limit)
    }

    /// The encoding of the counter's group: every limit of one rule and one set of values (the
    /// limit index left out). Injective over (domain, rule, values), and never equal to a
    /// counter's encoding.
    pub fn group(&self) -> Vec<u8> {
        self.encode_as(GROUP_VERSION, 0)
    }

    fn encode_as(&self, version: u64, limit: u16) -> Vec<u8> {
        let (head, tail) = self.header(version, limit);
        let values: usize = self.values.iter().map(|v| 4 + v.len()).sum();
        let mut out = Vec::with_capacity(16 + self.domain.len() + self.rule.len() + values);
        out.extend_from_slice(&head.to_le_bytes());
        out.extend_from_slice(&tail.to_le_bytes());
        out.extend_from_slice(self.domain.as_bytes());
        out.extend_from_slice(self.rule);
        for value in self.values {
            out.extend_from_slice(&len32(value.as_bytes()).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// Whether `encoding` is this counter's [`CounterKey::encode`], compared field by field
    /// without building the encoding (the memory store's per-thread denial memo keeps encodings
    /// and answers only on an exact match).
    #[inline]
    pub fn encodes_as(&self, encoding: &[u8]) -> bool {
        let (head, tail) = self.header(KEY_VERSION, self.limit);
        let Some((header, mut rest)) = encoding.split_first_chunk::<16>() else {
            return false;
        };
        if header[..8] != head.to_le_bytes() || header[8..] != tail.to_le_bytes() {
            return false;
        }
        for field in [self.domain.as_bytes(), self.rule] {
            match rest.split_at_checked(field.len()) {
                Some((bytes, after)) if bytes == field => rest = after,
                _ => return false,
            }
        }
        for value in self.values {
            let value = value.as_bytes();
            let Some((len, after)) = rest.split_first_chunk::<4>() else {
                return false;
            };
            if *len != len32(value).to_le_bytes() {
                return false;
            }
            match after.split_at_checked(value.len()) {
                Some((bytes, after)) if bytes == value => rest = after,
                _ => return false,
            }
        }
        rest.is_empty()
    }

    /// The header as two little-endian words. Fields are at most 4 GiB (values are checked to
    /// 1 KiB before they get here; the casts only matter for a domain or rule that large).
    fn header(&self, version: u64, limit: u16) -> (u64, u64) {
        let head = version | (u64::from(limit) << 8) | ((self.values.len() as u64) << 32);
        let tail = u64::from(len32(self.domain.as_bytes())) | (u64::from(len32(self.rule)) << 32);
        (head, tail)
    }
}

fn len32(bytes: &[u8]) -> u32 {
    bytes.len() as u32
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

/// This process's fingerprint key, drawn once from the OS-seeded std `RandomState`: a rule's
/// [`RulePrefix`] is hashed under it when the rule is made.
static PROCESS_KEY: LazyLock<(u64, u64)> = LazyLock::new(|| {
    let draw = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        h.finish()
    };
    (draw(0x6472_6c30), draw(0x6472_6c31))
});

/// A rule's share of every fingerprint of its counters: the SipHash state after the fingerprint's
/// first word (a tag and the rule's length) and the rule's bytes, zero-padded to a whole word,
/// under this process's key. A rule's identity is some 30 to 60 bytes, hashed here once instead
/// of on every check.
///
/// On a cache line of its own: packed with a [`Target`](crate::rules::Target)'s other fields,
/// the limiter bench's two-thread ratio on 20 000 keys fell from 1.35 to 1.21 (medians of 12 and
/// 10 alternated runs); aligned, 1.32. The cause was not found (a check writes nothing there).
#[derive(Clone, PartialEq, Eq)]
#[repr(align(64))]
pub struct RulePrefix {
    v: [u64; 4],
    len: u64,
}

impl RulePrefix {
    /// The prefix of the rule whose identity is `rule`.
    pub fn of(rule: &[u8]) -> Self {
        let (k0, k1) = *PROCESS_KEY;
        let mut sip = SipHash13::new(k0, k1);
        absorb_rule(&mut sip, rule);
        Self {
            v: sip.v,
            len: sip.total_len,
        }
    }
}

/// Its state is derived from the process's key: not printed.
impl std::fmt::Debug for RulePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RulePrefix(..)")
    }
}

/// A fingerprint's start: a word with the tag and the rule's length, the rule, zeros to the next
/// word boundary (so what follows is absorbed word by word, and the prefix is a whole state).
#[inline]
fn absorb_rule(sip: &mut SipHash13, rule: &[u8]) {
    sip.word(FINGERPRINT_VERSION | (u64::from(len32(rule)) << 32));
    sip.absorb(rule);
    sip.pad();
}

/// Keyed 128-bit fingerprints of counter identities.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    k0: u64,
    k1: u64,
    /// The key is the process's: a key's [`RulePrefix`] can stand for its rule.
    prefixes: bool,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    /// A fingerprinter under this process's random key (every `new` one shares it, so the rules'
    /// [`RulePrefix`]es serve them all).
    pub fn new() -> Self {
        let (k0, k1) = *PROCESS_KEY;
        Self {
            k0,
            k1,
            prefixes: true,
        }
    }

    /// A fingerprinter with a fixed key, for reproducible tests (it hashes every key's rule
    /// itself: a [`RulePrefix`] is under the process's key).
    pub fn with_key(k0: u64, k1: u64) -> Self {
        Self {
            k0,
            k1,
            prefixes: false,
        }
    }

    /// The 128-bit fingerprint of `key`: SipHash-1-3 of an injective encoding of its fields,
    /// streamed without building it: the rule (its bytes, or its [`RulePrefix`]), the
    /// encoding's header as two words, the domain, then each value after its length.
    #[inline]
    pub fn fingerprint(&self, key: &CounterKey<'_>) -> u128 {
        debug_assert!(
            key.prefix.is_none_or(|p| *p == RulePrefix::of(key.rule)),
            "a key's RulePrefix must be its own rule's"
        );
        let mut sip = match key.prefix {
            Some(prefix) if self.prefixes => SipHash13 {
                v: prefix.v,
                pending: 0,
                pending_len: 0,
                total_len: prefix.len,
            },
            _ => {
                let mut sip = SipHash13::new(self.k0, self.k1);
                absorb_rule(&mut sip, key.rule);
                sip
            }
        };
        let (head, tail) = key.header(KEY_VERSION, key.limit);
        sip.word(head);
        sip.word(tail);
        sip.absorb(key.domain.as_bytes());
        for value in key.values {
            sip.absorb(&len32(value.as_bytes()).to_le_bytes());
            sip.absorb(value.as_bytes());
        }
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
    fn absorb(&mut self, bytes: &[u8]) {
        let len = bytes.len();
        self.total_len += len as u64;
        let mut at = 0;
        if self.pending_len > 0 {
            // Top up the pending word (at most 7 bytes are missing).
            let fill = 8 - self.pending_len;
            if len < fill {
                self.pending |= load_le(bytes) << (8 * self.pending_len);
                self.pending_len += len;
                return;
            }
            let m = self.pending | (load_le(&bytes[..fill]) << (8 * self.pending_len));
            self.compress(m);
            at = fill;
        }
        let mut words = bytes[at..].chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.compress(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        self.pending = load_le(rest);
        self.pending_len = rest.len();
    }

    /// Zeros up to the next word boundary.
    #[inline]
    fn pad(&mut self) {
        if self.pending_len > 0 {
            self.total_len += (8 - self.pending_len) as u64;
            self.compress(self.pending);
            self.pending = 0;
            self.pending_len = 0;
        }
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

/// Up to 7 bytes as a little-endian word, in at most three loads (a byte loop cost more than
/// the compression it feeds on the short fields of a key).
#[inline(always)]
fn load_le(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    debug_assert!(n < 8);
    let mut out = 0u64;
    let mut at = 0;
    if n >= 4 {
        out = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        at = 4;
    }
    if n - at >= 2 {
        out |= u64::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])) << (8 * at);
        at += 2;
    }
    if at < n {
        out |= u64::from(bytes[at]) << (8 * at);
    }
    out
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

    fn key<'a>(values: &'a [&'a str]) -> CounterKey<'a> {
        CounterKey::new("drl", b"rule", 0, values)
    }

    /// What a fingerprint hashes, built in one piece: the rule's word and bytes, zeros to a
    /// word, then the encoding without the rule.
    fn fingerprint_input(k: &CounterKey<'_>) -> Vec<u8> {
        let mut input = (FINGERPRINT_VERSION | ((k.rule.len() as u64) << 32))
            .to_le_bytes()
            .to_vec();
        input.extend_from_slice(k.rule);
        input.resize(input.len().next_multiple_of(8), 0);
        let encoding = k.encode();
        input.extend_from_slice(&encoding[..16 + k.domain.len()]);
        input.extend_from_slice(&encoding[16 + k.domain.len() + k.rule.len()..]);
        input
    }

    #[test]
    fn separators_in_fields_cannot_collide() {
        let a = key(&["a:b", "c"]);
        let b = key(&["a", "b:c"]);
        assert_ne!(a.encode(), b.encode());
        let f = Fingerprinter::with_key(1, 2);
        assert_ne!(f.fingerprint(&a), f.fingerprint(&b));
        assert_ne!(key(&["", "ab"]).encode(), key(&["a", "b"]).encode());
        assert_ne!(key(&["ab"]).encode(), key(&["a", "b"]).encode());
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
    fn keys_hash_like_their_input_in_one_piece() {
        let f = Fingerprinter::with_key(3, 4);
        // Every alignment of the rule and the two values against SipHash's 8-byte words.
        let text = "u".repeat(900);
        for r in 0..10 {
            let rule = &text.as_bytes()[..r];
            for (a, b) in (0..24)
                .flat_map(|a| (0..24).map(move |b| (a, b)))
                .chain([(900, 17)])
            {
                let values = [&text[..a], &text[..b]];
                let k = CounterKey::new("drl", rule, 1, &values);
                assert_eq!(
                    f.fingerprint(&k),
                    siphash13_128(3, 4, &fingerprint_input(&k)),
                    "{r} {a} {b}"
                );
            }
        }
    }

    #[test]
    fn a_rule_prefix_gives_the_fingerprint_of_its_rule() {
        let f = Fingerprinter::new();
        for rule in [&b""[..], b"r", b"rule-id", b"rule-id!", &[7u8; 33]] {
            let prefix = RulePrefix::of(rule);
            let values = ["alice", "/api"];
            let plain = CounterKey::new("drl", rule, 0, &values);
            let fast = CounterKey {
                prefix: Some(&prefix),
                ..plain
            };
            assert_eq!(f.fingerprint(&fast), f.fingerprint(&plain));
            assert_eq!(fast, plain);
            // Another key ignores the prefix (it was hashed under the process's key).
            let other = Fingerprinter::with_key(1, 2);
            assert_eq!(other.fingerprint(&fast), other.fingerprint(&plain));
        }
        // The rule's length is hashed: a rule and its zero-padded self differ.
        let values = ["u"];
        assert_ne!(
            f.fingerprint(&CounterKey::new("drl", b"ab", 0, &values)),
            f.fingerprint(&CounterKey::new("drl", b"ab\0", 0, &values))
        );
    }

    #[test]
    fn a_key_matches_its_own_encoding_only() {
        let keys = [
            key(&["a:b", "c"]),
            key(&["a", "b:c"]),
            key(&["", "ab"]),
            key(&["ab"]),
            key(&["a", "b"]),
            CounterKey {
                limit: 1,
                ..key(&["a", "b"])
            },
            CounterKey {
                domain: "drm",
                ..key(&["a", "b"])
            },
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(a.encodes_as(&b.encode()), a == b, "{a:?} {b:?}");
            }
            let encoding = a.encode();
            for cut in 0..encoding.len() {
                assert!(!a.encodes_as(&encoding[..cut]));
            }
            assert!(!a.encodes_as(&[encoding.as_slice(), b"x"].concat()));
            assert!(!a.encodes_as(&a.group()));
        }
    }

    #[test]
    fn rule_and_limit_are_part_of_the_identity() {
        let values = ["u", "e"];
        let a = key(&values);
        let b = CounterKey { limit: 1, ..a };
        let c = CounterKey {
            rule: b"other",
            ..a
        };
        assert_ne!(a.encode(), b.encode());
        assert_ne!(a.encode(), c.encode());
        // Limits of one rule share a group; rules do not.
        assert_eq!(a.group(), b.group());
        assert_ne!(a.group(), c.group());
        assert_ne!(a.group(), a.encode());
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
