//! One client connection: requests read one after another (keep-alive, pipelining), each routed
//! through the plan snapshot loaded when its head arrived, answered, and the connection kept or
//! closed as nginx would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::http1::{self, Framing, Head, Limits, Refused};
use super::{Shared, files, proxy};
use crate::plan::route::{self, Outcome, RealFiles};
use crate::plan::settings::ServerTokens;
use crate::plan::{ListenAddr, LocConf, Plan, pages};

/// Connections accepted so far: `$connection` is the serial number of one.
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A future in a box of its own, written into its allocation: `Box::pin(f())` builds the
/// future on the stack and copies it over (kilobytes, for a request's state). A macro: passed
/// through a function, the future was built and copied all the same (callgrind: 41 more cold
/// cache lines written per proxied request).
macro_rules! boxed {
    ($fut:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $fut))
    };
}

/// What a handler needs about the request being served.
pub struct Exchange<'a> {
    pub head: &'a Head,
    /// `add_header`, evaluated for this request: (name, value, always).
    pub add: &'a [(String, String, bool)],
    /// What was sent, for the access log.
    pub served: std::sync::Mutex<super::log::Served>,
    pub framing: Framing,
    pub keepalive: bool,
    pub conf: &'a LocConf,
    /// The request as routing saw it, for `error_page` at run time.
    pub request: &'a route::Request<'a>,
    /// `expires`, evaluated (see [`route::Decision::expires`]).
    pub expires: Option<&'a [String]>,
    /// Keep the answer's headers (the plan's log formats read them).
    pub sent_headers: bool,
    /// Keep the upstream's headers (`$upstream_http_NAME` in a log format).
    pub upstream_headers: bool,
    /// After `X-Accel-Redirect`: the upstream's headers that stay on the answer
    /// (Content-Type replaces the answer's own).
    pub preserved: &'a [(String, String)],
    /// When the request's head was read: the clock reading the work done without a wait
    /// after it shares, as nginx's handlers share the time of their event loop's turn.
    pub started: std::time::Instant,
}

/// Serves one connection to its end. Not an `async fn`: the future's captured arguments are
/// used in place (an `async fn` would keep a second copy of them), and while the connection
/// waits idle it holds only that small state; what one request needs is boxed, as long as
/// that request lasts.
pub fn serve<S>(
    mut io: S,
    peer: SocketAddr,
    local: ListenAddr,
    configured: ListenAddr,
    shared: Arc<Shared>,
    // Boxed: it is kept for the connection's life, and only TLS ones have it.
    tls: Option<Box<route::TlsInfo>>,
    tracked: super::drain::Tracked,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        // Counted as open until the connection ends (the future owns the count).
        let _tracked = &tracked;
        let mut conn = Conn {
            buf: Vec::new(),
            served: 0,
            connection: CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            opened: std::time::Instant::now(),
            keepalive_wait: 0,
        };
        // The plan of the last request, kept for the next while no reload replaced it.
        let mut current = Current::load(&shared, &local, &configured);
        // The wait for a request: one timer for the connection's life, moved at each wait.
        // Moved later, it stays where it is in tokio's wheel (tokio re-files it when it comes
        // due early), so a wait costs no registration and removal, as a timer per wait did.
        // In place: boxed, or a few bytes more in this task (520 bytes now), and an idle
        // connection's task takes the next allocation size, 0.2 KiB more (tests/bench/run idle).
        let mut timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
        // Wake-ups (a reload, a drain) for the waits between requests: one registration kept
        // for the connection's life (see drain::Wakeups). Boxed: in place, the idle task was
        // 584 bytes and took the next allocation size (tests/bench/run idle: 1.14 KiB per
        // connection; boxed, 520 bytes and 0.91 KiB with the box).
        let mut woken = Box::pin(super::drain::woken());
        let mut wakeups = super::drain::Wakeups::new();
        loop {
            // Between requests: a removed listener or a shutdown ends the connection.
            if conn.served > 0 && shared.drain.closing(&configured) {
                return;
            }
            current.refresh(&shared, &local, &configured);
            let s = &current.default_conf.settings;
            let wait = if conn.served == 0 {
                s.client_header_timeout()
            } else {
                conn.keepalive_wait
            };
            let wait = Duration::from_millis(wait.max(1));
            let deadline = tokio::time::Instant::now() + wait;
            // An idle keep-alive connection is closed at once when draining starts, and one
            // still waiting for a request worker_shutdown_timeout after a reload, as nginx's
            // old worker closes it.
            let waiting = conn.buf.is_empty();
            let idle = conn.served > 0 && waiting;
            let generation = super::drain::generation();
            // An idle connection holds no buffer: a plain TCP one waits here, in this small
            // state, for its next request to be readable (nginx frees its buffers too).
            if waiting {
                conn.buf = Vec::new();
                if let Some(tcp) =
                    (&mut io as &mut dyn std::any::Any).downcast_mut::<tokio::net::TcpStream>()
                {
                    // drain::closed_while_waiting, written into this wait: the reload's
                    // timeout shares the read's timer, and the idle task stays 0.2 KiB
                    // smaller than with the helper's own future beside the read.
                    let mut retire_at = None;
                    let ready = loop {
                        if idle && shared.drain.closing(&configured) {
                            break false;
                        }
                        if retire_at.is_none() {
                            retire_at = super::drain::retired_since(generation)
                                .map(|t| tokio::time::Instant::now() + t);
                        }
                        let until =
                            retire_at.map_or(deadline, |r: tokio::time::Instant| r.min(deadline));
                        timer.as_mut().reset(until);
                        tokio::select! {
                            biased;
                            // poll_read_ready keeps the waker in the socket's registration:
                            // the future is a pointer, where readable() holds a waiter node.
                            r = std::future::poll_fn(|cx| tcp.poll_read_ready(cx)) => break r.is_ok(),
                            _ = timer.as_mut() => break false,
                            // A reload: the old plan is not kept by a connection at rest.
                            _ = std::future::poll_fn(|cx| wakeups.poll(woken.as_mut(), cx)) => {
                                current.refresh(&shared, &local, &configured);
                                continue;
                            }
                        }
                    };
                    if !ready {
                        return;
                    }
                }
            }
            // The request's state, 2 KiB, boxed for the request's life only (in a box this
            // thread reuses: see reuse.rs).
            let next = super::reuse::reused!(next_request(
                &mut io,
                &mut conn,
                Wait {
                    deadline,
                    idle,
                    waiting,
                    generation,
                },
                &mut current,
                (peer, &local, &configured),
                &shared,
                &tls,
            ));
            if !next.await {
                return;
            }
        }
    }
}

