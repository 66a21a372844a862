//! The reverse proxy. The request body is read whole first (`proxy_request_buffering`, spilled
//! to `client_body_temp_path` past `client_body_buffer_size`) or streamed; the request goes to
//! an upstream over TCP or a unix socket, fresh or from the `keepalive` pool; the response
//! headers are filtered as nginx filters them; the body is read off the upstream as fast as it
//! comes into a [`Pipe`] (memory, then `proxy_temp_path`) while the client takes it at its own
//! pace, so the upstream is released before a slow client has read it (`proxy_buffering`; off,
//! the pipe holds one buffer and the upstream waits for the client). 502 when the upstream
//! refuses or breaks, 504 when it times out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Shared;
use super::body::{BodyError, BodyReader, Decoder, Pipe, Spool};
use super::conn::{Exchange, add_headers, error_response, keepalive_header, linger, server_header};
use super::http1::{self, Framing};
use super::log::{Tried, UpstreamState};
use super::pool::{Conn, Stream};
use super::upstreams::Lease;
use crate::plan::route::{Decision, Outcome, ProxyTo};
use crate::plan::{Keepalive, Peer, PeerAddr, Plan, Settings};

/// Why an upstream attempt failed.
enum Failure {
    /// Connection refused, reset, or a broken response: 502.
    Error,
    /// A timeout: 504.
    Timeout,
    /// The client's body could not be read: answer with this status (408: just close).
    Client(u16),
    /// The client went away.
    ClientGone(std::io::Error),
}

/// The request body as it goes upstream.
enum ReqBody {
    None,
    /// Read whole: can be sent again to the next upstream.
    Spooled(Spool),
    /// Passed on as it arrives (`proxy_request_buffering off`); not once it has started.
    Stream {
        reader: BodyReader,
        started: bool,
        /// What passed, while it fits in `client_body_buffer_size` (`$request_body`);
        /// `None` once it did not.
        kept: Option<Vec<u8>>,
        keep: usize,
    },
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v.max(1))
}

