//! Hot reload of the config file (docs/configuration.md): on a change of the file, on `SIGHUP`, and on
//! `POST /v1/config/reload`, all through one [`Reloader::reload`].
//!
//! A reload parses and validates the whole file first; only a valid config reaches
//! [`Limiter::set_rules`], an atomic swap, so checks in flight finish under the rules they
//! started with and none is dropped. A file that fails validation changes nothing: the old
//! config stays in force, the diagnostics are logged, and the failure is counted in the
//! `drl_config_reloads_total{result="error"}` metric.
//!
//! The config may be a directory (its `*.yaml` files: the native config and any number of
//! envoyproxy/ratelimit-format domains); then any change of a YAML file in it reloads.
//!
//! The file watcher watches the file's *directory*, not the file: editors and config managers
//! replace a file by writing a new one and renaming it over the old, which a watch on the old
//! inode would miss. A file reached through symlinks is also reloaded when what it resolves to
//! changes (Kubernetes swaps a ConfigMap volume's `..data` link, and no event names the file),
//! and the directory of the file it resolves to at start is watched too. Bursts of events (an
//! editor's write, rename and chmod) are debounced into one reload.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use drl_core::{Limiter, Store};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;

/// How long the file must stay quiet after a change before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads one config file into one limiter.
#[derive(Debug)]
pub struct Reloader<S> {
    path: PathBuf,
    limiter: Limiter<S>,
    metrics: Arc<Metrics>,
    /// The config in force; the lock also serialises reloads, so versions follow the order in
    /// which rules were swapped in.
    in_force: Mutex<InForce>,
}

/// What a reload compares against and then replaces.
#[derive(Debug)]
struct InForce {
    version: u64,
    /// The file that held the native part (store, default, rules), if the config had one.
    native_file: Option<String>,
}

impl<S: Store> Reloader<S> {
    /// A reloader for `limiter`, whose rules were loaded from `path`: that config is version 1.
    /// `native_file` is its [`Config::native_file`].
    pub fn new(
        path: impl Into<PathBuf>,
        native_file: Option<&str>,
        limiter: Limiter<S>,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.set_config_version(1);
        Self {
            path: path.into(),
            limiter,
            metrics,
            in_force: Mutex::new(InForce {
                version: 1,
                native_file: native_file.map(str::to_owned),
            }),
        }
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version of the config in force: 1 at start, +1 per successful reload.
    pub fn version(&self) -> u64 {
        self.in_force
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .version
    }

    /// Reads and validates the file, then swaps its rules in; returns the new version. On
    /// error nothing changes. A config that has lost the native part the one in force had (its
    /// file deleted from a config directory) is refused too: it would put the built-in default
    /// in place of the rules and drop the blocklist. Blocking (file I/O and parsing): from
    /// async code, use [`Reloader::reload_async`].
    pub fn reload(&self) -> Result<u64, ConfigError> {
        let mut in_force = self.in_force.lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = Config::load(&self.path).and_then(|config| {
            match (&in_force.native_file, config.native_file()) {
                (Some(was), None) => Err(ConfigError::whole(
                    &self.path.display().to_string(),
                    &format!(
                        "the native config ({was}) is gone: a config without store, default \
                         and rules would replace the rules in force with the built-in default; \
                         restore the file (or restart to run without it)"
                    ),
                )),
                _ => Ok(config),
            }
        });
        match loaded {
            Ok(config) => {
                // The store is chosen at start: a reload swaps the rules only, and a changed
                // `store:` section takes effect at the next restart.
                let rules = config.rules.rules().len();
                let domains = config.rules.domains().len();
                in_force.native_file = config.native_file().map(str::to_owned);
                self.limiter.set_rules(config.rules);
                in_force.version += 1;
                let version = in_force.version;
                self.metrics.reload_succeeded(version);
                tracing::info!(
                    "config {} reloaded: version {version}, {rules} rules, {domains} descriptor \
                     domains",
                    self.path.display(),
                );
                Ok(version)
            }
            Err(e) => {
                self.metrics.reload_failed();
                tracing::error!(
                    "config {} refused; version {} stays in force:\n{e}",
                    self.path.display(),
                    in_force.version
                );
                Err(e)
            }
        }
    }

    /// [`Reloader::reload`] on the blocking pool, off the async workers.
    pub async fn reload_async(self: &Arc<Self>) -> Result<u64, ConfigError> {
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.reload()).await {
            Ok(result) => result,
            Err(e) => Err(ConfigError::Read {
                path: self.path.display().to_string(),
                source: std::io::Error::other(format!("the reload task failed: {e}")),
            }),
        }
    }
}