/// What a connection keeps from one request to the next.
struct Conn {
    buf: Vec<u8>,
    served: u64,
    connection: u64,
    opened: std::time::Instant,
    /// The keep-alive wait after a request is its location's keepalive_timeout (set by
    /// every request, read only after one).
    keepalive_wait: u64,
}

/// The plan a connection's next request gets, kept from its last one while the plan stands:
/// a load from the arc-swap, and a clone of the default server's configuration, cost atomic
/// operations on every request.
struct Current {
    /// [`super::PlanCell::swaps`] when `plan` was loaded.
    swaps: u64,
    plan: Arc<Plan>,
    /// The socket's default server's configuration: the timeouts and buffer sizes of a
    /// request not routed yet.
    default_conf: Arc<LocConf>,
    /// The plan listens on the connection's local address itself (else on the configured one
    /// it was accepted through).
    on_local: bool,
}

impl Current {
    /// The plan now.
    fn load(shared: &Shared, local: &ListenAddr, configured: &ListenAddr) -> Current {
        // Read before the plan: a swap in between makes the next look load again.
        let swaps = shared.plan.swaps();
        let plan = shared.plan.load_full();
        let on_local = plan.sockets.iter().any(|s| &s.addr == local);
        let socket = if on_local { local } else { configured };
        let default_conf = route::find_socket(&plan, socket)
            .map(|s| plan.servers[s.default].conf.clone())
            .unwrap_or_else(|| plan.http.clone());
        Current {
            swaps,
            plan,
            default_conf,
            on_local,
        }
    }

    /// Kept while the plan is the same, else the plan now.
    fn refresh(&mut self, shared: &Shared, local: &ListenAddr, configured: &ListenAddr) {
        if self.swaps != shared.plan.swaps() {
            *self = Current::load(shared, local, configured);
        }
    }
}

/// How long the next request's head may take, and what ends the wait for it.
struct Wait {
    deadline: tokio::time::Instant,
    idle: bool,
    waiting: bool,
    generation: u64,
}

