//! Static files over real sockets: no request reads outside its root or alias (encoded
//! `..`, `%2f`, NUL bytes, symlinks with `disable_symlinks on`, the off-by-slash alias), and
//! an inner `error_log` gets the errors of its requests. What nginx answers alike is in the
//! differential suite (tests/differential/static.case); these are the guarantees of Portico.

use std::path::Path;

use crate::serve::{Portico, get};

const SECRET: &str = "the secret outside every root";

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `www/` (the root) with `static/` and `media/` inside, and `secret.txt` beside them.
fn tree(dir: &Path) {
    for (name, text) in [
        ("www/index.html", "home\n"),
        ("www/static/app.css", "css\n"),
        ("www/media/photo.jpg", "jpg\n"),
        ("secret.txt", SECRET),
        ("www/static/secret.txt", "not the secret\n"),
        // An app beside the root whose static files an alias serves: its settings must
        // stay unreadable.
        ("app/static/app.js", "js\n"),
        ("app/settings.py", SECRET),
    ] {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let _ = std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("www/link.txt"));
    let _ = std::os::unix::fs::symlink(dir, dir.join("www/up"));
}

#[test]
fn no_request_reads_outside_its_root_or_alias() {
    let dir = crate::support::scratch("files-traversal");
    tree(&dir);
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/portico.pid;\nevents {{}}\nhttp {{\naccess_log off;\nerror_log {d}/error.log;\n\
             server {{\n listen 127.0.0.1:0;\n root {d}/www;\n\
             location /static {{ alias {d}/www/static/; }}\n\
             location /media/ {{ alias {d}/www/media/; }}\n\
             location /assets {{ alias {d}/app/static/; }}\n\
             location /safe/ {{ alias {d}/www/; disable_symlinks on; }}\n\
             location ~ ^/re/(.*)$ {{ alias {d}/www/static/$1; }}\n}}\n}}\n"
        ),
    )
    .unwrap();
    let p = Portico::start_conf(dir.clone(), conf);
    let port = p.port();
    // Sanity: the files the attempts aim past are served.
    assert!(get(port, "/static/app.css", "").ends_with("css\n"));
    assert!(get(port, "/static/secret.txt", "").ends_with("not the secret\n"));
    assert!(get(port, "/assets/app.js", "").ends_with("js\n"));
    let attempts = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static/..%252f..%252fsecret.txt",
        // The off-by-slash alias: nginx would read www/static/../secret.txt = www/secret.txt
        // and, one level more, the secret.
        "/static../secret.txt",
        "/static../../secret.txt",
        "/static..%2f..%2fsecret.txt",
        "/assets../settings.py",
        "/assets..%2fsettings.py",
        "/assets%2e%2e/settings.py",
        "/media/../../secret.txt",
        "/media/%2e%2e/%2e%2e/secret.txt",
        "/re/../../secret.txt",
        "/re/..%2f..%2fsecret.txt",
        "/secret.txt%00.html",
        "/static/app.css%00/../../../secret.txt",
        "/safe/link.txt",
        "/safe/up/secret.txt",
        "//..//..//secret.txt",
        "/./.././secret.txt",
        "/static/./../../secret.txt",
    ];
    for a in attempts {
        let r = get(port, a, "");
        assert!(
            !r.contains(SECRET),
            "{a} read the secret outside the root:\n{r}"
        );
        assert_ne!(status(&r), 200, "{a}:\n{r}");
    }
    // disable_symlinks on refuses the symlinked file itself (403) and a symlink on the way
    // (404), as nginx's walk reports ELOOP and ENOTDIR.
    assert_eq!(status(&get(port, "/safe/link.txt", "")), 403);
    assert_eq!(status(&get(port, "/safe/up/secret.txt", "")), 404);
    // The off-by-slash attempt is logged as what it is.
    drop(p);
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    assert!(
        log.contains("is outside the alias of location \"/assets\""),
        "{log}"
    );
}

#[test]
fn an_inner_error_log_gets_its_requests_errors() {
    let dir = crate::support::scratch("files-error-log");
    tree(&dir);
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/portico.pid;\nerror_log {d}/main.log;\nevents {{}}\nhttp {{\naccess_log off;\n\
             server {{\n listen 127.0.0.1:0;\n root {d}/www;\n error_log {d}/site.log;\n\
             location /quiet/ {{ error_log {d}/quiet.log warn; log_not_found off; }}\n\
             location /dirs/ {{ error_log {d}/dirs.log; }}\n}}\n\
             server {{\n listen 127.0.0.1:0;\n server_name other;\n root {d}/www;\n}}\n}}\n"
        ),
    )
    .unwrap();
    let p = Portico::start_conf(dir.clone(), conf);
    assert_eq!(status(&get(p.port(), "/missing.css", "")), 404);
    assert_eq!(status(&get(p.port(), "/quiet/missing.css", "")), 404);
    assert_eq!(status(&get(p.port(), "/dirs/nothere/", "")), 404);
    let other = crate::serve::exchange(
        p.port(),
        b"GET /other-missing.css HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&other), 404);
    drop(p);
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    let (site, quiet, dirs, main) = (
        read("site.log"),
        read("quiet.log"),
        read("dirs.log"),
        read("main.log"),
    );
    assert!(
        site.contains("missing.css\" failed (2: No such file or directory)"),
        "{site}"
    );
    assert!(!site.contains("other-missing"), "{site}");
    assert!(
        dir.join("quiet.log").exists(),
        "an error_log file is made at start"
    );
    assert!(!quiet.contains("[error]"), "{quiet}");
    // Routing's own lines (the index module's) go to the location's log too.
    assert!(dirs.contains("nothere\" is not found"), "{dirs}");
    assert!(main.contains("other-missing.css"), "{main}");
    assert!(!main.contains("/missing.css"), "{main}");
}

