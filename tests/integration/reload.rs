//! Reloading the running binary: signals, file changes (atomic saves, a Kubernetes ConfigMap
//! swap, an include edited), listeners added and removed, `-s reload` failing loudly, upstream
//! health kept, graceful shutdown. Every wait is a poll with a deadline, never a bare sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::support;

/// A running portico with its configuration in `dir/nginx.conf` (or elsewhere), killed when
/// dropped. Its stderr lines are kept for the assertions.
struct Server {
    child: Child,
    dir: PathBuf,
    conf: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The main file around `http` (the inside of `http {}`), pid file in `dir`.
fn main_conf(dir: &Path, http: &str) -> String {
    format!(
        "pid {}/portico.pid;\nworker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\naccess_log off;\n{http}\n}}\n",
        dir.display()
    )
}

impl Server {
    fn start(dir: &Path, conf: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = support::portico();
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg("stderr")
            .env("PORTICO_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start portico");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("portico: ready") {
                    let _ = tx.send(());
                }
                keep.lock().unwrap().push(line);
            }
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            panic!("portico did not start: {:#?}", lines.lock().unwrap());
        }
        Server {
            child,
            dir: dir.to_path_buf(),
            conf: conf.to_path_buf(),
            lines,
        }
    }

    fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    fn status_file(&self) -> PathBuf {
        self.dir.join("portico.pid.reload")
    }

    /// The reload status file: (started, ok, lines).
    fn status(&self) -> Option<(u128, bool, String)> {
        let text = std::fs::read_to_string(self.status_file()).ok()?;
        let mut l = text.lines();
        let started = l.next()?.strip_prefix("started ")?.parse().ok()?;
        let ok = l.next()? == "result ok";
        Some((started, ok, l.collect::<Vec<_>>().join("\n")))
    }

    /// Waits for a reload newer than `after` to be reported; returns it.
    fn next_status(&self, after: u128) -> (u128, bool, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.status().filter(|s| s.0 > after) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no reload reported: {:#?}",
                self.lines.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a fresh connection to `port` gets `want`.
    fn wait_for_body(&self, port: u16, want: &str) -> Duration {
        let start = Instant::now();
        loop {
            if get(port, "/").is_ok_and(|(_, b)| b == want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never answered {want:?}: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one response (Content-Length framed) from `s`: (status, body, server closes).
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String, bool)> {
    let mut status_line = String::new();
    if r.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before the response",
        ));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

/// `GET path` on a new connection.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let (status, body, _) = read_response(&mut BufReader::new(s))?;
    Ok((status, body))
}

/// What the load of the stress test saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests sent again because a reused keep-alive connection was closed before any of
    /// the answer came (what HTTP clients do for idempotent requests, RFC 9112 9.3.1).
    retried: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// One client of the stress test: new connections, or one keep-alive connection reused
/// (reconnecting only when the server says `Connection: close`).
fn client(port: u16, keepalive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let result = (|| -> std::io::Result<(u16, String, bool)> {
            if conn.is_none() {
                let s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn = Some(BufReader::new(s));
            }
            let r = conn.as_mut().unwrap();
            let close = if keepalive {
                ""
            } else {
                "Connection: close\r\n"
            };
            r.get_mut().write_all(
                format!("GET / HTTP/1.1\r\nHost: localhost\r\n{close}\r\n").as_bytes(),
            )?;
            read_response(r)
        })();
        match result {
            Ok((200, body, close)) if body == "A" || body == "B" => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if close || !keepalive {
                    conn = None;
                }
            }
            Ok((status, body, _)) => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{status} {body:?}"));
                conn = None;
            }
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Err(e) => {
                tally.failures.lock().unwrap().push(format!("{e}"));
                conn = None;
            }
        }
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn hundred_reloads_under_load_lose_no_request() {
    let dir = support::scratch("reload-stress");
    let port = support::free_port();
    let conf = dir.join("nginx.conf");
    let valid = |answer: &str| {
        main_conf(
            &dir,
            &format!(
                "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{answer}\"; }} }}"
            ),
        )
    };
    let broken = main_conf(
        &dir,
        &format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"X\"; bogus; }} }}"),
    );
    std::fs::write(&conf, valid("A")).unwrap();
    // Reloads by SIGHUP only, so that each edit is one reload.
    let server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || client(port, i % 2 == 0, stop, tally))
        })
        .collect();
    // A keep-alive connection opened before the first reload: its requests follow the plan.
    let mut kept = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    kept.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut ask_kept = || {
        kept.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let (status, body, close) = read_response(&mut kept).unwrap();
        assert!(!close, "the kept connection was closed");
        (status, body)
    };
    assert_eq!(ask_kept(), (200, "A".to_string()));
    let started = Instant::now();
    let mut last = 0;
    let mut current = "A";
    let mut broken_seen = 0;
    for i in 1..=100 {
        if i % 10 == 0 {
            write_atomically(&conf, &broken);
            server.signal("HUP");
            let (at, ok, lines) = server.next_status(last);
            last = at;
            assert!(!ok, "reload {i} of a broken config succeeded");
            assert!(
                lines.contains(&format!(
                    "unknown directive \"bogus\" in {}:",
                    conf.display()
                )),
                "{lines}"
            );
            broken_seen += 1;
            // The old plan keeps serving.
            assert_eq!(get(port, "/").unwrap(), (200, current.to_string()));
            assert_eq!(ask_kept(), (200, current.to_string()), "reload {i}");
        } else {
            current = if current == "A" { "B" } else { "A" };
            write_atomically(&conf, &valid(current));
            server.signal("HUP");
            let (at, ok, lines) = server.next_status(last);
            last = at;
            assert!(ok, "reload {i}: {lines}");
            // Once the reload is reported, every new request sees the new plan.
            assert_eq!(
                get(port, "/").unwrap(),
                (200, current.to_string()),
                "reload {i}"
            );
            // And so does the next request of a connection kept alive across the reload.
            assert_eq!(ask_kept(), (200, current.to_string()), "reload {i}, kept");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = tally.failures.lock().unwrap();
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 500, "only {ok} requests in {:?}", started.elapsed());
    // No keep-alive connection was closed under a client by a reload.
    assert_eq!(tally.retried.load(Ordering::Relaxed), 0);
    assert_eq!(broken_seen, 10);
    let log = server.log();
    assert_eq!(log.matches("reload (SIGHUP) done in").count(), 90, "{log}");
    assert_eq!(
        log.matches("reload (SIGHUP) failed in").count(),
        10,
        "{log}"
    );
    eprintln!(
        "{ok} requests, 0 failed, 100 reloads in {:?}",
        started.elapsed()
    );
}

