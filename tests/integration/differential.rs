//! The differential suite: each `tests/differential/*.case` configuration is served by nginx
//! and by Portico at once, the same requests go to both, and the answers are compared: status,
//! body, `Location`, `Content-Type`; where a location proxies to the echo upstream (which
//! answers with the exact request it received), the body *is* the upstream request, so the
//! request line and every header sent upstream are compared byte for byte.
//!
//! Case file format:
//!
//! ```text
//! # what this file covers
//! === config
//! server { listen 127.0.0.1:$PORT; location / { proxy_pass http://127.0.0.1:$ECHO; } }
//! === requests
//! GET /path
//! GET /path | Host: other.example | X-A: 1
//! POST /form | Content-Length: 5 || hello
//! POST /form | Transfer-Encoding: chunked || 5\r\nhello\r\n0\r\n\r\n
//! ```
//!
//! `$PORT` is the listening port (each server gets its own; ports in answers are normalised),
//! `$ECHO` the echo upstream's; `$UP1`..`$UP3` are echoes that put `upN` before the request
//! they echo (so the body says which server of a group answered), and `$DEAD` a port nothing
//! listens on. Headers named `X-Test-*` (from `add_header`) are compared too. Requests are HTTP/1.1 with `Connection: close` and, unless
//! given, `Host: localhost`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// The least number of compared requests the suite must have.
const MIN_COMPARED: usize = 200;

fn wait_for(port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `http` as a whole nginx.conf in `dir` for one server program.
fn write_conf(dir: &Path, http: &str, port: u16, echo: u16) -> PathBuf {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let mut http = http
        .replace("$PORT", &port.to_string())
        .replace("$ECHO", &echo.to_string());
    for (name, p) in upstream_ports() {
        http = http.replace(name, &p.to_string());
    }
    let http = http.replace("$FILES", &files_root().display().to_string());
    let d = dir.display();
    let text = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/run.pid;\nerror_log {d}/logs/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/cb;\n    proxy_temp_path {d}/px;\n    fastcgi_temp_path {d}/fc;\n    uwsgi_temp_path {d}/uw;\n    scgi_temp_path {d}/sc;\n{http}\n}}\n"
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, text).unwrap();
    conf
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn send(port: u16, raw: &[u8]) -> Option<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(raw).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        })
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    // A multipart boundary is a counter of each server's own.
    let mut headers = headers;
    let boundary = headers.iter().find_map(|(n, v)| {
        let b = v.split_once("boundary=")?.1;
        n.eq_ignore_ascii_case("content-type")
            .then(|| b.to_string())
    });
    if let Some(b) = boundary.filter(|b| !b.is_empty()) {
        body = body.replace(&b, "BOUNDARY");
        for (_, v) in headers.iter_mut() {
            *v = v.replace(&b, "BOUNDARY");
        }
    }
    Some(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The mtime of every file of the `$FILES` tree: Tue, 02 Jan 2024 03:04:05 GMT.
const FILES_MTIME: u64 = 1_704_164_645;

/// `$FILES`: a tree both servers serve, made once: files of several sizes and types, a
/// pre-compressed pair, directories with and without an index, a name with a space, symlinks.
fn files_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = support::scratch("differential-files");
        let pattern =
            |n: usize| -> Vec<u8> { (0..n).map(|i| b"0123456789abcdef"[i % 16]).collect() };
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("index.html", b"<h1>root index</h1>\n".to_vec()),
            ("a.txt", b"hello, world\n".to_vec()),
            ("Upper.TXT", b"upper\n".to_vec()),
            ("data.bin", pattern(1000)),
            ("big.bin", pattern(300_000)),
            ("page.html", b"<p>plain page</p>\n".to_vec()),
            ("page.html.gz", b"pretend this is gzip\n".to_vec()),
            ("empty.txt", Vec::new()),
            ("sp ace.txt", b"space\n".to_vec()),
            ("noext", b"no extension\n".to_vec()),
            ("dir/index.html", b"<h1>dir index</h1>\n".to_vec()),
            ("dir/other.htm", b"other\n".to_vec()),
            ("htm/index.htm", b"htm index\n".to_vec()),
            (
                "noindex/file.txt",
                b"file in a directory without index\n".to_vec(),
            ),
            ("static/app.css", b"body { color: red }\n".to_vec()),
            ("static/app.js", b"console.log(1)\n".to_vec()),
            ("media/photo.jpg", pattern(5000)),
            ("errors/404.html", b"<h1>custom not found</h1>\n".to_vec()),
        ];
        for (name, bytes) in &files {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        std::fs::create_dir_all(root.join("empty-dir")).unwrap();
        let _ = std::os::unix::fs::symlink(root.join("a.txt"), root.join("link.txt"));
        let _ = std::os::unix::fs::symlink(root.join("dir"), root.join("linkdir"));
        let at = std::time::UNIX_EPOCH + Duration::from_secs(FILES_MTIME);
        for (name, _) in &files {
            let f = std::fs::File::options()
                .write(true)
                .open(root.join(name))
                .unwrap();
            f.set_modified(at).unwrap();
        }
        root
    })
}

