//! The reverse proxy: the request line and headers the plan decided, sent over TCP or a unix
//! socket; the response read off the upstream (buffered, so the upstream connection is released
//! before a slow client has read it), its headers filtered as nginx filters them, and sent on.
//! 502 when the upstream refuses or breaks, 504 when it times out.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Shared;
use super::conn::{
    Exchange, add_headers, connection_header, error_response, keepalive_header, server_header,
};
use super::http1::{self, Refused};
use crate::plan::route::{Decision, Outcome};
use crate::plan::{Peer, PeerAddr, Plan};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why an upstream attempt failed.
enum Failure {
    /// Connection refused, reset, or a broken response: 502.
    Error,
    /// A timeout: 504.
    Timeout,
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
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Outcome::Proxy {
        upstream,
        request,
        url,
        pass,
        redirects,
    } = &decision.outcome
    else {
        return Ok(false);
    };
    let s = &ex.conf.settings;
    super::conn::continue_if_expected(io, ex.head).await?;
    // proxy_request_buffering: the whole body is read before the upstream is chosen.
    let body = match http1::read_body(io, buf, ex.framing, s.client_max_body_size()).await? {
        Ok(b) => b,
        Err(Refused(status)) => {
            error_response(io, status, ex.conf, false).await?;
            super::conn::linger(io).await;
            return Ok(false);
        }
    };
    let peers: Vec<Peer> = match plan.upstreams.iter().find(|u| u.name == *upstream) {
        Some(group) if url.is_none() || !group.implicit => shared.upstreams.order(group),
        _ => {
            // A URL with variables naming no group: the host and port it names.
            let authority = upstream.as_str();
            if let Some(path) = authority.strip_prefix("unix:") {
                vec![Peer {
                    addr: PeerAddr::Unix {
                        path: path.to_string(),
                    },
                    weight: 1,
                    max_fails: 1,
                    fail_timeout: 10,
                    backup: false,
                    down: false,
                    max_conns: 0,
                }]
            } else {
                match crate::config::env::upstream_host(
                    authority,
                    if pass.https { 443 } else { 80 },
                ) {
                    Some((host, port)) => vec![Peer {
                        addr: PeerAddr::Tcp { host, port },
                        weight: 1,
                        max_fails: 1,
                        fail_timeout: 10,
                        backup: false,
                        down: false,
                        max_conns: 0,
                    }],
                    None => Vec::new(),
                }
            }
        }
    };
    let mut head = format!(
        "{} {} {}\r\n",
        request.method, request.target, request.version
    )
    .into_bytes();
    for (n, v) in &request.headers {
        // A chunked request body was read whole: nginx sends its length instead.
        if n.eq_ignore_ascii_case("transfer-encoding")
            && v == "chunked"
            && ex.framing == http1::Framing::Chunked
        {
            head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            continue;
        }
        head.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let send_body = s.proxy_pass_request_body();
    let next = s.proxy_next_upstream();
    let tries = match s.proxy_next_upstream_tries() {
        0 => usize::MAX,
        n => n as usize,
    };
    let idempotent = !matches!(ex.head.method.as_str(), "POST" | "LOCK" | "PATCH");
    let mut last = Failure::Error;
    let mut held: Option<Response> = None;
    let attempts: Vec<&Peer> = peers.iter().take(tries).collect();
    let started = std::time::Instant::now();
    let mut tried: Vec<String> = Vec::new();
    for (n, peer) in attempts.iter().enumerate() {
        let more = n + 1 < attempts.len();
        tried.push(peer.addr.to_string());
        match attempt(peer, &head, if send_body { &body } else { &[] }, s).await {
            Ok(mut response) => {
                // proxy_next_upstream http_5xx/403/404/429: try the next server; 500, 502,
                // 503, 504 and 429 also count as the server's failure.
                let next_on = next.on_status(response.status);
                let failure = next_on && matches!(response.status, 500 | 502 | 503 | 504 | 429);
                shared.upstreams.report(upstream, peer, failure);
                if next_on && more && (idempotent || next.non_idempotent) {
                    held = Some(response);
                    continue;
                }
                if let Some(code) = decision.status {
                    response.status = code;
                }
                rewrite_redirects(&mut response, redirects, &decision.base);
                note_upstream(ex, &tried, Some(response.status), started);
                if let Some(upstream_io) = response.upgraded.take() {
                    return tunnel(io, buf, ex, response, upstream_io).await;
                }
                return deliver(io, ex, response).await;
            }
            Err(f) => {
                tracing::error!(peer = %peer.addr, "upstream attempt failed");
                shared.upstreams.report(upstream, peer, true);
                let retry = match f {
                    Failure::Error => next.error,
                    Failure::Timeout => next.timeout,
                };
                last = f;
                if !retry || (!idempotent && !next.non_idempotent) {
                    break;
                }
            }
        }
    }
    if let Some(mut response) = held {
        rewrite_redirects(&mut response, redirects, &decision.base);
        note_upstream(ex, &tried, Some(response.status), started);
        return deliver(io, ex, response).await;
    }
    let status = match last {
        Failure::Error => 502,
        Failure::Timeout => 504,
    };
    error_response(io, status, ex.conf, ex.keepalive).await?;
    ex.record(status, 0, 0);
    note_upstream(ex, &tried, None, started);
    Ok(ex.keepalive)
}

/// A `101 Switching Protocols` (WebSocket): the answer goes to the client, then bytes flow
/// both ways until either side closes.
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    ex: &Exchange<'_>,
    r: Response,
    mut up: Box<dyn Stream>,
) -> std::io::Result<bool> {
    let s = &ex.conf.settings;
    let mut headers = vec![
        (
            "Server".to_string(),
            server_header(s.server_tokens()).to_string(),
        ),
        (
            "Date".to_string(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ),
        ("Connection".to_string(), "upgrade".to_string()),
    ];
    for (n, v) in &r.headers {
        let lower = n.to_ascii_lowercase();
        if !matches!(
            lower.as_str(),
            "connection" | "date" | "server" | "keep-alive" | "transfer-encoding"
        ) {
            headers.push((n.clone(), v.clone()));
        }
    }
    let head = http1::ResponseHead {
        version: (1, 1),
        status: 101,
        headers,
    };
    let out = head.to_bytes();
    ex.record(101, out.len(), 0);
    io.write_all(&out).await?;
    io.write_all(&r.body).await?;
    io.flush().await?;
    if !buf.is_empty() {
        up.write_all(buf).await?;
        buf.clear();
    }
    let _ = tokio::io::copy_bidirectional(io, &mut up).await;
    Ok(false)
}

/// `$upstream_addr`, `$upstream_status`, `$upstream_response_time` for the access log.
fn note_upstream(
    ex: &Exchange<'_>,
    tried: &[String],
    status: Option<u16>,
    started: std::time::Instant,
) {
    if let Ok(mut s) = ex.served.lock() {
        s.upstream_addr = Some(tried.join(", "));
        s.upstream_status = status;
        s.upstream_time = Some(started.elapsed());
    }
}

/// `proxy_redirect` on `Location` and `Refresh`; a rewritten relative `Location` is made
/// absolute, as nginx's header filter does.
fn rewrite_redirects(r: &mut Response, rules: &[crate::plan::route::Redirect], base: &str) {
    use crate::plan::route::Redirect;
    for (name, value) in r.headers.iter_mut() {
        if name.eq_ignore_ascii_case("location") {
            if let Some(new) = Redirect::apply(rules, value) {
                *value = if new.starts_with('/') {
                    format!("{base}{new}")
                } else {
                    new
                };
            }
        } else if name.eq_ignore_ascii_case("refresh") {
            let lower = value.to_ascii_lowercase();
            if let Some(i) = lower.find("url=") {
                let (head, url) = value.split_at(i + 4);
                if let Some(new) = Redirect::apply(rules, url) {
                    *value = format!("{head}{new}");
                }
            }
        }
    }
}

/// A response read whole off the upstream.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// After a `101 Switching Protocols`: the upstream connection, to tunnel.
    upgraded: Option<Box<dyn Stream>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Response({})", self.status)
    }
}