#[test]
fn an_atomic_rename_save_reloads() {
    let dir = support::scratch("reload-rename");
    let port = support::free_port();
    let conf = dir.join("nginx.conf");
    let text = |answer: &str| {
        main_conf(
            &dir,
            &format!(
                "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{answer}\"; }} }}"
            ),
        )
    };
    std::fs::write(&conf, text("one")).unwrap();
    let server = Server::start(&dir, &conf, &[]);
    assert_eq!(get(port, "/").unwrap().1, "one");
    // As vim and most editors save: a new file, renamed over the old one.
    write_atomically(&conf, &text("two"));
    server.wait_for_body(port, "two");
    // Its line is written once the swap is done: wait for it before counting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.log().matches("reload (file change) done").count() < 1 && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(10));
    }
    // A burst of saves makes one reload.
    let before = server.log().matches("reload (file change) done").count();
    for i in 0..5 {
        write_atomically(&conf, &text(&format!("burst{i}")));
    }
    server.wait_for_body(port, "burst4");
    thread::sleep(Duration::from_millis(300));
    let after = server.log().matches("reload (file change) done").count();
    assert_eq!(after - before, 1, "{}", server.log());
    // A file that is missing for a while keeps the last good plan; its return reloads.
    std::fs::remove_file(&conf).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(get(port, "/").unwrap().1, "burst4");
    std::fs::write(&conf, text("back")).unwrap();
    server.wait_for_body(port, "back");
    assert!(
        server.log().contains("reload (file change) failed"),
        "{}",
        server.log()
    );
}

