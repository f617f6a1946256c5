//! The replay of the crates' `tests/fuzz_regressions.rs`: every
//! seed input (`fuzz/corpus/<target>/`) and every input a fuzz run found to fail
//! (`fuzz/regressions/<target>/`), run through a fuzz target's entry point.

use std::path::PathBuf;

/// Every input of `target`, with its path for the failure message.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(listing) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in listing {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            inputs.push((path, bytes));
        }
    }
    inputs.sort();
    inputs
}

/// Runs every input of `target` through `entry`; a panic names the input that caused it.
pub fn replay(target: &str, entry: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no inputs for {target}");
    for (path, bytes) in inputs {
        if let Err(panic) = std::panic::catch_unwind(|| entry(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{}: {message}", path.display());
        }
    }
}
