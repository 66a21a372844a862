//! The runtime: binds the plan's sockets, accepts connections and serves requests from the
//! current plan. The plan sits behind an `ArcSwap`: each request loads one snapshot and keeps
//! it for its whole life; a reload swaps in a new one. Upstream state (round-robin positions,
//! connection pools, failures) lives in [`Upstreams`], outside the plan, and survives reloads.
//! Reloading (signals, file changes, listener reconciliation) is in [`reload`] and [`watch`];
//! graceful shutdown drains connections through [`drain`].

mod autoindex;
mod body;
mod conn;
mod deadline;
pub mod drain;
mod files;
pub mod http1;
pub mod log;
mod pool;
mod proxy;
pub mod reload;
mod reuse;
pub mod tls;
mod upgrade;
mod upstreams;
mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};

use crate::config::{self, Paths};
use crate::plan::{self, ListenAddr, Plan};

pub use upstreams::Upstreams;

/// What every connection shares.
pub struct Shared {
    pub plan: PlanCell,
    pub upstreams: Upstreams,
    /// Idle upstream connections (`keepalive`), kept across reloads.
    pub pool: pool::Pool,
    /// TLS configurations of the current plan's `ssl` sockets, swapped with it.
    pub tls: ArcSwap<tls::TlsSet>,
    /// Which connections should end after their current request, and how many are open.
    pub drain: drain::Drain,
}

/// The current plan, and how many times it was replaced: a connection keeps the plan of its
/// last request, and its default server's configuration, while the count stands (loading
/// from the arc-swap and cloning a configuration were five atomic operations a request).
pub struct PlanCell {
    plan: ArcSwap<Plan>,
    swaps: std::sync::atomic::AtomicU64,
}

impl PlanCell {
    pub fn new(plan: Arc<Plan>) -> PlanCell {
        PlanCell {
            plan: ArcSwap::new(plan),
            swaps: Default::default(),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Plan>> {
        self.plan.load()
    }

    pub fn load_full(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    /// Puts `plan` in; the old one is returned.
    pub fn swap(&self, plan: Arc<Plan>) -> Arc<Plan> {
        let old = self.plan.swap(plan);
        self.swaps
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        old
    }

    /// Changes with every [`PlanCell::swap`]: read before the plan it stands for.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Compiles the configuration at start, printing problems nginx's way.
fn load(paths: &Paths, globals: Option<String>) -> Result<reload::Loaded, ()> {
    let mut err = std::io::stderr().lock();
    match reload::compile(paths, globals) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "portico: {w}");
            }
            Ok(loaded)
        }
        Err(lines) => {
            for l in lines {
                let _ = writeln!(err, "portico: {l}");
            }
            Err(())
        }
    }
}

/// `worker_processes` as a thread count.
fn worker_threads(compiled: &config::Compiled) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let value = main_directive(compiled, "worker_processes");
    match value.as_deref() {
        Some("auto") | None => cores,
        Some(n) => n.parse::<usize>().unwrap_or(1).max(1),
    }
}

/// The first argument of a main-context directive (`pid`, `worker_processes`, ...).
pub(crate) fn main_directive(compiled: &config::Compiled, name: &str) -> Option<String> {
    let root = compiled.sources.root?;
    let mut files = vec![root];
    files.extend(compiled.sources.globals);
    for f in files {
        for d in &compiled.sources.tree(f).directives {
            if d.name() == name {
                return d.args.first().map(|a| a.value.clone());
            }
        }
    }
    None
}

/// The `n`th argument of a main-context directive.
fn main_directive_arg(compiled: &config::Compiled, name: &str, n: usize) -> Option<String> {
    let root = compiled.sources.root?;
    let d = compiled
        .sources
        .tree(root)
        .directives
        .iter()
        .find(|d| d.name() == name)?;
    d.args.get(n).map(|a| a.value.clone())
}

/// How serving was asked for, beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub error_log: Option<String>,
    /// Reload when a configuration file changes (`--no-watch`, `PORTICO_NO_WATCH=1` turn it off).
    pub watch: bool,
}

