//! Virtual-server selection on one socket, as `ngx_http_find_virtual_server` does it: the exact
//! name, then the longest leading wildcard (`*.example.com`, `.example.com`), then the longest
//! trailing wildcard (`mail.*`), then the regexes in the order the configuration gives them;
//! otherwise the socket's default server.

use super::LookupMap;

use super::regex::{Captures, Regex};

/// One `server_name` entry, as written.
#[derive(Clone, Debug)]
pub enum ServerName {
    Exact(String),
    /// `*.example.com` (stored as `example.com`), or `.example.com` (which also matches
    /// `example.com` itself).
    Head {
        suffix: String,
        dot: bool,
    },
    /// `mail.*`, stored as `mail`.
    Tail(String),
    Regex(Regex),
}

impl ServerName {
    /// Reads one argument of `server_name`; `Err` is nginx's message.
    pub fn parse(arg: &str) -> Result<ServerName, String> {
        if let Some(re) = arg.strip_prefix('~') {
            if re.is_empty() {
                return Err(format!("empty regex in server name \"{arg}\""));
            }
            return Regex::new(re, true).map(ServerName::Regex);
        }
        let lower = arg.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("*.") {
            return Ok(ServerName::Head {
                suffix: rest.to_string(),
                dot: false,
            });
        }
        if let Some(rest) = lower.strip_prefix('.') {
            return Ok(ServerName::Head {
                suffix: rest.to_string(),
                dot: true,
            });
        }
        if let Some(rest) = lower.strip_suffix(".*") {
            return Ok(ServerName::Tail(rest.to_string()));
        }
        if lower.contains('*') {
            return Err(format!("invalid server name or wildcard \"{arg}\""));
        }
        Ok(ServerName::Exact(lower))
    }

    /// The key two entries conflict on (the same hash key in nginx).
    pub fn key(&self) -> String {
        match self {
            ServerName::Exact(n) => n.clone(),
            ServerName::Head { suffix, dot: false } => format!("*.{suffix}"),
            ServerName::Head { suffix, dot: true } => format!(".{suffix}"),
            ServerName::Tail(p) => format!("{p}.*"),
            ServerName::Regex(r) => format!("~{}", r.as_str()),
        }
    }
}

/// The names of every server on one socket, ready for lookup. Values are server indices.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    exact: LookupMap<String, usize>,
    /// Leading wildcards by suffix: (server, whether the bare suffix matches too).
    head: LookupMap<String, (usize, bool)>,
    tail: LookupMap<String, usize>,
    regex: Vec<(Regex, usize)>,
    /// Longest suffix length in labels, to bound the walk.
    has_wildcards: bool,
}

/// What the lookup found.
#[derive(Debug)]
pub struct Found {
    pub server: usize,
    pub captures: Option<Captures>,
}

impl NameTable {
    /// Adds a name; returns `false` when an earlier server already claimed it (nginx warns
    /// "conflicting server name" and keeps the first).
    pub fn add(&mut self, name: &ServerName, server: usize) -> bool {
        match name {
            ServerName::Exact(n) => insert_first(&mut self.exact, n.clone(), server),
            ServerName::Head { suffix, dot } => {
                self.has_wildcards = true;
                match self.head.get(suffix) {
                    Some(_) => false,
                    None => {
                        self.head.insert(suffix.clone(), (server, *dot));
                        true
                    }
                }
            }
            ServerName::Tail(prefix) => {
                self.has_wildcards = true;
                insert_first(&mut self.tail, prefix.clone(), server)
            }
            ServerName::Regex(r) => {
                self.regex.push((r.clone(), server));
                true
            }
        }
    }

    /// Finds the server for a validated, lower-cased host (no port, no trailing dot).
    pub fn find(&self, host: &str) -> Option<Found> {
        let found = |server| {
            Some(Found {
                server,
                captures: None,
            })
        };
        if let Some(&s) = self.exact.get(host) {
            return found(s);
        }
        if self.has_wildcards && !host.is_empty() {
            // Leading wildcards: try the longest suffix first.
            let mut rest = host;
            let mut first = true;
            loop {
                if let Some(&(s, dot)) = self.head.get(rest) {
                    // "*.x" needs at least one label before "x"; ".x" also matches "x".
                    if !first || dot {
                        return found(s);
                    }
                }
                match rest.find('.') {
                    Some(i) => rest = &rest[i + 1..],
                    None => break,
                }
                first = false;
            }
            // Trailing wildcards: the longest prefix of whole labels, with something after.
            let mut end = host.len();
            while let Some(i) = host[..end].rfind('.') {
                if let Some(&s) = self.tail.get(&host[..i]) {
                    return found(s);
                }
                end = i;
            }
        }
        for (re, s) in &self.regex {
            if let Some(c) = re.captures(host) {
                return Some(Found {
                    server: *s,
                    captures: Some(c),
                });
            }
        }
        None
    }
}

