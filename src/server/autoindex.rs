//! Directory listings as nginx 1.22's `ngx_http_autoindex_module` renders them: html, json,
//! jsonp and xml, byte for byte, from the same directory entries nginx would see (`stat`, or
//! `lstat` for a symbolic link whose target is missing or loops).
//!
//! This module only reads a directory and renders it. It must not know about requests,
//! locations or sockets: the static file server decides when a listing is due (the URI ends in
//! `/`, the method is GET or HEAD, `autoindex on`), hands over the mapped directory and the
//! request's URI and `callback` argument, and maps the errors to statuses.
//!
//! File names are bytes (`OsStrExt`), never assumed to be UTF-8: nginx copies them as they
//! are, escaping only what its escape tables name, and counts UTF-8 characters only when the
//! answer's charset is utf-8 (see [`render_with_charset`]).

// Nothing calls it yet: the static file server will.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What nginx's autoindex answers for a directory.
#[derive(Debug)]
pub struct Listing {
    /// The Content-Type header value (e.g. "text/html", "application/json", "text/xml",
    /// "application/javascript" for jsonp), including "; charset=..." only if nginx would add it.
    pub content_type: String,
    pub body: Vec<u8>,
}

pub struct Options<'a> {
    /// The request URI as nginx holds it (decoded path, ends with '/'), e.g. "/files/a b/".
    pub uri: &'a str,
    /// `autoindex_format`: "html", "json", "xml" or "jsonp".
    pub format: &'a str,
    pub exact_size: bool, // autoindex_exact_size
    pub localtime: bool,  // autoindex_localtime
    /// For jsonp: the value of the `callback` query argument, if any.
    pub callback: Option<&'a str>,
    /// The local timezone offset in minutes (for localtime), so tests can fix it.
    pub gmtoff_minutes: i64,
}

/// Reads `dir` (a directory path ending in '/') and renders it. Errors are the io errors of
/// opening/reading the directory (the caller maps ENOENT to 404, EACCES to 403 like nginx).
///
/// This is the listing of a location without a `charset` directive (nginx's default), where
/// the html name column is counted in bytes; [`render_with_charset`] is the general form.
///
/// `opts.callback` is the argument as nginx's `ngx_http_arg` finds it: the first
/// `callback=` of the query string, not percent-decoded.
///
/// Errors:
/// - jsonp with a `callback` longer than 128 bytes or with a byte other than an ASCII letter,
///   a digit, `_` or `.` is an error of kind [`io::ErrorKind::InvalidInput`], for which nginx
///   answers 400. It is checked before the directory is opened, as nginx does, so it wins
///   over a missing directory.
/// - opening: nginx answers 404 for ENOENT, ENOTDIR and ENAMETOOLONG, 403 for EACCES and 500
///   for anything else (`io::Error::raw_os_error` tells them apart).
/// - reading: an entry whose `stat` fails with EACCES is left out, as nginx leaves it out;
///   any other failure (readdir, `stat`, then `lstat`) is an error of kind
///   [`io::ErrorKind::Other`] without an OS error code, so that an entry vanishing under us
///   (ENOENT) is not taken for a missing directory. nginx has sent the header by then and
///   closes the connection; the caller has sent nothing and can answer 500.
#[cfg_attr(not(test), allow(dead_code))]
pub fn render(dir: &Path, opts: &Options) -> io::Result<Listing> {
    render_with_charset(dir, opts, None)
}

/// [`render`], for an answer whose charset the `charset` directive sets: `charset` is what
/// nginx's charset filter puts into a `text/html` answer (the directive's value where
/// `charset_types` covers text/html, as it does by default), or `None` without one.
///
/// Only utf-8 (in any case) changes the body, and only in html: nginx then counts the name
/// column in UTF-8 characters and truncates between characters, where otherwise it counts
/// and cuts bytes. The "; charset=..." the filter appends to the header is the filter's
/// business, so [`Listing::content_type`] stays what autoindex itself sets.
pub fn render_with_charset(
    dir: &Path,
    opts: &Options,
    charset: Option<&str>,
) -> io::Result<Listing> {
    let format = Format::new(opts.format, opts.callback)?;
    let mut entries = read_entries(dir)?;
    // Directories first, then by name as strcmp orders the bytes (no name holds a NUL).
    entries.sort_by(|a, b| {
        let a_dir = a.kind == Kind::Directory;
        let b_dir = b.kind == Kind::Directory;
        b_dir.cmp(&a_dir).then_with(|| a.name.cmp(&b.name))
    });
    let utf8 = charset.is_some_and(|c| c.eq_ignore_ascii_case("utf-8"));
    let (content_type, body) = match format {
        Format::Html => ("text/html", html(opts, &entries, utf8)),
        Format::Json => ("application/json", json(&entries, None)),
        Format::Jsonp(callback) => ("application/javascript", json(&entries, Some(callback))),
        Format::Xml => ("text/xml; charset=utf-8", xml(&entries)),
    };
    Ok(Listing {
        content_type: content_type.to_string(),
        body,
    })
}

/// The longest `callback` nginx takes.
const CALLBACK_MAX_LEN: usize = 128;

/// The width of the html name column, in bytes or (with utf-8) characters.
const NAME_COLUMN: usize = 50;

/// A name longer than the column keeps this much, then "..&gt;".
const NAME_TRUNCATED: usize = NAME_COLUMN - 3;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// The format after nginx's handler has looked at the `callback` argument.
enum Format<'a> {
    Html,
    Json,
    Jsonp(&'a str),
    Xml,
}