#[test]
fn a_kubernetes_configmap_swap_reloads() {
    let dir = support::scratch("reload-configmap");
    let port = support::free_port();
    let mount = dir.join("config");
    std::fs::create_dir_all(&mount).unwrap();
    let text = |answer: &str| {
        main_conf(
            &dir,
            &format!(
                "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{answer}\"; }} }}"
            ),
        )
    };
    // The kubelet's layout: a timestamped directory, `..data` pointing at it, and each key a
    // symlink through `..data`.
    let version = |n: u32, answer: &str| {
        let v = format!("..2026_12_01_10_00_0{n}.{n}");
        std::fs::create_dir_all(mount.join(&v)).unwrap();
        std::fs::write(mount.join(&v).join("nginx.conf"), text(answer)).unwrap();
        v
    };
    let v1 = version(1, "v1");
    std::os::unix::fs::symlink(&v1, mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/nginx.conf", mount.join("nginx.conf")).unwrap();
    let conf = mount.join("nginx.conf");
    let server = Server::start(&dir, &conf, &[]);
    assert_eq!(get(port, "/").unwrap().1, "v1");
    // The update: a new directory, a new symlink renamed over `..data`, the old one removed.
    let v2 = version(2, "v2");
    std::os::unix::fs::symlink(&v2, mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join(&v1)).unwrap();
    server.wait_for_body(port, "v2");
    // And once more, to show the watch follows the swap.
    let v3 = version(3, "v3");
    std::os::unix::fs::symlink(&v3, mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join(&v2)).unwrap();
    server.wait_for_body(port, "v3");
}

#[test]
fn an_edited_include_reloads_and_new_includes_are_followed() {
    let dir = support::scratch("reload-include");
    let port = support::free_port();
    std::fs::create_dir_all(dir.join("sites")).unwrap();
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        main_conf(&dir, "include sites/app.conf;\ninclude conf.d/*.conf;"),
    )
    .unwrap();
    let site = |answer: &str| {
        format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{answer}\"; }} location /extra {{ return 404; }} }}"
        )
    };
    std::fs::write(dir.join("sites/app.conf"), site("first")).unwrap();
    let server = Server::start(&dir, &conf, &[]);
    assert_eq!(get(port, "/").unwrap().1, "first");
    // Edited in place.
    std::fs::write(dir.join("sites/app.conf"), site("second")).unwrap();
    server.wait_for_body(port, "second");
    // A new file matching the glob: a new server on a new port.
    let port2 = support::free_port();
    std::fs::write(
        dir.join("conf.d/more.conf"),
        format!("server {{ listen 127.0.0.1:{port2}; return 200 \"more\"; }}"),
    )
    .unwrap();
    server.wait_for_body(port2, "more");
    // The reload lines say what changed (written once the swap is done, so shortly after
    // the new plan answers: wait for them).
    let listeners = format!("listeners +1 -0 (+127.0.0.1:{port2})");
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = server.log();
        if (log.contains("locations +0 -0 ~1 (~\"\" /)") && log.contains(&listeners))
            || Instant::now() > deadline
        {
            break log;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert!(log.contains("locations +0 -0 ~1 (~\"\" /)"), "{log}");
    assert!(log.contains(&listeners), "{log}");
}

#[test]
fn listeners_are_added_and_removed() {
    let dir = support::scratch("reload-listeners");
    let (kept, dropped, added) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    // A slow upstream, for a request in flight on the socket that goes.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in slow.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.read(&mut [0u8; 4096]);
                thread::sleep(Duration::from_millis(500));
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                );
            });
        }
    });
    let conf = dir.join("nginx.conf");
    let text = |ports: &[u16]| {
        let listens: String = ports
            .iter()
            .map(|p| format!("listen 127.0.0.1:{p}; "))
            .collect();
        main_conf(
            &dir,
            &format!(
                "server {{ {listens} location / {{ return 200 \"up\"; }} location /slow {{ proxy_pass http://127.0.0.1:{slow_port}; }} }}"
            ),
        )
    };
    std::fs::write(&conf, text(&[kept, dropped])).unwrap();
    let server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    // A keep-alive connection on the socket about to go.
    let s = TcpStream::connect(("127.0.0.1", dropped)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut idle = BufReader::new(s);
    idle.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().1, "up");
    // A keep-alive connection on the socket that stays.
    let s = TcpStream::connect(("127.0.0.1", kept)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stays = BufReader::new(s);

    let in_flight = thread::spawn(move || get(dropped, "/slow"));
    thread::sleep(Duration::from_millis(100));

    std::fs::write(&conf, text(&[kept, added])).unwrap();
    server.signal("HUP");
    let (_, ok, lines) = server.next_status(0);
    assert!(ok, "{lines}");
    assert!(
        lines.contains(&format!(
            "listeners +1 -1 (+127.0.0.1:{added} -127.0.0.1:{dropped})"
        )),
        "{lines}"
    );
    assert_eq!(get(added, "/").unwrap().1, "up");
    assert_eq!(get(kept, "/").unwrap().1, "up");
    // The removed socket is closed, and its idle connection with it.
    assert!(TcpStream::connect(("127.0.0.1", dropped)).is_err());
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    // The request in flight on it is answered.
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        (200, "slow".to_string())
    );
    // The kept socket's connection goes on.
    stays
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stays).unwrap().1, "up");

    // A new socket that cannot be bound rejects the whole reload.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let before = server.status().unwrap().0;
    std::fs::write(&conf, text(&[kept, taken_port])).unwrap();
    server.signal("HUP");
    let (_, ok, lines) = server.next_status(before);
    assert!(!ok);
    assert!(
        lines.contains(&format!("bind() to 127.0.0.1:{taken_port} failed")),
        "{lines}"
    );
    assert_eq!(
        get(added, "/").unwrap().1,
        "up",
        "the old plan's sockets stay"
    );
}

