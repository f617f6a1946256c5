//! Which master serves each slot, as the cluster itself says: every node's `CLUSTER NODES`,
//! merged by configuration epoch (the rule Redis applies: of two masters claiming a slot, the
//! higher epoch wins, so a replica promoted past a hung master overrides the views that still
//! name the old one). [`crate::follow`] reads it to tell when the connection routes a master's
//! slots to the wrong process; strict mode batches its admissions per master with it (one
//! pipeline and one `WAIT` for every slot a master holds, since WAIT blocks that master's
//! connection anyway). A stale map only costs a failed batch (MOVED), answered like any store
//! error; routing itself stays redis-rs's.

/// One cluster node, as `CLUSTER NODES` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// What one node's `CLUSTER NODES` said.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Every node it knows with an address, failed or not.
    nodes: Vec<Node>,
    /// Slot ranges claimed by masters: (first, last, config epoch, index into `nodes`).
    claims: Vec<(u16, u16, u64, usize)>,
}

impl View {
    /// Reads a `CLUSTER NODES` reply (one line per node: `id ip:port@cport[,hostname] flags
    /// master ping pong epoch link slot…`). `asked` is the address the reply came from: a node
    /// that has not learned its own IP names itself `:port`. None if a line does not parse.
    pub(crate) fn parse(text: &str, asked: &str) -> Option<Self> {
        let mut view = Self::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, addr, flags, epoch) = (
                *fields.first()?,
                *fields.get(1)?,
                *fields.get(2)?,
                fields.get(6)?.parse::<u64>().ok()?,
            );
            let flags: Vec<&str> = flags.split(',').collect();
            if flags.iter().any(|f| matches!(*f, "noaddr" | "handshake")) {
                continue;
            }
            let endpoint = addr.split(['@', ',']).next()?;
            let (host, port) = endpoint.rsplit_once(':')?;
            let host = if host.is_empty() { asked } else { host };
            view.nodes.push(Node {
                id: id.to_owned(),
                host: host.to_owned(),
                port: port.parse().ok()?,
            });
            if !flags.contains(&"master") {
                continue;
            }
            // Ranges `a-b` or `a`; `[slot->-id]` / `[slot-<-id]` mark migrations: the slot
            // stays its owner's until the move ends.
            for range in fields.iter().skip(8).filter(|r| !r.starts_with('[')) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
                if a > b || b >= crate::keys::SLOTS {
                    return None;
                }
                view.claims.push((a, b, epoch, view.nodes.len() - 1));
            }
        }
        Some(view)
    }
}

/// Master of each slot, as an index into the nodes seen (`u16::MAX`: no master known).
#[derive(Debug)]
pub(crate) struct SlotMap {
    owner: Box<[u16]>,
    /// Every node any view named, masters first in id order (so a master keeps its batching
    /// lane from one map to the next), then the others.
    nodes: Vec<Node>,
}

impl SlotMap {
    /// The batching lane of `slot`: its master's index, or a lane of its own if unknown.
    pub(crate) fn lane(map: Option<&SlotMap>, slot: u16) -> u32 {
        match map.and_then(|m| m.owner.get(usize::from(slot))) {
            Some(&owner) if owner != u16::MAX => u32::from(owner),
            _ => 0x1_0000 + u32::from(slot),
        }
    }

    /// Merges the views of several nodes: each slot goes to the claim with the highest epoch.
    /// None if no view claims any slot.
    pub(crate) fn merge(views: &[View]) -> Option<Self> {
        let mut best: Vec<(u64, Option<&Node>)> = vec![(0, None); usize::from(crate::keys::SLOTS)];
        for view in views {
            for &(first, last, epoch, node) in &view.claims {
                let node = view.nodes.get(node)?;
                for slot in &mut best[usize::from(first)..=usize::from(last)] {
                    if slot.1.is_none() || epoch > slot.0 {
                        *slot = (epoch, Some(node));
                    }
                }
            }
        }
        let mut masters: Vec<&Node> = Vec::new();
        for node in best.iter().filter_map(|b| b.1) {
            if !masters.iter().any(|m| m.id == node.id) {
                masters.push(node);
            }
        }
        if masters.is_empty() {
            return None;
        }
        masters.sort_by(|a, b| a.id.cmp(&b.id));
        let mut nodes: Vec<Node> = masters.into_iter().cloned().collect();
        let owner = best
            .iter()
            .map(|b| match b.1 {
                Some(n) => nodes
                    .iter()
                    .position(|m| m.id == n.id)
                    .map_or(u16::MAX, |i| i as u16),
                None => u16::MAX,
            })
            .collect();
        for node in views.iter().flat_map(|v| &v.nodes) {
            if !nodes.iter().any(|n| n.id == node.id) {
                nodes.push(node.clone());
            }
        }
        Some(Self { owner, nodes })
    }

