//! Static files, as nginx's static, gzip_static, not_modified, range and headers (`expires`)
//! modules serve them: the file routing mapped (`root`/`alias`, after `index` and
//! `try_files`), its `ETag` and `Last-Modified`, conditional requests (304, 412), byte ranges
//! (206, `multipart/byteranges`, 416), `file.gz` for a client that takes gzip, and the body
//! streamed from disk in bounded pieces (never the whole file in memory).
//!
//! Errors met here (a missing file, a refused symlink, a failed precondition) go through
//! `error_page` like any other.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Shared;
use super::conn::{self, Exchange};
use super::http1;
use crate::plan::Plan;
use crate::plan::route::Decision;
use crate::plan::settings::Settings;
use crate::plan::uri::{Escape, escape};

/// Files up to this size go out in the same write as the head.
const INLINE: u64 = 64 * 1024;
/// The piece read from disk and written at a time for larger files: nginx's `output_buffers`
/// size. Measured for a 1 MiB file to wrk over loopback (CPU per answer, `wrk -c50`, 5 s
/// rounds alternating with nginx's 0.28-0.34 ms): each 32 KiB piece written as it is read
/// 0.27-0.29 ms, 40-48 KiB 0.26-0.29, 16-24 KiB 0.35-0.36, 32 KiB read and written by two
/// 0.37, 64-128 KiB 0.37-0.42, 256 KiB 0.34-0.36, the whole MiB 0.35. Our guess, not
/// measured: a piece that fits the L1 data cache (48 KiB here) is still in it when `send`
/// copies it out.
const PIECE: usize = 32 * 1024;

