//! Request URIs as nginx reads them: percent-decoding, `/./` and `/../` resolved, slashes
//! merged, the query split off (`ngx_http_parse_complex_uri`); and escaping back for a proxied
//! request (`ngx_escape_uri`).

/// A request target, split and normalized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedUri {
    /// The decoded, normalized path (`$uri`).
    pub path: String,
    /// The query, without `?` (`$args`).
    pub args: String,
    /// The path held a `%` escape (nginx's `quoted_uri`).
    pub quoted: bool,
    /// The path held a `+` (nginx's `plus_in_uri`).
    pub plus: bool,
}

/// Bytes of a request as text: ASCII, as nearly every request is, without a UTF-8 walk
/// (which costs more than the copy on a short value); anything else with invalid sequences
/// replaced.
pub fn text(v: &[u8]) -> std::borrow::Cow<'_, str> {
    if v.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        std::borrow::Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(v) })
    } else {
        String::from_utf8_lossy(v)
    }
}

/// Why a target was refused: nginx answers 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadUri;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Usual,
    Slash,
    Dot,
    DotDot,
}

/// Parses an origin-form target (`/a/../b%20c?x=1#frag`).
pub fn parse(target: &str, merge_slashes: bool) -> Result<ParsedUri, BadUri> {
    let raw = target.as_bytes();
    let (path_end, args) = match raw.iter().position(|&b| b == b'?') {
        Some(q) => {
            let rest = &target[q + 1..];
            let args = rest.split('#').next().unwrap_or("");
            (q, args.to_string())
        }
        None => (raw.len(), String::new()),
    };
    let path = &raw[..path_end];
    let path = match path.iter().position(|&b| b == b'#') {
        Some(h) => &path[..h],
        None => path,
    };
    let mut out = ParsedUri {
        args,
        ..ParsedUri::default()
    };
    // Most paths have nothing to decode, merge or resolve (no `%`, no `//`, no `/.`): the
    // state machine below would copy them unchanged.
    if path.first() == Some(&b'/') {
        let mut plain = true;
        let mut prev = 0u8;
        for &c in path {
            match c {
                b'%' => plain = false,
                b'.' if prev == b'/' => plain = false,
                b'/' if prev == b'/' && merge_slashes => plain = false,
                b'+' => out.plus = true,
                _ => {}
            }
            prev = c;
        }
        if plain {
            out.path = text(path).into_owned();
            return Ok(out);
        }
        out.plus = false;
    }
    let mut u: Vec<u8> = Vec::with_capacity(path.len() + 1);
    if path.first() != Some(&b'/') {
        u.push(b'/');
    }
    let mut state = State::Usual;
    let mut i = 0;
    // A decoded byte waiting to be read in the state the escape began in.
    let mut pending: Option<u8> = None;
    loop {
        let ch = match pending.take() {
            Some(c) => c,
            None => {
                if i >= path.len() {
                    break;
                }
                let c = path[i];
                i += 1;
                if c == b'%' {
                    out.quoted = true;
                    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                    let (Some(h), Some(l)) = (hex(path.get(i)), hex(path.get(i + 1))) else {
                        return Err(BadUri);
                    };
                    let second_is_digit = path[i + 1].is_ascii_digit();
                    i += 2;
                    let d = (h * 16 + l) as u8;
                    if d == 0 {
                        return Err(BadUri);
                    }
                    // nginx writes these literally, in whatever state it was.
                    if (second_is_digit && (d == b'%' || d == b'#'))
                        || (!second_is_digit && d == b'?')
                    {
                        u.push(d);
                        state = State::Usual;
                        continue;
                    }
                    if d == b'+' {
                        out.plus = true;
                    }
                    pending = Some(d);
                    continue;
                }
                c
            }
        };
        if ch == b'+' {
            out.plus = true;
        }
        match (state, ch) {
            (_, b'/') => match state {
                State::Usual => {
                    state = State::Slash;
                    u.push(b'/');
                }
                State::Slash => {
                    if !merge_slashes {
                        u.push(b'/');
                    }
                }
                State::Dot => {
                    u.pop();
                    state = State::Slash;
                }
                State::DotDot => {
                    up(&mut u)?;
                    state = State::Slash;
                }
            },
            (State::Slash, b'.') => {
                state = State::Dot;
                u.push(b'.');
            }
            (State::Dot, b'.') => {
                state = State::DotDot;
                u.push(b'.');
            }
            (_, c) => {
                state = State::Usual;
                u.push(c);
            }
        }
    }
    match state {
        State::Dot => {
            u.pop();
        }
        State::DotDot => up(&mut u)?,
        _ => {}
    }
    out.path =
        String::from_utf8(u).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok(out)
}

/// Steps back over `/..` and the segment before it; above the root is a bad request.
fn up(u: &mut Vec<u8>) -> Result<(), BadUri> {
    // u ends with "/.." : drop it and the previous segment, keeping its leading slash.
    let keep = u.len().checked_sub(4).ok_or(BadUri)?;
    let slash = u[..=keep].iter().rposition(|&b| b == b'/').ok_or(BadUri)?;
    u.truncate(slash + 1);
    Ok(())
}

/// Which bytes `ngx_escape_uri` escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// NGX_ESCAPE_URI: a path sent upstream.
    Uri,
    /// NGX_ESCAPE_ARGS: captures copied into a query.
    Args,
}

fn needs_escape(b: u8, kind: Escape) -> bool {
    if b < 0x20 || b >= 0x7f {
        return true;
    }
    match kind {
        Escape::Uri => matches!(
            b,
            b' ' | b'"'
                | b'#'
                | b'%'
                | b'<'
                | b'>'
                | b'?'
                | b'\\'
                | b'^'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
        ),
        Escape::Args => matches!(
            b,
            b' ' | b'"'
                | b'#'
                | b'%'
                | b'&'
                | b'+'
                | b';'
                | b'<'
                | b'>'
                | b'?'
                | b'\\'
                | b'^'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
        ),
    }
}