/// Reads and serves the connection's next request: `false` when the connection ends.
async fn next_request<S>(
    io: &mut S,
    conn: &mut Conn,
    w: Wait,
    current: &mut Current,
    (peer, local, configured): (SocketAddr, &ListenAddr, &ListenAddr),
    shared: &Arc<Shared>,
    tls: &Option<Box<route::TlsInfo>>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (n, size) = current.default_conf.settings.large_client_header_buffers();
    let limits = Limits {
        line: size as usize,
        total: (n * size) as usize,
    };
    let buf = &mut conn.buf;
    let read = {
        let read = super::deadline::by(w.deadline, async {
            if buf.is_empty()
                && let Some(tcp) =
                    (&mut *io as &mut dyn std::any::Any).downcast_mut::<tokio::net::TcpStream>()
            {
                tcp.readable().await?;
            }
            http1::read_head(io, buf, limits).await
        });
        // Biased: a request already in the socket is read, not cut off.
        tokio::select! {
            biased;
            r = read => Some(r),
            _ = super::drain::closed_while_waiting(&shared.drain, configured, w.idle, w.generation), if w.waiting => None,
        }
    };
    let read = match read {
        Some(r) => r,
        None if buf.is_empty() => return false,
        // Part of a request had come: it is read to its end and answered.
        None => super::deadline::by(w.deadline, http1::read_head(io, buf, limits)).await,
    };
    let (head, len) = match read {
        Err(_) | Ok(Err(_)) | Ok(Ok(Ok(None))) => return false,
        Ok(Ok(Err(Refused(status)))) => {
            let _ = error_response(io, status, &current.default_conf, false).await;
            linger(io).await;
            return false;
        }
        Ok(Ok(Ok(Some(h)))) => h,
    };
    buf.drain(..len);
    conn.served += 1;
    // The request's plan: the one current when its head arrived, kept to its end.
    // On a listener a reload removed, the last plan that had it.
    current.refresh(shared, local, configured);
    let current = &*current;
    let default_conf = &current.default_conf;
    let removed = shared.drain.plan_of_removed(configured);
    let (plan, socket) = match &removed {
        Some(plan) => (plan, socket_of(plan, local, configured)),
        None => (
            &current.plan,
            if current.on_local { local } else { configured },
        ),
    };
    // nginx refuses TRACE, and CONNECT (405, or 400 without a port).
    let refused = match &*head.method {
        "TRACE" => Some(405),
        "CONNECT" if !head.target.contains(':') || head.target.starts_with('/') => Some(400),
        "CONNECT" => Some(405),
        _ => None,
    };
    if let Some(status) = refused {
        let _ = error_response(io, status, &default_conf, false).await;
        linger(io).await;
        return false;
    }
    let framing = match http1::check_head(&head) {
        Ok(f) => f,
        Err(Refused(status)) => {
            let _ = error_response(io, status, &default_conf, false).await;
            linger(io).await;
            return false;
        }
    };
    let keepalive = handle(
        io,
        buf,
        plan,
        &head,
        framing,
        peer,
        local,
        socket,
        shared,
        (conn.connection, conn.served, tls.as_deref(), conn.opened),
        &mut conn.keepalive_wait,
    )
    .await;
    match keepalive {
        Ok(true) => true,
        Ok(false) => {
            let _ = io.shutdown().await;
            false
        }
        Err(_) => false,
    }
}