/// `portico` (no -t): serve until told to stop.
pub fn serve(paths: &Paths, globals: Option<String>, options: ServeOptions) -> ExitCode {
    let error_log = options.error_log.clone();
    let Ok(loaded) = load(paths, globals.clone()) else {
        eprintln!("portico: [emerg] the configuration has errors; not starting");
        return ExitCode::from(1);
    };
    // The error log: -e, else the main context's error_log, else nginx's default.
    let compiled = &loaded.compiled;
    let log = error_log
        .or_else(|| main_directive(compiled, "error_log"))
        .unwrap_or_else(|| "/var/log/nginx/error.log".to_string());
    let log_path = if log == "stderr" || log.starts_with('/') {
        PathBuf::from(&log)
    } else {
        paths.prefix.join(&log)
    };
    crate::logging::set_level(
        &main_directive_arg(compiled, "error_log", 1).unwrap_or_else(|| "error".into()),
    );
    if let Err(e) = crate::logging::set_error_log(&log_path) {
        eprintln!(
            "portico: [alert] could not open error log file: open() \"{}\" failed ({e})",
            log_path.display()
        );
    }
    let threads = worker_threads(compiled);
    let pid_path = main_directive(compiled, "pid").map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            paths.prefix.join(p)
        }
    });
    // One worker: a single-threaded runtime, with none of the work-stealing machinery (as an
    // nginx worker is one thread).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portico: [emerg] cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(loaded, pid_path, paths.clone(), globals, options))
}

/// A socket bound and listening, not yet given to the runtime (binding may happen on a
/// blocking thread during a reload).
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Bound {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Bound::Tcp(l) => l.as_raw_fd(),
            Bound::Unix(l) => l.as_raw_fd(),
        }
    }

    fn into_tokio(self) -> std::io::Result<Listener> {
        Ok(match self {
            Bound::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            Bound::Unix(l) => {
                l.set_nonblocking(true)?;
                Listener::Unix(UnixListener::from_std(l)?)
            }
        })
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

fn bind(addr: &ListenAddr, opts: &plan::ListenOpts) -> std::io::Result<(Bound, String)> {
    match addr {
        ListenAddr::Tcp(a) => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(*a),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            if opts.reuseport {
                socket.set_reuse_port(true)?;
            }
            if a.is_ipv6() {
                socket.set_only_v6(opts.ipv6only.unwrap_or(true))?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&(*a).into())?;
            socket.listen(opts.backlog.unwrap_or(511))?;
            let std: std::net::TcpListener = socket.into();
            let local = std.local_addr()?;
            Ok((Bound::Tcp(std), local.to_string()))
        }
        ListenAddr::Unix(path) => {
            // nginx removes a stale socket file before binding.
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path)?;
            Ok((Bound::Unix(l), format!("unix:{path}")))
        }
        ListenAddr::Host(h, p) => {
            let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), *p))?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("host not found in \"{h}:{p}\"")))?;
            bind(&ListenAddr::Tcp(resolved), opts)
        }
    }
}

async fn run(
    loaded: reload::Loaded,
    pid_path: Option<PathBuf>,
    paths: Paths,
    globals: Option<String>,
    options: ServeOptions,
) -> ExitCode {
    let mut listeners = Vec::new();
    // Sockets handed over by a binary upgrade are taken as they are; the others are bound.
    let mut inherited = upgrade::inherited();
    for socket in &loaded.plan.sockets {
        let bound = match inherited.remove(&socket.addr.to_string()) {
            Some(fd) => upgrade::adopt(&socket.addr, fd),
            None => bind(&socket.addr, &socket.opts),
        };
        match bound {
            Ok((l, shown)) => listeners.push((l, socket, shown)),
            Err(e) => {
                eprintln!("portico: [emerg] bind() to {} failed ({e})", socket.addr);
                return ExitCode::from(1);
            }
        }
    }
    crate::logging::open_logs(&loaded.plan.error_logs);
    log::create_files(&loaded.plan.access_log_files);
    let shared = Arc::new(Shared {
        plan: PlanCell::new(loaded.plan.clone()),
        upstreams: Upstreams::default(),
        pool: Default::default(),
        tls: ArcSwap::from_pointee(tls::TlsSet::default()),
        drain: Default::default(),
    });
    let mut reloader =
        reload::Reloader::new(shared.clone(), paths, globals, &loaded, pid_path.as_deref());
    for (listener, socket, shown) in listeners {
        eprintln!("portico: listening on {shown}");
        tracing::debug!(address = %shown, "listening");
        reloader.start(listener, socket.addr.clone(), socket.opts.clone());
    }
    let watched = loaded.watched.clone();
    shared.tls.store(Arc::new(loaded.tls));
    drop(loaded.compiled);
    if let Some(p) = &pid_path {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("portico: [emerg] open() \"{}\" failed ({e})", p.display());
            return ExitCode::from(1);
        }
    }
    let watch_off = std::env::var("PORTICO_NO_WATCH").is_ok_and(|v| !v.is_empty() && v != "0");
    let (changes_tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let watcher = if options.watch && !watch_off {
        watch::Watcher::start(&watched, changes_tx)
    } else {
        None
    };
    // The handlers go in before "ready": a HUP sent as soon as that line shows must reload,
    // not meet the default action (which ends the process).
    let Some(handlers) = Signals::install() else {
        eprintln!("portico: [emerg] cannot install the signal handlers");
        return ExitCode::from(1);
    };
    // A line tests and tools can wait for: every socket is bound, the pid file written and
    // the signal handlers installed.
    eprintln!("portico: ready (pid {})", std::process::id());
    for (_, fd) in inherited {
        // An inherited socket the configuration no longer has.
        // SAFETY: the descriptor was handed to this process and nothing else owns it.
        unsafe { libc::close(fd) };
    }
    let code = signals(
        handlers,
        &shared,
        &mut reloader,
        watcher,
        changes,
        pid_path.as_deref(),
    )
    .await;
    log::flush();
    // After a binary upgrade the pid file (and the status file) are the new process's.
    if let Some(p) = &pid_path {
        if is_ours(p) {
            let _ = std::fs::remove_file(p);
            reloader.remove_status();
        }
        let old = upgrade::oldbin(p);
        if is_ours(&old) {
            let _ = std::fs::remove_file(old);
        }
    } else {
        reloader.remove_status();
    }
    code
}