pub async fn serve<S>(
    io: &mut S,
    buf: &mut Vec<u8>,
    ex: &Exchange<'_>,
    decision: &Decision,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Outcome::Proxy {
        upstream,
        request,
        pass,
        redirects,
        hash_key,
        ..
    } = &decision.outcome
    else {
        return Ok(false);
    };
    let s = &ex.conf.settings;
    super::conn::continue_if_expected(io, ex.head).await?;
    let send_body = s.proxy_pass_request_body();
    let http11 = s.proxy_http_version() == "1.1";
    let mut reader = BodyReader::new(
        ex.framing,
        s.client_max_body_size(),
        ms(s.client_body_timeout()),
    );
    // A chunked body cannot go to an HTTP/1.0 upstream as it comes: nginx reads it whole then.
    let buffered =
        s.proxy_request_buffering() || !send_body || (ex.framing == Framing::Chunked && !http11);
    let mut body = if ex.framing == Framing::None {
        ReqBody::None
    } else if buffered {
        let dir = plan.full_path(&s.client_body_temp_path());
        let mut spool = Spool::new(s.client_body_buffer_size() as usize, &dir);
        loop {
            match reader.next(io, buf).await {
                Ok(Some(piece)) if send_body => spool.write(&piece)?,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return client_failed(io, ex, e).await,
            }
        }
        if send_body {
            ReqBody::Spooled(spool)
        } else {
            ReqBody::None
        }
    } else {
        ReqBody::Stream {
            reader,
            started: false,
            kept: Some(Vec::new()),
            keep: s.client_body_buffer_size() as usize,
        }
    };
    let group = upstream.group();
    let keepalive = group.and_then(|g| g.keepalive.as_ref());
    let cap = s.proxy_next_upstream_tries() as usize;
    // A group is balanced; a URL with variables naming none is one server, resolved now.
    let mut selection = group.map(|group| {
        shared.upstreams.select(
            group,
            Some(decision.remote.unwrap_or(ex.request.remote).ip()),
            hash_key.as_deref(),
            cap,
        )
    });
    let mut direct = match upstream {
        ProxyTo::Direct(authority) => direct_peer(authority, pass.https),
        ProxyTo::Group(_) => None,
    };
    let head = request_head(request, ex.framing, &body);
    let next = s.proxy_next_upstream();
    let idempotent = !matches!(&*ex.head.method, "POST" | "LOCK" | "PATCH");
    let head_only = request.method() == "HEAD";
    let mut last = Failure::Error;
    // The first attempt starts on the clock reading of the request's arrival (nothing has
    // waited since, unless a body was read); each next one reads the clock again.
    let mut now = if matches!(body, ReqBody::None) {
        ex.started
    } else {
        Instant::now()
    };
    let give_up = match s.proxy_next_upstream_timeout() {
        0 => None,
        t => Some(now + ms(t)),
    };
    // nginx's upstream_states: one per attempt, for the `$upstream_*` variables.
    let mut states: Vec<UpstreamState> = Vec::new();
    let state = |addr: Tried, started: Instant| UpstreamState {
        addr,
        status: None,
        started,
        connect: None,
        header: None,
        response: None,
        redirected: false,
        bytes_sent: None,
        bytes_received: None,
        response_length: None,
    };
    loop {
        if !states.is_empty() {
            now = Instant::now();
        }
        // nginx's peer.get: none left that can be tried is "no live upstreams", a 502.
        let (peer, mut lease) = match selection.as_mut() {
            Some(sel) => match sel.next(now) {
                Some(lease) => (lease.peer.clone(), Some(lease)),
                None => {
                    tracing::error!(upstream = %upstream, "no live upstreams");
                    // $upstream_addr names the group then, as nginx's does.
                    let mut st = state(Tried::Group(upstream.to_string()), now);
                    st.status = Some(502);
                    st.response = Some(now);
                    states.push(st);
                    last = Failure::Error;
                    break;
                }
            },
            None => match direct.take() {
                Some(peer) => (Arc::new(peer), None),
                None => break,
            },
        };
        // The previous attempt ends where this one starts.
        if let Some(prev) = states.last_mut() {
            prev.response.get_or_insert(now);
        }
        // `$upstream_addr` and the keep-alive pool's key, written when the plan was built.
        states.push(state(Tried::Peer(peer.clone()), now));
        let mut connected = None;
        let target = Target {
            group: upstream.name(),
            addr: &peer.text,
            peer: &peer,
            keepalive,
            https: pass.https,
        };
        let outcome = attempt(
            &target,
            &head,
            &mut body,
            io,
            buf,
            s,
            shared,
            head_only,
            now,
            &mut connected,
        )
        .await;
        note_body(ex, &body);
        if let Some(st) = states.last_mut() {
            st.connect = connected;
            match &outcome {
                Ok(r) => {
                    st.status = Some(r.status);
                    st.header = Some(r.read_at);
                }
                Err(Failure::Timeout) => st.status = Some(504),
                Err(_) => st.status = Some(502),
            }
        }
        // nginx's peer.free, then its ngx_http_upstream_next: another server only while
        // tries are left and proxy_next_upstream_timeout has not passed.
        let mut report = |failed: bool| match (lease.as_mut(), selection.as_mut()) {
            (Some(lease), Some(sel)) => {
                lease.report(failed, sel);
                sel.tries_left() && give_up.is_none_or(|t| Instant::now() < t)
            }
            _ => false,
        };
        match outcome {
            Ok(mut response) => {
                // proxy_next_upstream http_5xx/403/404/429: try the next server; 500, 502,
                // 503, 504 and 429 also count as the server's failure.
                let next_on = next.on_status(response.status);
                let failure = next_on && matches!(response.status, 500 | 502 | 503 | 504 | 429);
                let more = report(failure);
                if next_on && more && (idempotent || next.non_idempotent) && body.replayable() {
                    continue;
                }
                response.lease = lease;
                note_upstream(ex, std::mem::take(&mut states));
                // X-Accel-Redirect: the upstream names what to serve instead.
                let ignored = s
                    .proxy_ignore_headers()
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case("x-accel-redirect"));
                if !ignored
                    && let Some(target) = response.header("x-accel-redirect").map(str::to_string)
                {
                    let upstream = std::mem::take(&mut response.headers)
                        .into_iter()
                        .map(|(n, v)| (n.into_owned(), v.to_string()))
                        .collect();
                    drop(response);
                    return super::conn::serve_accel(
                        io, buf, ex, decision, plan, shared, target, upstream,
                    )
                    .await;
                }
                // proxy_intercept_errors: an error with an error_page gets the page instead.
                if response.status >= 300
                    && s.proxy_intercept_errors()
                    && s.error_page()
                        .iter()
                        .any(|p| p.codes.contains(&response.status))
                {
                    let status = response.status;
                    let keep = if status == 401 {
                        response
                            .headers
                            .iter()
                            .filter(|(n, _)| n.eq_ignore_ascii_case("www-authenticate"))
                            .map(|(n, v)| (n.to_string(), v.to_string()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    drop(response);
                    return super::conn::serve_error(
                        io, buf, ex, decision, plan, shared, status, keep,
                    )
                    .await;
                }
                if let Some(code) = decision.status {
                    response.status = code;
                }
                rewrite_redirects(&mut response, redirects, &decision.base);
                if response.status == 101 {
                    return tunnel(io, buf, ex, response).await;
                }
                return deliver(io, ex, decision, response, plan, shared).await;
            }
            Err(Failure::Client(status)) => {
                note_upstream(ex, std::mem::take(&mut states));
                return client_failed(io, ex, BodyError::Refused(status)).await;
            }
            Err(Failure::ClientGone(e)) => {
                // nginx logs 499 for a client that left before the answer.
                if let Some(st) = states.last_mut() {
                    st.status = None;
                    st.response.get_or_insert_with(Instant::now);
                }
                note_upstream(ex, std::mem::take(&mut states));
                ex.record(499, 0, 0);
                return Err(e);
            }
            Err(f) => {
                let more = report(true);
                let retry = match f {
                    Failure::Timeout => next.timeout,
                    _ => next.error,
                };
                last = f;
                if !retry || !more || (!idempotent && !next.non_idempotent) || !body.replayable() {
                    break;
                }
            }
        }
    }
    let status = match last {
        Failure::Timeout => 504,
        _ => 502,
    };
    if let Some(last) = states.last_mut() {
        last.response.get_or_insert_with(Instant::now);
    }
    note_upstream(ex, std::mem::take(&mut states));
    super::conn::serve_error(io, buf, ex, decision, plan, shared, status, Vec::new()).await
}

impl ReqBody {
    /// Whether the body can still be sent (again) to another upstream.
    fn replayable(&self) -> bool {
        !matches!(self, ReqBody::Stream { started: true, .. })
    }
}

/// The client's body failed: 400 or 413 as nginx answers, 408 closes without a word.
async fn client_failed<S>(io: &mut S, ex: &Exchange<'_>, e: BodyError) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match e {
        BodyError::Io(e) => Err(e),
        BodyError::Refused(408) => {
            ex.record(408, 0, 0);
            Ok(false)
        }
        BodyError::Refused(status) => {
            error_response(io, status, ex.conf, false).await?;
            ex.record(status, 0, 0);
            linger(io).await;
            Ok(false)
        }
    }
}

/// A URL with variables naming no group: the host and port (or unix socket) it names.
fn direct_peer(authority: &str, https: bool) -> Option<Peer> {
    let addr = if let Some(path) = authority.strip_prefix("unix:") {
        PeerAddr::Unix {
            path: path.to_string(),
        }
    } else {
        let (host, port) =
            crate::config::env::upstream_host(authority, if https { 443 } else { 80 })?;
        PeerAddr::Tcp { host, port }
    };
    Some(Peer::new(addr))
}

/// The request line and headers the upstream gets, as the router wrote them. A chunked body
/// read whole goes with its length, as nginx sends it; streamed, it stays chunked.
fn request_head<'a>(
    request: &'a crate::plan::route::UpstreamRequest,
    framing: Framing,
    body: &ReqBody,
) -> std::borrow::Cow<'a, [u8]> {
    let wire = request.wire();
    let Some(line) = request
        .chunked_line()
        .filter(|_| framing == Framing::Chunked)
    else {
        return std::borrow::Cow::Borrowed(wire);
    };
    let length = match body {
        ReqBody::Spooled(spool) => format!("Content-Length: {}\r\n", spool.len()),
        ReqBody::None => "Content-Length: 0\r\n".to_string(),
        ReqBody::Stream { .. } => return std::borrow::Cow::Borrowed(wire),
    };
    let mut head = Vec::with_capacity(wire.len() + length.len());
    head.extend_from_slice(&wire[..line.start]);
    head.extend_from_slice(length.as_bytes());
    head.extend_from_slice(&wire[line.end..]);
    std::borrow::Cow::Owned(head)
}

