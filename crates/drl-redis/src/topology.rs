//! Which master serves each slot, so strict admissions can be batched per master: one pipeline
//! and one `WAIT` for every slot a master holds, since WAIT blocks that master's connection
//! anyway. Read from `CLUSTER SLOTS`, refreshed when a batch fails (a failover or resharding
//! moved slots) and at most every [`REFRESH_EVERY`]. A stale map only costs a failed batch
//! (MOVED), answered like any store error; routing itself stays redis-rs's.

use std::time::Duration;

use redis::Value;

/// Least time between two refreshes.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// Master of each slot, as an index into the nodes seen (`u16::MAX`: no master known).
#[derive(Debug)]
pub(crate) struct SlotMap {
    owner: Box<[u16]>,
}

impl SlotMap {
    /// The batching lane of `slot`: its master's index, or a lane of its own if unknown.
    pub(crate) fn lane(map: Option<&SlotMap>, slot: u16) -> u32 {
        match map.and_then(|m| m.owner.get(usize::from(slot))) {
            Some(&owner) if owner != u16::MAX => u32::from(owner),
            _ => 0x1_0000 + u32::from(slot),
        }
    }

    /// One slot of each master (the lowest it holds), in master order: enough to reach every
    /// master through slot routing, e.g. to open its connection before the first check.
    pub(crate) fn one_slot_per_master(&self) -> Vec<u16> {
        let mut seen: Vec<u16> = Vec::new();
        let mut slots = Vec::new();
        for (slot, &owner) in self.owner.iter().enumerate() {
            if owner != u16::MAX && !seen.contains(&owner) {
                seen.push(owner);
                slots.push(slot as u16);
            }
        }
        slots
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id…], replicas…]…]`.
    pub(crate) fn parse(value: &Value) -> Option<Self> {
        let Value::Array(ranges) = value else {
            return None;
        };
        let mut owner = vec![u16::MAX; usize::from(crate::keys::SLOTS)].into_boxed_slice();
        let mut nodes: Vec<(Vec<u8>, i64)> = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => h.clone(),
                Some(Value::SimpleString(h)) => h.clone().into_bytes(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            let node = match nodes.iter().position(|n| n.0 == host && n.1 == *port) {
                Some(i) => i,
                None => {
                    nodes.push((host, *port));
                    nodes.len() - 1
                }
            };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            for slot in owner.get_mut(start..=end)? {
                *slot = u16::try_from(node).ok()?;
            }
        }
        Some(Self { owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn slots_map_to_their_masters() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(99),
                node("a", 1),
                node("r", 9),
            ]),
            Value::Array(vec![Value::Int(100), Value::Int(16_383), node("b", 2)]),
            Value::Array(vec![Value::Int(200), Value::Int(200), node("a", 1)]),
        ]);
        let map = SlotMap::parse(&reply).expect("parsed");
        assert_eq!(SlotMap::lane(Some(&map), 5), SlotMap::lane(Some(&map), 200));
        assert_ne!(SlotMap::lane(Some(&map), 5), SlotMap::lane(Some(&map), 150));
        assert_eq!(SlotMap::lane(None, 7), 0x1_0007);
        assert_eq!(map.one_slot_per_master(), vec![0, 100]);
        assert!(SlotMap::parse(&Value::Int(1)).is_none());
    }
}