impl<'a> Format<'a> {
    /// An unknown name is html, as in nginx's `switch` default; the configuration compiler
    /// only lets the four names through.
    fn new(name: &str, callback: Option<&'a str>) -> io::Result<Self> {
        Ok(match name {
            "json" => Format::Json,
            "xml" => Format::Xml,
            // jsonp without a callback, or with an empty one, is plain json.
            "jsonp" => match jsonp_callback(callback)? {
                Some(callback) => Format::Jsonp(callback),
                None => Format::Json,
            },
            _ => Format::Html,
        })
    }
}

/// Checks `callback` as nginx does; `None` when it is absent or empty.
fn jsonp_callback(callback: Option<&str>) -> io::Result<Option<&str>> {
    let Some(callback) = callback.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    if callback.len() > CALLBACK_MAX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("client sent too long callback name: \"{callback}\""),
        ));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
    if !callback.bytes().all(allowed) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("client sent invalid callback name: \"{callback}\""),
        ));
    }
    Ok(Some(callback))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Directory,
    File,
    /// A broken symbolic link (then described by `lstat`), a fifo, a socket, a device.
    Other,
}

struct Entry {
    name: Vec<u8>,
    kind: Kind,
    /// Seconds since the epoch (`st_mtime`).
    mtime: i64,
    /// `st_size`.
    size: i64,
}

/// The entries nginx lists: everything but names starting with '.', described by `stat`
/// (so a link shows its target), or by `lstat` when the target is missing or loops.
fn read_entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for dirent in std::fs::read_dir(dir)? {
        let dirent = dirent.map_err(|e| reading_failed("readdir()", dir, e))?;
        let name = dirent.file_name();
        let name = name.as_bytes();
        if name.first() == Some(&b'.') {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(name));
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                std::fs::symlink_metadata(&path).map_err(|e| reading_failed("lstat()", &path, e))?
            }
            Err(e) => return Err(reading_failed("stat()", &path, e)),
        };
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            Kind::Directory
        } else if file_type.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        entries.push(Entry {
            name: name.to_vec(),
            kind,
            mtime: metadata.mtime(),
            size: metadata.size() as i64,
        });
    }
    Ok(entries)
}

/// A failure after the directory was opened, in nginx's log wording.
fn reading_failed(call: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::other(format!("{call} \"{}\" failed ({e})", path.display()))
}

fn html(opts: &Options, entries: &[Entry], utf8: bool) -> Vec<u8> {
    let uri = escape_html(opts.uri.as_bytes());
    let mut out = Vec::with_capacity(200 + entries.len() * 120);
    out.extend_from_slice(b"<html>\r\n<head><title>Index of ");
    out.extend_from_slice(&uri);
    out.extend_from_slice(b"</title></head>\r\n<body>\r\n<h1>Index of ");
    out.extend_from_slice(&uri);
    out.extend_from_slice(b"</h1><hr><pre><a href=\"../\">../</a>\r\n");

    let offset = if opts.localtime {
        opts.gmtoff_minutes.saturating_mul(60)
    } else {
        0
    };
    for entry in entries {
        let is_dir = entry.kind == Kind::Directory;
        out.extend_from_slice(b"<a href=\"");
        out.extend_from_slice(&escape_uri_component(&entry.name));
        if is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"\">");

        // `width` is what the name takes in the column: characters with utf-8 (unless the
        // name is not valid UTF-8), bytes otherwise.
        let mut width = if utf8 {
            utf8_length(&entry.name)
        } else {
            entry.name.len()
        };
        let shown = if width > NAME_COLUMN {
            NAME_TRUNCATED
        } else {
            width
        };
        let kept = if width != entry.name.len() {
            utf8_prefix(&entry.name, shown)
        } else {
            &entry.name[..shown]
        };
        // Escaping comes after the cut, so a name full of '&' still shows 47 of them.
        out.extend_from_slice(&escape_html(kept));

        if width > NAME_COLUMN {
            out.extend_from_slice(b"..&gt;</a>");
        } else {
            // A directory's '/' only when it fits in the column.
            if is_dir && width < NAME_COLUMN {
                out.push(b'/');
                width += 1;
            }
            out.extend_from_slice(b"</a>");
            out.resize(out.len() + (NAME_COLUMN - width), b' ');
        }
        out.push(b' ');

        let tm = gmtime(entry.mtime.saturating_add(offset));
        out.extend_from_slice(
            format!(
                "{:02}-{}-{} {:02}:{:02} ",
                tm.mday,
                MONTHS[tm.mon - 1],
                tm.year,
                tm.hour,
                tm.min
            )
            .as_bytes(),
        );
        let size = match (opts.exact_size, is_dir) {
            (true, true) => format!("{:>19}", "-"),
            (true, false) => format!("{:>19}", entry.size),
            (false, true) => format!("{:>7}", "-"),
            (false, false) => human_size(entry.size),
        };
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    out.extend_from_slice(b"</pre><hr></body>\r\n</html>\r\n");
    out
}

/// `autoindex_exact_size off`: a size rounded to K, M or G (powers of 1024, half up), seven
/// columns wide; up to 9999 bytes it stays exact.
fn human_size(length: i64) -> String {
    const K: i64 = 1024;
    const M: i64 = 1024 * K;
    const G: i64 = 1024 * M;
    let scaled = |unit: i64| length / unit + i64::from(length % unit > unit / 2 - 1);
    if length > G - 1 {
        format!("{:>6}G", scaled(G))
    } else if length > M - 1 {
        format!("{:>6}M", scaled(M))
    } else if length > 9999 {
        format!("{:>6}K", scaled(K))
    } else {
        format!(" {length:>6}")
    }
}