/// Where an attempt goes.
struct Target<'a> {
    group: &'a str,
    /// The peer's address as text.
    addr: &'a str,
    peer: &'a Peer,
    keepalive: Option<&'a Keepalive>,
    /// `proxy_pass https://...`.
    https: bool,
}

/// How the upstream delimits its response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// A response whose head has been read; the body is still on the connection.
struct Response {
    status: u16,
    /// As read: known names borrowed, short values in place (no allocation for most).
    headers: Vec<http1::Line>,
    /// Bytes read past the head.
    leftover: Vec<u8>,
    /// Taken when the body has been read.
    conn: Option<Conn>,
    framing: BodyFraming,
    /// The upstream lets the connection be reused (HTTP/1.1, no `Connection: close`).
    reusable: bool,
    /// How the connection is kept, if its group keeps idle connections.
    pool: Option<Keepalive>,
    /// The balancer's count of this connection to its server (`least_conn`, `max_conns`).
    lease: Option<Lease>,
    /// Bytes of the request sent upstream, and of the response head read.
    sent: u64,
    head_len: u64,
    /// When the head's last bytes were read: the clock reading its handling shares.
    read_at: Instant,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn connect(peer: &Peer, https: bool) -> std::io::Result<Box<dyn Stream>> {
    let plain: Box<dyn Stream> = match &peer.addr {
        PeerAddr::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        PeerAddr::Unix { path } => Box::new(UnixStream::connect(path).await?),
    };
    if https {
        // No SNI is sent (nginx's proxy_ssl_server_name off): the name is unused.
        let name = rustls::pki_types::ServerName::try_from("upstream").expect("a valid name");
        return Ok(Box::new(
            super::tls::upstream_connector()
                .connect(name, plain)
                .await?,
        ));
    }
    Ok(plain)
}

/// One try at one upstream server: a pooled connection if one is idle (and, if it turns out
/// to have been closed meanwhile, a fresh one), the request sent, the response head read.
#[allow(clippy::too_many_arguments)]
async fn attempt<S>(
    target: &Target<'_>,
    head: &[u8],
    body: &mut ReqBody,
    io: &mut S,
    buf: &mut Vec<u8>,
    s: &Settings,
    shared: &Shared,
    head_only: bool,
    now: Instant,
    connected: &mut Option<Instant>,
) -> Result<Response, Failure>
where
    S: AsyncRead + Unpin,
{
    let key = target.addr;
    let take = || {
        target
            .keepalive
            .and_then(|k| shared.pool.take(target.group, key, ms(k.timeout), now))
    };
    let mut pooled = take();
    if pooled.is_none() && target.keepalive.is_some() {
        // None idle: the tasks already woken go first (answers from the upstream among them,
        // whose connections return to the pool), then the pool is asked again. Under load
        // that reuses a connection freed a moment later instead of opening one (and closing
        // one when the pool overflows); idle, it costs one pass of the scheduler.
        tokio::task::yield_now().await;
        pooled = take();
    }
    loop {
        let reused = pooled.is_some();
        // When the connection was ready: a kept one is there at once.
        let (conn, ready) = match pooled.take() {
            Some(c) => {
                *connected = Some(now);
                (c, now)
            }
            None => match tokio::time::timeout(
                ms(s.proxy_connect_timeout()),
                connect(target.peer, target.https),
            )
            .await
            {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(e)) => {
                    tracing::error!(peer = %key, error = %e, "connect() to upstream failed");
                    return Err(Failure::Error);
                }
                Ok(Ok(io)) => {
                    let at = Instant::now();
                    *connected = Some(at);
                    let conn = Conn {
                        io,
                        requests: 0,
                        opened: at,
                        timer: Default::default(),
                        group: target.group.to_string(),
                        peer: key.to_string(),
                    };
                    (conn, at)
                }
            },
        };
        match exchange(conn, head, body, io, buf, s, head_only, ready).await {
            // A kept connection the upstream had closed: not the server's failure.
            Err((Failure::Error, true)) if reused && body.replayable() => continue,
            Err((f, _)) => return Err(f),
            Ok(mut r) => {
                r.pool = target.keepalive.cloned();
                return Ok(r);
            }
        }
    }
}