/// An upstream answering every request with the exact bytes it received.
fn echo_upstream() -> u16 {
    named_upstream("")
}

/// An echo whose answers start with `name` and a newline (nothing when `name` is empty).
fn named_upstream(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || echo(s, name));
        }
    });
    port
}

/// `$UP1`..`$UP3` and `$DEAD`, with their ports (started once for the whole suite).
fn upstream_ports() -> &'static [(&'static str, u16)] {
    static PORTS: std::sync::OnceLock<Vec<(&'static str, u16)>> = std::sync::OnceLock::new();
    PORTS.get_or_init(|| {
        vec![
            ("$UP1", named_upstream("up1")),
            ("$UP2", named_upstream("up2")),
            ("$UP3", named_upstream("up3")),
            ("$DEAD", support::free_port()),
        ]
    })
}

fn echo(mut s: TcpStream, name: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if !name.is_empty() {
        buf.splice(0..0, format!("{name}\n").into_bytes());
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/x-echo\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        buf.len()
    );
    let _ = s.write_all(reply.as_bytes());
    let _ = s.write_all(&buf);
}

struct Case {
    line: String,
    raw: Vec<u8>,
}

fn parse(text: &str) -> (String, Vec<Case>) {
    let config = text
        .split("=== config\n")
        .nth(1)
        .and_then(|r| r.split("=== requests\n").next())
        .expect("=== config section")
        .to_string();
    let requests = text
        .split("=== requests\n")
        .nth(1)
        .expect("=== requests section");
    let cases = requests
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (head, body) = line.split_once(" || ").unwrap_or((line, ""));
            let mut parts = head.split(" | ");
            let request_line = parts.next().unwrap().trim();
            let headers: Vec<&str> = parts.map(str::trim).collect();
            // `GET /x` is sent as HTTP/1.1; `GET /x HTTP/1.0` as written.
            let mut raw = if request_line.split(' ').count() == 3 {
                format!("{request_line}\r\n")
            } else {
                format!("{request_line} HTTP/1.1\r\n")
            };
            if !headers
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with("host:"))
            {
                raw += "Host: localhost\r\n";
            }
            for h in &headers {
                raw += &format!("{h}\r\n");
            }
            raw += "Connection: close\r\n\r\n";
            // `\r\n` in a body stands for CRLF (chunked bodies need it).
            raw += &body.replace("\\r\\n", "\r\n");
            Case {
                line: line.to_string(),
                raw: raw.into_bytes(),
            }
        })
        .collect();
    (config, cases)
}