/// Serves `path` for `decision`: `Ok(keep-alive)`.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    io: &mut S,
    buf: &mut Vec<u8>,
    ex: &Exchange<'_>,
    decision: &Decision,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    path: &str,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = &ex.conf.settings;
    let method = &*ex.head.method;
    // gzip_static: `file.gz` instead, for a client that takes gzip.
    let mut vary = false;
    let mut gzipped = None;
    if matches!(method, "GET" | "HEAD") && s.gzip_static() != "off" {
        let ok = s.gzip_static() == "always" || gzip_ok(ex, s);
        if ok || s.gzip_vary() {
            let gz = format!("{path}.gz");
            match open(&gz, s.disable_symlinks()) {
                Ok((file, meta)) => {
                    if s.gzip_static() == "on" {
                        vary = true;
                    }
                    if ok && meta.is_file() {
                        gzipped = Some((file, meta));
                    }
                }
                Err(e) if not_found(&e) => {}
                Err(e) => tracing::error!("open() \"{gz}\" failed ({})", errno_text(&e)),
            }
        }
    }
    let (file, meta, encoding) = match gzipped {
        Some((f, m)) => (f, m, true),
        None => match open(path, s.disable_symlinks()) {
            Ok((f, m)) => (f, m, false),
            Err(e) => {
                let status = match e.raw_os_error() {
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => 404,
                    Some(libc::EACCES | libc::ELOOP | libc::EMLINK) => 403,
                    _ => 500,
                };
                if status != 404 || s.log_not_found() {
                    tracing::error!("open() \"{path}\" failed ({})", errno_text(&e));
                }
                return error(io, buf, ex, decision, plan, shared, status, Vec::new()).await;
            }
        },
    };
    if meta.is_dir() {
        // A directory after all (it appeared after routing): nginx's redirect to its slash.
        let mut location = format!("{}/", escape(&decision.uri, Escape::Uri));
        if !decision.args.is_empty() {
            location = format!("{location}?{}", decision.args);
        }
        if location.starts_with('/') {
            location = format!("{}{location}", decision.base);
        }
        let body = crate::plan::pages::default_page(301, s.server_tokens()).unwrap_or_default();
        let extra = vec![("Location".into(), location)];
        conn::respond(io, ex, 301, &extra, "text/html", body.as_bytes()).await?;
        return Ok(ex.keepalive);
    }
    if !meta.is_file() {
        tracing::error!("\"{path}\" is not a regular file");
        return error(io, buf, ex, decision, plan, shared, 404, Vec::new()).await;
    }
    if method == "POST" {
        return error(io, buf, ex, decision, plan, shared, 405, Vec::new()).await;
    }

    let size = meta.len();
    let mtime = meta.mtime();
    let etag = s.etag().then(|| etag_of(mtime, size));
    let last_modified = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
    let validators = Validators {
        etag: etag.as_deref(),
        mtime,
    };

    // The not_modified filter, for the 200 this would be.
    let mut status = decision.status.unwrap_or(200);
    if status == 200 {
        match not_modified(ex, s, &validators) {
            Precondition::Failed => {
                return error(io, buf, ex, decision, plan, shared, 412, Vec::new()).await;
            }
            Precondition::NotModified => status = 304,
            Precondition::Send => {}
        }
    }

    let content_type = match conn::preserved_type(ex) {
        Some(ct) => http1::Text::copy(ct),
        None => {
            let ct = conn::content_type_for(&decision.uri, s);
            http1::Text::copy(&conn::with_charset(ct, 200, s))
        }
    };
    // The range filter, for a 200.
    // nginx 1.22 serves a `.gz` whole (ranges of it came in 1.23.4).
    let ranges = if status == 200 && ex.head.version >= (1, 0) && !encoding {
        match ranges(ex, s, &validators, size) {
            Ranges::Whole { accept } => Plan206::Whole { accept },
            Ranges::Unsatisfiable => {
                let keep = vec![("Content-Range".into(), format!("bytes */{size}"))];
                return error(io, buf, ex, decision, plan, shared, 416, keep).await;
            }
            Ranges::Some(r) => {
                status = 206;
                Plan206::Parts(r)
            }
        }
    } else {
        Plan206::Whole { accept: false }
    };

    // The head, in nginx's order (room for the usual dozen lines without regrowing).
    let mut headers: Vec<http1::Line> = Vec::with_capacity(12);
    headers.push((
        "Server".into(),
        conn::server_header(s.server_tokens()).into(),
    ));
    headers.push(("Date".into(), http1::date_now().into()));
    let mut body_len = size;
    let mut parts: Vec<(u64, u64)> = Vec::new();
    let mut multipart: Option<Multipart> = None;
    match &ranges {
        _ if status == 304 => {}
        Plan206::Whole { .. } => {
            headers.push(("Content-Type".into(), content_type));
            headers.push(("Content-Length".into(), http1::Text::number(size)));
            parts.push((0, size));
        }
        Plan206::Parts(r) if r.len() == 1 => {
            let (start, end) = r[0];
            headers.push(("Content-Type".into(), content_type));
            body_len = end - start;
            headers.push(("Content-Length".into(), http1::Text::number(body_len)));
            parts.push((start, end));
        }
        Plan206::Parts(r) => {
            let m = Multipart::new(&content_type, r, size);
            headers.push((
                "Content-Type".into(),
                format!("multipart/byteranges; boundary={}", m.boundary).into(),
            ));
            body_len = m.length;
            headers.push(("Content-Length".into(), http1::Text::number(body_len)));
            parts.extend(r.iter().copied());
            multipart = Some(m);
        }
    }
    // The header filter names the time only for these (not for an error page's file).
    if matches!(status, 200 | 206 | 304) {
        headers.push((
            "Last-Modified".into(),
            http_date_of(mtime, last_modified).into(),
        ));
    }
    headers.push(conn::connection_header(ex));
    headers.extend(conn::keepalive_header(ex));
    headers.extend(conn::preserved_rest(ex));
    if vary && s.gzip_vary() {
        headers.push(("Vary".into(), "Accept-Encoding".into()));
    }
    if let Some(e) = &etag {
        headers.push(("ETag".into(), e.clone().into()));
    }
    if encoding && status != 304 {
        headers.push(("Content-Encoding".into(), "gzip".into()));
    }
    headers.extend(expires(decision.expires.as_deref(), status, Some(mtime)));
    // add_header ETag / Last-Modified replace the file's (an empty value removes it).
    for (name, value) in conn::add_headers_all(ex, status) {
        let special =
            name.eq_ignore_ascii_case("etag") || name.eq_ignore_ascii_case("last-modified");
        if special {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        }
        if !value.is_empty() {
            headers.push(http1::owned((name, value)));
        }
    }
    match &ranges {
        _ if status == 304 => {}
        Plan206::Whole { accept: true } => headers.push(("Accept-Ranges".into(), "bytes".into())),
        Plan206::Parts(r) if r.len() == 1 => headers.push((
            "Content-Range".into(),
            format!("bytes {}-{}/{size}", r[0].0, r[0].1 - 1).into(),
        )),
        _ => {}
    }
    let head = http1::ResponseHead {
        version: ex.head.version,
        status,
        headers,
    };
    ex.note_headers(&head.headers);
    let send_body = method != "HEAD" && status != 304;
    // A small body goes out in the head's write: room for it now, no regrowing.
    let room = if send_body && multipart.is_none() && body_len <= INLINE {
        body_len as usize
    } else {
        0
    };
    let mut out = head.to_bytes_with_room(room);
    let head_len = out.len();
    let wait = Duration::from_millis(s.send_timeout().max(1));
    if !send_body {
        ex.record(status, head_len, 0);
        write(io, &out, wait).await?;
        return Ok(ex.keepalive);
    }
    let mut sent = 0u64;
    let result = async {
        if let Some(m) = &multipart {
            for (i, &(start, end)) in parts.iter().enumerate() {
                out.extend_from_slice(m.part_head(i).as_bytes());
                sent += stream(io, &file, start, end, &mut out, wait).await?;
            }
            out.extend_from_slice(m.tail().as_bytes());
            write(io, &out, wait).await?;
            out.clear();
        } else if let Some(&(start, end)) = parts.first() {
            // A large file to a plain TCP client with `sendfile on`: the kernel copies it,
            // the head first, held back (MSG_MORE) to leave in the file's first segment.
            if end - start > INLINE
                && s.sendfile()
                && let Some(tcp) = (io as &mut dyn std::any::Any).downcast_mut::<TcpStream>()
            {
                send_more(tcp, &out, wait).await?;
                out.clear();
                super::limit_unsent(tcp, false);
                let done = sendfile(tcp, &file, start, end, wait).await;
                super::limit_unsent(tcp, true);
                sent += done?;
                return Ok(());
            }
            sent += stream(io, &file, start, end, &mut out, wait).await?;
            if !out.is_empty() {
                write(io, &out, wait).await?;
                out.clear();
            }
        }
        Ok::<(), io::Error>(())
    }
    .await;
    // What was sent of the body: the multipart framing counts as body too.
    let body_sent = if multipart.is_some() && result.is_ok() {
        body_len
    } else {
        sent
    };
    ex.record(status, head_len + body_sent as usize, body_sent as usize);
    result?;
    io.flush().await?;
    Ok(ex.keepalive)
}

