//! Counter identities are injective (DESIGN.md §5): different (domain, level, user_id, endpoint)
//! never share an encoding, whatever characters they hold, and the fingerprint of an identity
//! is a function of its encoding alone.

use drl_core::key::{CounterKey, Fingerprinter, RuleLevel};
use proptest::prelude::*;

const LEVELS: [RuleLevel; 4] = [
    RuleLevel::Default,
    RuleLevel::Endpoint,
    RuleLevel::User,
    RuleLevel::Pair,
];

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

fn identity() -> impl Strategy<Value = (String, usize, String, String)> {
    (tricky(), 0..4usize, tricky(), tricky())
}

fn key(id: &(String, usize, String, String)) -> CounterKey<'_> {
    CounterKey {
        domain: &id.0,
        level: LEVELS[id.1],
        user_id: &id.2,
        endpoint: &id.3,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn different_identities_encode_differently(a in identity(), b in identity()) {
        prop_assert_eq!(a == b, key(&a).encode() == key(&b).encode());
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_key(
        a in tricky(), b in tricky(), c in tricky(), cut in 0usize..12,
    ) {
        // The same bytes split differently across user_id and endpoint.
        let joined = format!("{b}{c}");
        let cut = joined.char_indices().map(|(i, _)| i).chain([joined.len()]).nth(cut).unwrap_or(0);
        let (user, endpoint) = joined.split_at(cut);
        let moved = (a.clone(), 3, user.to_owned(), endpoint.to_owned());
        let original = (a, 3, b, c);
        prop_assert_eq!(original == moved, key(&original).encode() == key(&moved).encode());
        let f = Fingerprinter::with_key(7, 9);
        if original != moved {
            prop_assert_ne!(f.fingerprint(&key(&original)), f.fingerprint(&key(&moved)));
        }
    }
}
