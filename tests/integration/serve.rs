//! The server over real sockets: the `portico` binary started on 127.0.0.1 port 0 with a
//! config, real upstreams (an echo server written here, on TCP and on a unix socket), and raw
//! HTTP/1 requests, so what is checked is what goes over the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::support;

/// A running portico, killed when dropped.
pub struct Portico {
    child: Child,
    pub ports: Vec<u16>,
    pub dir: PathBuf,
}

impl Portico {
    /// Starts portico on `http` (the inside of `http {}`), whose `listen`s should use port 0.
    pub fn start(name: &str, http: &str) -> Portico {
        let dir = support::scratch(&format!("serve-{name}"));
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "pid {}/portico.pid;\nevents {{ worker_connections 64; }}\nhttp {{\naccess_log off;\n{http}\n}}\n",
                dir.display()
            ),
        )
        .unwrap();
        Self::start_conf(dir, conf)
    }

    pub fn start_conf(dir: PathBuf, conf: PathBuf) -> Portico {
        let mut child = support::portico()
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .env("PORTICO_LOG", "warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start portico");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut ports = Vec::new();
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("portico: listening on ") {
                        if let Some(p) = addr.rsplit(':').next().and_then(|p| p.parse().ok()) {
                            ports.push(p);
                        }
                    } else if line.starts_with("portico: ready") {
                        break;
                    }
                    seen.push(line);
                }
                Err(_) => panic!("portico did not start: {seen:#?}"),
            }
        }
        Portico { child, ports, dir }
    }

    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and reads until the server closes (or `timeout`).
