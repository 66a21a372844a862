//! Reloading: a signal or a file change -> compile the whole configuration off the serving path
//! -> bind the sockets the new plan adds -> swap the plan in one store -> stop the sockets it
//! dropped. When anything fails (a diagnostic, a certificate, a bind) nothing is swapped: the
//! old plan keeps serving and every problem is logged with its file:line.
//!
//! Each reload logs one line (its outcome, how long it took, what changed) and writes the
//! outcome to the *reload status file* next to the pid file, which `portico -s reload` waits
//! for, so the command that asked for a reload learns whether it happened.
//!
//! This module never parses config text itself: it calls the compiler, through an `Fs` that
//! records which files were read so the watcher can follow includes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::{Shared, tls};
use crate::config::{self, Fs, Options, Paths, RealFs};
use crate::plan::{self, ListenAddr, ListenOpts, Plan};

/// A compiled configuration, ready to be swapped in.
pub struct Loaded {
    pub plan: Arc<Plan>,
    pub tls: tls::TlsSet,
    pub compiled: config::Compiled,
    /// Every file the compiler tried to read, and every include glob it expanded.
    pub watched: Watched,
    /// Warnings (nginx's `[warn]` lines without the program name).
    pub warnings: Vec<String>,
}

/// What the watcher follows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    pub files: BTreeSet<PathBuf>,
    pub globs: BTreeSet<PathBuf>,
}

/// Compiles the configuration (the same pure compiler `-t` uses, without the machine checks
/// that would fail against the running server's own sockets), and loads the certificates.
/// Errors come back as nginx's lines: `[emerg] unknown directive "x" in /etc/nginx/a.conf:3`.
pub fn compile(paths: &Paths, globals: Option<String>) -> Result<Loaded, Vec<String>> {
    let options = Options {
        paths: paths.clone(),
        globals,
        mode: None,
    };
    let fs = RecordingFs::default();
    let mut compiled = config::compile(&fs, &options);
    let mut plan = plan::build(&mut compiled, &crate::inspect::lower_options(paths));
    resolve_peers(&mut plan);
    let lines = |severity: config::Severity| -> Vec<String> {
        compiled
            .diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .map(|d| {
                format!(
                    "[{}] {}",
                    d.severity.nginx_level(),
                    d.nginx_message(&compiled.sources.map)
                )
            })
            .collect()
    };
    let warnings = lines(config::Severity::Warning);
    if compiled.has_errors() {
        let mut errors = lines(config::Severity::Error);
        errors.extend(warnings);
        return Err(errors);
    }
    let plan = Arc::new(plan);
    let tls = tls::build(&plan).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| format!("[emerg] {e}"))
            .collect::<Vec<_>>()
    })?;
    Ok(Loaded {
        plan,
        tls,
        compiled,
        watched: fs.into_watched(),
        warnings,
    })
}

/// The files a failed compile tried to read, so the watcher sees when they are fixed.
pub fn files_tried(paths: &Paths, globals: Option<String>) -> Watched {
    let fs = RecordingFs::default();
    let options = Options {
        paths: paths.clone(),
        globals,
        mode: None,
    };
    let _ = config::load::load(&fs, &options.paths, options.globals.as_deref());
    fs.into_watched()
}

/// The real file system, noting what the compiler asks of it.
#[derive(Default)]
struct RecordingFs {
    files: RefCell<BTreeSet<PathBuf>>,
    globs: RefCell<BTreeSet<PathBuf>>,
}

impl RecordingFs {
    fn into_watched(self) -> Watched {
        Watched {
            files: self.files.into_inner(),
            globs: self.globs.into_inner(),
        }
    }
}

impl Fs for RecordingFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files.borrow_mut().insert(path.to_path_buf());
        RealFs.read(path)
    }
    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        self.globs.borrow_mut().insert(pattern.to_path_buf());
        RealFs.glob(pattern)
    }
}

/// The reload status file of a pid file: `/run/nginx.pid` -> `/run/nginx.pid.reload`.
pub fn status_path(pid: &Path) -> PathBuf {
    let mut s = pid.as_os_str().to_owned();
    s.push(".reload");
    PathBuf::from(s)
}