/// The plan's socket a connection is on: its local address when the plan listens there
/// explicitly, else the configured one it was accepted through.
fn socket_of<'a>(plan: &Plan, local: &'a ListenAddr, configured: &'a ListenAddr) -> &'a ListenAddr {
    if plan.sockets.iter().any(|s| &s.addr == local) {
        local
    } else {
        configured
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle<S>(
    io: &mut S,
    buf: &mut Vec<u8>,
    plan: &Arc<Plan>,
    head: &Head,
    framing: Framing,
    peer: SocketAddr,
    local: &ListenAddr,
    socket: &ListenAddr,
    shared: &Arc<Shared>,
    (connection, served_count, tls, opened): (
        u64,
        u64,
        Option<&route::TlsInfo>,
        std::time::Instant,
    ),
    keepalive_wait: &mut u64,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One reading of the clock for the request: its start ($request_time), and the
    // connection's age for $connection_time and keepalive_time.
    let started = std::time::Instant::now();
    let age = started.saturating_duration_since(opened);
    let version = head.version_text();
    let request = route::Request {
        method: &head.method,
        target: &head.target,
        version: &version,
        headers: &head.headers,
        remote: peer,
        local,
        socket,
        https: tls.is_some(),
        tls,
        body_len: match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        },
        chunked: framing == Framing::Chunked,
        connection,
        explain: false,
        requests: served_count,
        connection_ms: age.as_millis() as u64,
    };
    // Routing's log lines go to the error_log of the location it chose, as what serving logs.
    let (decision, lines) =
        crate::logging::capture(|| route::route(plan, &request, &route::ServingFiles));
    let log = decision
        .conf
        .settings
        .error_log
        .as_ref()
        .and_then(|l| l.as_ref())
        .and_then(|(path, level)| crate::logging::request_log(path, level));
    crate::logging::emit(lines, log.as_deref());
    let conf = &decision.conf;
    let s = &conf.settings;
    *keepalive_wait = s.keepalive_timeout().0;
    let keepalive = head.wants_keepalive()
        && s.keepalive_timeout().0 > 0
        && served_count < s.keepalive_requests()
        && age <= Duration::from_millis(s.keepalive_time())
        && !keepalive_disabled(head, s)
        && !shared.drain.closing(socket);
    // nginx refuses a declared body larger than client_max_body_size before anything else.
    if let Framing::Length(n) = framing {
        let max = s.client_max_body_size();
        if max > 0 && n > max {
            error_response(io, 413, conf, false).await?;
            linger(io).await;
            return Ok(false);
        }
    }
    let ex = Exchange {
        head,
        add: &decision.add_headers,
        served: Default::default(),
        framing,
        keepalive,
        conf,
        request: &request,
        expires: decision.expires.as_deref(),
        sent_headers: plan.log_sent_headers,
        upstream_headers: plan.log_upstream_headers,
        preserved: &[],
        started,
    };
    // The request's own error_log, when it has one; else the main log, which is what an
    // unscoped task writes to anyway (and one wrapper fewer to build and move). Each arm
    // builds its future where it awaits it: no copy of it waits beside the other.
    let result = match &log {
        Some(_) => {
            let inner = serve_outcome(io, buf, &ex, &decision, plan, shared, keepalive);
            crate::logging::scoped(log.clone(), inner).await
        }
        None => serve_outcome(io, buf, &ex, &decision, plan, shared, keepalive).await,
    };
    // Served to its end: what it recorded is taken without the lock.
    let served = ex.served.into_inner().unwrap_or_default();
    if served.status != 0 {
        super::log::write(&super::log::Entry {
            plan,
            decision: &decision,
            head,
            peer: decision.remote.unwrap_or(peer),
            local,
            served: &served,
            started,
            connection,
            requests: served_count,
        });
    }
    result
}

/// An error met while serving (an upstream that failed, a file that is missing): the
/// `error_page` for it if the configuration has one, else nginx's own page.
pub fn serve_error<'a, S>(
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    ex: &'a Exchange<'a>,
    decision: &'a route::Decision,
    plan: &'a Arc<Plan>,
    shared: &'a Arc<Shared>,
    status: u16,
    keep: Vec<(String, String)>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<bool>> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the page may be proxied again, and its errors served here again. Written into
    // its allocation, and small: the page's own serving is boxed apart, only when there is
    // one (a copy of that state made every 404 write ~4 KiB of cold memory).
    let serving = boxed!(async move {
        // The runtime's variables (a lock on what was served), only for a page or a late
        // header that needs them.
        let known = || known_vars(ex);
        let Some(page) = route::error_page(plan, ex.request, decision, status, &RealFiles, known)
        else {
            // nginx's own page, with the `add_header ... always` of the location (and what an
            // X-Accel-Redirect kept).
            let mut extra: Vec<http1::Line> = keep.into_iter().map(http1::owned).collect();
            extra.extend(preserved_rest(ex));
            extra.extend(add_headers(ex, status));
            extra.extend(late_headers(ex, decision, plan, status, known));
            if ex.sent_headers {
                // The page's lines, for `$sent_http_NAME`.
                let mut lines = vec![(
                    "Content-Type".into(),
                    with_charset("text/html", status, &ex.conf.settings).into(),
                )];
                lines.extend(extra.iter().cloned());
                ex.note_headers(&lines);
            }
            error_page_with(io, status, ex.conf, ex.keepalive, extra).await?;
            ex.record(status, 0, 0);
            return Ok(ex.keepalive);
        };
        // Headers of the intercepted answer that stay (a 401's `WWW-Authenticate`).
        let mut add = page.add_headers.clone();
        add.extend(keep.into_iter().map(|(n, v)| (n, v, true)));
        // The body has been read (or is gone): the page's handler gets none.
        let inner = ex.redirected(ex.head, &add, &page, ex.request, ex.preserved);
        let result = boxed!(serve_outcome(
            io,
            buf,
            &inner,
            &page,
            plan,
            shared,
            ex.keepalive,
        ))
        .await;
        if let (Ok(mut outer), Ok(served)) = (ex.served.lock(), inner.served.lock()) {
            let before = outer.clone();
            *outer = served.clone();
            if outer.request_body.is_none() {
                outer.request_body = before.request_body.clone();
            }
            // The page's own upstream attempts follow the first ones, after " : ".
            let mut states = before.upstreams;
            let first_inner = states.len();
            states.extend(outer.upstreams.drain(..));
            if let Some(u) = states.get_mut(first_inner)
                && first_inner > 0
            {
                u.redirected = true;
            }
            outer.upstreams = states;
        }
        result
    });
    serving
}