pub fn escape(s: &str, kind: Escape) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if needs_escape(b, kind) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Whether escaping would change `s`.
pub fn needs_escaping(s: &str, kind: Escape) -> bool {
    s.bytes().any(|b| needs_escape(b, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse(s, true)
            .map(|u| u.path)
            .unwrap_or_else(|_| "400".into())
    }

    #[test]
    fn normalizes_as_nginx() {
        assert_eq!(p("/a/b"), "/a/b");
        assert_eq!(p("/a//b///c"), "/a/b/c");
        assert_eq!(p("/a/./b/."), "/a/b/");
        assert_eq!(p("/a/b/../c"), "/a/c");
        assert_eq!(p("/a/b/.."), "/a/");
        assert_eq!(p("/.."), "400");
        assert_eq!(p("/a/%2e%2e/b"), "/b");
        assert_eq!(p("/a%2Fb"), "/a/b");
        assert_eq!(p("/a%20b"), "/a b");
        assert_eq!(p("/a%3Fb"), "/a?b");
        assert_eq!(p("/a%25b"), "/a%b");
        assert_eq!(p("/a%zz"), "400");
        assert_eq!(p("/a%00"), "400");
        assert_eq!(p("/caf%C3%A9"), "/café");
        assert_eq!(p("/..a/b"), "/..a/b");
        let u = parse("/x?a=1&b=%20#f", true).unwrap();
        assert_eq!((u.path.as_str(), u.args.as_str()), ("/x", "a=1&b=%20"));
        assert_eq!(parse("/a//b", false).unwrap().path, "/a//b");
    }

    #[test]
    fn escapes_as_nginx() {
        assert_eq!(escape("/a b?c%d/é", Escape::Uri), "/a%20b%3Fc%25d/%C3%A9");
        assert_eq!(escape("a&b+c", Escape::Args), "a%26b%2Bc");
    }
}

/// nginx's `ngx_unescape_uri` with NGX_UNESCAPE_REDIRECT, as a rewrite's redirect target
/// goes through it: `%XX` of a printable character after `%` is decoded, others are kept (so
/// `%0D%0A` cannot split the header); decoding stops at a `?` (written or decoded). Invalid
/// escapes lose bytes exactly as nginx's state machine drops them.
pub fn unescape_redirect(s: &str) -> String {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        _ => match c | 0x20 {
            c @ b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        },
    };
    while i < b.len() {
        let ch = b[i];
        i += 1;
        if ch == b'?' {
            out.push(ch);
            out.extend_from_slice(&b[i..]);
            return String::from_utf8_lossy(&out).into_owned();
        }
        if ch != b'%' {
            out.push(ch);
            continue;
        }
        // sw_quoted
        let Some(&c1) = b.get(i) else { break };
        i += 1;
        let Some(high) = hex(c1) else {
            out.push(c1);
            continue;
        };
        // sw_quoted_second
        let Some(&c2) = b.get(i) else { break };
        i += 1;
        let Some(low) = hex(c2) else {
            continue;
        };
        let decoded = (high << 4) + low;
        if !c2.is_ascii_digit() && decoded == b'?' {
            out.push(b'?');
            out.extend_from_slice(&b[i..]);
            return String::from_utf8_lossy(&out).into_owned();
        }
        if decoded > b'%' && decoded < 0x7f {
            out.push(decoded);
        } else {
            out.extend_from_slice(&[b'%', c1, c2]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod redirect_tests {
    use super::unescape_redirect;

    #[test]
    fn unescapes_as_nginx_redirects() {
        assert_eq!(
            unescape_redirect("http%3A%2F%2Fexample.com%2F%3Ffrom"),
            "http://example.com/?from"
        );
        assert_eq!(
            unescape_redirect("http%3A%2F%2Fexample.com%0D%0Asplit"),
            "http://example.com%0D%0Asplit"
        );
        assert_eq!(unescape_redirect("/a%20b?x=%41"), "/a%20b?x=%41");
        assert_eq!(unescape_redirect("/a%41"), "/aA");
    }
}

/// nginx's `ngx_http_parse_unsafe_uri` for an `X-Accel-Redirect` target: `None` when it is
/// unsafe (empty, `..` segments, NUL, before or after unescaping); else the URI, unescaped,
/// and its arguments.
pub fn parse_unsafe(value: &str) -> Option<(String, String)> {
    let dotdot = |p: &[u8]| p.starts_with(b"..") && (p.len() == 2 || p[2] == b'/');
    let check = |p: &[u8]| -> bool {
        if dotdot(p) {
            return false;
        }
        for (i, &c) in p.iter().enumerate() {
            if c == 0 {
                return false;
            }
            if c == b'/' && p.len() - i > 2 && dotdot(&p[i + 1..]) {
                return false;
            }
        }
        true
    };
    if value.is_empty() || value.starts_with('?') {
        return None;
    }
    let (uri, args) = value.split_once('?').unwrap_or((value, ""));
    if !check(uri.as_bytes()) {
        return None;
    }
    if !uri.contains('%') {
        return Some((uri.to_string(), args.to_string()));
    }
    let decoded = percent_decode_plain(uri);
    if decoded.is_empty() || !check(&decoded) {
        return None;
    }
    Some((
        String::from_utf8_lossy(&decoded).into_owned(),
        args.to_string(),
    ))
}

/// `ngx_unescape_uri` with no type: every valid `%XX` decoded.
fn percent_decode_plain(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            )
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