/// Reads one answer off `c`: its head and, unless it is to a HEAD, `Content-Length` bytes.
fn read_answer(c: &mut std::net::TcpStream, head_only: bool) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "closed mid-head: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; if head_only { 0 } else { len }];
    c.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn large_files_arrive_whole_with_and_without_sendfile() {
    use std::io::Write;
    // 700 KiB, every byte depending on its offset: a piece sent twice, dropped or out of
    // order shows.
    let (p, data) = big_file_server("files-large", 700 * 1024, "");
    for prefix in ["/sf/", "/copy/"] {
        // One keep-alive connection: an answer left unfinished (or a head held back)
        // would stall the next one.
        let mut c = std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        for _ in 0..2 {
            write!(c, "GET {prefix}big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (head, body) = read_answer(&mut c, false);
            assert!(head.starts_with("HTTP/1.1 200 "), "{prefix}: {head}");
            assert!(body == data, "{prefix}: the body differs from the file");
            write!(
                c,
                "GET {prefix}big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-600000\r\n\r\n"
            )
            .unwrap();
            let (head, body) = read_answer(&mut c, false);
            assert!(head.starts_with("HTTP/1.1 206 "), "{prefix}: {head}");
            assert!(
                head.contains("Content-Range: bytes 1000-600000/716800"),
                "{head}"
            );
            assert!(body == data[1000..=600000], "{prefix}: the range differs");
            // Multipart: small parts gathered into one write, a large one in pieces.
            write!(
                c,
                "GET {prefix}big.bin HTTP/1.1\r\nHost: x\r\n\
                 Range: bytes=0-99,100000-300000,700000-700099\r\n\r\n"
            )
            .unwrap();
            let (head, body) = read_answer(&mut c, false);
            assert!(head.starts_with("HTTP/1.1 206 "), "{prefix}: {head}");
            let mut at = 0;
            for (start, end) in [(0, 99), (100000, 300000), (700000, 700099)] {
                let part = &data[start..=end];
                let found = body[at..]
                    .windows(16)
                    .position(|w| w == &part[..16])
                    .map(|i| at + i)
                    .unwrap_or_else(|| panic!("{prefix}: part {start}-{end} is missing"));
                assert!(
                    body[found..].starts_with(part),
                    "{prefix}: part {start}-{end} differs"
                );
                at = found + part.len();
            }
            write!(c, "HEAD {prefix}big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (head, _) = read_answer(&mut c, true);
            assert!(head.contains("Content-Length: 716800"), "{head}");
        }
    }
}

/// A client that reads slowly gets every byte (the server waits for room in the socket, with
/// `sendfile` and without), and one that stops reading is dropped after `send_timeout`, as
/// nginx drops it, rather than held open.
#[test]
fn a_slow_reader_gets_the_whole_file_and_a_stalled_one_is_dropped() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    // 24 MiB: more than the send buffer (autotuned up to 4 MiB) and the receiver's window
    // together, so a reader that stops leaves the server waiting.
    let (p, data) = big_file_server("files-slow-reader", 24 * 1024 * 1024, " send_timeout 1s;\n");
    for prefix in ["/sf/", "/copy/"] {
        // Slow: 256 KiB at a time with a pause, each pause well under send_timeout.
        let mut c = std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET {prefix}big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (head, first) = read_head_and_some(&mut c);
        assert!(head.starts_with("HTTP/1.1 200 "), "{prefix}: {head}");
        let mut body = first;
        let mut buf = vec![0u8; 256 * 1024];
        let mut pauses = 0;
        while body.len() < data.len() {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "{prefix}: closed after {} bytes", body.len());
            body.extend_from_slice(&buf[..n]);
            if pauses < 20 {
                std::thread::sleep(Duration::from_millis(50));
                pauses += 1;
            }
        }
        assert!(
            body == data,
            "{prefix}: the slowly read body differs from the file"
        );

        // Stalled: nothing read for three times send_timeout, then the server must have
        // given up (the connection ends before the file does).
        let mut c = std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET {prefix}big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (head, first) = read_head_and_some(&mut c);
        assert!(head.starts_with("HTTP/1.1 200 "), "{prefix}: {head}");
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        let mut total = first.len();
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(
            total < data.len(),
            "{prefix}: a stalled reader still got the whole file ({total} bytes)"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{prefix}: the connection stayed open after send_timeout"
        );
    }
}

/// The head of an answer and whatever of the body came with it.
fn read_head_and_some(c: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed mid-head: {got:?}");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let body = got.split_off(end);
    (String::from_utf8_lossy(&got).into_owned(), body)
}

/// A Portico serving `big.bin`, `len` bytes each depending on its offset (a piece sent twice,
/// dropped or out of order shows), under /sf/ with `sendfile on` and /copy/ with it off;
/// `extra` goes into the server block. Returns the server and the file's bytes.
fn big_file_server(name: &str, len: u32, extra: &str) -> (Portico, Vec<u8>) {
    let dir = crate::support::scratch(name);
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/big.bin"), &data).unwrap();
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/portico.pid;\nevents {{}}\nhttp {{\naccess_log off;\n\
             server {{\n listen 127.0.0.1:0;\n root {d}/www;\n{extra}\
             location /sf/ {{ alias {d}/www/; sendfile on; }}\n\
             location /copy/ {{ alias {d}/www/; sendfile off; }}\n}}\n}}\n"
        ),
    )
    .unwrap();
    (Portico::start_conf(dir, conf), data)
}