async fn serve_outcome<S>(
    io: &mut S,
    buf: &mut Vec<u8>,
    ex: &Exchange<'_>,
    decision: &route::Decision,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    keepalive: bool,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conf = ex.conf;
    let s = &conf.settings;
    let framing = ex.framing;
    match &decision.outcome {
        Outcome::Return {
            status,
            headers,
            body,
        } => {
            if *status == 444 {
                return Ok(false);
            }
            // nginx discards what of the body has already come before answering: a chunked
            // body already malformed there is a 400.
            if framing == Framing::Chunked && !buf.is_empty() {
                let mut decoder = super::body::Decoder::default();
                if decoder.feed(buf, &mut Vec::new()).is_err() {
                    error_response(io, 400, &conf, false).await?;
                    ex.record(400, 0, 0);
                    linger(io).await;
                    return Ok(false);
                }
            }
            let builtin = body.as_deref().is_some_and(|b| {
                pages::default_page(*status, s.server_tokens()).as_deref() == Some(b)
            });
            let content_type = if builtin {
                "text/html"
            } else if body.is_none()
                && *status >= 400
                && pages::default_page(*status, s.server_tokens()).is_none()
            {
                // A status nginx has no page for goes out empty, with no type.
                ""
            } else {
                content_type_for(&decision.uri, s)
            };
            respond(
                io,
                &ex,
                *status,
                headers,
                &content_type,
                body.as_deref().unwrap_or("").as_bytes(),
            )
            .await?;
            // As nginx, the answer does not wait for the body: it is read and dropped after,
            // and the connection is kept only if that ends well.
            if framing != Framing::None && keepalive {
                return discard_after(io, buf, ex).await;
            }
            Ok(keepalive && framing == Framing::None)
        }
        Outcome::File { path } => {
            if framing != Framing::None {
                if let Err(Refused(st)) =
                    http1::read_body(io, buf, framing, s.client_max_body_size()).await?
                {
                    error_response(io, st, &conf, false).await?;
                    linger(io).await;
                    return Ok(false);
                }
            }
            // Not boxed: a file's state (1.3 KiB) costs less inside the request's own box than
            // an allocation and a copy of its own. The proxy's (3 KiB) and the listing's are.
            files::serve(io, buf, &ex, &decision, plan, shared, path).await
        }
        Outcome::Listing { path } => {
            if framing != Framing::None {
                if let Err(Refused(st)) =
                    http1::read_body(io, buf, framing, s.client_max_body_size()).await?
                {
                    error_response(io, st, &conf, false).await?;
                    linger(io).await;
                    return Ok(false);
                }
            }
            Box::pin(files::listing(io, buf, &ex, &decision, plan, shared, path)).await
        }
        Outcome::Proxy { .. } => {
            super::reuse::reused!(proxy::serve(io, buf, &ex, &decision, plan, shared)).await
        }
    }
}

/// Drops the body of a request already answered: `Ok(true)` if the connection can go on.
async fn discard_after<S>(io: &mut S, buf: &mut Vec<u8>, ex: &Exchange<'_>) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // nginx discards with its lingering timeout (5s), not client_body_timeout. No size
    // limit: the answer has gone; only the framing matters.
    let mut reader = super::body::BodyReader::new(ex.framing, 0, Duration::from_secs(5));
    loop {
        match reader.next(io, buf).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(true),
            Err(_) => return Ok(false),
        }
    }
}

/// nginx's lingering close: after answering without reading the body, stop writing and read
/// (and drop) what the client still sends, so that closing does not reset the connection
/// before the client has read the answer (`lingering_timeout` 5s, `lingering_time` 30s).
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    use tokio::io::AsyncReadExt;
    let _ = io.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut sink = vec![0u8; 16384];
    loop {
        let wait = Duration::from_secs(5)
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

/// The MIME type nginx gives an answer for `uri`: by its extension through `types`, else
/// `default_type`.
pub fn content_type_for<'a>(uri: &str, s: &'a crate::plan::Settings) -> &'a str {
    // Byte searches: a URI's last segment is short, and str::rfind(char) costs more to set up.
    let name = match uri.bytes().rposition(|b| b == b'/') {
        Some(i) => &uri[i + 1..],
        None => uri,
    };
    match name
        .bytes()
        .rposition(|b| b == b'.')
        .map(|i| name.split_at(i + 1))
    {
        Some((_, ext)) if !ext.is_empty() => {
            let types = s.types();
            // Extensions are mostly lower case already: no copy for those.
            let found = if ext.bytes().any(|b| b.is_ascii_uppercase()) {
                types.get(&ext.to_ascii_lowercase())
            } else {
                types.get(ext)
            };
            found.map_or_else(|| s.default_type(), String::as_str)
        }
        _ => s.default_type(),
    }
}

