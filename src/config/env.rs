//! What `nginx -t` asks of the machine besides files: host names resolved, users and groups
//! looked up, listen addresses bound. The compiler reaches these only through
//! [`Environment`], and only when asked: `portico -t` passes the real one (to give nginx's
//! verdict), `portico check` passes none (no DNS, no sockets).

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

pub trait Environment {
    /// Whether the host name resolves.
    fn resolves(&self, host: &str, port: u16) -> bool;
    /// Whether Portico runs as root (nginx checks `user` only then).
    fn is_root(&self) -> bool;
    fn user_exists(&self, name: &str) -> bool;
    fn group_exists(&self, name: &str) -> bool;
    /// Tries to bind a listening socket and closes it at once. `Err((errno, text))`.
    fn bind(&self, addr: SocketAddr) -> Result<(), (i32, String)>;
}

/// The machine itself.
pub struct RealEnvironment;

impl Environment for RealEnvironment {
    fn resolves(&self, host: &str, port: u16) -> bool {
        (host, port)
            .to_socket_addrs()
            .is_ok_and(|mut a| a.next().is_some())
    }

    fn is_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn user_exists(&self, name: &str) -> bool {
        let Ok(c) = std::ffi::CString::new(name) else {
            return false;
        };
        // SAFETY: c is a valid NUL-terminated string; the result is only compared to null.
        unsafe { !libc::getpwnam(c.as_ptr()).is_null() }
    }

    fn group_exists(&self, name: &str) -> bool {
        let Ok(c) = std::ffi::CString::new(name) else {
            return false;
        };
        // SAFETY: as above.
        unsafe { !libc::getgrnam(c.as_ptr()).is_null() }
    }

    fn bind(&self, addr: SocketAddr) -> Result<(), (i32, String)> {
        TcpListener::bind(addr).map(drop).map_err(|e| {
            let code = e.raw_os_error().unwrap_or(0);
            let text = e.to_string();
            let text = text
                .find(" (os error")
                .map_or(text.clone(), |i| text[..i].to_string());
            (code, text)
        })
    }
}

/// The host and port of an upstream URL or `server` address, if it names a host to resolve
/// (not a unix socket). An upstream `server` takes no variables, so nginx looks `${X}` up as
/// a name; callers skip URLs built from variables themselves.
pub fn upstream_host(addr: &str, default_port: u16) -> Option<(String, u16)> {
    if addr.starts_with("unix:") {
        return None;
    }
    let authority = addr.split('/').next()?;
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_string(), port))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        _ => Some((s, None)),
    }
}

/// The address a `listen` directive binds, as nginx reads its first argument:
/// `8080`, `127.0.0.1`, `127.0.0.1:8080`, `*:80`, `[::]:80`, `localhost:8080`. `None` for unix
/// sockets and what cannot be read (the plan reports those).
pub fn listen_addrs(arg: &str, env: &dyn Environment) -> Option<(String, Vec<SocketAddr>)> {
    if arg.starts_with("unix:") {
        return None;
    }
    if arg.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = arg.parse().ok()?;
        return Some((
            format!("0.0.0.0:{port}"),
            vec![SocketAddr::from(([0, 0, 0, 0], port))],
        ));
    }
    let (host, port) = split_host_port(arg)?;
    let port: u16 = match port {
        Some(p) => p.parse().ok()?,
        None => 80,
    };
    let host = if host == "*" { "0.0.0.0" } else { host };
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some((shown, vec![SocketAddr::new(ip, port)]));
    }
    if !env.resolves(host, port) {
        return None;
    }
    let addrs = (host, port).to_socket_addrs().ok()?.collect();
    Some((shown, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_hosts() {
        assert_eq!(
            upstream_host("app:8000/api/", 80),
            Some(("app".into(), 8000))
        );
        assert_eq!(upstream_host("backend", 80), Some(("backend".into(), 80)));
        assert_eq!(upstream_host("[::1]:81", 80), Some(("::1".into(), 81)));
        assert_eq!(upstream_host("unix:/tmp/s.sock", 80), None);
        assert_eq!(upstream_host("${HOST}", 80), Some(("${HOST}".into(), 80)));
    }
}
