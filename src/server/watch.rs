//! Watching the configuration: the directories of every file the last compile read (the main
//! file and everything it includes) are watched, not the files themselves, so that an editor's
//! atomic save (write a temporary file, rename it over) and a Kubernetes ConfigMap update (a new
//! `..data` symlink renamed over the old one) are seen like an edit in place. A burst of events
//! makes one reload, after the files have been quiet for [`QUIET`].
//!
//! It only says "something changed"; compiling and swapping are [`super::reload`]'s. A file that
//! is missing for a moment (deleted, then written) fails that reload, which keeps the last good
//! plan, and the write that brings it back triggers the next.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::reload::Watched;

/// How long the files must be quiet before a reload starts.
pub const QUIET: Duration = Duration::from_millis(100);
/// A reload starts at the latest this long after the first event, however busy the files are.
pub const AT_MOST: Duration = Duration::from_secs(1);

pub struct Watcher {
    watches: inotify::Watches,
    /// The watched directories and their watch descriptors.
    dirs: BTreeMap<PathBuf, WatchDescriptor>,
    /// The same, by descriptor, for the reading task (events name their directory by it).
    by_wd: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    wanted: Arc<Mutex<Wanted>>,
    reader: tokio::task::JoinHandle<()>,
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
    ///
    /// inotify is read by a task on the server's own runtime, not by a thread of its own: a
    /// second thread in the process makes every socket call of the serving one take the
    /// kernel's shared-descriptor-table path (a reference count taken and dropped per call;
    /// 2 % of requests per second on `tests/bench/run`'s small answers).
    pub fn start(watched: &Watched, changes: UnboundedSender<()>) -> Option<Watcher> {
        let (wanted, dirs) = Wanted::of(watched);
        let wanted = Arc::new(Mutex::new(wanted));
        let (fd, watches) = match Inotify::init().and_then(|i| {
            let watches = i.watches();
            // SAFETY: the `Inotify` owns its descriptor and closes it only when dropped,
            // which the `AsyncFd` holding it does last; `as_raw_fd` always returns that one.
            let fd = unsafe { AsyncFd::register_with_interest(i, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
            Ok((fd, watches))
        }) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("cannot watch the configuration files ({e}); reload with SIGHUP");
                return None;
            }
        };
        let by_wd = Arc::new(Mutex::new(HashMap::new()));
        let (raw_tx, raw_rx) = unbounded_channel();
        let reader = tokio::spawn(read_events(fd, by_wd.clone(), wanted.clone(), raw_tx));
        tokio::spawn(debounce(raw_rx, changes));
        let mut watcher = Watcher {
            watches,
            dirs: BTreeMap::new(),
            by_wd,
            wanted,
            reader,
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
        let gone: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !dirs.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            if let Some(wd) = self.dirs.remove(&d) {
                self.forget(&wd);
                let _ = self.watches.remove(wd);
            }
        }
        for d in dirs {
            if self.dirs.contains_key(&d) {
                continue;
            }
            match self.watches.add(&d, WATCHED) {
                Ok(wd) => {
                    tracing::debug!(dir = %d.display(), "watching");
                    if let Ok(mut by_wd) = self.by_wd.lock() {
                        by_wd.insert(wd.clone(), d.clone());
                    }
                    self.dirs.insert(d, wd);
                }
                // A directory an include glob names may not exist yet: not worth a warning
                // at every reload.
                Err(e) if !d.exists() => {
                    tracing::debug!(dir = %d.display(), error = %e, "not watched")
                }
                Err(e) => tracing::warn!("cannot watch \"{}\" ({e})", d.display()),
            }
        }
    }

    fn forget(&self, wd: &WatchDescriptor) {
        if let Ok(mut by_wd) = self.by_wd.lock() {
            by_wd.remove(wd);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What is watched in each directory: a file written, created, removed, renamed, its
/// metadata changed (a `touch`), and the directory itself removed or moved. Not reads:
/// opening and reading a file (the compiler does) changes nothing.
const WATCHED: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// Reads inotify's events as they come; one `()` on `raw` for each batch that names a path
/// that matters (or overflowed, when which ones is unknown).
async fn read_events(
    mut fd: AsyncFd<Inotify>,
    by_wd: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    wanted: Arc<Mutex<Wanted>>,
    raw: UnboundedSender<()>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            return;
        };
        let events = match ready.try_io(|i| i.get_mut().read_events(&mut buf)) {
            Err(_would_block) => continue,
            Ok(Err(e)) => {
                tracing::warn!(
                    "reading the configuration's file events failed ({e}); reload with SIGHUP"
                );
                return;
            }
            Ok(Ok(events)) => events,
        };
        let mut matters = false;
        {
            let (Ok(dirs), Ok(wanted)) = (by_wd.lock(), wanted.lock()) else {
                return;
            };
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    matters = true;
                    continue;
                }
                let Some(dir) = dirs.get(&event.wd) else {
                    continue;
                };
                let path = match event.name {
                    Some(name) => dir.join(name),
                    None => dir.clone(),
                };
                matters |= wanted.matters(&path);
            }
        }
        if matters && raw.send(()).is_err() {
            return;
        }
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