/// The charset filter: `charset X` adds `; charset=X` to a Content-Type of `charset_types`
/// that names none (`*` in the list takes every type).
/// Not for 301 and 302: nginx leaves a redirect's type alone.
pub fn with_charset<'a>(
    content_type: &'a str,
    status: u16,
    s: &crate::plan::Settings,
) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    if content_type.is_empty()
        || matches!(status, 301 | 302)
        || s.charset.as_deref().is_none_or(|c| c == "off")
    {
        return Cow::Borrowed(content_type);
    }
    let charset = s.charset();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if content_type.to_ascii_lowercase().contains("charset=") {
        return Cow::Borrowed(content_type);
    }
    let types = s.charset_types();
    let listed = types
        .iter()
        .any(|t| t == "*" || t.eq_ignore_ascii_case(mime));
    if !listed {
        return Cow::Borrowed(content_type);
    }
    Cow::Owned(format!("{content_type}; charset={charset}"))
}

/// Sends `100 Continue` when an HTTP/1.1 client waits for it before sending its body.
pub async fn continue_if_expected<S: AsyncWrite + Unpin>(
    io: &mut S,
    head: &Head,
) -> std::io::Result<()> {
    let expects = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects && head.version >= (1, 1) {
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        io.flush().await?;
    }
    Ok(())
}

/// The `Server` header's value.
pub fn server_header(tokens: ServerTokens) -> &'static str {
    match tokens {
        ServerTokens::Off => "nginx",
        _ => concat!("nginx/", "1.22.1"),
    }
}

/// Writes a whole response: nginx's header order, `add_header` for the statuses it applies
/// to, the body unless the method is HEAD.
pub async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    ex: &Exchange<'_>,
    status: u16,
    extra: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let s = &ex.conf.settings;
    let mut headers: Vec<http1::Line> = Vec::with_capacity(8 + extra.len());
    headers.push(("Server".into(), server_header(s.server_tokens()).into()));
    headers.push(("Date".into(), super::http1::date_now().into()));
    let bodyless = status == 204 || status == 304 || (100..200).contains(&status);
    if !bodyless {
        if let Some(ct) = preserved_type(ex) {
            headers.push(("Content-Type".into(), http1::Text::copy(ct)));
        } else if !content_type.is_empty() {
            headers.push((
                "Content-Type".into(),
                http1::Text::copy(&with_charset(content_type, status, s)),
            ));
        }
        headers.push((
            "Content-Length".into(),
            http1::Text::number(body.len() as u64),
        ));
    }
    headers.push(connection_header(ex));
    headers.extend(keepalive_header(ex));
    headers.extend(preserved_rest(ex));
    headers.extend(extra.iter().cloned().map(http1::owned));
    headers.extend(super::files::expires(ex.expires, status, None));
    headers.extend(add_headers(ex, status));
    let head = http1::ResponseHead {
        version: ex.head.version,
        status,
        headers,
    };
    ex.note_headers(&head.headers);
    let send_body = ex.head.method != "HEAD" && !bodyless;
    let mut out = head.to_bytes_with_room(if send_body { body.len() } else { 0 });
    let head_len = out.len();
    if send_body {
        out.extend_from_slice(body);
    }
    ex.record(status, out.len(), out.len() - head_len);
    // send_timeout: how long the client may take to accept what is written.
    let wait = Duration::from_millis(s.send_timeout().max(1));
    match super::deadline::within(wait, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

impl<'a> Exchange<'a> {
    /// The exchange of an internal redirect (an error page, an X-Accel-Redirect) to `page`:
    /// the body has been read or is gone, so the page's handler gets none.
    fn redirected<'b>(
        &self,
        head: &'b Head,
        add: &'b [(String, String, bool)],
        page: &'b route::Decision,
        request: &'b route::Request,
        preserved: &'b [(String, String)],
    ) -> Exchange<'b> {
        Exchange {
            head,
            add,
            served: Default::default(),
            framing: Framing::None,
            keepalive: self.keepalive,
            conf: &page.conf,
            request,
            expires: page.expires.as_deref(),
            sent_headers: self.sent_headers,
            upstream_headers: self.upstream_headers,
            preserved,
            started: std::time::Instant::now(),
        }
    }

    /// Notes what was sent, for the access log.
    /// Keeps the header lines of the answer, for `$sent_http_NAME` in the access log.
    pub fn note_headers(&self, headers: &[http1::Line]) {
        if !self.sent_headers {
            return;
        }
        if let Ok(mut s) = self.served.lock() {
            s.sent_headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        }
    }

    pub fn record(&self, status: u16, bytes: usize, body: usize) {
        if let Ok(mut s) = self.served.lock() {
            s.status = status;
            s.bytes_sent = bytes as u64;
            s.body_bytes_sent = body as u64;
        }
    }
}