/// nginx's ETag of a file: `"mtime-size"` in lower-case hex.
fn etag_of(mtime: i64, size: u64) -> http1::Text {
    /// Puts `b` before what `out[*at..]` holds.
    fn put(out: &mut [u8], at: &mut usize, b: u8) {
        *at -= 1;
        out[*at] = b;
    }
    fn hex(out: &mut [u8], at: &mut usize, mut v: u64) {
        loop {
            put(out, at, b"0123456789abcdef"[(v & 15) as usize]);
            v >>= 4;
            if v == 0 {
                break;
            }
        }
    }
    // Written from the end, into `"` + 16 hex digits + `-` + 16 + `"` at most.
    let mut out = [0u8; 35];
    let mut at = out.len();
    put(&mut out, &mut at, b'"');
    hex(&mut out, &mut at, size);
    put(&mut out, &mut at, b'-');
    // A time before 1970 is written as nginx writes it, in two's complement.
    hex(&mut out, &mut at, mtime as u64);
    put(&mut out, &mut at, b'"');
    http1::Text::copy(&crate::plan::uri::text(&out[at..]))
}

/// `Last-Modified` of a file, remembered for the last time asked: a site's files are
/// asked for again and again, and formatting a date costs more than the rest of the head.
fn http_date_of(mtime: i64, time: SystemTime) -> http1::Text {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != mtime || last.1.is_empty() {
            *last = (mtime, httpdate::fmt_http_date(time));
        }
        http1::Text::copy(&last.1)
    })
}

