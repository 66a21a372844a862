//! Watching the configuration: the directories of every file the last compile read (the main
//! file and everything it includes) are watched, not the files themselves, so that an editor's
//! atomic save (write a temporary file, rename it over) and a Kubernetes ConfigMap update (a new
//! `..data` symlink renamed over the old one) are seen like an edit in place. A burst of events
//! makes one reload, after the files have been quiet for [`QUIET`].
//!
//! It only says "something changed"; compiling and swapping are [`super::reload`]'s. A file that
//! is missing for a moment (deleted, then written) fails that reload, which keeps the last good
//! plan, and the write that brings it back triggers the next.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::reload::Watched;

/// How long the files must be quiet before a reload starts.
pub const QUIET: Duration = Duration::from_millis(100);
/// A reload starts at the latest this long after the first event, however busy the files are.
pub const AT_MOST: Duration = Duration::from_secs(1);

pub struct Watcher {
    inner: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    wanted: Arc<Mutex<Wanted>>,
}

/// The paths whose events matter.
#[derive(Default)]
struct Wanted {
    files: BTreeSet<PathBuf>,
    globs: Vec<glob::Pattern>,
}

impl Wanted {
    fn of(watched: &Watched) -> (Wanted, BTreeSet<PathBuf>) {
        let mut files = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        for f in &watched.files {
            files.insert(f.clone());
            if let Some(d) = f.parent() {
                dirs.insert(d.to_path_buf());
            }
            // A symlinked file is also watched where it really lives (edited there in place).
            if let Ok(real) = std::fs::canonicalize(f) {
                if real != *f {
                    if let Some(d) = real.parent() {
                        dirs.insert(d.to_path_buf());
                    }
                    files.insert(real);
                }
            }
        }
        let mut globs = Vec::new();
        for g in &watched.globs {
            if let Ok(p) = glob::Pattern::new(&g.to_string_lossy()) {
                globs.push(p);
            }
            // The directory part of the pattern, up to its first wildcard.
            let literal: PathBuf = g
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            if literal != *g {
                dirs.insert(literal);
            } else if let Some(d) = g.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        (Wanted { files, globs }, dirs)
    }

    fn matters(&self, path: &Path) -> bool {
        if self.files.contains(path) {
            return true;
        }
        // Kubernetes' atomic writer: `..data` and the `..2026_01_01_...` directories.
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        {
            return true;
        }
        self.globs.iter().any(|g| g.matches_path(path))
    }
}

impl Watcher {
    /// Starts watching; each debounced burst of changes sends one `()` on `changes`. `None` (and
    /// a warning) when the system's watcher cannot be had: the server then reloads on signals.
    pub fn start(watched: &Watched, changes: UnboundedSender<()>) -> Option<Watcher> {
        let (wanted, dirs) = Wanted::of(watched);
        let wanted = Arc::new(Mutex::new(wanted));
        let (raw_tx, raw_rx) = unbounded_channel();
        let filter = wanted.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Opening and reading a file (the compiler does) changes nothing.
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let Ok(wanted) = filter.lock() else { return };
            if event.paths.iter().any(|p| wanted.matters(p)) {
                let _ = raw_tx.send(());
            }
        };
        let inner = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch the configuration files ({e}); reload with SIGHUP");
                return None;
            }
        };
        tokio::spawn(debounce(raw_rx, changes));
        let mut watcher = Watcher {
            inner,
            dirs: BTreeSet::new(),
            wanted,
        };
        watcher.watch_dirs(dirs);
        Some(watcher)
    }

    /// After a reload: follow the files the new configuration reads.
    pub fn follow(&mut self, watched: &Watched) {
        let (wanted, dirs) = Wanted::of(watched);
        if let Ok(mut w) = self.wanted.lock() {
            *w = wanted;
        }
        self.watch_dirs(dirs);
    }

    fn watch_dirs(&mut self, dirs: BTreeSet<PathBuf>) {
        for gone in self.dirs.difference(&dirs) {
            let _ = self.inner.unwatch(gone);
        }
        let mut watching = BTreeSet::new();
        for d in dirs {
            if self.dirs.contains(&d) {
                watching.insert(d);
                continue;
            }
            match self.inner.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %d.display(), "watching");
                    watching.insert(d);
                }
                // A directory an include glob names may not exist yet: not worth a warning
                // at every reload.
                Err(e) if !d.exists() => {
                    tracing::debug!(dir = %d.display(), error = %e, "not watched")
                }
                Err(e) => tracing::warn!("cannot watch \"{}\" ({e})", d.display()),
            }
        }
        self.dirs = watching;
    }
}

/// One `()` on `changes` per burst of raw events.
async fn debounce(mut raw: UnboundedReceiver<()>, changes: UnboundedSender<()>) {
    while raw.recv().await.is_some() {
        let first = Instant::now();
        loop {
            let left = AT_MOST.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(QUIET.min(left), raw.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if changes.send(()).is_err() {
            return;
        }
    }
}