/// A running reload trigger; stops when dropped.
#[derive(Debug)]
pub struct Trigger {
    task: JoinHandle<()>,
    /// Kept alive for as long as the trigger: dropping it stops the file watch.
    _watcher: Option<RecommendedWatcher>,
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reloads whenever the config file is created, written or renamed into place, once it has
/// been quiet for [`DEBOUNCE`]. Must be called within a Tokio runtime.
pub fn watch_file<S: Store>(reloader: Arc<Reloader<S>>) -> notify::Result<Trigger> {
    let path = reloader.path();
    let (watched, dir) = if path.is_dir() {
        // A config directory: any YAML file in it (and Kubernetes' `..data` symlink swap).
        (Watched::Directory, path.to_owned())
    } else {
        let file_name: OsString = path
            .file_name()
            .ok_or_else(|| {
                notify::Error::generic(&format!("{} does not name a file", path.display()))
            })?
            .to_owned();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        (Watched::File(file_name), dir)
    };
    // What the path resolves to through symlinks. A Kubernetes ConfigMap mounted as a volume
    // is `drl.yaml -> ..data/drl.yaml` with `..data -> ..<timestamp>`; an update swaps `..data`,
    // and no event names `drl.yaml`: the file is reloaded when its resolution changes.
    let file = path.to_owned();
    let mut resolved = std::fs::canonicalize(&file).ok();
    let target_dir = resolved
        .as_deref()
        .and_then(Path::parent)
        .filter(|target_dir| std::fs::canonicalize(&dir).ok().as_deref() != Some(*target_dir))
        .map(Path::to_owned);
    // One pending signal is enough: the task reloads the file as it is when it gets there.
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let mut relevant = concerns(&event, &watched);
                if let Watched::File(_) = watched {
                    let now = std::fs::canonicalize(&file).ok();
                    // An edit of the target itself, in another directory.
                    relevant |= now.is_some()
                        && event.paths.iter().any(|p| Some(p) == now.as_ref())
                        && !matches!(event.kind, EventKind::Access(_));
                    // The path now leads to another file (or to one again).
                    if now != resolved {
                        resolved = now;
                        relevant |= resolved.is_some();
                    }
                }
                if relevant {
                    let _ = changed.try_send(());
                }
            }
            Err(e) => tracing::warn!("config file watch: {e}"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    // A config file linked from another directory: watch where it lives too.
    if let Some(target_dir) = target_dir {
        watcher.watch(&target_dir, RecursiveMode::NonRecursive)?;
    }
    let task = tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Wait for the burst to end.
            loop {
                match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            tracing::info!(
                "config file {} changed; reloading",
                reloader.path().display()
            );
            let _ = reloader.reload_async().await;
        }
    });
    Ok(Trigger {
        task,
        _watcher: Some(watcher),
    })
}

/// What a watch reloads for.
#[derive(Debug)]
enum Watched {
    /// The config file of this name, in the watched directory.
    File(OsString),
    /// The config directory: its `*.yaml` / `*.yml` files.
    Directory,
}

/// Whether `event` may have changed the config. Reads are not changes (the reload itself reads
/// the file); a removal is followed by a create when the file is replaced, but in a directory a
/// removed file changes the config by itself.
fn concerns(event: &notify::Event, watched: &Watched) -> bool {
    let change = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other
    );
    match watched {
        Watched::File(name) => {
            change
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()))
        }
        Watched::Directory => {
            (change || matches!(event.kind, EventKind::Remove(_)))
                && event.paths.iter().any(|p| {
                    p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                        || p.file_name().is_some_and(|n| n == "..data")
                })
        }
    }
}

/// Reloads on every `SIGHUP`. Must be called within a Tokio runtime.
#[cfg(unix)]
pub fn reload_on_sighup<S: Store>(reloader: Arc<Reloader<S>>) -> std::io::Result<Trigger> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    let task = tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the config");
            let _ = reloader.reload_async().await;
        }
    });
    Ok(Trigger {
        task,
        _watcher: None,
    })
}

