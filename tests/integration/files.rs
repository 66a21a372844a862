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
