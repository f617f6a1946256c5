//! Counter identities are injective (docs/design.md, "Keys"): different (domain, rule, limit, values)
//! never share an encoding, whatever characters they hold, and the fingerprint of an identity
//! is a function of its encoding alone.

use drl_core::key::{CounterKey, Fingerprinter};
use proptest::prelude::*;

const RULES: [&[u8]; 4] = [b"", b"r", b"rule", b"\x00\x01"];

/// Strings made of the characters most likely to confuse a naive encoding.
fn tricky() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just(':'),
            Just('{'),
            Just('}'),
            Just('\n'),
            Just('\0'),
            Just('a'),
            Just('é'),
            any::<char>(),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// (domain, rule, limit, values)
type Identity = (String, usize, u16, Vec<String>);

fn identity() -> impl Strategy<Value = Identity> {
    (
        tricky(),
        0..4usize,
        0..3u16,
        proptest::collection::vec(tricky(), 0..4),
    )
}

/// The key of an identity; `values` holds the borrowed values.
fn key<'a>(id: &'a Identity, values: &'a mut Vec<&'a str>) -> CounterKey<'a> {
    values.extend(id.3.iter().map(String::as_str));
    CounterKey {
        domain: &id.0,
        rule: RULES[id.1],
        limit: id.2,
        values,
        prefix: None,
    }
}

fn encode(id: &Identity) -> Vec<u8> {
    key(id, &mut Vec::new()).encode()
}

fn fingerprint(f: &Fingerprinter, id: &Identity) -> u128 {
    f.fingerprint(&key(id, &mut Vec::new()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn different_identities_encode_differently(a in identity(), b in identity()) {
        prop_assert_eq!(a == b, encode(&a) == encode(&b));
        let group = |id: &Identity| key(id, &mut Vec::new()).group();
        prop_assert_eq!(a.0 == b.0 && a.1 == b.1 && a.3 == b.3, group(&a) == group(&b));
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_key(
        a in tricky(), b in tricky(), c in tricky(), cut in 0usize..12,
    ) {
        // The same bytes split differently across user_id and endpoint.
        let joined = format!("{b}{c}");
        let cut = joined.char_indices().map(|(i, _)| i).chain([joined.len()]).nth(cut).unwrap_or(0);
        let (user, endpoint) = joined.split_at(cut);
        let moved = (a.clone(), 3, 0, vec![user.to_owned(), endpoint.to_owned()]);
        let original = (a, 3, 0, vec![b, c]);
        prop_assert_eq!(original == moved, encode(&original) == encode(&moved));
        let f = Fingerprinter::with_key(7, 9);
        if original != moved {
            prop_assert_ne!(fingerprint(&f, &original), fingerprint(&f, &moved));
        }
    }
}