async fn connect(peer: &Peer) -> std::io::Result<Box<dyn Stream>> {
    match &peer.addr {
        PeerAddr::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        PeerAddr::Unix { path } => Ok(Box::new(UnixStream::connect(path).await?)),
    }
}

async fn attempt(
    peer: &Peer,
    head: &[u8],
    body: &[u8],
    s: &crate::plan::Settings,
) -> Result<Response, Failure> {
    let ms = |v: u64| Duration::from_millis(v.max(1));
    let mut up = match tokio::time::timeout(ms(s.proxy_connect_timeout()), connect(peer)).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(_)) => return Err(Failure::Error),
        Ok(Ok(c)) => c,
    };
    let send = async {
        up.write_all(head).await?;
        up.write_all(body).await?;
        up.flush().await
    };
    match tokio::time::timeout(ms(s.proxy_send_timeout()), send).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(_)) => return Err(Failure::Error),
        Ok(Ok(())) => {}
    }
    let read_timeout = ms(s.proxy_read_timeout());
    let mut buf = Vec::new();
    let (status, headers, consumed) = loop {
        let mut chunk = [0u8; 16384];
        let n = match tokio::time::timeout(read_timeout, up.read(&mut chunk)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(_)) => return Err(Failure::Error),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(Failure::Error);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut storage = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut storage);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (resp.code.unwrap_or(502), headers, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
            _ => return Err(Failure::Error),
        }
    };
    let mut body = buf.split_off(consumed);
    if status == 101 {
        return Ok(Response {
            status,
            headers,
            body,
            upgraded: Some(up),
        });
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        body.clear();
    } else if chunked {
        let mut raw = body;
        let mut decoded = Vec::new();
        loop {
            match decode_chunks(&raw, &mut decoded) {
                Some(true) => break,
                Some(false) => {}
                None => return Err(Failure::Error),
            }
            match read_more(&mut up, &mut raw, read_timeout).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(_)) | Ok(Ok(0)) => return Err(Failure::Error),
                Ok(Ok(_)) => {}
            }
            decoded.clear();
        }
        body = decoded;
    } else if let Some(len) = length {
        while body.len() < len {
            match read_more(&mut up, &mut body, read_timeout).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(_)) | Ok(Ok(0)) => return Err(Failure::Error),
                Ok(Ok(_)) => {}
            }
        }
        body.truncate(len);
    } else {
        loop {
            match read_more(&mut up, &mut body, read_timeout).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(_)) => return Err(Failure::Error),
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
        upgraded: None,
    })
}