/// Sends the request on `conn` and reads the response head. On failure, also says whether
/// nothing at all came back (a stale kept connection looks like that).
#[allow(clippy::too_many_arguments)]
async fn exchange<S>(
    mut conn: Conn,
    head: &[u8],
    body: &mut ReqBody,
    io: &mut S,
    buf: &mut Vec<u8>,
    s: &Settings,
    head_only: bool,
    now: Instant,
) -> Result<Response, (Failure, bool)>
where
    S: AsyncRead + Unpin,
{
    let send_timeout = ms(s.proxy_send_timeout());
    let up = &mut conn.io;
    // A streamed body whose first bytes came with the head goes in the head's write, as
    // nginx sends what it has read ahead.
    let mut head_pending = matches!(body, ReqBody::Stream { .. }) && !buf.is_empty();
    // What a streamed body put on the wire (chunk framing included), the head left out.
    let mut streamed: u64 = 0;
    let sent = async {
        if !head_pending {
            up.write_all(head).await?;
        }
        match body {
            ReqBody::None => {}
            ReqBody::Spooled(spool) => {
                let mut pos = 0;
                while pos < spool.len() {
                    let piece = spool.piece(pos)?;
                    if piece.is_empty() {
                        break;
                    }
                    up.write_all(&piece).await?;
                    pos += piece.len() as u64;
                }
            }
            ReqBody::Stream { .. } => {}
        }
        up.flush().await
    };
    let mut waited = false;
    let sent = super::deadline::noting_wait(sent, &mut waited);
    match super::deadline::within(send_timeout, sent).await {
        Err(_) => return Err((Failure::Timeout, false)),
        Ok(Err(_)) => return Err((Failure::Error, true)),
        Ok(Ok(())) => {}
    }
    // The request went at once, as it mostly does: no clock reading for its end.
    let mut read_at = if waited { Instant::now() } else { now };
    if let ReqBody::Stream {
        reader,
        started,
        kept,
        keep,
    } = body
    {
        *started = true;
        let chunked = reader.is_chunked();
        loop {
            let piece = match reader.next(io, buf).await {
                Ok(p) => p,
                Err(BodyError::Refused(status)) => return Err((Failure::Client(status), false)),
                Err(BodyError::Io(e)) => return Err((Failure::ClientGone(e), false)),
            };
            if let (Some(p), Some(k)) = (&piece, kept.as_mut()) {
                if k.len() + p.len() <= *keep {
                    k.extend_from_slice(p);
                } else {
                    *kept = None;
                }
            }
            let mut out = Vec::new();
            if head_pending {
                out.extend_from_slice(head);
            }
            match (&piece, chunked) {
                (Some(p), true) => {
                    out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                    out.extend_from_slice(p);
                    out.extend_from_slice(b"\r\n");
                }
                (Some(p), false) => out.extend_from_slice(p),
                (None, true) => out.extend_from_slice(b"0\r\n\r\n"),
                (None, false) => {}
            }
            let wrote = async {
                up.write_all(&out).await?;
                up.flush().await
            };
            match super::deadline::within(send_timeout, wrote).await {
                Err(_) => return Err((Failure::Timeout, false)),
                Ok(Err(_)) => return Err((Failure::Error, false)),
                Ok(Ok(())) => {}
            }
            streamed += out.len() as u64;
            if head_pending {
                streamed -= head.len() as u64;
            }
            head_pending = false;
            if piece.is_none() {
                break;
            }
        }
        read_at = Instant::now();
    }
    conn.requests += 1;
    let sent_bytes = head.len() as u64
        + match body {
            ReqBody::Spooled(spool) => spool.len(),
            ReqBody::Stream { .. } => streamed,
            ReqBody::None => 0,
        };
    let read_timeout = ms(s.proxy_read_timeout());
    // The head must fit in proxy_buffer_size, as in nginx; the buffer is that size (16 KiB
    // each, a thousand connections' worth was 12 MiB more than nginx holds).
    let limit = (s.proxy_buffer_size() as usize).max(1024);
    let mut got = Vec::with_capacity(limit);
    let watch_client = !s.proxy_ignore_client_abort();
    // proxy_read_timeout runs between two reads from the upstream, the first from the
    // request's end.
    let mut deadline = None;
    let (status, version, headers, consumed) = loop {
        let until =
            *deadline.get_or_insert_with(|| tokio::time::Instant::from_std(read_at) + read_timeout);
        // While the upstream thinks, a client that closes ends the request (nginx's broken
        // connection check, 499); what a client sends meanwhile is its next request, kept.
        let n = tokio::select! {
            biased;
            r = conn.io.read_buf(&mut got) => match r {
                Err(_) => return Err((Failure::Error, got.is_empty())),
                Ok(n) => n,
            },
            _ = conn.timer.until(until) => return Err((Failure::Timeout, false)),
            c = io.read_buf(buf), if watch_client && buf.len() < 65536 => match c {
                Ok(0) => {
                    let gone = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "client prematurely closed connection",
                    );
                    return Err((Failure::ClientGone(gone), false));
                }
                Err(e) => return Err((Failure::ClientGone(e), false)),
                Ok(_) => continue,
            },
        };
        if n == 0 {
            tracing::error!("upstream prematurely closed connection while reading response header");
            return Err((Failure::Error, got.is_empty()));
        }
        read_at = Instant::now();
        deadline = None;
        // Uninitialised slots: httparse writes only those it fills (100 zeroed ones were
        // 3 KiB to clear for every read of a response head).
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &got,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(len)) => {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| http1::line_of(h.name, &http1::text(http1::value_of(&got, h.value))))
                    .collect::<Vec<_>>();
                break (
                    resp.code.unwrap_or(502),
                    resp.version.unwrap_or(0),
                    headers,
                    len,
                );
            }
            Ok(httparse::Status::Partial) if got.len() < limit => continue,
            Ok(httparse::Status::Partial) => {
                tracing::error!("upstream sent too big header");
                return Err((Failure::Error, false));
            }
            Err(_) => {
                tracing::error!("upstream sent invalid header");
                return Err((Failure::Error, false));
            }
        }
    };
    // What follows the head stays in the read buffer, moved to its front: no second buffer.
    got.drain(..consumed);
    let leftover = got;
    // The three lines that frame the body, found in one pass (the first of each counts).
    let (mut te, mut length, mut connection) = (None, None, None);
    for (n, v) in &headers {
        let (slot, name) = match n.len() {
            17 => (&mut te, "transfer-encoding"),
            14 => (&mut length, "content-length"),
            10 => (&mut connection, "connection"),
            _ => continue,
        };
        if slot.is_none() && n.eq_ignore_ascii_case(name) {
            *slot = Some(v.as_str());
        }
    }
    let names = |v: &str, word: &str| {
        v.as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    };
    let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        BodyFraming::Empty
    } else if te.is_some_and(|v| names(v, "chunked")) {
        BodyFraming::Chunked
    } else if let Some(len) = length {
        match len.parse::<u64>() {
            Ok(n) => BodyFraming::Length(n),
            Err(_) => {
                tracing::error!("upstream sent invalid \"Content-Length\" header");
                return Err((Failure::Error, false));
            }
        }
    } else {
        BodyFraming::Close
    };
    let reusable = version == 1
        && status != 101
        && framing != BodyFraming::Close
        && !connection.is_some_and(|v| names(v, "close"));
    Ok(Response {
        lease: None,
        sent: sent_bytes,
        head_len: consumed as u64,
        status,
        headers,
        leftover,
        conn: Some(conn),
        framing,
        reusable,
        pool: None,
        read_at,
    })
}

