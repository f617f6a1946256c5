//! `drl check`: one decision asked of a running node, printed, and its exit code.

use std::io::Write;

use drl_client::{Client, ClientError};

/// The request was allowed.
pub(crate) const EXIT_ALLOWED: u8 = 0;
/// The request was denied.
pub(crate) const EXIT_DENIED: u8 = 1;
/// No decision (bad arguments, unreachable server, rejected request).
pub(crate) const EXIT_ERROR: u8 = 2;

/// The `drl check` command: asks the node with `client` (or reports the error of making it),
/// prints the decision to `out` (or the error to `err`) and returns the exit code:
/// [`EXIT_ALLOWED`], [`EXIT_DENIED`] or [`EXIT_ERROR`].
pub(crate) async fn run(
    client: Result<Client, ClientError>,
    user_id: &str,
    endpoint: &str,
    hits: u64,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let result = match client {
        Ok(client) => client.check(user_id, endpoint, hits).await,
        Err(e) => Err(e),
    };
    // A failed write to stdout/stderr cannot be reported anywhere better; the exit code stands.
    match result {
        Ok(d) => {
            let verdict = if d.allowed { "allowed" } else { "denied" };
            let _ = writeln!(
                out,
                "{verdict} limit={} remaining={} reset_after_ms={} retry_after_ms={}",
                d.limit, d.remaining, d.reset_after_ms, d.retry_after_ms
            );
            if d.allowed { EXIT_ALLOWED } else { EXIT_DENIED }
        }
        Err(e) => {
            let _ = writeln!(err, "drl check: {e}");
            EXIT_ERROR
        }
    }
}