/// `autoindex`: the listing of the directory `path`, sent as nginx sends it (no length:
/// chunked to HTTP/1.1 clients, the connection closed after it for HTTP/1.0 ones).
#[allow(clippy::too_many_arguments)]
pub async fn listing<S>(
    io: &mut S,
    buf: &mut Vec<u8>,
    ex: &Exchange<'_>,
    decision: &Decision,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    path: &str,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = &ex.conf.settings;
    let format = s.autoindex_format();
    let callback = decision
        .args
        .split('&')
        .find_map(|kv| kv.strip_prefix("callback="));
    let opts = super::autoindex::Options {
        uri: &decision.uri,
        format: &format,
        exact_size: s.autoindex_exact_size(),
        localtime: s.autoindex_localtime(),
        callback,
        gmtoff_minutes: gmtoff_minutes(),
    };
    let charset = s.charset();
    let charset = (charset != "off").then_some(charset);
    let listing =
        match super::autoindex::render_with_charset(std::path::Path::new(path), &opts, charset) {
            Ok(l) => l,
            Err(e) => {
                let status = if e.kind() == io::ErrorKind::InvalidInput {
                    400
                } else {
                    match e.raw_os_error() {
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => 404,
                        Some(libc::EACCES) => 403,
                        _ => 500,
                    }
                };
                if status != 400 && (status != 404 || s.log_not_found()) {
                    tracing::error!("opendir() \"{path}\" failed ({})", errno_text(&e));
                }
                return error(io, buf, ex, decision, plan, shared, status, Vec::new()).await;
            }
        };
    let head_only = ex.head.method == "HEAD";
    let chunked = ex.head.version >= (1, 1) && s.chunked_transfer_encoding() && !head_only;
    let keepalive = ex.keepalive && (chunked || head_only);
    let mut headers = vec![
        (
            "Server".into(),
            conn::server_header(s.server_tokens()).into(),
        ),
        ("Date".into(), http1::date_now().into()),
        (
            "Content-Type".into(),
            conn::with_charset(&listing.content_type, 200, s)
                .into_owned()
                .into(),
        ),
    ];
    if chunked {
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    let v = if keepalive { "keep-alive" } else { "close" };
    headers.push(("Connection".into(), v.into()));
    if keepalive {
        headers.extend(conn::keepalive_header(ex));
    }
    headers.extend(expires(decision.expires.as_deref(), 200, None));
    headers.extend(conn::add_headers(ex, 200));
    let head = http1::ResponseHead {
        version: ex.head.version,
        status: 200,
        headers,
    };
    ex.note_headers(&head.headers);
    let mut out = head.to_bytes();
    let head_len = out.len();
    if !head_only {
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", listing.body.len()).as_bytes());
            out.extend_from_slice(&listing.body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            out.extend_from_slice(&listing.body);
        }
    }
    let body = if head_only { 0 } else { listing.body.len() };
    ex.record(200, out.len(), body);
    let _ = head_len;
    write(io, &out, Duration::from_millis(s.send_timeout().max(1))).await?;
    io.flush().await?;
    Ok(keepalive)
}

/// The local time zone's offset from UTC now, in minutes (`autoindex_localtime`).
fn gmtoff_minutes() -> i64 {
    // SAFETY: localtime_r fills the tm we own from a time we pass.
    unsafe {
        let now: libc::time_t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm.tm_gmtoff as i64 / 60
    }
}

#[allow(clippy::too_many_arguments)]
fn error<'a, S>(
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    ex: &'a Exchange<'a>,
    decision: &'a Decision,
    plan: &'a Arc<Plan>,
    shared: &'a Arc<Shared>,
    status: u16,
    keep: Vec<(String, String)>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<bool>> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn::serve_error(io, buf, ex, decision, plan, shared, status, keep)
}

/// Opens `path` for reading; with `disable_symlinks on`, no component of it may be a
/// symbolic link (ELOOP, as nginx's openat walk reports it).
fn open(path: &str, no_symlinks: bool) -> io::Result<(File, Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    if no_symlinks {
        check_no_symlinks(path)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).custom_flags(libc::O_NONBLOCK);
    if no_symlinks {
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Every component of `path` (after the root `/`) must be a real directory or file. As
/// nginx's walk with O_NOFOLLOW reports it: a symlink on the way is ENOTDIR (404), the file
/// itself a symlink is ELOOP (403).
fn check_no_symlinks(path: &str) -> io::Result<()> {
    let mut so_far = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        so_far.push('/');
        so_far.push_str(part);
        match std::fs::symlink_metadata(&so_far) {
            Ok(m) if m.file_type().is_symlink() => {
                let last = i + 1 == parts.len();
                let errno = if last { libc::ELOOP } else { libc::ENOTDIR };
                return Err(io::Error::from_raw_os_error(errno));
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn not_found(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG)
    )
}

/// `2: No such file or directory`, as nginx writes an errno.
fn errno_text(e: &io::Error) -> String {
    let code = e.raw_os_error().unwrap_or(0);
    let text = e.to_string();
    let text = text
        .find(" (os error")
        .map_or(text.as_str(), |i| &text[..i]);
    format!("{code}: {text}")
}

/// ngx_http_gzip_ok, as far as Portico keeps its settings: HTTP/1.1 (`gzip_http_version`),
/// `gzip` accepted with a non-zero q-value, and no `Via` (a proxied request: `gzip_proxied`
/// is off unless said otherwise).
fn gzip_ok(ex: &Exchange<'_>, s: &Settings) -> bool {
    let version = if s.gzip_http_version() == "1.0" {
        (1, 0)
    } else {
        (1, 1)
    };
    if ex.head.version < version {
        return false;
    }
    let Some(ae) = ex.head.header("accept-encoding") else {
        return false;
    };
    if !accepts_gzip(ae) {
        return false;
    }
    if ex.head.header("via").is_some() {
        let proxied = s.gzip_proxied();
        if proxied.is_empty() || proxied.iter().any(|p| p == "off") {
            return false;
        }
    }
    true
}

/// Whether an `Accept-Encoding` value takes gzip: the token `gzip` (any case) not given
/// `q=0`.
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|item| {
        let mut params = item.split(';');
        let coding = params.next().unwrap_or("").trim();
        if !coding.eq_ignore_ascii_case("gzip") {
            return false;
        }
        for p in params {
            let p = p.trim();
            if let Some(q) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                let q = q.trim();
                return q.parse::<f64>().is_ok_and(|q| q > 0.0);
            }
        }
        true
    })
}

