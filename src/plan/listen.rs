//! `listen`: the address (`80`, `127.0.0.1:8080`, `[::]:80`, `*:80`, `unix:/path`) and its
//! parameters, read as `ngx_http_core_listen` reads them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A host name the runtime resolves (nginx resolves it while reading the config).
    Host(String, u16),
    Unix(String),
}

impl ListenAddr {
    pub fn port(&self) -> u16 {
        match self {
            ListenAddr::Tcp(a) => a.port(),
            ListenAddr::Host(_, p) => *p,
            ListenAddr::Unix(_) => 0,
        }
    }

    /// Whether this is a wildcard address (`*:80`, `[::]:80`).
    pub fn is_wildcard(&self) -> bool {
        matches!(self, ListenAddr::Tcp(a) if a.ip().is_unspecified())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Host(h, p) => write!(f, "{h}:{p}"),
            ListenAddr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The parameters after the address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListenOpts {
    pub default_server: bool,
    pub ssl: bool,
    pub http2: bool,
    pub proxy_protocol: bool,
    pub reuseport: bool,
    pub backlog: Option<i32>,
    pub rcvbuf: Option<u64>,
    pub sndbuf: Option<u64>,
    pub ipv6only: Option<bool>,
    pub bind: bool,
    pub deferred: bool,
    pub so_keepalive: Option<String>,
    pub fastopen: Option<i32>,
}

impl ListenOpts {
    /// Whether any socket option was given (nginx: "duplicate listen options" when two
    /// `listen`s of one address both set some).
    pub fn sets_socket_options(&self) -> bool {
        self.reuseport
            || self.backlog.is_some()
            || self.rcvbuf.is_some()
            || self.sndbuf.is_some()
            || self.ipv6only.is_some()
            || self.bind
            || self.deferred
            || self.so_keepalive.is_some()
            || self.fastopen.is_some()
    }
}

/// Reads the address of a `listen`; the error is nginx's message.
pub fn parse_addr(text: &str) -> Result<ListenAddr, String> {
    let invalid = |why: &str| format!("{why} in \"{text}\" of the \"listen\" directive");
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(invalid("no path in the unix domain socket"));
        }
        return Ok(ListenAddr::Unix(path.to_string()));
    }
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u32>() {
            // Port 0 (any free port) is a Portico extension, for tests and tools.
            Ok(n) if n <= 65535 => Ok(n as u16),
            _ => Err(invalid("invalid port")),
        }
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("invalid host"))?;
        let ip: IpAddr = host.parse().map_err(|_| invalid("invalid IPv6 address"))?;
        let p = match after.strip_prefix(':') {
            Some(p) => port(p)?,
            None if after.is_empty() => 80,
            None => return Err(invalid("invalid host")),
        };
        return Ok(ListenAddr::Tcp(SocketAddr::new(ip, p)));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port(text)?,
        )));
    }
    let (host, p) = match text.rsplit_once(':') {
        Some((h, p)) => (h, port(p)?),
        None => (text, 80),
    };
    if host == "*" {
        return Ok(ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            p,
        )));
    }
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ListenAddr::Tcp(SocketAddr::new(IpAddr::V4(ip), p)));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            p,
        )));
    }
    Ok(ListenAddr::Host(host.to_ascii_lowercase(), p))
}

/// Reads the parameters of a `listen`.
pub fn parse_opts(params: &[&str]) -> Result<ListenOpts, String> {
    let mut o = ListenOpts::default();
    for &p in params {
        let num = |v: &str, what: &str| -> Result<i32, String> {
            v.parse::<i32>()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| format!("invalid {what} \"{p}\""))
        };
        let size = |v: &str, what: &str| -> Result<u64, String> {
            crate::config::validate::parse_size(v, false)
                .ok_or_else(|| format!("invalid {what} \"{p}\""))
        };
        match p {
            "default_server" | "default" => o.default_server = true,
            "ssl" => o.ssl = true,
            "http2" => o.http2 = true,
            "proxy_protocol" => o.proxy_protocol = true,
            "reuseport" => {
                o.reuseport = true;
                o.bind = true;
            }
            "bind" => o.bind = true,
            "deferred" => {
                o.deferred = true;
                o.bind = true;
            }
            _ if p.starts_with("backlog=") => {
                o.backlog = Some(num(&p[8..], "backlog")?);
                o.bind = true;
            }
            _ if p.starts_with("rcvbuf=") => {
                o.rcvbuf = Some(size(&p[7..], "rcvbuf")?);
                o.bind = true;
            }
            _ if p.starts_with("sndbuf=") => {
                o.sndbuf = Some(size(&p[7..], "sndbuf")?);
                o.bind = true;
            }
            _ if p.starts_with("fastopen=") => {
                o.fastopen = Some(num(&p[9..], "fastopen")?);
                o.bind = true;
            }
            _ if p.starts_with("ipv6only=o") => {
                o.ipv6only = Some(match &p[10..] {
                    "n" => true,
                    "ff" => false,
                    rest => return Err(format!("invalid ipv6only flags \"{rest}\"")),
                });
                o.bind = true;
            }
            _ if p.starts_with("so_keepalive=") => {
                o.so_keepalive = Some(p[13..].to_string());
                o.bind = true;
            }
            _ if p.starts_with("setfib=") || p.starts_with("accept_filter=") => o.bind = true,
            _ => return Err(format!("invalid parameter \"{p}\"")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let s = |t: &str| parse_addr(t).map(|a| a.to_string());
        assert_eq!(s("80").unwrap(), "0.0.0.0:80");
        assert_eq!(s("127.0.0.1").unwrap(), "127.0.0.1:80");
        assert_eq!(s("*:8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(s("[::]:443").unwrap(), "[::]:443");
        assert_eq!(s("[::1]").unwrap(), "[::1]:80");
        assert_eq!(s("unix:/run/x.sock").unwrap(), "unix:/run/x.sock");
        assert_eq!(s("localhost:81").unwrap(), "127.0.0.1:81");
        assert!(s("127.0.0.1:99999").is_err());
        assert!(parse_opts(&["default_server", "backlog=511", "ipv6only=on"]).is_ok());
        assert_eq!(
            parse_opts(&["foo"]).unwrap_err(),
            "invalid parameter \"foo\""
        );
    }
}