/// One reload's outcome, as the status file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// When the reload started (nanoseconds since the epoch): `-s reload` waits for one that
    /// started after it sent its signal.
    pub started: u128,
    pub ok: bool,
    /// The reload's log line, then the diagnostics.
    pub lines: Vec<String>,
}

impl Status {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "started {}\nresult {}\n",
            self.started,
            if self.ok { "ok" } else { "failed" }
        );
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    pub fn parse(text: &str) -> Option<Status> {
        let mut lines = text.lines();
        let started = lines.next()?.strip_prefix("started ")?.parse().ok()?;
        let ok = match lines.next()?.strip_prefix("result ")? {
            "ok" => true,
            "failed" => false,
            _ => return None,
        };
        Some(Status {
            started,
            ok,
            lines: lines.map(str::to_string).collect(),
        })
    }

    pub fn read(path: &Path) -> Option<Status> {
        Status::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Written beside, then renamed over: a reader never sees half a status.
    fn write(&self, path: &Path) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.to_text())?;
        std::fs::rename(&tmp, path)
    }
}

pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A listening socket the server accepts on; dropping `stop` ends its accept loop, which
/// closes the socket.
struct Running {
    opts: ListenOpts,
    stop: oneshot::Sender<()>,
    /// The socket's descriptor (owned by the accept loop), for a binary upgrade.
    fd: std::os::fd::RawFd,
}

/// The server's side of reloading: the listeners it runs, what the current plan has.
pub struct Reloader {
    shared: Arc<Shared>,
    paths: Paths,
    globals: Option<String>,
    listeners: HashMap<ListenAddr, Running>,
    summary: Summary,
    status_path: Option<PathBuf>,
    /// The main context's `worker_shutdown_timeout` of the current plan.
    pub shutdown_timeout: Option<Duration>,
    pub watched: Watched,
}

impl Reloader {
    pub fn new(
        shared: Arc<Shared>,
        paths: Paths,
        globals: Option<String>,
        loaded: &Loaded,
        pid_path: Option<&Path>,
    ) -> Reloader {
        Reloader {
            shared,
            paths,
            globals,
            listeners: HashMap::new(),
            summary: Summary::of(&loaded.plan, &loaded.compiled),
            status_path: pid_path.map(status_path),
            shutdown_timeout: shutdown_timeout(&loaded.compiled),
            watched: loaded.watched.clone(),
        }
    }