#[test]
fn signal_reload_fails_loudly() {
    let dir = support::scratch("reload-signal");
    let port = support::free_port();
    let conf = dir.join("nginx.conf");
    let text = |body: &str| {
        main_conf(
            &dir,
            &format!("server {{ listen 127.0.0.1:{port}; location / {{ {body} }} }}"),
        )
    };
    std::fs::write(&conf, text("return 200 \"good\";")).unwrap();
    let server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    let signal = || {
        support::portico()
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg("reload")
            .output()
            .unwrap()
    };
    // A broken file: refused before signalling, with the diagnostic and its file:line.
    std::fs::write(&conf, text("return 200 \"bad\"; bogus;")).unwrap();
    let out = signal();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "[emerg] unknown directive \"bogus\" in {}:6",
            conf.display()
        )),
        "{stderr}"
    );
    assert_eq!(get(port, "/").unwrap().1, "good");
    // A config that compiles but fails in the server (its new socket is taken): the server's
    // outcome comes back through the status file.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    std::fs::write(
        &conf,
        main_conf(&dir, &format!("server {{ listen 127.0.0.1:{port}; listen 127.0.0.1:{taken_port}; return 200 \"new\"; }}")),
    )
    .unwrap();
    let out = signal();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("bind() to 127.0.0.1:{taken_port} failed")),
        "{stderr}"
    );
    assert!(stderr.contains("reload (SIGHUP) failed"), "{stderr}");
    assert_eq!(get(port, "/").unwrap().1, "good");
    // A good one: exit 0 once the new plan serves.
    std::fs::write(&conf, text("return 200 \"better\";")).unwrap();
    let out = signal();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(port, "/").unwrap().1, "better");
    drop(server);
}

