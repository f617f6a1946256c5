//! Several `drl serve` nodes on one config, and a client of each (the multi-node tests).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drl_client::Client;
use drl_testkit::process::DrlProcess;

/// `n` nodes of `binary` on `config`, each with a client that waits up to 10 s for an answer.
pub(crate) fn start(binary: &str, config: &Path, n: usize) -> (Vec<DrlProcess>, Arc<Vec<Client>>) {
    let nodes: Vec<DrlProcess> = (0..n).map(|_| DrlProcess::start(binary, config)).collect();
    let clients = nodes
        .iter()
        .map(|node| {
            Client::new(&node.url)
                .unwrap_or_else(|e| panic!("a client of {}: {e}", node.url))
                .with_timeout(Duration::from_secs(10))
        })
        .collect();
    (nodes, Arc::new(clients))
}

/// The clients' runtime: two workers, timers and I/O.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a runtime: {e}"))
}
