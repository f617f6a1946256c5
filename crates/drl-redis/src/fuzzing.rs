//! Entry point of the fuzz target `redis_key` (in `fuzz/`) and of the test that replays its
//! corpus: Redis key names are injective and land in the slot Redis Cluster computes for
//! them. Not part of the API.

use drl_core::Algorithm;
use drl_core::fuzzing::{OwnedKey, key_pair};

use crate::keys::{PREFIX, hash_tag, key_slot, redis_key};

/// Fuzz target `redis_key`: two keys (read as by `drl_core::fuzzing::key_pair`), then an
/// algorithm for each.
pub fn redis_key_names(data: &[u8]) {
    let (a, b, mut r) = key_pair(data);
    let algorithms = [
        Algorithm::default(),
        Algorithm::SlidingLog,
        Algorithm::FixedWindow,
        Algorithm::TokenBucket { burst: None },
    ];
    let pick = |byte: u8| algorithms[usize::from(byte) % algorithms.len()];
    let (alg_a, alg_b) = (pick(r.byte()), pick(r.byte()));
    let key_a = a.with(|k| redis_key(k, alg_a));
    let key_b = b.with(|k| redis_key(k, alg_b));
    for (owned, algorithm, key) in [(&a, alg_a, &key_a), (&b, alg_b, &key_b)] {
        let (encoded, group) = owned.with(|k| (k.encode(), k.group()));
        // `drl:` + letter + `{` + 16 hex digits + `}` + the injective encoding.
        let (head, identity) = key.name.split_at(PREFIX.len() + 19);
        assert_eq!(&head[..PREFIX.len()], PREFIX.as_bytes());
        assert_eq!(head[PREFIX.len()], letter(algorithm));
        assert_eq!(head[PREFIX.len() + 1], b'{');
        assert_eq!(head[PREFIX.len() + 2..PREFIX.len() + 18], hash_tag(&group));
        assert_eq!(head[PREFIX.len() + 18], b'}');
        assert_eq!(identity, encoded.as_slice());
        assert_eq!(key.slot, cluster_slot(&key.name), "{owned:?}");
    }
    let same_identity = a == b && letter(alg_a) == letter(alg_b);
    assert_eq!(key_a.name == key_b.name, same_identity, "{a:?} {b:?}");
    if same_group(&a, &b) {
        assert_eq!(key_a.slot, key_b.slot, "{a:?} {b:?}");
    }
}

fn letter(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::SlidingWindow { .. } => b'W',
        Algorithm::SlidingLog => b'l',
        Algorithm::FixedWindow => b'F',
        Algorithm::TokenBucket { .. } => b'T',
    }
}

fn same_group(a: &OwnedKey, b: &OwnedKey) -> bool {
    (&a.domain, &a.rule, &a.values) == (&b.domain, &b.rule, &b.values)
}

/// The slot Redis Cluster gives a whole key name (the cluster spec's `HASH_SLOT`): the CRC16
/// of the first `{...}` when it is not empty, else of the whole name.
fn cluster_slot(name: &[u8]) -> u16 {
    let tagged = name.iter().position(|&b| b == b'{').and_then(|open| {
        let close = open + 1 + name[open + 1..].iter().position(|&b| b == b'}')?;
        (close > open + 1).then(|| &name[open + 1..close])
    });
    key_slot(tagged.unwrap_or(name))
}