#[test]
fn upstream_health_survives_a_reload() {
    let dir = support::scratch("reload-health");
    let (front, back) = (support::free_port(), support::free_port());
    let dead = support::free_port();
    let conf = dir.join("nginx.conf");
    let text = |answer: &str| {
        main_conf(
            &dir,
            &format!(
                "upstream app {{ server 127.0.0.1:{dead} max_fails=1 fail_timeout=60s; server 127.0.0.1:{back}; }}
                 server {{ listen 127.0.0.1:{back}; return 200 \"backend\"; }}
                 server {{ listen 127.0.0.1:{front};
                   location /app {{ proxy_pass http://app; add_header X-Up $upstream_addr always; }}
                   location / {{ return 200 \"{answer}\"; }} }}"
            ),
        )
    };
    std::fs::write(&conf, text("one")).unwrap();
    let server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    let upstream_addr = || {
        let raw = super::serve::get(front, "/app", "");
        raw.lines()
            .find_map(|l| l.strip_prefix("X-Up: ").map(str::to_string))
            .unwrap_or_default()
    };
    // The first request finds the dead server and marks it failed.
    assert_eq!(
        upstream_addr(),
        format!("127.0.0.1:{dead}, 127.0.0.1:{back}")
    );
    assert_eq!(upstream_addr(), format!("127.0.0.1:{back}"));
    std::fs::write(&conf, text("two")).unwrap();
    server.signal("HUP");
    let (_, ok, lines) = server.next_status(0);
    assert!(ok && lines.contains("upstreams +0 -0 ~0"), "{lines}");
    assert_eq!(get(front, "/").unwrap().1, "two");
    // Still known to be down: not tried again within its fail_timeout.
    for _ in 0..3 {
        assert_eq!(upstream_addr(), format!("127.0.0.1:{back}"));
    }
}

#[test]
fn quit_finishes_requests_in_flight() {
    let dir = support::scratch("reload-quit");
    let port = support::free_port();
    // A slow upstream: answers a second after the request.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in slow.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                thread::sleep(Duration::from_millis(1000));
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                );
            });
        }
    });
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        main_conf(
            &dir,
            &format!("server {{ listen 127.0.0.1:{port}; location /fast {{ return 200 \"fast\"; }} location / {{ proxy_pass http://127.0.0.1:{slow_port}; }} }}"),
        ),
    )
    .unwrap();
    let mut server = Server::start(&dir, &conf, &[]);
    // An idle keep-alive connection, and a request in flight.
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut idle = BufReader::new(s);
    idle.get_mut()
        .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().1, "fast");
    let in_flight = thread::spawn(move || get(port, "/"));
    thread::sleep(Duration::from_millis(100));
    let quit_at = Instant::now();
    server.signal("QUIT");
    // The idle connection is closed at once; the request in flight is answered.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(
        quit_at.elapsed() < Duration::from_millis(800),
        "the idle connection was closed only after {:?}",
        quit_at.elapsed()
    );
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        (200, "slow".to_string())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(code) = server.child.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "still running after QUIT");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(code.success());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.join("portico.pid").exists());
    let _ = &server.conf;
}

#[test]
fn worker_shutdown_timeout_bounds_a_graceful_shutdown() {
    let dir = support::scratch("reload-shutdown-timeout");
    let port = support::free_port();
    // An upstream that never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming().flatten() {
            held.push(s);
        }
    });
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!("worker_shutdown_timeout 300ms;\n{}", main_conf(
            &dir,
            &format!("server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://127.0.0.1:{hang_port}; proxy_read_timeout 60s; }} }}"),
        )),
    )
    .unwrap();
    let mut server = Server::start(&dir, &conf, &[]);
    let _stuck = thread::spawn(move || get(port, "/"));
    thread::sleep(Duration::from_millis(100));
    let quit_at = Instant::now();
    server.signal("QUIT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "still running: {}", server.log());
        thread::sleep(Duration::from_millis(10));
    }
    let took = quit_at.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        server.log().contains("worker_shutdown_timeout expired"),
        "{}",
        server.log()
    );
}

#[test]
fn an_idle_connection_on_a_replaced_plan_closes_after_worker_shutdown_timeout() {
    let dir = support::scratch("reload-idle-retired");
    let port = support::free_port();
    let conf = dir.join("nginx.conf");
    let text = |body: &str| {
        format!(
            "worker_shutdown_timeout 400ms;\n{}",
            main_conf(
                &dir,
                &format!(
                    "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{body}\"; }} }}"
                ),
            )
        )
    };
    std::fs::write(&conf, text("one")).unwrap();
    let server = Server::start(&dir, &conf, &[]);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut idle = BufReader::new(s);
    idle.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().1, "one");
    std::fs::write(&conf, text("two")).unwrap();
    let before = server.status().map_or(0, |s| s.0);
    let reload_at = Instant::now();
    server.signal("HUP");
    let (_, ok, _) = server.next_status(before);
    assert!(ok, "{}", server.log());
    // Still open for a while after the reload, closed once the timeout has run.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    let took = reload_at.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // The server goes on, on the new plan.
    assert_eq!(get(port, "/").unwrap(), (200, "two".to_string()));
    server.signal("TERM");
}