/// Headers compared on every answer (and any `X-Test-*`). `Date` and `Expires` hold the
/// clock; a multipart boundary is replaced by `BOUNDARY` before comparing.
const COMPARED_HEADERS: &[&str] = &[
    "Location",
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Content-Encoding",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Vary",
    "Cache-Control",
    "Set-Cookie",
];

fn normalize(s: &str, port: u16, echo: u16) -> String {
    let mut s = s
        .replace(&port.to_string(), "$PORT")
        .replace(&echo.to_string(), "$ECHO");
    for (name, p) in upstream_ports() {
        s = s.replace(&p.to_string(), name);
    }
    s
}

#[test]
fn nginx_and_portico_answer_alike() {
    let Some(nginx) = support::nginx_binary() else {
        eprintln!("differential: nginx not installed, skipped");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    files.sort();
    let (mut compared, mut differences) = (0usize, Vec::new());
    let echo = echo_upstream();
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let (config, cases) = parse(&std::fs::read_to_string(file).unwrap());
        let scratch = support::scratch(&format!("differential-{name}"));
        let (np, pp) = (support::free_port(), support::free_port());
        let nconf = write_conf(&scratch.join("nginx"), &config, np, echo);
        let pconf = write_conf(&scratch.join("portico"), &config, pp, echo);
        let _n = Running(
            Command::new(&nginx)
                .arg("-p")
                .arg(scratch.join("nginx"))
                .arg("-c")
                .arg(&nconf)
                .arg("-e")
                .arg(scratch.join("nginx/logs/error.log"))
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx"),
        );
        let _p = Running(
            support::portico()
                .arg("-p")
                .arg(scratch.join("portico"))
                .arg("-c")
                .arg(&pconf)
                .env("PORTICO_LOG", "error")
                .stderr(Stdio::null())
                .spawn()
                .expect("start portico"),
        );
        assert!(
            wait_for(np),
            "{name}: nginx did not start (see {})",
            scratch.display()
        );
        assert!(
            wait_for(pp),
            "{name}: portico did not start (see {})",
            scratch.display()
        );
        for case in &cases {
            let (a, b) = (send(np, &case.raw), send(pp, &case.raw));
            let (Some(a), Some(b)) = (a, b) else {
                differences.push(format!("{name}: {}: no answer from one of them", case.line));
                continue;
            };
            compared += 1;
            let mut diff = Vec::new();
            if a.status != b.status {
                diff.push(format!("status: nginx {} portico {}", a.status, b.status));
            }
            let mut compared_headers: Vec<String> =
                COMPARED_HEADERS.iter().map(|h| h.to_string()).collect();
            for (n, _) in a.headers.iter().chain(&b.headers) {
                if n.to_ascii_lowercase().starts_with("x-test-") && !compared_headers.contains(n) {
                    compared_headers.push(n.clone());
                }
            }
            for h in &compared_headers {
                let (x, y) = (
                    a.header(h).map(|v| normalize(v, np, echo)),
                    b.header(h).map(|v| normalize(v, pp, echo)),
                );
                if x != y {
                    diff.push(format!("{h}: nginx {x:?} portico {y:?}"));
                }
            }
            if a.header("Expires").is_some() != b.header("Expires").is_some() {
                diff.push(format!(
                    "Expires: nginx {:?} portico {:?}",
                    a.header("Expires"),
                    b.header("Expires")
                ));
            }
            let (x, y) = (normalize(&a.body, np, echo), normalize(&b.body, pp, echo));
            if x != y {
                diff.push(format!("body:\n--- nginx\n{x}\n--- portico\n{y}"));
            }
            if !diff.is_empty() {
                differences.push(format!("{name}: {}\n  {}", case.line, diff.join("\n  ")));
            }
        }
    }
    eprintln!(
        "differential: {} files, {compared} requests compared, {} match",
        files.len(),
        compared - differences.len().min(compared)
    );
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n\n")
    );
    assert!(
        compared >= MIN_COMPARED,
        "only {compared} requests compared (at least {MIN_COMPARED})"
    );
}