fn json(entries: &[Entry], callback: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 100);
    if let Some(callback) = callback {
        out.extend_from_slice(b"/* callback */\r\n");
        out.extend_from_slice(callback.as_bytes());
        out.push(b'(');
    }
    out.push(b'[');
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"\r\n{ \"name\":\"");
        out.extend_from_slice(&escape_json(&entry.name));
        out.extend_from_slice(b"\", \"type\":\"");
        out.extend_from_slice(kind_name(entry.kind).as_bytes());
        out.extend_from_slice(b"\", \"mtime\":\"");
        out.extend_from_slice(http_time(entry.mtime).as_bytes());
        if entry.kind == Kind::File {
            out.extend_from_slice(format!("\", \"size\":{}", entry.size).as_bytes());
        } else {
            out.push(b'"');
        }
        out.extend_from_slice(b" }");
    }
    out.extend_from_slice(b"\r\n]");
    if callback.is_some() {
        out.extend_from_slice(b");");
    }
    out
}

fn xml(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + entries.len() * 100);
    out.extend_from_slice(b"<?xml version=\"1.0\"?>\r\n<list>\r\n");
    for entry in entries {
        let kind = kind_name(entry.kind);
        let tm = gmtime(entry.mtime);
        out.extend_from_slice(
            format!(
                "<{kind} mtime=\"{:4}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                tm.year, tm.mon, tm.mday, tm.hour, tm.min, tm.sec
            )
            .as_bytes(),
        );
        if entry.kind == Kind::File {
            out.extend_from_slice(format!("\" size=\"{}", entry.size).as_bytes());
        }
        out.extend_from_slice(b"\">");
        out.extend_from_slice(&escape_html(&entry.name));
        out.extend_from_slice(format!("</{kind}>\r\n").as_bytes());
    }
    out.extend_from_slice(b"</list>\r\n");
    out
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Directory => "directory",
        Kind::File => "file",
        Kind::Other => "other",
    }
}

/// `ngx_escape_html`: only these four; `'` stays.
fn escape_html(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'&' => out.extend_from_slice(b"&amp;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            _ => out.push(b),
        }
    }
    out
}