/// Whether a pid file holds this process's pid.
fn is_ours(pid_file: &std::path::Path) -> bool {
    std::fs::read_to_string(pid_file).is_ok_and(|t| t.trim() == std::process::id().to_string())
}

/// The signals the server answers, their handlers installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            quit: signal(SignalKind::quit()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
            usr1: signal(SignalKind::user_defined1()).ok()?,
            usr2: signal(SignalKind::user_defined2()).ok()?,
        })
    }
}

/// Waits for signals and file changes: TERM/INT stop at once, QUIT stops gracefully, HUP and a
/// changed configuration file reload, USR1 reopens the log files.
async fn signals(
    handlers: Signals,
    shared: &Arc<Shared>,
    reloader: &mut reload::Reloader,
    mut watcher: Option<watch::Watcher>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<()>,
    pid_path: Option<&std::path::Path>,
) -> ExitCode {
    let Signals {
        mut term,
        mut int,
        mut quit,
        mut hup,
        mut usr1,
        mut usr2,
    } = handlers;
    let current = || pid_path.is_none_or(is_ours);
    loop {
        let cause = tokio::select! {
            _ = term.recv() => return fast_shutdown(shared, reloader, "SIGTERM", current()),
            _ = int.recv() => return fast_shutdown(shared, reloader, "SIGINT", current()),
            _ = quit.recv() => break,
            _ = usr1.recv() => {
                tracing::info!("reopening logs");
                crate::logging::reopen();
                log::reopen();
                continue;
            }
            _ = usr2.recv() => {
                reloader.upgrade(pid_path);
                continue;
            }
            _ = hup.recv() => "SIGHUP",
            Some(()) = changes.recv() => "file change",
        };
        reloader.reload(cause).await;
        if let Some(w) = watcher.as_mut() {
            w.follow(&reloader.watched);
        }
    }
    // SIGQUIT: stop accepting, let every request finish (keep-alive connections close after
    // their current one), within worker_shutdown_timeout when it is set.
    drop(watcher);
    tracing::info!(
        connections = shared.drain.open_connections(),
        "gracefully shutting down"
    );
    reloader.stop_all(current());
    shared.drain.shut_down();
    let bound = reloader.shutdown_timeout;
    let drained = async {
        match bound {
            Some(t) => tokio::time::timeout(t, shared.drain.idle()).await.is_ok(),
            None => {
                shared.drain.idle().await;
                true
            }
        }
    };
    tokio::select! {
        done = drained => {
            if !done {
                tracing::warn!(
                    connections = shared.drain.open_connections(),
                    "worker_shutdown_timeout expired; closing the remaining connections"
                );
            }
        }
        _ = term.recv() => return fast_shutdown(shared, reloader, "SIGTERM", false),
        _ = int.recv() => return fast_shutdown(shared, reloader, "SIGINT", false),
    }
    tracing::info!("exit");
    ExitCode::SUCCESS
}

/// TERM and INT: stop now; open connections are dropped with the runtime.
fn fast_shutdown(
    shared: &Shared,
    reloader: &mut reload::Reloader,
    signal: &str,
    current: bool,
) -> ExitCode {
    tracing::info!(
        signal,
        connections = shared.drain.open_connections(),
        "exiting"
    );
    reloader.stop_all(current);
    shared.drain.shut_down();
    ExitCode::SUCCESS
}

