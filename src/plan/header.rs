//! Header lines as requests and answers hold them: names and most values are known words or
//! short, so a line is mostly borrowed or held in place, with no allocation of its own.

use std::borrow::Cow;

/// A header line. Names and most values are known words: borrowed, they cost no
/// allocation per answer; the values made per answer (a date, a length, an ETag) are short
/// and kept in place ([`Text`]).
pub type Line = (Cow<'static, str>, Text);

/// A header line from owned text (an upstream's, an `add_header`'s).
pub fn owned((name, value): (String, String)) -> Line {
    (Cow::Owned(name), Text::Owned(value))
}

/// Header names clients and upstreams commonly send, as they are usually spelt: a name read
/// that is one of these costs no allocation.
const KNOWN_NAMES: &[&str] = &[
    "Server",
    "Date",
    "Content-Type",
    "Content-Length",
    "Connection",
    "Transfer-Encoding",
    "Keep-Alive",
    "Set-Cookie",
    "Cache-Control",
    "Expires",
    "Last-Modified",
    "ETag",
    "Location",
    "Vary",
    "Content-Encoding",
    "Content-Language",
    "Content-Disposition",
    "Accept-Ranges",
    "Pragma",
    "Refresh",
    "Allow",
    "Age",
    "Via",
    "WWW-Authenticate",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "Strict-Transport-Security",
    "Content-Security-Policy",
    "Access-Control-Allow-Origin",
    "X-Accel-Redirect",
    "X-Accel-Buffering",
    "X-Request-Id",
    "X-Powered-By",
    // What clients send.
    "Host",
    "User-Agent",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Cookie",
    "Referer",
    "Origin",
    "Authorization",
    "If-Modified-Since",
    "If-None-Match",
    "If-Range",
    "Range",
    "Upgrade",
    "Upgrade-Insecure-Requests",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "X-Requested-With",
    "Sec-Fetch-Site",
    "Sec-Fetch-Mode",
    "Sec-Fetch-Dest",
    "Sec-Fetch-User",
    "DNT",
    "TE",
    // ASGI servers (uvicorn, hypercorn) send names in lower case; HTTP/2-era clients too.
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "cookie",
    "referer",
    "server",
    "date",
    "content-type",
    "content-length",
    "connection",
    "transfer-encoding",
    "set-cookie",
    "cache-control",
    "location",
    "vary",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
];

/// A header name as a [`Line`] holds it: borrowed when it is a known one, else copied.
pub fn name_of(name: &str) -> Cow<'static, str> {
    /// [`KNOWN_NAMES`] by length: a lookup compares a few names of the same length.
    static BY_LEN: std::sync::LazyLock<Vec<Vec<&'static str>>> = std::sync::LazyLock::new(|| {
        let longest = KNOWN_NAMES.iter().map(|n| n.len()).max().unwrap_or(0);
        let mut table = vec![Vec::new(); longest + 1];
        for n in KNOWN_NAMES {
            table[n.len()].push(*n);
        }
        table
    });
    // The first byte tells most names of a length apart (Accept, Cookie, Origin, Server
    // and their lower-case spellings are all six): one comparison where there were several.
    let first = name.as_bytes().first().copied();
    let found = BY_LEN.get(name.len()).and_then(|same| {
        same.iter()
            .find(|k| k.as_bytes().first().copied() == first && k.as_bytes() == name.as_bytes())
    });
    match found {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(name.to_string()),
    }
}

/// A header line read off the wire: known names borrowed, short values in place.
pub fn line_of(name: &str, value: &str) -> Line {
    (name_of(name), Text::copy(value))
}

/// A header value: a known word, text of its own, or up to [`Text::INLINE`] bytes held in
/// place. `Date`, `Last-Modified`, `Content-Length` and most `ETag`s fit in place: the
/// answer's head makes no allocation for them.
#[derive(Clone)]
pub enum Text {
    Static(&'static str),
    Owned(String),
    Inline { len: u8, bytes: [u8; Text::INLINE] },
}

impl Text {
    pub const INLINE: usize = 30;

    /// `s` in place when it fits, else copied into a `String`.
    pub fn copy(s: &str) -> Text {
        if s.len() <= Text::INLINE {
            let mut bytes = [0u8; Text::INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Text::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Text::Owned(s.to_string())
        }
    }

    /// A number in decimal, in place.
    pub fn number(mut n: u64) -> Text {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut bytes = [0u8; Text::INLINE];
        let len = digits.len() - at;
        bytes[..len].copy_from_slice(&digits[at..]);
        Text::Inline {
            len: len as u8,
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Owned(s) => s,
            Text::Inline { len, bytes } => {
                let bytes = &bytes[..*len as usize];
                // SAFETY: `Inline` is only made from the bytes of a `str`, or from ASCII
                // digits, never cut inside a character.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
        }
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::Static("")
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::Owned(s)
    }
}

impl From<Cow<'static, str>> for Text {
    fn from(s: Cow<'static, str>) -> Text {
        match s {
            Cow::Borrowed(s) => Text::Static(s),
            Cow::Owned(s) => Text::Owned(s),
        }
    }
}