/// A `101 Switching Protocols` (WebSocket): the answer goes to the client, then bytes flow
/// both ways until either side closes.
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    ex: &Exchange<'_>,
    r: Response,
) -> std::io::Result<bool> {
    let s = &ex.conf.settings;
    let mut headers = vec![
        ("Server".into(), server_header(s.server_tokens()).into()),
        ("Date".into(), super::http1::date_now().into()),
        ("Connection".into(), "upgrade".into()),
    ];
    for (n, v) in &r.headers {
        let dropped = [
            "connection",
            "date",
            "server",
            "keep-alive",
            "transfer-encoding",
        ]
        .iter()
        .any(|h| n.eq_ignore_ascii_case(h));
        if !dropped {
            headers.push((n.clone(), v.clone()));
        }
    }
    let head = http1::ResponseHead {
        version: (1, 1),
        status: 101,
        headers,
    };
    ex.note_headers(&head.headers);
    let out = head.to_bytes();
    ex.record(101, out.len(), 0);
    io.write_all(&out).await?;
    io.write_all(&r.leftover).await?;
    io.flush().await?;
    let Some(Conn { io: mut up, .. }) = r.conn else {
        return Ok(false);
    };
    if !buf.is_empty() {
        up.write_all(buf).await?;
        buf.clear();
    }
    // A tunnel opened on a plan that a reload replaced ends worker_shutdown_timeout later.
    let generation = super::drain::generation();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(io, &mut up) => {}
        _ = super::drain::retired(generation) => {}
    }
    Ok(false)
}