/// `ngx_escape_uri(..., NGX_ESCAPE_URI_COMPONENT)`: every byte but ASCII letters, digits and
/// `-._~` becomes `%XX` (upper-case hex); nginx's table escapes `!$&'()*+,;=` too.
fn escape_uri_component(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let kept = |b: u8| b.is_ascii_alphanumeric() || b"-.~_".contains(&b);
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if kept(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    out
}

/// `ngx_escape_json`: `\` and `"` get a backslash, control bytes a short or `\u00XX` escape;
/// every other byte, UTF-8 or not, is copied.
fn escape_json(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04X}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

/// `ngx_utf8_decode` of nginx 1.22: the code point starting `bytes` and the length of its
/// sequence, or `None` where nginx sees invalid UTF-8. Its checks are nginx's, looser than
/// the standard's: a lead byte from 0xf8 up counts as a four-byte lead (its low three bits
/// kept), surrogates pass, and only overlong forms and code points past 0x10ffff fail.
fn utf8_decode(bytes: &[u8]) -> Option<(u32, usize)> {
    let lead = *bytes.first()?;
    let (mut code, valid, continuation) = match lead {
        0xf0..=0xff => (u32::from(lead & 0x07), 0xffff, 3),
        0xe0..=0xef => (u32::from(lead & 0x0f), 0x7ff, 2),
        0xc2..=0xdf => (u32::from(lead & 0x1f), 0x7f, 1),
        _ => return None,
    };
    let tail = bytes.get(1..=continuation)?;
    for &b in tail {
        if b < 0x80 {
            return None;
        }
        code = (code << 6) | u32::from(b & 0x3f);
    }
    (code > valid && code <= 0x10ffff).then_some((code, 1 + continuation))
}

/// `ngx_utf8_length`: the number of characters, or the number of bytes when `bytes` is not
/// UTF-8 to nginx.
fn utf8_length(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    let mut chars = 0;
    while let Some(&b) = rest.first() {
        let step = if b < 0x80 {
            1
        } else {
            match utf8_decode(rest) {
                Some((_, step)) => step,
                None => return bytes.len(),
            }
        };
        rest = &rest[step..];
        chars += 1;
    }
    chars
}

/// The first `chars` characters of `bytes`, stopping early at what is not UTF-8 to nginx
/// (as `ngx_utf8_cpystrn` does).
fn utf8_prefix(bytes: &[u8], chars: usize) -> &[u8] {
    let mut end = 0;
    for _ in 0..chars {
        let Some(&b) = bytes.get(end) else { break };
        end += if b < 0x80 {
            1
        } else {
            match utf8_decode(&bytes[end..]) {
                Some((_, step)) => step,
                None => break,
            }
        };
    }
    &bytes[..end]
}

/// A broken-down UTC time; `mon` counts from 1.
struct Tm {
    year: i64,
    mon: usize,
    mday: i64,
    hour: i64,
    min: i64,
    sec: i64,
    wday: usize,
}

/// `ngx_gmtime`: times before the epoch count as the epoch, and times past 9999-12-31
/// 23:59:59 as that second.
fn gmtime(t: i64) -> Tm {
    const LAST_DAY: i64 = 2_932_896;
    let t = t.max(0);
    let (days, secs) = if t / 86400 > LAST_DAY {
        (LAST_DAY, 86399)
    } else {
        (t / 86400, t % 86400)
    };
    // Civil date from days since the epoch (the proleptic Gregorian calendar, as nginx's
    // Gauss-based formula computes it for every day it accepts).
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let mday = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let mon = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(mon <= 2);
    Tm {
        year,
        mon: mon as usize,
        mday,
        hour: secs / 3600,
        min: secs % 3600 / 60,
        sec: secs % 60,
        // January 1, 1970 was a Thursday.
        wday: ((4 + days) % 7) as usize,
    }
}

/// `ngx_http_time`: "Tue, 01 Dec 2026 10:00:00 GMT".
fn http_time(t: i64) -> String {
    let tm = gmtime(t);
    format!(
        "{}, {:02} {} {:4} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[tm.wday],
        tm.mday,
        MONTHS[tm.mon - 1],
        tm.year,
        tm.hour,
        tm.min,
        tm.sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn entry(name: &[u8], kind: Kind, mtime: i64, size: i64) -> Entry {
        Entry {
            name: name.to_vec(),
            kind,
            mtime,
            size,
        }
    }

    fn options<'a>(format: &'a str, exact_size: bool) -> Options<'a> {
        Options {
            uri: "/",
            format,
            exact_size,
            localtime: false,
            callback: None,
            gmtoff_minutes: 0,
        }
    }

    /// The html row of one entry at the epoch.
    fn row(name: &[u8], kind: Kind, size: i64, exact_size: bool, utf8: bool) -> Vec<u8> {
        let body = html(
            &options("html", exact_size),
            &[entry(name, kind, 0, size)],
            utf8,
        );
        let head = b"<a href=\"../\">../</a>\r\n";
        let start = body.windows(head.len()).position(|w| w == head).unwrap() + head.len();
        let end = body.len() - b"</pre><hr></body>\r\n</html>\r\n".len();
        body[start..end].to_vec()
    }

    fn check_row(name: &[u8], kind: Kind, utf8: bool, expected_link: &str) {
        let got = row(name, kind, 7, true, utf8);
        let size = if kind == Kind::Directory { "-" } else { "7" };
        let expected = format!("{expected_link} 01-Jan-1970 00:00 {size:>19}\r\n");
        assert_eq!(
            String::from_utf8_lossy(&got),
            expected,
            "name {:?}",
            String::from_utf8_lossy(name)
        );
    }

    #[test]
    fn html_name_column() {
        let pad = |n: usize| " ".repeat(n);
        let x50 = "x".repeat(50);
        let x51 = "x".repeat(51);
        let x47 = "x".repeat(47);
        let cases: Vec<(Vec<u8>, Kind, bool, String)> = vec![
            (
                b"a".to_vec(),
                Kind::File,
                false,
                format!("<a href=\"a\">a</a>{}", pad(49)),
            ),
            (
                b"a".to_vec(),
                Kind::Directory,
                false,
                format!("<a href=\"a/\">a/</a>{}", pad(48)),
            ),
            (
                x50.clone().into(),
                Kind::File,
                false,
                format!("<a href=\"{x50}\">{x50}</a>"),
            ),
            // A directory name that fills the column gets no '/' in the text.
            (
                x50.clone().into(),
                Kind::Directory,
                false,
                format!("<a href=\"{x50}/\">{x50}</a>"),
            ),
            (
                x51.clone().into(),
                Kind::File,
                false,
                format!("<a href=\"{x51}\">{x47}..&gt;</a>"),
            ),
            (
                x51.clone().into(),
                Kind::Directory,
                false,
                format!("<a href=\"{x51}/\">{x47}..&gt;</a>"),
            ),
            (
                b"a&b <c>\"d'".to_vec(),
                Kind::File,
                false,
                format!(
                    "<a href=\"a%26b%20%3Cc%3E%22d%27\">a&amp;b &lt;c&gt;&quot;d'</a>{}",
                    pad(40)
                ),
            ),
            // The cut comes before the escaping.
            (
                "&".repeat(60).into(),
                Kind::File,
                false,
                format!(
                    "<a href=\"{}\">{}..&gt;</a>",
                    "%26".repeat(60),
                    "&amp;".repeat(47)
                ),
            ),
            // Without utf-8, bytes: 25 'ü' fill the column, 26 are cut in the middle of one.
            (
                "ü".repeat(25).into(),
                Kind::File,
                false,
                format!("<a href=\"{}\">{}</a>", "%C3%BC".repeat(25), "ü".repeat(25)),
            ),
            (
                "ü".repeat(26).into(),
                Kind::File,
                false,
                format!(
                    "<a href=\"{}\">{}\u{FFFD}..&gt;</a>",
                    "%C3%BC".repeat(26),
                    "ü".repeat(23)
                ),
            ),
            // With utf-8, characters.
            (
                "ü".repeat(50).into(),
                Kind::File,
                true,
                format!("<a href=\"{}\">{}</a>", "%C3%BC".repeat(50), "ü".repeat(50)),
            ),
            (
                "ü".repeat(51).into(),
                Kind::File,
                true,
                format!(
                    "<a href=\"{}\">{}..&gt;</a>",
                    "%C3%BC".repeat(51),
                    "ü".repeat(47)
                ),
            ),
            (
                "ü".repeat(49).into(),
                Kind::Directory,
                true,
                format!(
                    "<a href=\"{}/\">{}/</a>",
                    "%C3%BC".repeat(49),
                    "ü".repeat(49)
                ),
            ),
            (
                format!("<{}", "ü".repeat(55)).into(),
                Kind::File,
                true,
                format!(
                    "<a href=\"%3C{}\">&lt;{}..&gt;</a>",
                    "%C3%BC".repeat(55),
                    "ü".repeat(46)
                ),
            ),
        ];
        for (name, kind, utf8, expected) in cases {
            check_row(&name, kind, utf8, &expected);
        }
    }

    #[test]
    fn html_invalid_utf8_is_bytes_even_with_utf8() {
        // Not UTF-8 to nginx: counted and cut in bytes, copied raw.
        let name = [&[0xffu8][..], &b"x".repeat(59)].concat();
        let got = row(&name, Kind::File, 1, true, true);
        let expected = [
            b"<a href=\"%FF".as_slice(),
            &b"x".repeat(59),
            b"\">\xff",
            &b"x".repeat(46),
            b"..&gt;</a>",
        ]
        .concat();
        assert!(
            got.starts_with(&expected),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    #[test]
    fn human_sizes() {
        let cases: &[(i64, &str)] = &[
            (0, "      0"),
            (9999, "   9999"),
            (10000, "    10K"),
            (10239, "    10K"),
            (10751, "    10K"),
            (10752, "    11K"),
            (1048575, "  1024K"),
            (1048576, "     1M"),
            (1572863, "     1M"),
            (1572864, "     2M"),
            (1073741823, "  1024M"),
            (1073741824, "     1G"),
            (1610612736, "     2G"),
            (i64::MAX, "8589934592G"),
        ];
        for &(size, expected) in cases {
            assert_eq!(human_size(size), expected, "size {size}");
        }
    }

    #[test]
    fn escapes() {
        let all: Vec<u8> = (0u8..=255).collect();
        let kept: Vec<u8> = escape_uri_component(&all)
            .into_iter()
            .filter(|b| *b != b'%' && !b.is_ascii_hexdigit())
            .collect();
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "-.GHIJKLMNOPQRSTUVWXYZ_ghijklmnopqrstuvwxyz~"
        );
        assert_eq!(escape_uri_component(b"a b/%"), b"a%20b%2F%25");
        assert_eq!(
            escape_json(b"a\"\\\n\r\t\x08\x0c\x01\x1f\x7f\xff"),
            b"a\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001F\x7f\xff"
        );
        assert_eq!(
            escape_html(b"<a href='x'>&\"</a>"),
            b"&lt;a href='x'&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn utf8_as_nginx_1_22_reads_it() {
        assert_eq!(utf8_length("aü日😀".as_bytes()), 4);
        // Overlong, truncated, past U+10FFFF: not UTF-8, so the byte count.
        assert_eq!(utf8_length(b"a\xc0\x80"), 3);
        assert_eq!(utf8_length(b"a\xe2\x82"), 3);
        assert_eq!(utf8_length(b"\xf4\x90\x80\x80"), 4);
        // Surrogates pass, and 0xfc leads four bytes in 1.22.
        assert_eq!(utf8_length(b"\xed\xa0\x80"), 1);
        assert_eq!(utf8_length(b"\xfc\x84\x80\x80"), 1);
        assert_eq!(utf8_prefix("üüü".as_bytes(), 2), "üü".as_bytes());
        assert_eq!(utf8_prefix(b"ab", 5), b"ab");
    }

    #[test]
    fn gmtime_matches_the_calendar() {
        // Every day nginx can print, against httpdate's independent formatting.
        for day in 0..=2_932_896i64 {
            let t = day * 86400 + (day * 7919) % 86400;
            let expected = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t as u64));
            assert_eq!(http_time(t), expected, "t = {t}");
        }
        assert_eq!(http_time(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_time(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn jsonp_callback_as_nginx_checks_it() {
        assert_eq!(jsonp_callback(None).unwrap(), None);
        assert_eq!(jsonp_callback(Some("")).unwrap(), None);
        assert_eq!(jsonp_callback(Some("a.B_9")).unwrap(), Some("a.B_9"));
        let long = "a".repeat(128);
        assert_eq!(jsonp_callback(Some(&long)).unwrap(), Some(long.as_str()));
        for bad in ["a-b", "a b", "é", "a%2E", &"a".repeat(129)] {
            let e = jsonp_callback(Some(bad)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn json_and_xml_shapes() {
        let entries = [
            entry(b"d", Kind::Directory, 0, 4096),
            entry(b"f\"<", Kind::File, 1796119200, 123),
            entry(b"o", Kind::Other, 0, 9),
        ];
        assert_eq!(
            String::from_utf8(json(&entries, Some("cb"))).unwrap(),
            "/* callback */\r\ncb([\r\n\
             { \"name\":\"d\", \"type\":\"directory\", \"mtime\":\"Thu, 01 Jan 1970 00:00:00 GMT\" },\r\n\
             { \"name\":\"f\\\"<\", \"type\":\"file\", \"mtime\":\"Tue, 01 Dec 2026 10:00:00 GMT\", \"size\":123 },\r\n\
             { \"name\":\"o\", \"type\":\"other\", \"mtime\":\"Thu, 01 Jan 1970 00:00:00 GMT\" }\r\n]);"
        );
        assert_eq!(json(&[], None), b"[\r\n]");
        assert_eq!(
            String::from_utf8(xml(&entries)).unwrap(),
            "<?xml version=\"1.0\"?>\r\n<list>\r\n\
             <directory mtime=\"1970-01-01T00:00:00Z\">d</directory>\r\n\
             <file mtime=\"2026-12-01T10:00:00Z\" size=\"123\">f&quot;&lt;</file>\r\n\
             <other mtime=\"1970-01-01T00:00:00Z\">o</other>\r\n</list>\r\n"
        );
    }

    #[test]
    fn html_page_and_localtime() {
        let mut opts = options("html", false);
        opts.uri = "/a b&<\"'/";
        opts.localtime = true;
        opts.gmtoff_minutes = 330;
        // 20:00 UTC is 01:30 the next day at +05:30.
        let body = html(&opts, &[entry(b"f", Kind::File, 1796155200, 10000)], false);
        let expected = format!(
            "<html>\r\n<head><title>Index of /a b&amp;&lt;&quot;'/</title></head>\r\n<body>\r\n\
             <h1>Index of /a b&amp;&lt;&quot;'/</h1><hr><pre><a href=\"../\">../</a>\r\n\
             <a href=\"f\">f</a>{} 02-Dec-2026 01:30     10K\r\n\
             </pre><hr></body>\r\n</html>\r\n",
            " ".repeat(49)
        );
        assert_eq!(String::from_utf8(body).unwrap(), expected);
    }

    /// A scratch directory, removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(what: &str) -> Scratch {
            static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "portico-autoindex-{what}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn at(t: i64) -> SystemTime {
        if t >= 0 {
            UNIX_EPOCH + Duration::from_secs(t as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
        }
    }

    fn set_mtime(path: &Path, t: i64) {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(at(t))
            .unwrap();
    }

    /// The tree both nginx and `render` list: every case the brief names, with fixed mtimes
    /// (the symbolic links' own, which only the broken ones show, are whatever they get).
    fn build_tree(root: &Path) {
        let os = |name: &[u8]| root.join(OsStr::from_bytes(name));
        let base = 1_796_119_200; // Tue, 01 Dec 2026 10:00:00 GMT
        let files: Vec<(Vec<u8>, u64)> = vec![
            (b"plain.txt".to_vec(), 0),
            (b"B-upper".to_vec(), 9999),
            (b"a b.txt".to_vec(), 10000),
            (b"amp&lt<gt>quot\"apos'.txt".to_vec(), 10239),
            (b"1048575".to_vec(), 1048575),
            (b"1048576".to_vec(), 1048576),
            (b"1572864".to_vec(), 1572864),
            (b"1073741823".to_vec(), 1073741823),
            (b"1073741824".to_vec(), 1073741824),
            (
                b"5.5G-sparse".to_vec(),
                5 * 1024 * 1024 * 1024 + 512 * 1024 * 1024,
            ),
            ("x".repeat(49).into(), 1),
            ("y".repeat(50).into(), 2),
            ("z".repeat(51).into(), 3),
            ("ü".repeat(25).into(), 4),
            ("ü".repeat(26).into(), 5),
            ("ü".repeat(50).into(), 6),
            ("ü".repeat(51).into(), 7),
            ("日本語のファイル名".repeat(6).into(), 8),
            ("café.txt".into(), 9),
            ("&".repeat(60).into(), 10),
            (format!("<{}", "ü".repeat(55)).into(), 11),
            (b"bad\xff\xfe.bin".to_vec(), 12),
            (b"\xfc\x84\x80\x80-quirk".to_vec(), 13),
            (b"end\xe2\x82".to_vec(), 14),
            (b"\xed\xa0\x80-surrogate".to_vec(), 15),
            (
                [&b"\xff".repeat(30)[..], &"ü".repeat(30).into_bytes()].concat(),
                16,
            ),
            ([&"ü".repeat(30).into_bytes()[..], b"\xff"].concat(), 17),
            (b"tab\there".to_vec(), 18),
            (b"nl\nname".to_vec(), 19),
            (b"\x01ctl\x1f\x7f".to_vec(), 20),
            (b"back\\slash".to_vec(), 21),
            (b"%41percent+plus=;:?#@[]{}|^`!$*()~-_.,".to_vec(), 22),
            (b"old".to_vec(), 23),
            (b".hidden".to_vec(), 24),
        ];
        let dirs: Vec<Vec<u8>> = vec![
            b"sub dir &<>\"'".to_vec(),
            "d".repeat(49).into(),
            "e".repeat(50).into(),
            "f".repeat(51).into(),
            "ö".repeat(49).into(),
            b"empty".to_vec(),
            b".hiddendir".to_vec(),
            b"Zdir".to_vec(),
        ];
        std::fs::create_dir_all(root).unwrap();
        for (i, (name, size)) in files.iter().enumerate() {
            let file = std::fs::File::create(os(name)).unwrap();
            file.set_len(*size).unwrap();
            file.set_modified(at(base + i as i64 * 7919)).unwrap();
        }
        // Before the epoch, which nginx shows as the epoch.
        set_mtime(&os(b"old"), -1000);
        // 20:00 UTC: another day at +05:30.
        set_mtime(&os(b"plain.txt"), base + 10 * 3600);
        for name in &dirs {
            std::fs::create_dir(os(name)).unwrap();
        }
        let sub = os(b"sub dir &<>\"'");
        std::fs::write(sub.join("inner.txt"), b"inner").unwrap();
        std::fs::write(sub.join(".hidden"), b"").unwrap();
        std::fs::create_dir(sub.join("dir-é")).unwrap();
        std::os::unix::fs::symlink("plain.txt", os(b"link-to-file")).unwrap();
        std::os::unix::fs::symlink("sub dir &<>\"'", os(b"link-to-dir")).unwrap();
        std::os::unix::fs::symlink("nowhere", os(b"broken-link")).unwrap();
        std::os::unix::fs::symlink("loop", os(b"loop")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(os(b"fifo"))
            .status();
        if !fifo.is_ok_and(|s| s.success()) {
            eprintln!("autoindex: no mkfifo, the tree has no fifo");
        }
        for (i, name) in dirs.iter().enumerate() {
            set_mtime(&os(name), base + 86400 * 40 + i as i64 * 3600);
        }
        set_mtime(&sub.join("dir-é"), base - 86400 * 400);
        set_mtime(&sub, base + 1);
        set_mtime(root, base + 2);
    }

    #[test]
    fn render_reads_what_nginx_reads() {
        let scratch = Scratch::new("render");
        let tree = scratch.0.join("tree");
        build_tree(&tree);
        let dir = format!("{}/", tree.display());
        let listing = render(Path::new(&dir), &options("json", true)).unwrap();
        assert_eq!(listing.content_type, "application/json");
        let body = String::from_utf8_lossy(&listing.body);
        assert!(!body.contains("hidden"), "{body}");
        let lines: Vec<&str> = body.lines().collect();
        // Directories first (link-to-dir among them), then files, each in byte order.
        assert!(
            lines[1].starts_with("{ \"name\":\"Zdir\", \"type\":\"directory\""),
            "{body}"
        );
        assert!(body.contains("{ \"name\":\"link-to-dir\", \"type\":\"directory\""));
        assert!(body.contains(
            "{ \"name\":\"link-to-file\", \"type\":\"file\", \"mtime\":\"Tue, 01 Dec 2026 20:00:00 GMT\", \"size\":0 }"
        ));
        assert!(body.contains("{ \"name\":\"broken-link\", \"type\":\"other\", \"mtime\""));
        assert!(body.contains("{ \"name\":\"loop\", \"type\":\"other\", \"mtime\""));
        assert!(body.contains("{ \"name\":\"old\", \"type\":\"file\", \"mtime\":\"Thu, 01 Jan 1970 00:00:00 GMT\", \"size\":23 }"));
        let entries = &lines[1..lines.len() - 1];
        let dirs_end = entries
            .iter()
            .position(|l| !l.contains("\"directory\""))
            .unwrap();
        assert_eq!(dirs_end, 8, "{body}");
        assert!(
            entries[dirs_end..]
                .iter()
                .all(|l| !l.contains("\"directory\""))
        );

        let xml = render(Path::new(&dir), &options("xml", true)).unwrap();
        assert_eq!(xml.content_type, "text/xml; charset=utf-8");

        let missing = render(&tree.join("missing/"), &options("html", true)).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let mut jsonp = options("jsonp", true);
        jsonp.callback = Some("bad-name");
        // The callback is checked first, as nginx checks it before opening the directory.
        let bad = render(&tree.join("missing/"), &jsonp).unwrap_err();
        assert_eq!(bad.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_link_stat_cannot_follow_fails_the_whole_listing() {
        // nginx only falls back to lstat for ENOENT and ELOOP: ENOTDIR or ENAMETOOLONG from
        // stat aborts the listing (after its header went out).
        for target in ["file/below".to_string(), "n".repeat(300)] {
            let scratch = Scratch::new("notdir");
            std::fs::write(scratch.0.join("file"), b"").unwrap();
            std::os::unix::fs::symlink(&target, scratch.0.join("link")).unwrap();
            let dir = format!("{}/", scratch.0.display());
            let e = render(Path::new(&dir), &options("html", true)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Other, "{e}");
            assert_eq!(e.raw_os_error(), None);
            assert!(e.to_string().starts_with("stat() \""), "{e}");
        }
    }

    // The comparison with nginx itself.

    /// nginx, if installed; PORTICO_REQUIRE_NGINX=1 makes its absence a failure, as in the
    /// integration tests.
    fn nginx_binary() -> Option<PathBuf> {
        let found = [
            std::env::var("NGINX_BINARY").ok(),
            Some("/usr/sbin/nginx".into()),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.exists());
        if found.is_none() && std::env::var("PORTICO_REQUIRE_NGINX").is_ok_and(|v| v == "1") {
            panic!("nginx is required (PORTICO_REQUIRE_NGINX=1) but was not found");
        }
        found
    }

    /// The offset nginx runs with (TZ is the one variable nginx keeps), so localtime is
    /// compared away from UTC.
    const NGINX_TZ: &str = "XYZ-5:30";
    const NGINX_GMTOFF: i64 = 330;

    /// A running nginx, stopped on drop.
    struct Nginx {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for Nginx {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_nginx(nginx: &Path, prefix: &Path, tree: &Path) -> Nginx {
        let locations = [
            ("/exact/", ""),
            ("/human/", "autoindex_exact_size off;"),
            (
                "/local/",
                "autoindex_exact_size off; autoindex_localtime on;",
            ),
            ("/localexact/", "autoindex_localtime on;"),
            ("/utf8/", "charset utf-8;"),
            ("/utf8human/", "charset utf-8; autoindex_exact_size off;"),
            ("/json/", "autoindex_format json;"),
            (
                "/jsonlocal/",
                "autoindex_format json; autoindex_localtime on;",
            ),
            ("/jsonp/", "autoindex_format jsonp;"),
            ("/xml/", "autoindex_format xml; autoindex_localtime on;"),
        ];
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let d = prefix.display();
            let mut http = String::new();
            for (location, directives) in locations {
                http += &format!(
                    "        location {location} {{ alias {}/; {directives} }}\n",
                    tree.display()
                );
            }
            let conf = format!(
                "user root;\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d}/cb;\n\
                 proxy_temp_path {d}/px;\n    fastcgi_temp_path {d}/fc;\n    uwsgi_temp_path {d}/uw;\n\
                 scgi_temp_path {d}/sc;\n    server {{\n        listen 127.0.0.1:{port};\n\
                 root {d}/www;\n        autoindex on;\n{http}    }}\n}}\n"
            );
            std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
            let child = std::process::Command::new(nginx)
                .arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .arg("-e")
                .arg(prefix.join("error.log"))
                .env("TZ", NGINX_TZ)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut server = Nginx { child, port };
            for _ in 0..200 {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = server.child.kill();
            last_error = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start: {last_error}");
    }

    struct Answer {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    fn get(port: u16, target: &str) -> Answer {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        });
        Answer {
            status,
            content_type,
            body: answer[split + 4..].to_vec(),
        }
    }

    fn percent_encode(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    /// Where two bodies part, for a readable failure.
    fn first_difference(ours: &[u8], theirs: &[u8]) -> String {
        let at = ours
            .iter()
            .zip(theirs)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(theirs.len()));
        let from = at.saturating_sub(120);
        format!(
            "at byte {at}:\n  ours:  {:?}\n  nginx: {:?}",
            String::from_utf8_lossy(&ours[from..(at + 120).min(ours.len())]),
            String::from_utf8_lossy(&theirs[from..(at + 120).min(theirs.len())])
        )
    }

    #[test]
    fn matches_nginx_byte_for_byte() {
        let Some(nginx) = nginx_binary() else {
            eprintln!("autoindex: nginx is not installed, comparison skipped");
            return;
        };
        let scratch = Scratch::new("nginx");
        let tree = scratch.0.join("tree");
        build_tree(&tree);
        std::fs::create_dir(scratch.0.join("www")).unwrap();
        let server = start_nginx(&nginx, &scratch.0, &tree);

        // (location, format, exact_size, localtime, charset)
        let locations: [(&str, &str, bool, bool, Option<&str>); 10] = [
            ("/exact/", "html", true, false, None),
            ("/human/", "html", false, false, None),
            ("/local/", "html", false, true, None),
            ("/localexact/", "html", true, true, None),
            ("/utf8/", "html", true, false, Some("utf-8")),
            ("/utf8human/", "html", false, false, Some("utf-8")),
            ("/json/", "json", true, false, None),
            ("/jsonlocal/", "json", true, true, None),
            ("/jsonp/", "jsonp", true, false, None),
            ("/xml/", "xml", true, true, None),
        ];
        let subdirs: [&[u8]; 4] = [
            b"",
            b"sub dir &<>\"'/",
            "sub dir &<>\"'/dir-é/".as_bytes(),
            b"empty/",
        ];
        let long_callback = "c".repeat(128);
        let callbacks: Vec<Option<&str>> = vec![
            None,
            Some(""),
            Some("cb_1.X"),
            Some(&long_callback),
            Some("a-b"),
        ];
        let mut compared = 0;
        for (location, format, exact_size, localtime, charset) in locations {
            for sub in subdirs {
                let callback_cases = if format == "jsonp" {
                    callbacks.clone()
                } else {
                    vec![None]
                };
                for callback in callback_cases {
                    let uri = format!("{location}{}", String::from_utf8_lossy(sub));
                    let mut target = format!("{location}{}", percent_encode(sub));
                    if let Some(callback) = callback {
                        target += &format!("?callback={callback}");
                    }
                    let answer = get(server.port, &target);
                    if std::env::var_os("AUTOINDEX_DUMP").is_some() {
                        eprintln!("== {target}\n{}", String::from_utf8_lossy(&answer.body));
                    }
                    let dir = tree.join(OsStr::from_bytes(sub));
                    let opts = Options {
                        uri: &uri,
                        format,
                        exact_size,
                        localtime,
                        callback,
                        gmtoff_minutes: NGINX_GMTOFF,
                    };
                    let ours = render_with_charset(&dir, &opts, charset);
                    match ours {
                        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                            assert_eq!(answer.status, 400, "{target}: we refused with {e}");
                        }
                        Err(e) => panic!("{target}: {e}"),
                        Ok(listing) => {
                            assert_eq!(answer.status, 200, "{target}");
                            let mut content_type = listing.content_type.clone();
                            if let Some(charset) = charset {
                                // What nginx's charset filter adds.
                                content_type += &format!("; charset={charset}");
                            }
                            assert_eq!(
                                answer.content_type.as_deref(),
                                Some(&*content_type),
                                "{target}"
                            );
                            assert!(
                                listing.body == answer.body,
                                "{target} differs {}",
                                first_difference(&listing.body, &answer.body)
                            );
                        }
                    }
                    compared += 1;
                }
            }
        }
        eprintln!("autoindex: {compared} answers match nginx");
    }
}
