//! The runtime: binds the plan's sockets, accepts connections and serves requests from the
//! current plan. The plan sits behind an `ArcSwap`: each request loads one snapshot and keeps
//! it for its whole life; a reload swaps in a new one. Upstream state (round-robin positions,
//! connection pools, failures) lives in [`Upstreams`], outside the plan, and survives reloads.

mod autoindex;
mod body;
mod conn;
mod files;
pub mod http1;
pub mod log;
mod pool;
mod proxy;
pub mod tls;
mod upstreams;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};

use crate::config::{self, Options, Paths, RealFs};
use crate::plan::{self, ListenAddr, Plan};

pub use upstreams::Upstreams;

/// What every connection shares.
pub struct Shared {
    pub plan: ArcSwap<Plan>,
    pub upstreams: Upstreams,
    /// Idle upstream connections (`keepalive`), kept across reloads.
    pub pool: pool::Pool,
    /// TLS configurations of the current plan's `ssl` sockets, swapped with it.
    pub tls: ArcSwap<tls::TlsSet>,
}

/// Compiles the configuration as `nginx -t` would, printing problems nginx's way.
fn load(
    paths: &Paths,
    globals: Option<String>,
) -> Result<(Arc<Plan>, tls::TlsSet, config::Compiled), ()> {
    let options = Options {
        paths: paths.clone(),
        globals,
        mode: None,
    };
    let mut compiled = config::compile(&RealFs, &options);
    let plan = plan::build(&mut compiled, &crate::inspect::lower_options(paths));
    let mut err = std::io::stderr().lock();
    for d in &compiled.diagnostics {
        let _ = writeln!(err, "{}", d.nginx_line(&compiled.sources.map));
    }
    if compiled.has_errors() {
        return Err(());
    }
    // Certificates load with the plan: one that does not fails the start or the reload.
    let plan = Arc::new(plan);
    match tls::build(&plan) {
        Ok(set) => Ok((plan, set, compiled)),
        Err(errors) => {
            for e in errors {
                let _ = writeln!(err, "portico: [emerg] {e}");
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
fn main_directive(compiled: &config::Compiled, name: &str) -> Option<String> {
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

/// `portico` (no -t): serve until told to stop.
pub fn serve(paths: &Paths, globals: Option<String>, error_log: Option<String>) -> ExitCode {
    let Ok((plan, tls_set, compiled)) = load(paths, globals.clone()) else {
        eprintln!("portico: [emerg] the configuration has errors; not starting");
        return ExitCode::from(1);
    };
    // The error log: -e, else the main context's error_log, else nginx's default.
    let log = error_log
        .or_else(|| main_directive(&compiled, "error_log"))
        .unwrap_or_else(|| "/var/log/nginx/error.log".to_string());
    let log_path = if log == "stderr" || log.starts_with('/') {
        PathBuf::from(&log)
    } else {
        paths.prefix.join(&log)
    };
    crate::logging::set_level(
        &main_directive_arg(&compiled, "error_log", 1).unwrap_or_else(|| "error".into()),
    );
    if let Err(e) = crate::logging::set_error_log(&log_path) {
        eprintln!(
            "portico: [alert] could not open error log file: open() \"{}\" failed ({e})",
            log_path.display()
        );
    }
    let threads = worker_threads(&compiled);
    let pid_path = main_directive(&compiled, "pid").map(|p| {
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
    runtime.block_on(run(plan, tls_set, pid_path, paths.clone(), globals))
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

fn bind(addr: &ListenAddr, opts: &plan::ListenOpts) -> std::io::Result<(Listener, String)> {
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
            Ok((
                Listener::Tcp(TcpListener::from_std(std)?),
                local.to_string(),
            ))
        }
        ListenAddr::Unix(path) => {
            // nginx removes a stale socket file before binding.
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            Ok((Listener::Unix(l), format!("unix:{path}")))
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
    plan: Arc<Plan>,
    tls_set: tls::TlsSet,
    pid_path: Option<PathBuf>,
    paths: Paths,
    globals: Option<String>,
) -> ExitCode {
    let mut listeners = Vec::new();
    for socket in &plan.sockets {
        match bind(&socket.addr, &socket.opts) {
            Ok((l, shown)) => listeners.push((l, socket.addr.clone(), shown)),
            Err(e) => {
                eprintln!("portico: [emerg] bind() to {} failed ({e})", socket.addr);
                return ExitCode::from(1);
            }
        }
    }
    let shared = Arc::new(Shared {
        plan: ArcSwap::new(plan),
        upstreams: Upstreams::default(),
        pool: Default::default(),
        tls: ArcSwap::from_pointee(tls_set),
    });
    for (listener, addr, shown) in listeners {
        eprintln!("portico: listening on {shown}");
        tracing::debug!(address = %shown, "listening");
        let shared = shared.clone();
        tokio::spawn(accept_loop(listener, addr, shared));
    }
    if let Some(p) = &pid_path {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("portico: [emerg] open() \"{}\" failed ({e})", p.display());
            return ExitCode::from(1);
        }
    }
    // A line tests and tools can wait for: every socket is bound and the pid file written.
    eprintln!("portico: ready (pid {})", std::process::id());
    let code = signals(shared, &paths, globals).await;
    log::flush();
    if let Some(p) = &pid_path {
        let _ = std::fs::remove_file(p);
    }
    code
}

/// Waits for signals: TERM/INT stop, QUIT stops gracefully, HUP reloads the plan.
async fn signals(shared: Arc<Shared>, paths: &Paths, globals: Option<String>) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
        signal(SignalKind::hangup()),
    ) else {
        return ExitCode::from(1);
    };
    loop {
        tokio::select! {
            _ = term.recv() => return ExitCode::SUCCESS,
            _ = int.recv() => return ExitCode::SUCCESS,
            _ = quit.recv() => return ExitCode::SUCCESS,
            _ = hup.recv() => {
                match load(paths, globals.clone()) {
                    Ok((plan, tls_set, _)) => {
                        shared.tls.store(Arc::new(tls_set));
                        shared.plan.store(plan);
                        tracing::info!("configuration reloaded");
                    }
                    Err(()) => tracing::error!("reload failed; the previous configuration stays"),
                }
            }
        }
    }
}

async fn accept_loop(listener: Listener, addr: ListenAddr, shared: Arc<Shared>) {
    loop {
        match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream
                        .local_addr()
                        .map(ListenAddr::Tcp)
                        .unwrap_or_else(|_| addr.clone());
                    match shared.tls.load().get(&addr) {
                        Some(config) => {
                            tokio::spawn(tls_connection(
                                config,
                                stream,
                                peer,
                                local,
                                addr.clone(),
                                shared.clone(),
                            ));
                        }
                        None => {
                            tokio::spawn(conn::serve(
                                stream,
                                peer,
                                local,
                                addr.clone(),
                                shared.clone(),
                                None,
                            ));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept() failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Listener::Unix(l) => match l.accept().await {
                Ok((stream, _)) => {
                    let peer = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                    tokio::spawn(conn::serve(
                        stream,
                        peer,
                        addr.clone(),
                        addr.clone(),
                        shared.clone(),
                        None,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept() failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
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
            conn::serve(tls, peer, local, configured, shared, Some(info)).await
        }
        Ok(Err(e)) => tracing::info!(client = %peer, error = %e, "SSL handshake failed"),
        Err(_) => tracing::info!(client = %peer, "SSL handshake timed out"),
    }
}
