//! The global allocator (mimalloc) and the thread that lets it return freed memory.
//!
//! mimalloc does not hand freed memory back to the system at once: a free range is purged
//! (`MADV_DONTNEED`, which is what lowers the resident size) only once its `purge_delay` has
//! passed (1 s by default), and only when some thread next enters the allocator's slow path or
//! collects. Once a load stops, the node's worker threads are idle and nothing enters the
//! allocator, so the memory of every expired key, freed by the memory store's sweeper, stayed
//! resident for good: 1 000 000 keys left 215 MiB resident 20 s after they had expired, against
//! 18 MiB at start (docs/soak.md). A thread that asks mimalloc to collect once a second lets the
//! purges happen; a collection with nothing to purge costs a few microseconds.
//!
//! Transparent huge pages undo the purges: mimalloc marks its arenas `MADV_HUGEPAGE`, and the
//! kernel's khugepaged then collapses any 2 MiB range with a page still in use back into a whole
//! resident huge page (16 MiB scanned per 10 s by default), so RSS crept back up by about 10 MiB
//! every 10 s after the keys had expired (47 to 69 MiB in 40 s; without huge pages it stayed
//! at 49 MiB). The node therefore turns huge pages off for itself (`PR_SET_THP_DISABLE`) unless
//! `DRL_ALLOW_THP=1` is set. Their effect on speed: none measurable on the shared 2-core machine
//! this was written on (10 000 000 keys, native batches, alternated twice: 0.93/0.99 M
//! decisions/s without, 0.94/0.93 M with; docs/benchmarks.md).

use std::time::Duration;

/// mimalloc instead of the system allocator: the gRPC stack (tonic, h2, prost) allocates and
/// frees several buffers per call, and glibc's malloc took a fifth of the server's CPU under load;
/// with mimalloc a call costs the server about 18% less CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set to `1` to keep transparent huge pages (fewer page walks for a large key set, though none
/// measurable here; at the cost of memory that is not returned after the keys expire).
pub(crate) const ALLOW_THP_ENV: &str = "DRL_ALLOW_THP";

/// How often the collector thread runs: mimalloc's default purge delay, so a range freed now is
/// purged within about two seconds.
pub(crate) const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// The one foreign function the binary calls. The `mimalloc` crate links the library but wraps
/// none of its housekeeping, so it is declared here (this is why the `drl` crate denies unsafe
/// code rather than forbidding it, see its Cargo.toml).
#[allow(unsafe_code)]
mod ffi {
    unsafe extern "C" {
        /// `void mi_collect(bool force)` of mimalloc.h: collects the calling thread's free
        /// lists and purges what is due in the process-wide arenas. It takes no pointer and may
        /// be called from any thread at any time, so calling it is safe.
        pub(super) safe fn mi_collect(force: bool);
    }

    /// Turns transparent huge pages off for the whole process (new and existing mappings, and
    /// khugepaged), as `prctl(2)` documents for `PR_SET_THP_DISABLE`; Linux only. Returns
    /// whether the kernel accepted it.
    #[cfg(target_os = "linux")]
    pub(super) fn disable_thp() -> bool {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and no pointer; it only sets a flag
        // of the process's memory map.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn disable_thp() -> bool {
        true
    }
}

/// Collects the calling thread's mimalloc heap if it has not for [`COLLECT_INTERVAL`]: run by
/// every Tokio worker when it parks. A block freed by another thread (the memory store's sweeper
/// frees the slot arrays the workers allocated as the table grew) waits in its page's
/// cross-thread list until the page's own thread collects; a worker left idle after a load never
/// did, so the pages stayed resident. An idle node still parks every second: its housekeeping
/// task (`drl_server`, once a second) wakes a worker, which collects when it parks again. Costs
/// a clock reading per park.
pub(crate) fn collect_if_due() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    if LAST
        .get()
        .is_none_or(|last| now.duration_since(last) >= COLLECT_INTERVAL)
    {
        LAST.set(Some(now));
        ffi::mi_collect(false);
    }
}

/// Lets the node return freed memory: huge pages off (unless [`ALLOW_THP_ENV`] is `1`) and the
/// collector thread started; it runs until the process exits. Without it (if no thread can be
/// started) the node works as before and keeps freed memory for reuse.
pub(crate) fn return_freed_memory() {
    if std::env::var(ALLOW_THP_ENV).is_ok_and(|v| v == "1") {
        tracing::info!("{ALLOW_THP_ENV}=1: transparent huge pages stay on");
    } else if !ffi::disable_thp() {
        tracing::warn!("cannot turn transparent huge pages off (PR_SET_THP_DISABLE)");
    }
    let spawned = std::thread::Builder::new()
        .name("drl-mi-collect".into())
        .spawn(|| {
            loop {
                std::thread::sleep(COLLECT_INTERVAL);
                ffi::mi_collect(false);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the allocator's collector thread: {e}");
    }
}