pub fn exchange(port: u16, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path` with `Connection: close`.
pub fn get(port: u16, path: &str, headers: &str) -> String {
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// An upstream that answers every request with 200 and, as the body, the exact bytes of the
/// request it received (head and body).
pub struct Echo {
    pub port: u16,
}

fn echo_reply<S: Read + Write>(mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Echo: yes\r\nServer: echo\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        buf.len()
    );
    let _ = s.write_all(reply.as_bytes());
    let _ = s.write_all(&buf);
}

impl Echo {
    pub fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                thread::spawn(move || echo_reply(s));
            }
        });
        Echo { port }
    }

    pub fn start_unix(path: &std::path::Path) {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                thread::spawn(move || echo_reply(s));
            }
        });
    }
}

#[test]
fn returns_with_nginx_headers() {
    let p = Portico::start(
        "returns",
        "server { listen 127.0.0.1:0; location / { return 200 \"hi $uri $arg_a\"; } location = /go { return 301 /there; } }",
    );
    let r = get(p.port(), "/x?a=1", "");
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("\r\nServer: nginx/1.22.1\r\nDate: "), "{r}");
    assert!(
        r.contains("\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n"),
        "{r}"
    );
    assert_eq!(body(&r), "hi /x 1");
    let r = get(p.port(), "/go", "");
    assert_eq!(status(&r), 301);
    assert!(
        r.contains(&format!(
            "\r\nLocation: http://localhost:{}/there\r\n",
            p.port()
        )),
        "{r}"
    );
    assert!(body(&r).contains("<center><h1>301 Moved Permanently</h1></center>"));
}

#[test]
fn proxies_exact_request_over_tcp_and_unix() {
    let echo = Echo::start();
    let sock = support::scratch("serve-unix-sock").join("app.sock");
    Echo::start_unix(&sock);
    let p = Portico::start(
        "proxy",
        &format!(
            "upstream app {{ server 127.0.0.1:{}; }}
             server {{ listen 127.0.0.1:0;
               location /api/ {{ proxy_set_header X-Real-IP $remote_addr; proxy_pass http://app/v1/; }}
               location /sock/ {{ proxy_pass http://unix:{}:/u/; }}
             }}",
            echo.port,
            sock.display()
        ),
    );
    let r = get(
        p.port(),
        "/api/a%20b?q=1",
        "X-Custom: Mixed-Case\r\nx-lower: v\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let upstream = body(&r);
    let expected = "GET /v1/a%20b?q=1 HTTP/1.0\r\nX-Real-IP: 127.0.0.1\r\nHost: app\r\nConnection: close\r\nX-Custom: Mixed-Case\r\nx-lower: v\r\n\r\n".to_string();
    assert_eq!(upstream, expected);
    assert!(r.contains("\r\nX-Echo: yes\r\n"), "{r}");
    assert!(
        !r.contains("Server: echo"),
        "the upstream's Server header is replaced: {r}"
    );
    let r = get(p.port(), "/sock/z", "");
    assert!(
        body(&r).starts_with("GET /u/z HTTP/1.0\r\nHost: localhost\r\n"),
        "{r}"
    );
}

#[test]
fn posts_a_body_upstream() {
    let echo = Echo::start();
    let p = Portico::start(
        "post",
        &format!(
            "server {{ listen 127.0.0.1:0; client_max_body_size 1k; location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
            echo.port
        ),
    );
    let r = exchange(
        p.port(),
        b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(
        body(&r).ends_with("\r\nContent-Length: 5\r\n\r\nhello"),
        "{r}"
    );
    let chunked = exchange(
        p.port(),
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    );
    assert!(body(&chunked).contains("abcde"), "{chunked}");
    let big = format!(
        "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    assert_eq!(status(&exchange(p.port(), big.as_bytes())), 413);
}

#[test]
fn keepalive_and_pipelining() {
    let p = Portico::start(
        "pipeline",
        "server { listen 127.0.0.1:0; location / { return 200 \"$uri\"; } }",
    );
    let r = exchange(
        p.port(),
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.0\r\n\r\n",
    );
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 3, "{r}");
    let (one, two) = (r.find("/one").unwrap(), r.find("/two").unwrap());
    assert!(one < two && r.ends_with("/three"), "{r}");
}

/// Reads one `return` answer (its body is `ok`) off a kept connection.
fn read_ok_answer(c: &mut TcpStream) {
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
}

#[test]
fn keepalive_timeout_closes_an_idle_connection_counting_from_its_last_request() {
    let p = Portico::start(
        "keepalive-timeout",
        "server { listen 127.0.0.1:0; keepalive_timeout 1s; location / { return 200 ok; } }",
    );
    let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    c.write_all(get).unwrap();
    read_ok_answer(&mut c);
    // A second request within the timeout is served, and the wait starts again from it.
    thread::sleep(Duration::from_millis(700));
    c.write_all(get).unwrap();
    read_ok_answer(&mut c);
    let last = std::time::Instant::now();
    let mut b = [0u8; 16];
    assert_eq!(c.read(&mut b).unwrap(), 0, "closed after keepalive_timeout");
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(3000),
        "closed {idle:?} after the last answer"
    );
}

#[test]
fn malformed_requests_get_nginx_statuses() {
    let p = Portico::start(
        "malformed",
        "server { listen 127.0.0.1:0; location / { return 200 ok; } }",
    );
    let cases: [(&[u8], u16); 6] = [
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            400,
        ),
        (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ];
    for (raw, want) in cases {
        let r = exchange(p.port(), raw);
        assert_eq!(status(&r), want, "{}\n{r}", String::from_utf8_lossy(raw));
    }
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    assert_eq!(status(&exchange(p.port(), long.as_bytes())), 414);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    let r = exchange(p.port(), big_header.as_bytes());
    assert_eq!(status(&r), 400);
    assert!(r.contains("Request Header Or Cookie Too Large"), "{r}");
}

#[test]
fn upstream_failures_are_502_and_504() {
    // A port nobody listens on, and an upstream that accepts and never answers.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    let p = Portico::start(
        "failures",
        &format!(
            "server {{ listen 127.0.0.1:0;
               location /refused {{ proxy_pass http://127.0.0.1:{closed}; }}
               location /slow {{ proxy_read_timeout 300ms; proxy_pass http://127.0.0.1:{silent_port}; }}
             }}"
        ),
    );
    assert_eq!(status(&get(p.port(), "/refused", "")), 502);
    assert_eq!(status(&get(p.port(), "/slow", "")), 504);
}

#[test]
fn pid_file_and_reload() {
    let p = Portico::start(
        "reload",
        "server { listen 127.0.0.1:0; location / { return 200 \"first\"; } }",
    );
    let pid = std::fs::read_to_string(p.dir.join("portico.pid")).unwrap();
    assert_eq!(pid.trim(), p.pid().to_string());
    assert_eq!(body(&get(p.port(), "/", "")), "first");
    let conf = p.dir.join("nginx.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    // A broken edit: the old plan keeps serving.
    std::fs::write(
        &conf,
        text.replace("return 200 \"first\";", "return 200 \"second\"; bogus;"),
    )
    .unwrap();
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .unwrap()
    };
    hup(p.pid());
    thread::sleep(Duration::from_millis(400));
    assert_eq!(body(&get(p.port(), "/", "")), "first");
    std::fs::write(&conf, text.replace("first", "second")).unwrap();
    hup(p.pid());
    thread::sleep(Duration::from_millis(400));
    assert_eq!(body(&get(p.port(), "/", "")), "second");
}

/// An access log once it has `lines` lines (they are written by a thread of their own), or
/// what it has after a second.
fn read_log(path: &std::path::Path, lines: usize) -> String {
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(path).unwrap_or_default();
        if log.lines().count() >= lines {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    log
}

#[test]
fn access_log_combined_and_custom() {
    let echo = Echo::start();
    let dir = support::scratch("serve-accesslog-files");
    let p = Portico::start(
        "accesslog",
        &format!(
            "log_format up '$request_method $uri $status $upstream_addr $upstream_status \"$http_x_q\"';
             server {{ listen 127.0.0.1:0;
               access_log {dir}/combined.log;
               location /up/ {{ access_log {dir}/up.log up; proxy_pass http://127.0.0.1:{port}; }}
               location /quiet/ {{ access_log off; return 204; }}
               location / {{ return 200 \"hello\"; }}
             }}",
            dir = dir.display(),
            port = echo.port
        ),
    );
    get(
        p.port(),
        "/a?b=1",
        "User-Agent: ua/1\r\nReferer: http://r/\r\n",
    );
    get(p.port(), "/up/x", "X-Q: a\"b\r\n");
    get(p.port(), "/quiet/x", "");
    let combined = read_log(&dir.join("combined.log"), 1);
    assert!(
        combined.starts_with("127.0.0.1 - - [")
            && combined.contains("] \"GET /a?b=1 HTTP/1.1\" 200 5 \"http://r/\" \"ua/1\"\n"),
        "{combined}"
    );
    assert_eq!(
        combined.lines().count(),
        1,
        "access_log off and the location's own log: {combined}"
    );
    let up = read_log(&dir.join("up.log"), 1);
    assert_eq!(
        up,
        format!("GET /up/x 200 127.0.0.1:{} 200 \"a\\x22b\"\n", echo.port)
    );
}

#[test]
fn upstream_times_are_logged_as_nginx_does() {
    let echo = Echo::start();
    // A port nothing listens on: the connection is refused.
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = support::scratch("serve-upstream-times");
    let p = Portico::start(
        "upstream-times",
        &format!(
            "log_format t '$status $upstream_connect_time $upstream_header_time $upstream_response_time';
             server {{ listen 127.0.0.1:0;
               access_log {dir}/t.log t;
               location /up/ {{ proxy_pass http://127.0.0.1:{port}; }}
               location /down/ {{ proxy_pass http://127.0.0.1:{refused}; }}
             }}",
            dir = dir.display(),
            port = echo.port
        ),
    );
    get(p.port(), "/up/x", "");
    get(p.port(), "/down/x", "");
    let log = read_log(&dir.join("t.log"), 2);
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2, "{log}");
    // Seconds with milliseconds, each later than the one before it.
    let secs = |v: &str| -> f64 {
        let (s, ms) = v.split_once('.').unwrap_or_else(|| panic!("{v} in {log}"));
        assert!(
            ms.len() == 3 && s.bytes().chain(ms.bytes()).all(|b| b.is_ascii_digit()),
            "{log}"
        );
        v.parse().unwrap()
    };
    assert_eq!(lines[0][0], "200", "{log}");
    let (connect, header, response) = (secs(lines[0][1]), secs(lines[0][2]), secs(lines[0][3]));
    assert!(
        connect <= header && header <= response && response < 5.0,
        "{log}"
    );
    // Refused: no connection and no head, and the attempt's time.
    assert_eq!(&lines[1][..3], ["502", "-", "-"], "{log}");
    assert!(secs(lines[1][3]) < 5.0, "{log}");
}

#[test]
fn websocket_upgrade_is_tunnelled_both_ways() {
    // An upstream that switches protocols, then answers every chunk upper-cased.
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
                let text = String::from_utf8_lossy(&head).to_string();
                assert!(
                    text.contains("\r\nUpgrade: websocket\r\n")
                        && text.contains("\r\nConnection: upgrade\r\n"),
                    "{text}"
                );
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let _ = s.write_all(&buf[..n].to_ascii_uppercase());
                        }
                    }
                }
            });
        }
    });
    let p = Portico::start(
        "websocket",
        &format!(
            "map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
             server {{ listen 127.0.0.1:0;
               location /ws/ {{
                 proxy_http_version 1.1;
                 proxy_set_header Upgrade $http_upgrade;
                 proxy_set_header Connection $connection_upgrade;
                 proxy_pass http://127.0.0.1:{up};
               }}
             }}"
        ),
    );
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nConnection: upgrade\r\n") && head.contains("\r\nUpgrade: websocket\r\n"),
        "{head}"
    );
    for msg in ["ping", "second message"] {
        s.write_all(msg.as_bytes()).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.to_ascii_uppercase().as_bytes());
    }
}

/// Mutated requests (bytes flipped, inserted, cut, duplicated) over real sockets: every one
/// gets an answer or a close, and the server keeps serving; it never panics or hangs.
#[test]
fn mutated_requests_never_bring_the_server_down() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = up.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in up.incoming().map_while(Result::ok) {
            thread::spawn(move || echo_reply(s));
        }
    });
    let dir = support::scratch("serve-mutated-files");
    std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
    let p = Portico::start(
        "mutated",
        &format!(
            "server {{ listen 127.0.0.1:0; root {}; client_header_timeout 2s; client_body_timeout 2s;\n\
             location /app/ {{ proxy_pass http://127.0.0.1:{up_port}; }}\n\
             location = /r {{ return 200 \"ok\\n\"; }}\n\
             location ~ ^/re/(?<n>[a-z]+)$ {{ return 302 /$n; }} }}",
            dir.display()
        ),
    );
    let seeds: [&[u8]; 4] = [
        b"GET /app/x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /app/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=0-2,4-\r\nIf-None-Match: \"x\"\r\n\r\n",
        b"GET /re/abc HTTP/1.0\r\nHost: a\r\n\r\n",
    ];
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    for i in 0..300 {
        let mut b = seeds[i % seeds.len()].to_vec();
        for _ in 0..1 + next(4) {
            let at = next(b.len() as u64 + 1) as usize;
            match next(3) {
                0 if at < b.len() => b[at] = next(256) as u8,
                1 => b.insert(at, b"\r\n :%/?\0"[next(8) as usize]),
                _ if at < b.len() => {
                    b.remove(at);
                }
                _ => {}
            }
        }
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&b);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        // An answer or a close within the timeouts; a hang would fail the read.
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) => assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "request {i} hung: {:?}",
                String::from_utf8_lossy(&b)
            ),
        }
    }
    let r = get(p.port(), "/r", "");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
}