/// `keepalive_disable`: no keep-alive for POSTs of MSIE 4-6 (`msie6`) or for Safari on
/// macOS (`safari`), told from the User-Agent as nginx tells them.
fn keepalive_disabled(head: &Head, s: &crate::plan::Settings) -> bool {
    let rules = s.keepalive_disable();
    if rules.iter().any(|r| r == "none") {
        return false;
    }
    // Only a POST can be msie6's; the User-Agent is not read when neither rule can apply
    // (nearly always: the default is msie6, and most requests are GETs).
    let (msie6_rule, safari_rule) = (
        head.method == "POST" && rules.iter().any(|r| r == "msie6"),
        rules.iter().any(|r| r == "safari"),
    );
    if !msie6_rule && !safari_rule {
        return false;
    }
    let Some(ua) = head.header("user-agent") else {
        return false;
    };
    let opera = ua.contains("Opera");
    let msie_at = ua.find("MSIE ").filter(|&i| i + 7 < ua.len() && !opera);
    let b = ua.as_bytes();
    let msie6 = msie_at.is_some_and(|i| {
        b[i + 6] == b'.'
            && match b[i + 5] {
                b'4' | b'5' => true,
                b'6' => !ua[i + 8..].contains("SV1"),
                _ => false,
            }
    });
    let safari = msie_at.is_none()
        && !opera
        && !ua.contains("Gecko/")
        && !ua.contains("Chrome/")
        && ua.contains("Safari/")
        && ua.contains("Mac OS X");
    (msie6 && msie6_rule) || (safari && safari_rule)
}

/// The Content-Type an `X-Accel-Redirect` kept, if any.
pub fn preserved_type<'a>(ex: &'a Exchange<'_>) -> Option<&'a str> {
    ex.preserved
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
}

/// The other headers an `X-Accel-Redirect` kept.
pub fn preserved_rest<'a>(ex: &'a Exchange<'a>) -> impl Iterator<Item = http1::Line> + 'a {
    ex.preserved
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("content-type"))
        .map(|line| http1::owned(line.clone()))
}

/// `X-Accel-Redirect`: the answer is the internal redirect's (as GET, HEAD kept), with the
/// upstream's Content-Type, Set-Cookie, Content-Disposition, Cache-Control, Expires and
/// Accept-Ranges.
#[allow(clippy::too_many_arguments)]
pub fn serve_accel<'a, S>(
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    ex: &'a Exchange<'a>,
    decision: &'a route::Decision,
    plan: &'a Arc<Plan>,
    shared: &'a Arc<Shared>,
    target: String,
    upstream: Vec<(String, String)>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<bool>> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        // A URI is requested again as GET (HEAD stays); a named location keeps the method.
        let mut head = ex.head.clone();
        if head.method != "HEAD" && !target.starts_with('@') {
            head.method = "GET".into();
        }
        let mut request = *ex.request;
        request.method = &head.method;
        let mut known = known_vars(ex);
        for (n, v) in &upstream {
            let name = n.to_ascii_lowercase().replace('-', "_");
            known.push((format!("upstream_http_{name}"), v.clone()));
        }
        let preserved: Vec<(String, String)> = upstream
            .into_iter()
            .filter(|(n, _)| {
                matches!(
                    n.to_ascii_lowercase().as_str(),
                    "content-type"
                        | "set-cookie"
                        | "content-disposition"
                        | "cache-control"
                        | "expires"
                        | "accept-ranges"
                )
            })
            .collect();
        let Some(page) = route::accel_redirect(
            plan,
            &request,
            decision,
            &target,
            &route::ServingFiles,
            known,
        ) else {
            error_page_with(io, 500, ex.conf, ex.keepalive, Vec::new()).await?;
            ex.record(500, 0, 0);
            return Ok(ex.keepalive);
        };
        let inner = ex.redirected(&head, &page.add_headers, &page, &request, &preserved);
        let result = serve_outcome(io, buf, &inner, &page, plan, shared, ex.keepalive).await;
        if let (Ok(mut outer), Ok(served)) = (ex.served.lock(), inner.served.lock()) {
            let upstreams = std::mem::take(&mut outer.upstreams);
            *outer = served.clone();
            if outer.upstreams.is_empty() {
                outer.upstreams = upstreams;
            }
        }
        result
    })
}

