//! Binary upgrade (`SIGUSR2`, as nginx): the running process starts the binary again (the
//! `argv[0]` it was started as, so a new build at the same path is what runs) with the same
//! arguments, and hands it its listening sockets, so no connection is refused while the
//! executable is replaced. The sockets travel as inherited file descriptors named in
//! `PORTICO_LISTENERS` (`addr=fd;addr=fd`, by the configured address). As nginx does, the old
//! process renames its pid file to `<pid>.oldbin` (and back, should the new process exit);
//! the operator then sends the old one `SIGQUIT` and it drains as in a graceful shutdown.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::plan::ListenAddr;

/// The environment variable that names the inherited sockets.
pub const LISTENERS: &str = "PORTICO_LISTENERS";

/// Sockets handed over by the process that started this one, by configured address.
pub fn inherited() -> HashMap<String, RawFd> {
    let Ok(list) = std::env::var(LISTENERS) else {
        return HashMap::new();
    };
    list.split(';')
        .filter_map(|pair| {
            let (addr, fd) = pair.rsplit_once('=')?;
            Some((addr.to_string(), fd.parse().ok()?))
        })
        .collect()
}

/// Takes over an inherited listening socket.
pub fn adopt(addr: &ListenAddr, fd: RawFd) -> std::io::Result<(super::Bound, String)> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on a descriptor number has no memory effects; a bad one fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was handed to this process for this socket alone, and is owned
    // by the listener from here on.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    match addr {
        ListenAddr::Unix(path) => {
            // SAFETY: as above.
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            Ok((super::Bound::Unix(l), format!("unix:{path}")))
        }
        _ => {
            // SAFETY: as above.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true)?;
            let shown = l.local_addr()?.to_string();
            Ok((super::Bound::Tcp(l), shown))
        }
    }
}

/// `<pid>.oldbin`.
pub fn oldbin(pid: &Path) -> PathBuf {
    let mut s = pid.as_os_str().to_owned();
    s.push(".oldbin");
    PathBuf::from(s)
}

/// Starts the new binary with `sockets` (configured address, descriptor). Returns its pid.
pub fn spawn(sockets: &[(ListenAddr, RawFd)], pid_path: Option<&Path>) -> std::io::Result<u32> {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "portico".into());
    let list: Vec<String> = sockets.iter().map(|(a, fd)| format!("{a}={fd}")).collect();
    for (_, fd) in sockets {
        // SAFETY: clears close-on-exec on a descriptor this process owns, so the child keeps it.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) };
    }
    if let Some(p) = pid_path {
        std::fs::rename(p, oldbin(p))?;
    }
    let spawned = std::process::Command::new(&program)
        .args(args)
        .env(LISTENERS, list.join(";"))
        .spawn();
    for (_, fd) in sockets {
        // SAFETY: as above; other children must not keep the sockets.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = pid_path {
                let _ = std::fs::rename(oldbin(p), p);
            }
            return Err(e);
        }
    };
    let pid = child.id();
    // Should the new process exit (a broken configuration, a crash), this one is the server
    // again: its pid file gets its name back.
    let pid_path = pid_path.map(Path::to_path_buf);
    std::thread::Builder::new()
        .name("upgrade-wait".into())
        .spawn(move || {
            let status = child.wait();
            tracing::warn!(pid, ?status, "the new binary exited");
            if let Some(p) = pid_path {
                let old = oldbin(&p);
                let ours = std::fs::read_to_string(&old)
                    .is_ok_and(|t| t.trim() == std::process::id().to_string());
                if ours {
                    let _ = std::fs::rename(old, p);
                }
            }
        })?;
    Ok(pid)
}