/// How much written-but-unsent data a client socket may hold (`TCP_NOTSENT_LOWAT`): the
/// kernel reports the socket writable, and takes more of a write, only while less than this
/// waits behind what the congestion window lets out. Without it a 1 MiB answer read and
/// written in pieces went into the socket whole (the send buffer autotunes to 4 MiB), each
/// byte a copy in kernel memory, and the kernel transmitted most of it later, clocked by the
/// client's ACKs, inside the client's own system calls: on loopback that made the client the
/// bottleneck (wrk's system time per 1 MiB answer 0.43 ms against 0.25 with the limit).
/// 64 KiB is two file pieces: a wake-up still finds a whole piece to write. `sendfile` lifts
/// the limit while it runs (see [`limit_unsent`]). nginx sets no such option; the bytes on
/// the wire are the same, only when they are handed over changes.
const NOTSENT_LOWAT: u32 = 64 * 1024;

/// Options on an accepted client connection: no Nagle delay (nginx's `tcp_nodelay on`) and the
/// unsent-data limit above. Failures leave the kernel's defaults, which are correct, only slower.
fn tune_accepted(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    limit_unsent(stream, true);
}

/// Puts the unsent-data limit on (`NOTSENT_LOWAT`) or off (the system's default, no limit).
/// Off for `sendfile`: its queue holds references to the page cache, not copies, and with the
/// limit the server's own calls did all of the loopback's transmission (Portico at 97% of a
/// core, the 1 MiB `sendfile on` row's p99 17-18 ms against 11-14 without the limit).
pub(crate) fn limit_unsent(stream: &tokio::net::TcpStream, on: bool) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ =
        socket2::SockRef::from(stream).set_tcp_notsent_lowat(if on { NOTSENT_LOWAT } else { 0 });
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, on);
}

/// Accepts until `stop` fires (or its sender is dropped), then closes the socket. Every
/// connection is counted in `shared.drain` until it ends.
async fn accept_loop(
    listener: Listener,
    addr: ListenAddr,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        match &listener {
            Listener::Tcp(l) => {
                let accepted = tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    a = l.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        tune_accepted(&stream);
                        let local = stream
                            .local_addr()
                            .map(ListenAddr::Tcp)
                            .unwrap_or_else(|_| addr.clone());
                        let tracked = drain::track(&shared);
                        match shared.tls.load().get(&addr) {
                            Some(config) => {
                                tokio::spawn(tls_connection(
                                    config,
                                    stream,
                                    peer,
                                    local,
                                    addr.clone(),
                                    shared.clone(),
                                    tracked,
                                ));
                            }
                            None => {
                                // Spawned as it is: a wrapping future would hold a second
                                // copy of it for every idle connection.
                                tokio::spawn(conn::serve(
                                    stream,
                                    peer,
                                    local,
                                    addr.clone(),
                                    shared.clone(),
                                    None,
                                    tracked,
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept() failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
            Listener::Unix(l) => {
                let accepted = tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    a = l.accept() => a,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let peer = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                        let tracked = drain::track(&shared);
                        tokio::spawn(conn::serve(
                            stream,
                            peer,
                            addr.clone(),
                            addr.clone(),
                            shared.clone(),
                            None,
                            tracked,
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept() failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

/// A TLS connection: the handshake (within `client_header_timeout`, as nginx bounds it), then
/// HTTP over it.
async fn tls_connection(
    config: Arc<rustls::ServerConfig>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    local: ListenAddr,
    configured: ListenAddr,
    shared: Arc<Shared>,
    tracked: drain::Tracked,
) {
    let wait = {
        let plan = shared.plan.load();
        let conf = crate::plan::route::find_socket(&plan, &configured)
            .map(|s| plan.servers[s.default].conf.clone())
            .unwrap_or_else(|| plan.http.clone());
        std::time::Duration::from_millis(conf.settings.client_header_timeout().max(1))
    };
    // Not a TLS handshake record: nginx answers a plain HTTP request with its own 400.
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            let mut stream = stream;
            let mut buf = Vec::new();
            let limits = http1::Limits {
                line: 8192,
                total: 32768,
            };
            let _ =
                tokio::time::timeout(wait, http1::read_head(&mut stream, &mut buf, limits)).await;
            let plan = shared.plan.load();
            let conf = crate::plan::route::find_socket(&plan, &configured)
                .map(|s| plan.servers[s.default].conf.clone())
                .unwrap_or_else(|| plan.http.clone());
            let _ = conn::error_response(&mut stream, 497, &conf, false).await;
            conn::linger(&mut stream).await;
            return;
        }
        Ok(Ok(_)) => {}
        _ => return,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(wait, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let info = tls::info(tls.get_ref().1);
            conn::serve(
                tls,
                peer,
                local,
                configured,
                shared,
                Some(Box::new(info)),
                tracked,
            )
            .await
        }
        Ok(Err(e)) => tracing::info!(client = %peer, error = %e, "SSL handshake failed"),
        Err(_) => tracing::info!(client = %peer, "SSL handshake timed out"),
    }
}