fn insert_first<V>(map: &mut LookupMap<String, V>, key: String, value: V) -> bool {
    if map.contains_key(&key) {
        return false;
    }
    map.insert(key, value);
    true
}

/// nginx's `ngx_http_validate_host`: lower-cases, drops the port and a trailing dot; `None`
/// for a host nginx refuses with 400.
pub fn validate_host(host: &str) -> Option<std::borrow::Cow<'_, str>> {
    /// What each byte is to the check: most (lower-case letters, digits, `-`) are nothing.
    const BAD: u8 = 1;
    const UPPER: u8 = 2;
    const MARK: u8 = 4;
    const CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = if b <= 0x20 || b == 0x7f || b == b'/' {
                BAD
            } else if b.is_ascii_uppercase() {
                UPPER
            } else if matches!(b, b'.' | b':' | b'[' | b']') {
                MARK
            } else {
                0
            };
            c += 1;
        }
        t
    };
    let b = host.as_bytes();
    // The end of the name: before a port's `:` (outside an IPv6 literal), after a `]`.
    let mut host_len = b.len();
    let mut literal = b.first() == Some(&b'[');
    let mut in_name = true;
    let mut upper = false;
    // The last dot anywhere, port included, as nginx keeps it.
    let mut dot_pos = usize::MAX;
    for (i, &c) in b.iter().enumerate() {
        match CLASS[c as usize] {
            0 => {}
            BAD => return None,
            UPPER => upper |= in_name,
            _ => match c {
                b'.' => {
                    if i > 0 && dot_pos == i - 1 {
                        return None;
                    }
                    dot_pos = i;
                }
                b':' if in_name && !literal => {
                    host_len = i;
                    in_name = false;
                }
                b']' if in_name && literal => {
                    host_len = i + 1;
                    literal = false;
                    in_name = false;
                }
                _ => {}
            },
        }
    }
    if host_len > 0 && dot_pos == host_len - 1 {
        host_len -= 1;
    }
    if host_len == 0 {
        return None;
    }
    let host = &host[..host_len];
    // Already lower case, as clients nearly always send it: no copy.
    Some(if upper {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn table(names: &[(&str, usize)]) -> NameTable {
        let mut t = NameTable::default();
        for (n, s) in names {
            t.add(&ServerName::parse(n).unwrap(), *s);
        }
        t
    }

    #[test]
    fn precedence_is_nginx() {
        let t = table(&[
            ("~^www\\.(?<d>.+)$", 4),
            ("mail.*", 3),
            ("*.example.com", 1),
            ("www.example.com", 0),
            (".example.org", 2),
        ]);
        let f = |h: &str| t.find(h).map(|f| f.server);
        assert_eq!(f("www.example.com"), Some(0));
        assert_eq!(f("a.b.example.com"), Some(1));
        assert_eq!(f("example.com"), None);
        assert_eq!(f("example.org"), Some(2));
        assert_eq!(f("x.example.org"), Some(2));
        assert_eq!(f("mail.foo.net"), Some(3));
        assert_eq!(f("mail"), None);
        assert_eq!(f("www.other.net"), Some(4));
        let c = t.find("www.other.net").unwrap().captures.unwrap();
        assert_eq!(c.named("d"), Some("other.net"));
    }

    #[test]
    fn hosts_are_validated() {
        assert_eq!(
            validate_host("Example.COM.:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(validate_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(validate_host("a..b"), None);
        assert_eq!(validate_host("a/b"), None);
        assert_eq!(validate_host(""), None);
        assert_eq!(validate_host("a\x7fb"), None);
        assert_eq!(validate_host("[::A]:80").as_deref(), Some("[::a]"));
        assert_eq!(validate_host(".").as_deref(), None);
        // nginx drops a trailing dot only when it is the last dot of all, port included.
        assert_eq!(validate_host("a.:8.0").as_deref(), Some("a."));
        assert!(matches!(
            validate_host("app.example"),
            Some(Cow::Borrowed(_))
        ));
    }
}
