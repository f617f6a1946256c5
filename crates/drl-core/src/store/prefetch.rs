//! Asking for a batch's memory before deciding it.
//!
//! A check of a key out of cache waits for its slot: with 10 000 000 keys in the memory store, a
//! load from DRAM and a page walk for it, 0.3–0.4 µs of a check on the KVM machine of
//! `docs/benchmarks.md` (the store's share of a node's profile, 30% against 6% at 1 000 keys). Decided one after another, a batch of 100 checks waits 100 times in
//! a row. Asked for all at once, in a tight loop of prefetch instructions, the loads and walks
//! overlap, and by the time the checks run their slots are in cache: the node's native batches
//! at 10 000 000 keys went from 0.90 to 1.13 M decisions/s, with 1 000 keys unchanged
//! (docs/core.md).
//! Interleaving the prefetches with the rest of each check's work did not overlap them: a
//! prefetch that walks the page table holds up retirement, and one check's work fills the
//! reorder window before the next prefetch is issued.
//!
//! A prefetch is a hint: it never faults (any address, a freed one included), reads nothing
//! into the program and changes nothing a check sees, so a stale or wrong address costs a
//! wasted load and nothing else. On targets other than x86-64 [`Prefetch::load`] does nothing.

/// Addresses of cache lines a batch will read, gathered by [`Store::prefetch`](super::Store::prefetch)
/// and then loaded together by [`Prefetch::load`].
#[derive(Debug, Default)]
pub struct Prefetch {
    lines: Vec<*const u8>,
}

/// The line size the addresses are rounded to (x86-64, and most of aarch64).
const LINE: usize = 64;

impl Prefetch {
    /// An empty list (allocates nothing until a line is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the lines of the value at `at` (one, or two when it straddles a line). `at` is only
    /// an address here: it need not point to a live value.
    pub fn add<T>(&mut self, at: *const T) {
        let first = at.cast::<u8>();
        let last = first.wrapping_add(size_of::<T>().max(1) - 1);
        self.lines.push(first);
        if first.addr() / LINE != last.addr() / LINE {
            self.lines.push(last);
        }
    }

    /// How many lines are listed.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no line is listed.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The listed addresses, in order.
    #[cfg(test)]
    pub(super) fn lines(&self) -> &[*const u8] {
        &self.lines
    }

    /// Starts loading every listed line into the cache, without waiting for any.
    #[inline]
    pub fn load(&self) {
        for &line in &self.lines {
            prefetch(line);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(line: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: PREFETCHT0 does not dereference its operand as far as the program can tell: it
    // cannot fault (an unmapped or freed address is dropped), changes no register or memory,
    // and what it loads is only ever read by later ordinary loads. The intrinsic is `unsafe`
    // only because it takes a raw pointer; SSE is baseline on x86-64.
    #[allow(unsafe_code)]
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(line.cast());
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefetch(_line: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_straddling_a_line_adds_both_lines() {
        let base = std::ptr::without_provenance::<u8>(4096);
        let mut lines = Prefetch::new();
        lines.add(base.cast::<[u8; 56]>());
        assert_eq!(lines.len(), 1, "56 bytes at the start of a line fit in it");
        lines.add(base.wrapping_add(8).cast::<[u8; 56]>());
        assert_eq!(
            lines.len(),
            2,
            "56 bytes from offset 8 end on the line's last byte"
        );
        lines.add(base.wrapping_add(9).cast::<[u8; 56]>());
        assert_eq!(
            lines.len(),
            4,
            "from offset 9 they reach into the next line"
        );
        lines.add(base.wrapping_add(63).cast::<u8>());
        assert_eq!(lines.len(), 5);
        // Loading addresses nothing lives at is allowed: a prefetch never faults.
        lines.load();
    }
}