struct Validators<'a> {
    etag: Option<&'a str>,
    mtime: i64,
}

enum Precondition {
    Send,
    NotModified,
    Failed,
}

/// The seconds of an HTTP date, or -1 when it does not parse (nginx's NGX_ERROR).
fn http_time(value: &str) -> i64 {
    httpdate::parse_http_date(value.trim())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(-1, |d| d.as_secs() as i64)
}

/// ngx_http_not_modified_header_filter.
fn not_modified(ex: &Exchange<'_>, s: &Settings, v: &Validators<'_>) -> Precondition {
    if let Some(ius) = ex.head.header("if-unmodified-since") {
        if http_time(ius) < v.mtime {
            return Precondition::Failed;
        }
    }
    if let Some(im) = ex.head.header("if-match") {
        if !etag_matches(im, v.etag, false) {
            return Precondition::Failed;
        }
    }
    let ims = ex.head.header("if-modified-since");
    let inm = ex.head.header("if-none-match");
    if ims.is_none() && inm.is_none() {
        return Precondition::Send;
    }
    if let Some(ims) = ims {
        let mode = s.if_modified_since();
        let modified = if mode == "off" {
            true
        } else {
            let t = http_time(ims);
            t != v.mtime && (mode == "exact" || t < v.mtime)
        };
        if modified {
            return Precondition::Send;
        }
    }
    if let Some(inm) = inm {
        if !etag_matches(inm, v.etag, true) {
            return Precondition::Send;
        }
    }
    Precondition::NotModified
}

/// ngx_http_test_if_match: `*`, or the entity tag among the list (`W/` ignored on both
/// sides when `weak`).
fn etag_matches(list: &str, etag: Option<&str>, weak: bool) -> bool {
    if list == "*" {
        return true;
    }
    let Some(mut etag) = etag else {
        return false;
    };
    if weak && etag.len() > 2 && etag.starts_with("W/") {
        etag = &etag[2..];
    }
    let b = list.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if weak && b.len() - i > 2 && b[i] == b'W' && b[i + 1] == b'/' {
            i += 2;
        }
        if etag.len() > b.len() - i {
            return false;
        }
        if &b[i..i + etag.len()] == etag.as_bytes() {
            let mut j = i + etag.len();
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            if j == b.len() || b[j] == b',' {
                return true;
            }
        }
        while i < b.len() && b[i] != b',' {
            i += 1;
        }
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
    }
    false
}

enum Ranges {
    /// The whole file; `accept`: say `Accept-Ranges: bytes`.
    Whole {
        accept: bool,
    },
    Unsatisfiable,
    /// [start, end) pieces.
    Some(Vec<(u64, u64)>),
}

enum Plan206 {
    Whole { accept: bool },
    Parts(Vec<(u64, u64)>),
}