/// Reads more of the upstream's response, within `proxy_read_timeout`.
async fn read_more(
    up: &mut Box<dyn Stream>,
    body: &mut Vec<u8>,
    limit: Duration,
) -> Result<std::io::Result<usize>, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, async {
        let mut chunk = vec![0u8; 65536];
        let n = up.read(&mut chunk).await?;
        body.extend_from_slice(&chunk[..n]);
        Ok(n)
    })
    .await
}

/// Decodes a complete chunked body from `raw` into `out`: `Some(true)` when the last chunk
/// was seen, `Some(false)` when more bytes are needed, `None` when it is malformed.
fn decode_chunks(raw: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    let mut pos = 0;
    loop {
        let Some(nl) = raw[pos..].iter().position(|&b| b == b'\n') else {
            return Some(false);
        };
        let line = std::str::from_utf8(&raw[pos..pos + nl]).ok()?.trim();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos += nl + 1;
        if size == 0 {
            return Some(true);
        }
        if raw.len() < pos + size + 1 {
            return Some(false);
        }
        out.extend_from_slice(&raw[pos..pos + size]);
        pos += size;
        if raw.get(pos) == Some(&b'\r') {
            pos += 1;
        }
        match raw.get(pos) {
            Some(b'\n') => pos += 1,
            None => return Some(false),
            _ => return None,
        }
    }
}

/// Headers nginx never passes from an upstream's response (its own, hop-by-hop, X-Accel-*).
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

async fn deliver<S: AsyncWrite + Unpin>(
    io: &mut S,
    ex: &Exchange<'_>,
    r: Response,
) -> std::io::Result<bool> {
    let s = &ex.conf.settings;
    let hide = s.proxy_hide_header();
    let pass = s.proxy_pass_header();
    // With proxy_pass_header Server or Date, the upstream's (if any) replace nginx's own.
    let mut headers = Vec::new();
    if !pass.iter().any(|h| h == "server") {
        headers.push((
            "Server".to_string(),
            server_header(s.server_tokens()).to_string(),
        ));
    }
    if !pass.iter().any(|h| h == "date") {
        headers.push((
            "Date".to_string(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ));
    }
    let bodyless = r.status == 204 || r.status == 304 || (100..200).contains(&r.status);
    // Content-Type keeps its place first among the upstream's headers, as in nginx.
    if let Some(ct) = r
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        headers.push(ct.clone());
    }
    if !bodyless {
        headers.push(("Content-Length".to_string(), r.body.len().to_string()));
    }
    headers.push(connection_header(ex));
    headers.extend(keepalive_header(ex));
    for (n, v) in &r.headers {
        let lower = n.to_ascii_lowercase();
        if lower == "content-type" {
            continue;
        }
        let hidden = (HIDDEN.contains(&lower.as_str())
            && !(pass.contains(&lower)
                && matches!(
                    lower.as_str(),
                    "date"
                        | "server"
                        | "x-pad"
                        | "x-accel-expires"
                        | "x-accel-redirect"
                        | "x-accel-limit-rate"
                        | "x-accel-buffering"
                        | "x-accel-charset"
                )))
            || hide.contains(&lower);
        if !hidden {
            headers.push((n.clone(), v.clone()));
        }
    }
    headers.extend(add_headers(ex, r.status));
    let head = http1::ResponseHead {
        version: ex.head.version,
        status: r.status,
        headers,
    };
    let mut out = head.to_bytes();
    if ex.head.method != "HEAD" && !bodyless {
        out.extend_from_slice(&r.body);
    }
    ex.record(
        r.status,
        out.len(),
        if ex.head.method != "HEAD" && !bodyless {
            r.body.len()
        } else {
            0
        },
    );
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(ex.keepalive)
}