    /// Starts accepting on a bound socket.
    pub fn start(&mut self, listener: super::Bound, addr: ListenAddr, opts: ListenOpts) {
        let (stop, stopped) = oneshot::channel();
        let fd = listener.as_raw_fd();
        let listener = match listener.into_tokio() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot listen on {addr}: {e}");
                return;
            }
        };
        tokio::spawn(super::accept_loop(
            listener,
            addr.clone(),
            self.shared.clone(),
            stopped,
        ));
        self.listeners.insert(addr, Running { opts, stop, fd });
    }

    /// Stops accepting everywhere (a shutdown). `current`: this process is still the server
    /// (no binary upgrade took over), so its unix socket files go too.
    pub fn stop_all(&mut self, current: bool) {
        for (addr, running) in self.listeners.drain() {
            let _ = running.stop.send(());
            if current {
                remove_unix_socket(&addr);
            }
        }
    }

    /// SIGUSR2: starts the new binary with this process's listening sockets.
    pub fn upgrade(&mut self, pid_path: Option<&Path>) {
        let sockets: Vec<(ListenAddr, std::os::fd::RawFd)> = self
            .listeners
            .iter()
            .map(|(a, r)| (a.clone(), r.fd))
            .collect();
        match super::upgrade::spawn(&sockets, pid_path) {
            Ok(pid) => tracing::info!(
                pid,
                sockets = sockets.len(),
                "started the new binary with the listening sockets; send this process SIGQUIT once it serves"
            ),
            Err(e) => tracing::error!("binary upgrade failed: cannot start the new binary ({e})"),
        }
    }

    /// Compiles and, when everything succeeded, swaps the new plan in. Never fails the server.
    pub async fn reload(&mut self, cause: &str) {
        let started_at = now_nanos();
        let clock = Instant::now();
        let paths = self.paths.clone();
        let globals = self.globals.clone();
        let kept: Vec<ListenAddr> = self.listeners.keys().cloned().collect();
        // Compiling (and resolving `listen host:port`) blocks: off the serving threads.
        let work = tokio::task::spawn_blocking(move || {
            let loaded = compile(&paths, globals.clone())
                .map_err(|lines| (lines, files_tried(&paths, globals)))?;
            let mut bound = Vec::new();
            for socket in &loaded.plan.sockets {
                if kept.contains(&socket.addr) {
                    continue;
                }
                match super::bind(&socket.addr, &socket.opts) {
                    Ok((l, shown)) => bound.push((l, socket.addr.clone(), shown)),
                    Err(e) => {
                        // The sockets bound so far close as `bound` drops.
                        let line = format!("[emerg] bind() to {} failed ({e})", socket.addr);
                        return Err((vec![line], loaded.watched.clone()));
                    }
                }
            }
            // What changed is worked out here too: it walks every file's tree.
            let summary = Summary::of(&loaded.plan, &loaded.compiled);
            Ok((loaded, bound, summary))
        })
        .await;
        let took = clock.elapsed();
        let (loaded, bound, summary) = match work {
            Ok(Ok(done)) => done,
            Ok(Err((lines, tried))) => {
                self.failed(cause, took, started_at, lines, tried);
                return;
            }
            Err(e) => {
                let lines = vec![format!("[alert] the reload task failed: {e}")];
                self.failed(cause, took, started_at, lines, Watched::default());
                return;
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{}", w.trim_start_matches("[warn] "));
        }
        // The swap: certificates first, so a connection accepted on a new `ssl` socket finds
        // its configuration; then the plan, in one store. Requests already running keep theirs.
        self.shared.tls.store(Arc::new(loaded.tls));
        crate::logging::open_logs(&loaded.plan.error_logs);
        super::log::create_files(&loaded.plan.access_log_files);
        let old_plan = self.shared.plan.swap(loaded.plan.clone());
        let new_addrs: BTreeSet<&ListenAddr> =
            loaded.plan.sockets.iter().map(|s| &s.addr).collect();
        let removed: Vec<ListenAddr> = self
            .listeners
            .keys()
            .filter(|a| !new_addrs.contains(a))
            .cloned()
            .collect();
        let added: Vec<ListenAddr> = bound.iter().map(|(_, a, _)| a.clone()).collect();
        self.shared.drain.restore(&added);
        for (listener, addr, shown) in bound {
            tracing::info!("listening on {shown}");
            let opts = loaded
                .plan
                .sockets
                .iter()
                .find(|s| s.addr == addr)
                .map(|s| s.opts.clone())
                .unwrap_or_default();
            self.start(listener, addr, opts);
        }
        for addr in &removed {
            if let Some(running) = self.listeners.remove(addr) {
                let _ = running.stop.send(());
            }
            remove_unix_socket(addr);
        }
        self.shared.drain.remove(removed.iter().cloned(), &old_plan);
        // A kept socket keeps its options: changing them needs a new socket, and binding one
        // while the old still listens would fail (or, with reuseport, split the traffic).
        for socket in &loaded.plan.sockets {
            if let Some(running) = self.listeners.get_mut(&socket.addr) {
                if socket_options(&running.opts) != socket_options(&socket.opts) {
                    tracing::warn!(
                        "the listen options of {} changed; the socket keeps its old ones until a restart",
                        socket.addr
                    );
                    // Only warn once per change.
                    running.opts = socket.opts.clone();
                }
            }
        }
        self.shutdown_timeout = shutdown_timeout(&loaded.compiled);
        super::drain::retire_plan(self.shutdown_timeout);
        let changes = self.summary.changes(&summary, &added, &removed);
        self.summary = summary;
        self.watched = loaded.watched;
        // From the trigger to the swap done and the sockets reconciled.
        let took = clock.elapsed();
        let line = format!("reload ({cause}) done in {} ms: {changes}", millis(took));
        // A [notice], written whatever error_log's level: every reload leaves its line.
        tracing::info!(target: crate::logging::ALWAYS, "{line}");
        self.write_status(Status {
            started: started_at,
            ok: true,
            lines: vec![line],
        });
    }

    fn failed(
        &mut self,
        cause: &str,
        took: Duration,
        started: u128,
        lines: Vec<String>,
        tried: Watched,
    ) {
        for l in &lines {
            if let Some(w) = l.strip_prefix("[warn] ") {
                tracing::warn!("{w}");
            } else {
                let m = l.split_once("] ").map_or(l.as_str(), |(_, m)| m);
                tracing::error!("{m}");
            }
        }
        let errors = lines.iter().filter(|l| !l.starts_with("[warn]")).count();
        let line = format!(
            "reload ({cause}) failed in {} ms: {errors} error{}; the previous configuration keeps serving",
            millis(took),
            if errors == 1 { "" } else { "s" }
        );
        tracing::error!("{line}");
        // Files a fixed configuration will need are watched too (a new include, say).
        self.watched.files.extend(tried.files);
        self.watched.globs.extend(tried.globs);
        let mut all = vec![line];
        all.extend(lines);
        self.write_status(Status {
            started,
            ok: false,
            lines: all,
        });
    }

    fn write_status(&self, status: Status) {
        if let Some(path) = &self.status_path {
            if let Err(e) = status.write(path) {
                tracing::warn!(
                    "cannot write the reload status \"{}\" ({e})",
                    path.display()
                );
            }
        }
    }

    /// Removes the status file at exit.
    pub fn remove_status(&self) {
        if let Some(p) = &self.status_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn remove_unix_socket(addr: &ListenAddr) {
    if let ListenAddr::Unix(path) = addr {
        let _ = std::fs::remove_file(path);
    }
}

/// The options that are the socket's own (as opposed to `ssl`, `default_server`, read by the
/// plan at each connection).
fn socket_options(o: &ListenOpts) -> impl PartialEq + use<> {
    (
        o.reuseport,
        o.backlog,
        o.rcvbuf,
        o.sndbuf,
        o.ipv6only,
        o.deferred,
        o.so_keepalive.clone(),
        o.fastopen,
    )
}

/// `worker_shutdown_timeout` (main context): how long a graceful shutdown, or a connection
/// still on a replaced plan, may go on. None: no bound, as in nginx.
pub fn shutdown_timeout(compiled: &config::Compiled) -> Option<Duration> {
    let v = super::main_directive(compiled, "worker_shutdown_timeout")?;
    config::validate::parse_time(&v, false).map(Duration::from_millis)
}

/// What a plan has, by name, to say what a reload changed. Servers are named by their
/// `server_name`s (listeners are reported apart), locations by their server and their modifier and pattern;
/// each holds its own text (without nested locations), so "changed" means edited.
#[derive(Default)]
struct Summary {
    servers: BTreeMap<String, String>,
    locations: BTreeMap<String, String>,
    upstreams: BTreeMap<String, String>,
}

impl Summary {
    fn of(plan: &Plan, compiled: &config::Compiled) -> Summary {
        let texts = BlockTexts::of(&compiled.sources);
        let mut s = Summary::default();
        for server in &plan.servers {
            let mut key = format!("{:?}", server.names.join(" "));
            while s.servers.contains_key(&key) {
                key.push('\'');
            }
            s.servers
                .insert(key.clone(), texts.text(server.place.span).to_string());
            let mut stack: Vec<(String, &Arc<plan::Location>)> = server
                .locations
                .all
                .iter()
                .chain(server.named.values())
                .map(|l| (key.clone(), l))
                .collect();
            while let Some((parent, l)) = stack.pop() {
                let mut lkey = format!("{parent} {}{}", l.modifier(), l.name());
                while s.locations.contains_key(&lkey) {
                    lkey.push('\'');
                }
                s.locations
                    .insert(lkey.clone(), texts.text(l.place.span).to_string());
                stack.extend(l.children.all.iter().map(|c| (lkey.clone(), c)));
            }
        }
        for u in &plan.upstreams {
            s.upstreams.insert(
                u.name.clone(),
                format!("{:?} {:?} {:?}", u.servers, u.balance, u.keepalive),
            );
        }
        s
    }

    /// `servers +1 -0 ~0, locations ...`, with the first few names of each change.
    fn changes(&self, new: &Summary, added: &[ListenAddr], removed: &[ListenAddr]) -> String {
        let mut parts = Vec::new();
        for (what, old, new) in [
            ("servers", &self.servers, &new.servers),
            ("locations", &self.locations, &new.locations),
            ("upstreams", &self.upstreams, &new.upstreams),
        ] {
            let plus: Vec<&String> = new.keys().filter(|k| !old.contains_key(*k)).collect();
            let minus: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
            let changed: Vec<&String> = new
                .iter()
                .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
                .map(|(k, _)| k)
                .collect();
            parts.push(format!(
                "{what} +{} -{} ~{}{}",
                plus.len(),
                minus.len(),
                changed.len(),
                names(&plus, &minus, &changed)
            ));
        }
        let listeners: Vec<String> = added
            .iter()
            .map(|a| format!("+{a}"))
            .chain(removed.iter().map(|a| format!("-{a}")))
            .collect();
        parts.push(format!(
            "listeners +{} -{}{}",
            added.len(),
            removed.len(),
            if listeners.is_empty() {
                String::new()
            } else {
                format!(" ({})", listeners.join(" "))
            }
        ));
        parts.join(", ")
    }
}

fn names(plus: &[&String], minus: &[&String], changed: &[&String]) -> String {
    const SHOWN: usize = 4;
    let all: Vec<String> = plus
        .iter()
        .map(|n| format!("+{n}"))
        .chain(minus.iter().map(|n| format!("-{n}")))
        .chain(changed.iter().map(|n| format!("~{n}")))
        .collect();
    if all.is_empty() {
        return String::new();
    }
    let more = all.len().saturating_sub(SHOWN);
    let mut s = all.into_iter().take(SHOWN).collect::<Vec<_>>().join(" ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    format!(" ({s})")
}

/// The text of each block directive, found by its name's span, with nested `location`
/// blocks cut out.
struct BlockTexts {
    by_name: HashMap<(u32, u32), String>,
}

impl BlockTexts {
    fn of(sources: &config::Sources) -> BlockTexts {
        let mut by_name = HashMap::new();
        for (id, file) in sources.map.iter() {
            if let Some(tree) = sources.trees.get(id.0 as usize) {
                walk(&tree.directives, &file.text, &mut by_name);
            }
        }
        BlockTexts { by_name }
    }

    fn text(&self, span: config::span::Span) -> &str {
        self.by_name
            .get(&(span.file.0, span.start))
            .map_or("", String::as_str)
    }
}

fn walk(directives: &[config::ast::Directive], text: &str, out: &mut HashMap<(u32, u32), String>) {
    for d in directives {
        let Some(block) = &d.block else { continue };
        let span = d.span();
        let mut own = String::new();
        let mut cursor = span.start as usize;
        for inner in &block.directives {
            if inner.name() == "location" {
                let s = inner.span();
                own.push_str(text.get(cursor..s.start as usize).unwrap_or(""));
                cursor = s.end as usize;
            }
        }
        own.push_str(text.get(cursor..span.end as usize).unwrap_or(""));
        out.insert((d.name.span.file.0, d.name.span.start), own);
        walk(&block.directives, text, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(dir: &Path, name: &str, http: &str) -> Loaded {
        let conf = dir.join(name);
        std::fs::write(&conf, format!("events {{}}\nhttp {{\n{http}\n}}\n")).unwrap();
        let paths = Paths::new(dir, &conf);
        match compile(&paths, None) {
            Ok(l) => l,
            Err(lines) => panic!("{lines:?}"),
        }
    }

    #[test]
    fn the_reload_line_names_what_changed() {
        let dir = std::env::temp_dir().join(format!("portico-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = compiled(
            &dir,
            "old.conf",
            "upstream app { server 127.0.0.1:9001; }
             server { listen 127.0.0.1:8080; server_name a.example;
               location / { return 200 a; }
               location /x { proxy_pass http://app; }
               location /old { return 404; } }",
        );
        let new = compiled(
            &dir,
            "new.conf",
            "upstream app { server 127.0.0.1:9002; }
             server { listen 127.0.0.1:8080; server_name a.example;
               location / { return 200 a; }
               location /x { proxy_pass http://app; proxy_set_header X-A 1; }
               location /y { return 204; } }
             server { listen 127.0.0.1:8081; server_name b.example; }",
        );
        let _ = std::fs::remove_dir_all(&dir);
        let before = Summary::of(&old.plan, &old.compiled);
        let after = Summary::of(&new.plan, &new.compiled);
        let added = [ListenAddr::Tcp("127.0.0.1:8081".parse().unwrap())];
        assert_eq!(
            before.changes(&after, &added, &[]),
            "servers +1 -0 ~0 (+\"b.example\"), \
             locations +1 -1 ~1 (+\"a.example\" /y -\"a.example\" /old ~\"a.example\" /x), \
             upstreams +0 -0 ~1 (~app), listeners +1 -0 (+127.0.0.1:8081)"
        );
        assert_eq!(
            before.changes(&before, &[], &[]),
            "servers +0 -0 ~0, locations +0 -0 ~0, upstreams +0 -0 ~0, listeners +0 -0"
        );
    }

    #[test]
    fn status_files_round_trip() {
        let s = Status {
            started: 1_796_000_000_123_456_789,
            ok: false,
            lines: vec![
                "reload (SIGHUP) failed in 0.4 ms: 1 error".into(),
                "[emerg] unknown directive \"x\" in /etc/nginx/nginx.conf:3".into(),
            ],
        };
        assert_eq!(Status::parse(&s.to_text()), Some(s));
        assert_eq!(Status::parse("started x\nresult ok\n"), None);
        assert_eq!(Status::parse(""), None);
        assert_eq!(
            status_path(Path::new("/run/nginx.pid")),
            PathBuf::from("/run/nginx.pid.reload")
        );
    }
}

/// nginx resolves upstream server names when it reads the configuration: every address of a
/// name becomes a server of its group (`proxy_pass http://localhost:8000` is two servers
/// where localhost is 127.0.0.1 and ::1). The compiler makes no lookups; the runtime makes
/// them here, off the serving path. A name that does not resolve stays a name (connecting to
/// it then fails as an upstream error).
fn resolve_peers(plan: &mut crate::plan::Plan) {
    use crate::plan::PeerAddr;
    use std::net::ToSocketAddrs;
    let named = |p: &crate::plan::Peer| matches!(&p.addr, PeerAddr::Tcp { host, .. } if host.parse::<std::net::IpAddr>().is_err());
    for up in plan.upstreams.iter_mut() {
        if !up.servers.iter().any(named) {
            continue;
        }
        let mut servers = Vec::new();
        for p in &up.servers {
            let PeerAddr::Tcp { host, port } = &p.addr else {
                servers.push(p.clone());
                continue;
            };
            if !named(p) {
                servers.push(p.clone());
                continue;
            }
            let mut seen: Vec<std::net::SocketAddr> = Vec::new();
            if let Ok(addrs) = (host.as_str(), *port).to_socket_addrs() {
                for a in addrs {
                    if !seen.contains(&a) {
                        seen.push(a);
                    }
                }
            }
            if seen.is_empty() {
                servers.push(p.clone());
            }
            for a in seen {
                let mut q = p.clone();
                q.addr = PeerAddr::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                };
                q.text = q.addr.to_string();
                servers.push(q);
            }
        }
        let mut resolved = (**up).clone();
        resolved.servers = servers;
        *up = std::sync::Arc::new(resolved);
    }
}