    /// The master of `slot`, if one is known.
    pub(crate) fn master_of(&self, slot: u16) -> Option<&Node> {
        let owner = *self.owner.get(usize::from(slot))?;
        self.nodes.get(usize::from(owner))
    }

    /// Every node any view named (masters first).
    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every run of slots with one master (first and last slot), with that master: where the
    /// connection's routing is checked.
    pub(crate) fn runs(&self) -> Vec<(u16, u16, &Node)> {
        let mut runs: Vec<(u16, u16, &Node)> = Vec::new();
        let mut previous = u16::MAX;
        for (slot, &owner) in self.owner.iter().enumerate() {
            let slot = slot as u16;
            if owner != u16::MAX && owner == previous {
                if let Some(run) = runs.last_mut() {
                    run.1 = slot;
                }
            } else if let Some(node) = self.nodes.get(usize::from(owner)) {
                runs.push((slot, slot, node));
            }
            previous = owner;
        }
        runs
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
}

#[cfg(test)]
mod tests {
    use super::*;

    // Three masters a, b, c (b with a replica r); then b hangs and r is promoted with epoch 7.
    const BEFORE: &str = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
r 127.0.0.1:7003@17003 slave b 0 0 2 connected
";
    const AFTER: &str = "\
a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master,fail - 0 0 2 disconnected
c 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
r :7003@17003 myself,master - 0 0 7 connected 5461-10922 [5470->-a]
";

    fn master_of(map: &SlotMap, slot: u16) -> &str {
        let (_, _, node) = map
            .runs()
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .expect("a run");
        &node.id
    }

    #[test]
    fn the_higher_epoch_wins_whatever_the_order_of_the_views() {
        let before = || View::parse(BEFORE, "127.0.0.1").expect("parsed");
        let after = || View::parse(AFTER, "127.0.0.1").expect("parsed");
        for views in [vec![before(), after()], vec![after(), before()]] {
            let map = SlotMap::merge(&views).expect("merged");
            assert_eq!(master_of(&map, 6000), "r");
            assert_eq!(
                master_of(&map, 5470),
                "r",
                "a migrating slot stays with its owner"
            );
            assert_eq!(master_of(&map, 0), "a");
            assert_eq!(master_of(&map, 16_383), "c");
            let r = map.nodes().iter().find(|n| n.id == "r").expect("r");
            assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 7003));
            assert_eq!(map.nodes().len(), 4, "b is still known, as a node");
        }
        let map = SlotMap::merge(&[before()]).expect("merged");
        assert_eq!(master_of(&map, 6000), "b");
        assert_eq!(map.one_slot_per_master(), vec![0, 5461, 10923]);
        let runs: Vec<(u16, u16)> = map.runs().iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(runs, vec![(0, 5460), (5461, 10_922), (10_923, 16_383)]);
    }

    #[test]
    fn lanes_follow_masters() {
        let map = SlotMap::merge(&[View::parse(BEFORE, "h").expect("parsed")]).expect("merged");
        assert_eq!(
            SlotMap::lane(Some(&map), 5),
            SlotMap::lane(Some(&map), 5460)
        );
        assert_ne!(
            SlotMap::lane(Some(&map), 5),
            SlotMap::lane(Some(&map), 5461)
        );
        assert_eq!(SlotMap::lane(None, 7), 0x1_0007);
    }

    #[test]
    fn bad_replies_are_refused() {
        assert!(View::parse("a 127.0.0.1:1@2 master - 0 0 x connected 0-1", "h").is_none());
        assert!(View::parse("a 127.0.0.1:1@2 master - 0 0 1 connected 9-2", "h").is_none());
        assert!(View::parse("a 127.0.0.1:1@2 master - 0 0 1 connected 0-16384", "h").is_none());
        assert!(View::parse("a b", "h").is_none());
        let empty = View::parse("", "h").expect("no nodes is a view");
        assert!(SlotMap::merge(&[empty]).is_none());
    }
}