/// ngx_http_range_header_filter for a file of `size` bytes.
fn ranges(ex: &Exchange<'_>, s: &Settings, v: &Validators<'_>, size: u64) -> Ranges {
    let max = s.max_ranges().copied();
    if max == Some(0) {
        return Ranges::Whole { accept: false };
    }
    let whole = Ranges::Whole { accept: true };
    let Some(range) = ex.head.header("range") else {
        return whole;
    };
    if range.len() < 7 || !range.as_bytes()[..6].eq_ignore_ascii_case(b"bytes=") {
        return whole;
    }
    if let Some(if_range) = ex.head.header("if-range") {
        if if_range.len() >= 2 && if_range.ends_with('"') {
            if v.etag != Some(if_range) {
                return whole;
            }
        } else if http_time(if_range) != v.mtime {
            return whole;
        }
    }
    match parse_ranges(&range.as_bytes()[6..], size, max.unwrap_or(i32::MAX as u64)) {
        Parsed::Ok(r) => Ranges::Some(r),
        Parsed::Unsatisfiable => Ranges::Unsatisfiable,
        Parsed::Declined => whole,
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Ok(Vec<(u64, u64)>),
    Unsatisfiable,
    /// Serve the whole file instead.
    Declined,
}

/// ngx_http_range_parse: `start-end`, `start-`, `-suffix`, comma-separated, blanks allowed.
fn parse_ranges(spec: &[u8], size: u64, max_ranges: u64) -> Parsed {
    let at = |i: usize| spec.get(i).copied().unwrap_or(0);
    let number = |i: &mut usize| -> Option<i64> {
        let mut n: i64 = 0;
        while at(*i).is_ascii_digit() {
            n = n.checked_mul(10)?.checked_add((at(*i) - b'0') as i64)?;
            *i += 1;
        }
        Some(n)
    };
    let blanks = |i: &mut usize| {
        while at(*i) == b' ' {
            *i += 1;
        }
    };
    let content_length = size as i64;
    let mut out = Vec::new();
    let mut total: i64 = 0;
    let mut left = max_ranges;
    let mut i = 0;
    loop {
        let (mut start, mut end) = (0i64, 0i64);
        let mut suffix = false;
        let mut open_ended = false;
        blanks(&mut i);
        if at(i) != b'-' {
            if !at(i).is_ascii_digit() {
                return Parsed::Unsatisfiable;
            }
            let Some(n) = number(&mut i) else {
                return Parsed::Unsatisfiable;
            };
            start = n;
            blanks(&mut i);
            if at(i) != b'-' {
                return Parsed::Unsatisfiable;
            }
            i += 1;
            blanks(&mut i);
            if at(i) == b',' || at(i) == 0 {
                end = content_length;
                open_ended = true;
            }
        } else {
            suffix = true;
            i += 1;
        }
        if !open_ended {
            if !at(i).is_ascii_digit() {
                return Parsed::Unsatisfiable;
            }
            let Some(n) = number(&mut i) else {
                return Parsed::Unsatisfiable;
            };
            end = n;
            blanks(&mut i);
            if at(i) != b',' && at(i) != 0 {
                return Parsed::Unsatisfiable;
            }
            if suffix {
                start = if end < content_length {
                    content_length - end
                } else {
                    0
                };
                end = content_length - 1;
            }
            if end >= content_length {
                end = content_length;
            } else {
                end += 1;
            }
        }
        if start < end {
            out.push((start as u64, end as u64));
            total = match total.checked_add(end - start) {
                Some(t) => t,
                None => return Parsed::Unsatisfiable,
            };
            if left == 0 {
                return Parsed::Declined;
            }
            left -= 1;
        } else if start == 0 {
            return Parsed::Declined;
        }
        if at(i) != b',' {
            break;
        }
        i += 1;
    }
    if out.is_empty() {
        return Parsed::Unsatisfiable;
    }
    if out.len() > 1 && total > content_length {
        return Parsed::Declined;
    }
    Parsed::Ok(out)
}

/// The framing of a `multipart/byteranges` body.
struct Multipart {
    boundary: String,
    /// "\r\n--BOUNDARY\r\nContent-Type: TYPE\r\nContent-Range: bytes "
    part: String,
    ranges: Vec<String>,
    length: u64,
}

static BOUNDARY: AtomicU64 = AtomicU64::new(0);

impl Multipart {
    fn new(content_type: &str, ranges: &[(u64, u64)], size: u64) -> Multipart {
        let n = BOUNDARY.fetch_add(1, Ordering::Relaxed) + 1;
        let boundary = format!("{n:020}");
        let part = if content_type.is_empty() {
            format!("\r\n--{boundary}\r\nContent-Range: bytes ")
        } else {
            format!("\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes ")
        };
        let ranges_text: Vec<String> = ranges
            .iter()
            .map(|(s, e)| format!("{s}-{}/{size}\r\n\r\n", e - 1))
            .collect();
        // The closing "\r\n--BOUNDARY--\r\n", then each part's head and bytes.
        let mut length = (4 + boundary.len() + 4) as u64;
        for (text, (s, e)) in ranges_text.iter().zip(ranges) {
            length += (part.len() + text.len()) as u64 + (e - s);
        }
        Multipart {
            boundary,
            part,
            ranges: ranges_text,
            length,
        }
    }

    fn part_head(&self, i: usize) -> String {
        format!("{}{}", self.part, self.ranges[i])
    }

    fn tail(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }
}

/// One system call `op` that writes to `tcp` (returning bytes written or -1), made once `tcp`
/// has room, the wait for it bounded by `wait`: `Ok(None)` when the kernel took nothing after
/// all (EAGAIN, EINTR), to be tried again.
async fn when_writable(
    tcp: &TcpStream,
    wait: Duration,
    op: impl FnOnce() -> isize,
) -> io::Result<Option<usize>> {
    match tokio::time::timeout(wait, tcp.writable()).await {
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        Ok(r) => r?,
    }
    let r = tcp.try_io(tokio::io::Interest::WRITABLE, || match op() {
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Ok(n as usize),
    });
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `data` to `tcp` with MSG_MORE: the kernel holds it until the next write without the
/// flag (sendfile's last page), so the head does not go as a packet of its own.
async fn send_more(tcp: &mut TcpStream, data: &[u8], wait: Duration) -> io::Result<()> {
    let fd = tcp.as_raw_fd();
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: `rest` is a live slice of `rest.len()` bytes; send only reads it.
        let send = || unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        done += when_writable(tcp, wait, send).await?.unwrap_or(0);
    }
    Ok(())
}

/// sendfile(2) of the file's bytes in [start, end) to `tcp`, each wait for room bounded by
/// `send_timeout`. Returns the bytes sent.
async fn sendfile(
    tcp: &mut TcpStream,
    file: &File,
    start: u64,
    end: u64,
    wait: Duration,
) -> io::Result<u64> {
    let (out_fd, in_fd) = (tcp.as_raw_fd(), file.as_raw_fd());
    let mut pos = start;
    while pos < end {
        let count = ((end - pos) as usize).min(1 << 30);
        let mut off = pos as libc::off_t;
        // SAFETY: both descriptors are open for the call; `off` is ours.
        let send = || unsafe { libc::sendfile(out_fd, in_fd, &mut off, count) };
        match when_writable(tcp, wait, send).await? {
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file was truncated",
                ));
            }
            Some(n) => pos += n as u64,
            None => {}
        }
    }
    Ok(pos - start)
}