/// How the body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFraming {
    None,
    Length(u64),
    Chunked,
    /// Until Portico closes the connection (an HTTP/1.0 client and no length).
    Close,
}

/// Sends the response head, then the body through a [`Pipe`].
async fn deliver<S: AsyncWrite + Unpin>(
    io: &mut S,
    ex: &Exchange<'_>,
    decision: &Decision,
    mut r: Response,
    plan: &Arc<Plan>,
    shared: &Shared,
) -> std::io::Result<bool> {
    let s = &ex.conf.settings;
    let hide = s.proxy_hide_header();
    let pass = s.proxy_pass_header();
    let bodyless = r.status == 204 || r.status == 304 || (100..200).contains(&r.status);
    let client_head = ex.head.method == "HEAD";
    let framing = if bodyless {
        ClientFraming::None
    } else if let BodyFraming::Length(n) = r.framing {
        ClientFraming::Length(n)
    } else if client_head || r.framing == BodyFraming::Empty {
        // A HEAD answered by a HEAD: the length the upstream announced, if any.
        match r.header("content-length").and_then(|v| v.parse().ok()) {
            Some(n) => ClientFraming::Length(n),
            None => ClientFraming::None,
        }
    } else if ex.head.version >= (1, 1) && s.chunked_transfer_encoding() {
        ClientFraming::Chunked
    } else {
        ClientFraming::Close
    };
    let keepalive = ex.keepalive && framing != ClientFraming::Close;
    // With proxy_pass_header Server or Date, the upstream's (if any) replace nginx's own.
    let mut headers: Vec<http1::Line> = Vec::with_capacity(6 + r.headers.len());
    if !pass.iter().any(|h| h == "server") {
        headers.push(("Server".into(), server_header(s.server_tokens()).into()));
    }
    if !pass.iter().any(|h| h == "date") {
        headers.push(("Date".into(), super::http1::date_now().into()));
    }
    // X-Accel-Buffering from the upstream turns buffering on or off for this response.
    let ignored = s.proxy_ignore_headers();
    let buffering = match r.header("x-accel-buffering") {
        Some(v)
            if !ignored
                .iter()
                .any(|h| h.eq_ignore_ascii_case("x-accel-buffering")) =>
        {
            v.eq_ignore_ascii_case("yes")
        }
        _ => s.proxy_buffering(),
    };
    // The upstream's lines move into the answer; copied only when something reads them
    // after (the log's $upstream_http_NAME, a late add_header).
    let mut upstream = if ex.upstream_headers || !decision.late_headers.is_empty() {
        r.headers.clone()
    } else {
        std::mem::take(&mut r.headers)
    };
    // Content-Type keeps its place first among the upstream's headers, as in nginx.
    if let Some((n, v)) = upstream
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        let value = match super::conn::with_charset(v, r.status, s) {
            std::borrow::Cow::Borrowed(_) => std::mem::replace(v, http1::Text::Static("")),
            std::borrow::Cow::Owned(v) => v.into(),
        };
        headers.push((std::mem::take(n), value));
    }
    match framing {
        ClientFraming::Length(n) => headers.push(("Content-Length".into(), http1::Text::number(n))),
        ClientFraming::Chunked => headers.push(("Transfer-Encoding".into(), "chunked".into())),
        _ => {}
    }
    headers.push((
        "Connection".into(),
        if keepalive { "keep-alive" } else { "close" }.into(),
    ));
    if keepalive {
        headers.extend(keepalive_header(ex));
    }
    for (n, v) in upstream {
        // Compared in place: no lower-cased copy of each name.
        let is = |name: &str| n.eq_ignore_ascii_case(name);
        if n.is_empty() || is("content-type") {
            continue;
        }
        let hidden = (HIDDEN.iter().any(|h| is(h))
            && !(pass.iter().any(|p| is(p)) && HIDDEN[..8].iter().any(|h| is(h))))
            || hide.iter().any(|h| is(h));
        if !hidden {
            let value = match &decision.outcome {
                Outcome::Proxy { cookies, .. } if is("set-cookie") && !cookies.is_empty() => {
                    cookies.rewrite(&v).into()
                }
                _ => v,
            };
            headers.push((n, value));
        }
    }
    // expires replaces the upstream's Expires and Cache-Control where they stand.
    let last_modified = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("last-modified"))
        .and_then(|(_, v)| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    for (name, value) in super::files::expires(ex.expires, r.status, last_modified) {
        let mut seen = false;
        headers.retain_mut(|(n, v)| {
            if !n.eq_ignore_ascii_case(&name) {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.clone();
            true
        });
        if !seen {
            headers.push((name, value));
        }
    }
    headers.extend(add_headers(ex, r.status));
    if !decision.late_headers.is_empty() {
        let mut known = super::conn::known_vars(ex);
        for (n, v) in &r.headers {
            let name = n.to_ascii_lowercase().replace('-', "_");
            known.push((format!("upstream_http_{name}"), v.to_string()));
        }
        headers.extend(super::conn::late_headers(
            ex,
            decision,
            plan,
            r.status,
            || known,
        ));
    }
    let head = http1::ResponseHead {
        version: ex.head.version,
        status: r.status,
        headers,
    };
    ex.note_headers(&head.headers);
    // The usual small answer is all here already: the upstream goes back first, then head and
    // body leave in one write, as nginx's writev does.
    let whole = match r.framing {
        BodyFraming::Empty => Some(0),
        BodyFraming::Length(n) if r.leftover.len() as u64 >= n => Some(n as usize),
        _ => None,
    };
    let mut out = head.to_bytes_with_room(whole.unwrap_or(0));
    let head_len = out.len();
    if let Some(n) = whole {
        // Reused only when nothing came after the body.
        let exact = r.leftover.len() == n;
        if let Some(conn) = r.conn.take() {
            let at = r.read_at;
            release(conn, &mut r, exact, at, shared);
        }
        r.lease = None;
        upstream_done(ex, &r, r.leftover.len() as u64, r.read_at);
        let sent = if client_head || bodyless { 0 } else { n };
        out.extend_from_slice(&r.leftover[..sent]);
        ex.record(r.status, out.len(), sent);
        let wait = ms(s.send_timeout());
        return match super::deadline::within(wait, async {
            io.write_all(&out).await?;
            io.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(keepalive),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
    }
    ex.record(r.status, head_len, 0);
    io.write_all(&out).await?;
    let send = if client_head || bodyless {
        None
    } else {
        Some(framing == ClientFraming::Chunked)
    };
    let (sent, whole) = pump(io, ex, &mut r, send, buffering, plan, shared).await?;
    ex.record(r.status, head_len + sent as usize, sent as usize);
    io.flush().await?;
    Ok(keepalive && whole)
}

/// Moves the body from the upstream to the client: `send` is `None` when the client gets no
/// body (HEAD), else whether it gets it chunked. Returns the bytes sent and whether the body
/// came whole (a truncated one ends the client connection, as in nginx).
async fn pump<S: AsyncWrite + Unpin>(
    io: &mut S,
    ex: &Exchange<'_>,
    r: &mut Response,
    send: Option<bool>,
    buffering: bool,
    plan: &Plan,
    shared: &Shared,
) -> std::io::Result<(u64, bool)> {
    let s = &ex.conf.settings;
    let (mem, max_file) = if buffering {
        let (n, size) = s.proxy_buffers();
        ((n * size) as usize, s.proxy_max_temp_file_size())
    } else {
        (s.proxy_buffer_size() as usize, 0)
    };
    let mut pipe = Pipe::new(mem, &plan.full_path(&s.proxy_temp_path()), max_file);
    let chunked_out = send == Some(true);
    let mut body = Body::new(r.framing);
    let mut up: Option<Conn> = r.conn.take();
    let mut whole = true;
    let first = std::mem::take(&mut r.leftover);
    let mut received = first.len() as u64;
    let feed = |data: &[u8], pipe: &mut Pipe, body: &mut Body| -> Result<(), ()> {
        let mut out = Vec::new();
        body.feed(data, &mut out)?;
        if send.is_some() && !out.is_empty() {
            if chunked_out {
                let mut framed = format!("{:x}\r\n", out.len()).into_bytes();
                framed.extend_from_slice(&out);
                framed.extend_from_slice(b"\r\n");
                out = framed;
            }
            pipe.push(out).map_err(|_| ())?;
        }
        Ok(())
    };
    if feed(&first, &mut pipe, &mut body).is_err() {
        whole = false;
        up = None;
    }
    let read_timeout = ms(s.proxy_read_timeout());
    let send_timeout = ms(s.send_timeout());
    let mut rbuf = vec![0u8; 32768];
    let mut sent = 0u64;
    let mut upstream_finished = false;
    loop {
        if whole && body.done() && up.is_some() {
            // Released before the client has it all: back to the pool, or closed.
            if chunked_out {
                pipe.push(b"0\r\n\r\n".to_vec())?;
            }
            if let Some(conn) = up.take() {
                release(conn, r, body.exact(), Instant::now(), shared);
            }
        }
        if up.is_none() && !upstream_finished {
            // Done with the upstream (nginx frees the peer here): no longer its connection.
            r.lease = None;
            upstream_done(ex, r, received, Instant::now());
            upstream_finished = true;
        }
        if up.is_none() && pipe.is_empty() {
            break;
        }
        pipe.load()?;
        let front = pipe.front();
        let reading = up.is_some() && pipe.has_room();
        tokio::select! {
            read = tokio::time::timeout(read_timeout, read_from(&mut up, &mut rbuf)), if reading => {
                match read {
                    Ok(Ok(0)) if body.framing == BodyFraming::Close => body.close(),
                    Ok(Ok(0)) => {
                        tracing::error!("upstream prematurely closed connection while reading upstream");
                        whole = false;
                        up = None;
                    }
                    Ok(Ok(n)) => {
                        received += n as u64;
                        if feed(&rbuf[..n], &mut pipe, &mut body).is_err() {
                            tracing::error!("upstream sent invalid chunked response");
                            whole = false;
                            up = None;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "recv() failed while reading upstream");
                        whole = false;
                        up = None;
                    }
                    Err(_) => {
                        tracing::error!("upstream timed out while reading upstream");
                        whole = false;
                        up = None;
                    }
                }
            }
            wrote = tokio::time::timeout(send_timeout, io.write(front)), if !front.is_empty() => {
                match wrote {
                    Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(Ok(n)) => {
                        pipe.consume(n);
                        sent += n as u64;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
                }
            }
        }
    }
    Ok((sent, whole))
}

/// A connection whose response has been read whole goes back to its group's pool if the
/// upstream allows it and it is within `keepalive_requests` and `keepalive_time`.
/// `exact`: the body came whole with nothing after it; `at`: when it ended.
fn release(conn: Conn, r: &mut Response, exact: bool, at: Instant, shared: &Shared) {
    if !(exact && r.reusable) {
        return;
    }
    if let Some(k) = r.pool.take()
        && conn.requests < k.requests
        && at.saturating_duration_since(conn.opened) < ms(k.time)
    {
        shared.pool.put(conn, k.connections as usize, at);
    }
}

/// Reads from the upstream if it is still there; never completes otherwise.
async fn read_from(up: &mut Option<Conn>, buf: &mut [u8]) -> std::io::Result<usize> {
    match up {
        Some(c) => c.io.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The upstream's body framing taken apart as bytes come.
struct Body {
    framing: BodyFraming,
    left: u64,
    decoder: Decoder,
    done: bool,
    /// More bytes came than the framing allows: the connection is not reused.
    extra: bool,
}

impl Body {
    fn new(framing: BodyFraming) -> Body {
        Body {
            framing,
            left: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            decoder: Decoder::default(),
            done: matches!(framing, BodyFraming::Empty | BodyFraming::Length(0)),
            extra: false,
        }
    }

    fn done(&self) -> bool {
        self.done
    }

    fn exact(&self) -> bool {
        self.done && !self.extra
    }

    fn close(&mut self) {
        self.done = true;
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.done {
            self.extra = true;
            return Ok(());
        }
        match self.framing {
            BodyFraming::Empty => self.extra = true,
            BodyFraming::Close => out.extend_from_slice(data),
            BodyFraming::Length(_) => {
                let n = (self.left.min(data.len() as u64)) as usize;
                out.extend_from_slice(&data[..n]);
                self.left -= n as u64;
                self.extra |= n < data.len();
                self.done = self.left == 0;
            }
            BodyFraming::Chunked => {
                let used = self.decoder.feed(data, out).map_err(|_| ())?;
                self.extra |= used < data.len();
                self.done = self.decoder.done();
            }
        }
        Ok(())
    }
}

/// `$upstream_addr`, `$upstream_status`, `$upstream_response_time` for the access log.
/// The upstream has sent all it will: its `$upstream_response_time` is known.
/// `at`: when its last bytes came.
fn upstream_done(ex: &Exchange<'_>, r: &Response, body: u64, at: Instant) {
    let Ok(mut s) = ex.served.lock() else {
        return;
    };
    if ex.upstream_headers {
        s.upstream_headers = r.headers.clone();
    }
    if let Some(last) = s.upstreams.last_mut() {
        last.response.get_or_insert(at);
        last.bytes_sent = Some(r.sent);
        last.bytes_received = Some(r.head_len + body);
        last.response_length = Some(body);
    }
}

/// `$request_body`: the body as read, when it was kept in memory.
fn note_body(ex: &Exchange<'_>, body: &ReqBody) {
    let kept = match body {
        ReqBody::Spooled(spool) => spool.in_memory(),
        ReqBody::Stream { kept, .. } => kept.as_deref(),
        ReqBody::None => None,
    };
    // Locked only for a body (the tuple took the lock for every request).
    if let Some(kept) = kept
        && let Ok(mut s) = ex.served.lock()
        && s.request_body.is_none()
    {
        s.request_body = Some(String::from_utf8_lossy(kept).into_owned());
    }
}

fn note_upstream(ex: &Exchange<'_>, states: Vec<UpstreamState>) {
    if let Ok(mut s) = ex.served.lock() {
        s.upstreams = states;
    }
}

/// `proxy_redirect` on `Location` and `Refresh`; a rewritten relative `Location` is made
/// absolute, as nginx's header filter does.
fn rewrite_redirects(
    r: &mut Response,
    rules: &[crate::plan::route::Redirect],
    base: &crate::plan::route::Base,
) {
    use crate::plan::route::Redirect;
    for (name, value) in r.headers.iter_mut() {
        if name.eq_ignore_ascii_case("location") {
            if let Some(new) = Redirect::apply(rules, value) {
                *value = if new.starts_with('/') {
                    format!("{base}{new}")
                } else {
                    new
                }
                .into();
            }
        } else if name.eq_ignore_ascii_case("refresh") {
            let lower = value.to_ascii_lowercase();
            if let Some(i) = lower.find("url=") {
                let (head, url) = value.split_at(i + 4);
                if let Some(new) = Redirect::apply(rules, url) {
                    *value = format!("{head}{new}").into();
                }
            }
        }
    }
}

/// Headers nginx never passes from an upstream's response (its own, hop-by-hop, X-Accel-*).
/// The first eight are the ones `proxy_pass_header` can let through.
const HIDDEN: [&str; 13] = [
    "date",
    "server",
    "x-pad",
    "x-accel-expires",
    "x-accel-redirect",
    "x-accel-limit-rate",
    "x-accel-buffering",
    "x-accel-charset",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];
