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

use std::time::Duration;

/// mimalloc instead of the system allocator: the gRPC stack (tonic, h2, prost) allocates and
/// frees several buffers per call, and glibc's malloc took a fifth of the server's CPU under load;
/// with mimalloc a call costs the server about 18% less CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
}

/// Starts the collector thread; it runs until the process exits. Without it (if no thread can
/// be started) the node works as before and keeps freed memory for reuse.
pub(crate) fn spawn_collector() {
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