/// Writes `out` (the head so far) and the file's bytes in [start, end). A range of up to
/// INLINE bytes is read whole and left in `out` for the caller's write (with the head, or with
/// the next part's head), unless `out` has reached INLINE; a larger range goes out a PIECE at
/// a time, its first piece with the head. Returns the body bytes sent.
async fn stream<S: AsyncWrite + Unpin>(
    io: &mut S,
    file: &File,
    start: u64,
    end: u64,
    out: &mut Vec<u8>,
    wait: Duration,
) -> io::Result<u64> {
    let large = end - start > INLINE;
    let step = if large { PIECE } else { INLINE as usize };
    let mut pos = start;
    let mut sent = 0;
    while pos < end {
        let want = ((end - pos) as usize).min(step);
        let n = read_onto(file, out, want, pos)?;
        if n == 0 {
            // The file shrank under us: what nginx calls "file was truncated".
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file was truncated",
            ));
        }
        pos += n as u64;
        sent += n as u64;
        if large || out.len() as u64 >= INLINE {
            write(io, out, wait).await?;
            out.clear();
        }
    }
    Ok(sent)
}

/// Appends up to `want` of the file's bytes from `pos` to `out`, read straight into its spare
/// room (not zeroed first: a megabyte's memset per answer showed as 5% of the CPU in perf).
/// Returns how many were read; fewer than `want` only at the end of the file.
fn read_onto(file: &File, out: &mut Vec<u8>, want: usize, pos: u64) -> io::Result<usize> {
    out.reserve(want);
    let have = out.len();
    let room = &mut out.spare_capacity_mut()[..want];
    let mut got = 0;
    while got < want {
        // SAFETY: `room[got..]` is `want - got` bytes of `out`'s own allocation; pread writes
        // at most that many into it and reads none of it.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                room[got..].as_mut_ptr().cast(),
                want - got,
                (pos + got as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: the `got` bytes after `have` were written by pread above.
    unsafe { out.set_len(have + got) };
    Ok(got)
}

async fn write<S: AsyncWrite + Unpin>(io: &mut S, data: &[u8], wait: Duration) -> io::Result<()> {
    match super::deadline::within(wait, io.write_all(data)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// `expires`: the `Expires` and `Cache-Control` headers for an answer of `status` whose file
/// changed at `mtime` (seconds), as nginx's headers filter sets them.
pub fn expires(words: Option<&[String]>, status: u16, mtime: Option<i64>) -> Vec<http1::Line> {
    let safe = matches!(
        status,
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    );
    let Some(words) = words else {
        return Vec::new();
    };
    if !safe || words.is_empty() {
        return Vec::new();
    }
    let pair =
        |e: http1::Text, cc: http1::Text| vec![("Expires".into(), e), ("Cache-Control".into(), cc)];
    let (modified, value) = match words {
        [m, v] if m == "modified" => (true, v.as_str()),
        [v, ..] => (false, v.as_str()),
        [] => return Vec::new(),
    };
    if !modified && value == "off" {
        return Vec::new();
    }
    if !modified && value == "epoch" {
        return pair("Thu, 01 Jan 1970 00:00:01 GMT".into(), "no-cache".into());
    }
    if !modified && value == "max" {
        return pair(
            "Thu, 31 Dec 2037 23:55:55 GMT".into(),
            "max-age=315360000".into(),
        );
    }
    let (daily, minus, text) = if let Some(t) = value.strip_prefix('@') {
        (true, false, t)
    } else if let Some(t) = value.strip_prefix('+') {
        (false, false, t)
    } else if let Some(t) = value.strip_prefix('-') {
        (false, true, t)
    } else {
        (false, false, value)
    };
    let Some(secs) = crate::config::validate::parse_time(text, true) else {
        return Vec::new();
    };
    let mut time = secs as i64;
    if minus {
        time = -time;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if time == 0 && !daily {
        return pair(http1::date_now().into(), "max-age=0".into());
    }
    let (at, max_age) = if daily {
        let next = next_time(now, time);
        (next, next - now)
    } else if !modified || mtime.is_none() {
        (now + time, time)
    } else {
        let at = mtime.unwrap_or(now) + time;
        (at, at - now)
    };
    let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(at.max(0) as u64));
    if time < 0 || max_age < 0 {
        return pair(date.into(), "no-cache".into());
    }
    pair(date.into(), format!("max-age={max_age}").into())
}

/// ngx_next_time: the next moment (local time) at `of_day` seconds after midnight.
fn next_time(now: i64, of_day: i64) -> i64 {
    // SAFETY: localtime_r writes into the tm we own; mktime reads it.
    unsafe {
        let t: libc::time_t = now as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm.tm_hour = (of_day / 3600) as i32;
        tm.tm_min = ((of_day % 3600) / 60) as i32;
        tm.tm_sec = (of_day % 60) as i32;
        let mut next = libc::mktime(&mut tm) as i64;
        if next == -1 {
            return now;
        }
        if next - now <= 0 {
            tm.tm_mday += 1;
            next = libc::mktime(&mut tm) as i64;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_mtime_and_size_in_hex() {
        for (mtime, size) in [
            (0i64, 0u64),
            (1, 1024),
            (0x5f5e_1000, 1 << 40),
            (-1, 15),
            (i64::MAX, u64::MAX),
        ] {
            assert_eq!(
                etag_of(mtime, size).as_str(),
                format!("\"{mtime:x}-{size:x}\"")
            );
        }
    }

    #[test]
    fn ranges_parse_as_nginx() {
        let p = |s: &str, size| parse_ranges(s.as_bytes(), size, i32::MAX as u64);
        assert_eq!(p("0-9", 100), Parsed::Ok(vec![(0, 10)]));
        assert_eq!(p("90-", 100), Parsed::Ok(vec![(90, 100)]));
        assert_eq!(p("-10", 100), Parsed::Ok(vec![(90, 100)]));
        assert_eq!(p("-200", 100), Parsed::Ok(vec![(0, 100)]));
        assert_eq!(p("0-1000", 100), Parsed::Ok(vec![(0, 100)]));
        assert_eq!(p(" 0 - 1 , 5-6", 100), Parsed::Ok(vec![(0, 2), (5, 7)]));
        assert_eq!(p("200-300", 100), Parsed::Unsatisfiable);
        assert_eq!(p("abc", 100), Parsed::Unsatisfiable);
        assert_eq!(p("5-1", 100), Parsed::Unsatisfiable);
        assert_eq!(p("0-0,-1", 1), Parsed::Declined);
        assert_eq!(p("0-0,-1", 2), Parsed::Ok(vec![(0, 1), (1, 2)]));
        // Overlapping ranges adding up to more than the file: the whole file.
        assert_eq!(p("0-99,0-99", 100), Parsed::Declined);
        assert_eq!(
            parse_ranges(b"0-1,3-4", 100, 1),
            Parsed::Declined,
            "more than max_ranges"
        );
        assert_eq!(p("99999999999999999999-", 100), Parsed::Unsatisfiable);
    }

    #[test]
    fn etags_match_as_nginx() {
        let e = Some("\"5f-10\"");
        assert!(etag_matches("\"5f-10\"", e, false));
        assert!(etag_matches("\"a\", \"5f-10\"", e, false));
        assert!(etag_matches("*", None, false));
        assert!(!etag_matches("W/\"5f-10\"", e, false));
        assert!(etag_matches("W/\"5f-10\"", e, true));
        assert!(!etag_matches("\"5f-1\"", e, true));
        assert!(!etag_matches("\"5f-10\"x", e, true));
    }

    #[test]
    fn gzip_tokens() {
        assert!(accepts_gzip("gzip, deflate"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("x-gzip2, br"));
    }
}
