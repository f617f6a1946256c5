//! Entry points of the fuzz targets in `fuzz/` and of the tests that replay their corpora and
//! regression inputs (`tests/fuzz_regressions.rs`): each takes arbitrary bytes, runs one parser
//! or encoding, and panics only when a property fails. Not part of the API.
//!
//! - [`duration`]: [`parse_duration`] never panics, its errors name the input, and every
//!   duration it accepts (or [`format_duration`] writes) reads back as itself.
//! - [`key_encoding`]: [`CounterKey::encode`] and [`CounterKey::group`] are injective (decoded
//!   back field by field), a group never encodes like a counter, and two different keys get
//!   different fingerprints.

use std::time::Duration;

use crate::key::{CounterKey, Fingerprinter};
use crate::policy::{format_duration, parse_duration};

/// Fuzz target `duration`: the input as a duration string, and its first 8 bytes as a
/// number of milliseconds to format.
pub fn duration(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_duration(&text) {
        Ok(d) => {
            let written = format_duration(d);
            assert_eq!(
                parse_duration(&written),
                Ok(d),
                "{text:?} reads as {d:?}, written {written:?}"
            );
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("invalid duration"), "{text:?}: {message}");
        }
    }
    let mut ms = [0u8; 8];
    for (to, from) in ms.iter_mut().zip(data) {
        *to = *from;
    }
    let d = Duration::from_millis(u64::from_le_bytes(ms));
    let written = format_duration(d);
    assert_eq!(parse_duration(&written), Ok(d), "{d:?} written {written:?}");
}

/// Reads fields off fuzz input: a byte, or a length byte then up to that many bytes (the
/// input may end sooner; past its end everything reads as empty or zero).
#[derive(Debug, Clone)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }

    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.0.len());
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        field
    }

    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

/// A [`CounterKey`] with owned fields, as read from fuzz input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedKey {
    pub domain: String,
    pub rule: Vec<u8>,
    pub limit: u16,
    pub values: Vec<String>,
}

impl OwnedKey {
    /// Domain, rule, limit (two bytes) and 0 to 4 values.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let domain = r.text();
        let rule = r.bytes().to_vec();
        let limit = u16::from_le_bytes([r.byte(), r.byte()]);
        let values = (0..r.byte() % 5).map(|_| r.text()).collect();
        Self {
            domain,
            rule,
            limit,
            values,
        }
    }

    /// Calls `f` with the key borrowed as a [`CounterKey`].
    pub fn with<R>(&self, f: impl FnOnce(&CounterKey<'_>) -> R) -> R {
        let values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        f(&CounterKey {
            domain: &self.domain,
            rule: &self.rule,
            limit: self.limit,
            values: &values,
            prefix: None,
        })
    }

    /// The key without its limit index: what its group identifies.
    fn group_fields(&self) -> (&str, &[u8], &[String]) {
        (&self.domain, &self.rule, &self.values)
    }
}

/// Two keys from one input: the fuzzer looks for a pair that encodes alike.
pub fn key_pair(data: &[u8]) -> (OwnedKey, OwnedKey, Reader<'_>) {
    let mut r = Reader::new(data);
    let a = OwnedKey::read(&mut r);
    let b = OwnedKey::read(&mut r);
    (a, b, r)
}

/// Fuzz target `key_encoding`.
pub fn key_encoding(data: &[u8]) {
    let (a, b, _) = key_pair(data);
    let (counter_a, group_a) = a.with(|k| (k.encode(), k.group()));
    let (counter_b, group_b) = b.with(|k| (k.encode(), k.group()));
    // Injective because it can be read back.
    assert_eq!(decode(&counter_a), Some((2, a.clone())), "{a:?}");
    let ungrouped = OwnedKey {
        limit: 0,
        ..a.clone()
    };
    assert_eq!(decode(&group_a), Some((3, ungrouped)), "{a:?}");
    // And so, for the pair:
    assert_eq!(counter_a == counter_b, a == b, "{a:?} {b:?}");
    assert_eq!(
        group_a == group_b,
        a.group_fields() == b.group_fields(),
        "{a:?} {b:?}"
    );
    assert_ne!(counter_a, group_b);
    assert_ne!(group_a, counter_b);
    let f = Fingerprinter::with_key(0x0064_726c, 0x6675_7a7a);
    let (print_a, print_b) = (a.with(|k| f.fingerprint(k)), b.with(|k| f.fingerprint(k)));
    assert_eq!(print_a == print_b, a == b, "{a:?} {b:?}");
}

/// Reads an encoding back: its version and the key (limit 0 for a group). `None` when the
/// bytes are not an encoding.
pub fn decode(bytes: &[u8]) -> Option<(u8, OwnedKey)> {
    let word = |at: usize| -> Option<u64> {
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let (head, tail) = (word(0)?, word(8)?);
    if head & 0xff00_0000 != 0 {
        return None;
    }
    let version = (head & 0xff) as u8;
    let limit = ((head >> 8) & 0xffff) as u16;
    let count = head >> 32;
    let domain_len = usize::try_from(tail & 0xffff_ffff).ok()?;
    let rule_len = usize::try_from(tail >> 32).ok()?;
    let mut rest = bytes.get(16..)?;
    let mut take = |len: usize| -> Option<&[u8]> {
        let (field, after) = rest.split_at_checked(len)?;
        rest = after;
        Some(field)
    };
    let domain = String::from_utf8(take(domain_len)?.to_vec()).ok()?;
    let rule = take(rule_len)?.to_vec();
    let mut values = Vec::new();
    for _ in 0..count {
        let len: [u8; 4] = take(4)?.try_into().ok()?;
        let len = usize::try_from(u32::from_le_bytes(len)).ok()?;
        values.push(String::from_utf8(take(len)?.to_vec()).ok()?);
    }
    if !rest.is_empty() {
        return None;
    }
    Some((
        version,
        OwnedKey {
            domain,
            rule,
            limit,
            values,
        },
    ))
}