#[test]
fn usr1_reopens_the_logs() {
    let dir = support::scratch("reload-reopen");
    let port = support::free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        main_conf(
            &dir,
            &format!(
                "server {{ listen 127.0.0.1:{port}; access_log {}/access.log; location / {{ return 200 \"x\"; }} }}",
                dir.display()
            ),
        ),
    )
    .unwrap();
    let server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    let wait_line = |path: &Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let t = std::fs::read_to_string(path).unwrap_or_default();
            if t.lines().count() >= n {
                return t;
            }
            assert!(Instant::now() < deadline, "{} has {t:?}", path.display());
            thread::sleep(Duration::from_millis(10));
        }
    };
    get(port, "/first").unwrap();
    wait_line(&dir.join("access.log"), 1);
    // logrotate: move the file away, then USR1.
    std::fs::rename(dir.join("access.log"), dir.join("access.log.1")).unwrap();
    server.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("reopening logs") {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(10));
    }
    get(port, "/second").unwrap();
    let new = wait_line(&dir.join("access.log"), 1);
    assert!(new.contains("GET /second"), "{new}");
    let old = std::fs::read_to_string(dir.join("access.log.1")).unwrap();
    assert!(
        old.contains("GET /first") && !old.contains("/second"),
        "{old}"
    );
}

#[test]
fn a_websocket_on_a_replaced_plan_ends_after_worker_shutdown_timeout() {
    let dir = support::scratch("reload-websocket");
    let port = support::free_port();
    // An upstream that switches protocols, then echoes upper-cased.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let conf = dir.join("nginx.conf");
    let text = |answer: &str| {
        format!(
            "worker_shutdown_timeout 300ms;\n{}",
            main_conf(
                &dir,
                &format!(
                    "server {{ listen 127.0.0.1:{port};
                       location /ws/ {{ proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
                         proxy_set_header Connection upgrade; proxy_pass http://127.0.0.1:{up}; }}
                       location / {{ return 200 \"{answer}\"; }} }}"
                )
            )
        )
    };
    std::fs::write(&conf, text("one")).unwrap();
    let server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ws.write_all(
        b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = ws.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
    ws.write_all(b"ping").unwrap();
    let n = ws.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"PING");
    std::fs::write(&conf, text("two")).unwrap();
    server.signal("HUP");
    let (_, ok, lines) = server.next_status(0);
    assert!(ok, "{lines}");
    let reloaded = Instant::now();
    // Still open for now...
    ws.write_all(b"pong").unwrap();
    let n = ws.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"PONG");
    // ...and closed once worker_shutdown_timeout has passed since the plan was replaced.
    let n = ws.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let after = reloaded.elapsed();
    assert!(
        after >= Duration::from_millis(200) && after < Duration::from_secs(3),
        "{after:?}"
    );
}

/// Kills the process named by a pid file when dropped (the new binary of an upgrade is not
/// the test's child).
struct KillByPidFile(PathBuf);

impl Drop for KillByPidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.trim())
                .status();
        }
    }
}

#[test]
fn usr2_hands_the_sockets_to_a_new_binary() {
    let dir = support::scratch("reload-upgrade");
    let port = support::free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        main_conf(
            &dir,
            &format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"A\"; }} }}"),
        ),
    )
    .unwrap();
    let mut server = Server::start(&dir, &conf, &[("PORTICO_NO_WATCH", "1")]);
    let old_pid = server.child.id().to_string();
    let pid_file = dir.join("portico.pid");
    let _cleanup = KillByPidFile(pid_file.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || client(port, i % 2 == 0, stop, tally))
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    server.signal("USR2");
    // The new binary writes the pid file; the old one's is renamed .oldbin.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_pid = loop {
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let pid = pid.trim().to_string();
        if !pid.is_empty() && pid != old_pid {
            break pid;
        }
        assert!(Instant::now() < deadline, "no new binary: {}", server.log());
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        std::fs::read_to_string(dir.join("portico.pid.oldbin"))
            .unwrap()
            .trim(),
        old_pid
    );
    thread::sleep(Duration::from_millis(100));
    server.signal("QUIT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "old binary still running");
        thread::sleep(Duration::from_millis(10));
    }
    // The new process serves alone now, on the same socket.
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(get(port, "/").unwrap(), (200, "A".to_string()));
    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(tally.ok.load(Ordering::Relaxed) > 100);
    // The old process closes its idle keep-alive connections at SIGQUIT: a client whose next
    // request crossed that close sends it again, as HTTP clients do; never more than once per
    // keep-alive client.
    assert!(tally.retried.load(Ordering::Relaxed) <= 2);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new_pid,
        "the old process left the new one's pid file"
    );
    assert!(!dir.join("portico.pid.oldbin").exists());
}