/// For a node without a config file: logs and ignores `SIGHUP`, whose default action would
/// otherwise kill the process. Must be called within a Tokio runtime.
#[cfg(unix)]
pub fn ignore_sighup() -> std::io::Result<Trigger> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    let task = tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::warn!("SIGHUP received, but there is no config file to reload (no --config)");
        }
    });
    Ok(Trigger {
        task,
        _watcher: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(dir: &Path, contents: &str) -> PathBuf {
        let path = dir.join("drl.yaml");
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("drl-reload-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_valid_file_is_swapped_in_and_an_invalid_one_changes_nothing() {
        let dir = temp_dir("unit");
        let path = write(&dir, "default:\n  limit: 5\n  window: 1m\n");
        let loaded = Config::load(&path).unwrap();
        let limiter = Limiter::new(loaded.rules.clone());
        let metrics = Arc::new(Metrics::new());
        let reloader = Reloader::new(
            &path,
            loaded.native_file(),
            limiter.clone(),
            Arc::clone(&metrics),
        );
        assert_eq!(reloader.version(), 1);

        write(&dir, "default:\n  limit: 7\n  window: 1m\n");
        assert_eq!(reloader.reload().unwrap(), 2);
        assert_eq!(limiter.check("u", "/e", 0).unwrap().limit, 7);

        write(&dir, "default:\n  limit: 0\n  window: 1m\n");
        let e = reloader.reload().unwrap_err();
        assert_eq!(e.diagnostics().len(), 1, "{e}");
        assert_eq!(reloader.version(), 2);
        assert_eq!(limiter.check("u", "/e", 0).unwrap().limit, 7);
        let text = metrics.encode();
        assert!(text.contains("drl_config_reloads_total{result=\"error\"} 1\n"));
        assert!(text.contains("drl_config_reloads_total{result=\"ok\"} 1\n"));
        assert!(text.contains("drl_config_version 2\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_config_directory_reloads_as_a_whole() {
        let dir = temp_dir("directory");
        write(&dir, "default:\n  limit: 5\n  window: 1m\n");
        let loaded = Config::load(&dir).unwrap();
        let limiter = Limiter::new(loaded.rules.clone());
        let reloader = Reloader::new(
            &dir,
            loaded.native_file(),
            limiter.clone(),
            Arc::new(Metrics::new()),
        );
        assert!(limiter.rules().domain("web").is_none());
        let web = "domain: web\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
        std::fs::write(dir.join("web.yaml"), web).unwrap();
        assert_eq!(reloader.reload().unwrap(), 2);
        assert!(limiter.rules().domain("web").is_some());
        assert_eq!(limiter.check("u", "/e", 0).unwrap().limit, 5);
        // A broken domain file refuses the whole directory; the old config stays.
        std::fs::write(
            dir.join("bad.yaml"),
            "domain: bad\ndescriptors:\n  - key: \"\"\n",
        )
        .unwrap();
        assert!(reloader.reload().is_err());
        assert!(limiter.rules().domain("web").is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_changes_to_the_file_itself_count() {
        let name = Watched::File(OsString::from("drl.yaml"));
        let event = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        let create = EventKind::Create(notify::event::CreateKind::File);
        let read = EventKind::Access(notify::event::AccessKind::Read);
        let remove = EventKind::Remove(notify::event::RemoveKind::File);
        assert!(concerns(&event(create, "/etc/drl/drl.yaml"), &name));
        assert!(!concerns(&event(create, "/etc/drl/other.yaml"), &name));
        assert!(!concerns(&event(read, "/etc/drl/drl.yaml"), &name));
        let dir = Watched::Directory;
        assert!(concerns(&event(create, "/etc/drl/web.yaml"), &dir));
        assert!(concerns(&event(remove, "/etc/drl/web.yml"), &dir));
        assert!(concerns(&event(create, "/etc/drl/..data"), &dir));
        assert!(!concerns(&event(create, "/etc/drl/notes.txt"), &dir));
        assert!(!concerns(&event(read, "/etc/drl/web.yaml"), &dir));
    }
}