pub fn connection_header(ex: &Exchange<'_>) -> http1::Line {
    let v = if ex.keepalive { "keep-alive" } else { "close" };
    ("Connection".into(), v.into())
}

pub fn keepalive_header(ex: &Exchange<'_>) -> Option<http1::Line> {
    let secs = ex.conf.settings.keepalive_timeout().1?;
    ex.keepalive
        .then(|| ("Keep-Alive".into(), format!("timeout={secs}").into()))
}

/// `add_header`: for 200, 201, 204, 206, 301, 302, 303, 304, 307, 308, or any with `always`.
pub fn add_headers(ex: &Exchange<'_>, status: u16) -> Vec<http1::Line> {
    let mut out: Vec<http1::Line> = Vec::new();
    for (name, value) in add_headers_all(ex, status) {
        // ETag and Last-Modified are one header each: a later one replaces, empty removes.
        if name.eq_ignore_ascii_case("etag") || name.eq_ignore_ascii_case("last-modified") {
            out.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        }
        if !value.is_empty() {
            out.push(http1::owned((name, value)));
        }
    }
    out
}

/// As [`add_headers`], with the empty values that clear an `ETag` or `Last-Modified`.
pub fn add_headers_all(ex: &Exchange<'_>, status: u16) -> Vec<(String, String)> {
    let applies = matches!(
        status,
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    );
    ex.add
        .iter()
        .filter(|(_, _, always)| applies || *always)
        .map(|(n, v, _)| (n.clone(), v.clone()))
        .collect()
}

/// nginx's own error page for `status`, then close or keep the connection.
pub async fn error_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    conf: &LocConf,
    keepalive: bool,
) -> std::io::Result<()> {
    error_page_with(io, status, conf, keepalive, Vec::new()).await
}

/// The variables only the runtime knows once an upstream was tried (`$upstream_addr`,
/// `$upstream_status`), for what is evaluated after it.
pub fn known_vars(ex: &Exchange<'_>) -> Vec<(String, String)> {
    const NAMES: [&str; 5] = [
        "upstream_addr",
        "upstream_status",
        "upstream_connect_time",
        "upstream_header_time",
        "upstream_response_time",
    ];
    ex.served
        .lock()
        .map(|s| {
            // Named only when they have a value: no strings for an answer no upstream made.
            let mut known: Vec<(String, String)> = NAMES
                .iter()
                .filter_map(|n| s.upstream_var(n).map(|v| (n.to_string(), v)))
                .collect();
            if let Some(body) = &s.request_body {
                known.push(("request_body".to_string(), body.clone()));
            }
            known
        })
        .unwrap_or_default()
}

/// The `add_header`s that needed the upstream (`$upstream_addr`), for an answer of `status`.
pub fn late_headers(
    ex: &Exchange<'_>,
    decision: &route::Decision,
    plan: &Plan,
    status: u16,
    known: impl FnOnce() -> Vec<(String, String)>,
) -> Vec<http1::Line> {
    if decision.late_headers.is_empty() {
        return Vec::new();
    }
    let applies = matches!(
        status,
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    );
    route::late_headers(plan, ex.request, decision, known())
        .into_iter()
        .filter(|(_, _, always)| applies || *always)
        .map(|(n, v, _)| http1::owned((n, v)))
        .collect()
}

/// nginx's own error page for `status` with `extra` headers after nginx's.
async fn error_page_with<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    conf: &LocConf,
    keepalive: bool,
    extra: Vec<http1::Line>,
) -> std::io::Result<()> {
    let tokens = conf.settings.server_tokens();
    let shown = match status {
        494..=497 => 400,
        s => s,
    };
    let body = pages::default_page(status, tokens).unwrap_or_default();
    let headers = vec![
        ("Server".into(), server_header(tokens).into()),
        ("Date".into(), super::http1::date_now().into()),
        (
            "Content-Type".into(),
            with_charset("text/html", status, &conf.settings).into(),
        ),
        (
            "Content-Length".into(),
            http1::Text::number(body.len() as u64),
        ),
        (
            "Connection".into(),
            if keepalive { "keep-alive" } else { "close" }.into(),
        ),
    ];
    let mut headers = headers;
    headers.extend(extra);
    let head = http1::ResponseHead {
        version: (1, 1),
        status: shown,
        headers,
    };
    let mut out = head.to_bytes_with_room(body.len());
    out.extend_from_slice(body.as_bytes());
    io.write_all(&out).await?;
    io.flush().await
}
