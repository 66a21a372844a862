//! What each command-line action does. Diagnostics are rendered here, at the edge.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{DEFAULT_PID, NGINX_VERSION, Signal, TableFormat};
use crate::config::directives::{Status, Table};
use crate::config::{self, Compiled, Options, Paths, RealFs};

/// `-v` / `-V`, on stderr as nginx prints them. The harness of nginx's test suite reads
/// `nginx version: nginx/X.Y.Z` and the `--without-...` arguments from this.
pub fn version(configure: bool) -> ExitCode {
    let mut out = format!(
        "nginx version: nginx/{NGINX_VERSION} (portico/{})\n",
        env!("CARGO_PKG_VERSION")
    );
    if configure {
        out.push_str("built by rustc, Portico's configuration compiler and runtime\n");
        out.push_str("built with rustls (TLSv1.2, TLSv1.3)\nTLS SNI support enabled\n");
        out.push_str("configure arguments: --with-http_ssl_module --with-http_realip_module");
        for m in absent_modules() {
            out.push_str(&format!(" --without-{m}_module"));
        }
        // Features that are not modules of their own: proxy caching is not implemented.
        out.push_str(" --without-http-cache");
        out.push('\n');
    }
    eprint!("{out}");
    ExitCode::SUCCESS
}

/// Built-in http modules none of whose directives Portico implements.
fn absent_modules() -> BTreeSet<&'static str> {
    let table = Table::get();
    let modules: BTreeSet<&str> = table
        .rows()
        .iter()
        .filter(|r| r.dynamic.is_none() && r.module.starts_with("http_"))
        .map(|r| r.module)
        .collect();
    modules
        .into_iter()
        .filter(|m| {
            !table
                .rows()
                .iter()
                .any(|r| r.module == *m && matches!(r.status, Status::Yes | Status::Noop))
        })
        .collect()
}

/// Compiles as `nginx -t` would, checking the machine too (DNS, users, listen sockets).
fn compile(paths: &Paths, globals: Option<String>) -> Compiled {
    let options = Options {
        paths: paths.clone(),
        globals,
        mode: None,
    };
    let mut compiled = config::compile_in(&RealFs, Some(&config::env::RealEnvironment), &options);
    let plan = crate::plan::build(&mut compiled, &crate::inspect::lower_options(paths));
    // nginx loads certificates as it merges each server: after the checks of reading, before
    // those it makes once everything is read.
    let at = compiled
        .diagnostics
        .iter()
        .position(|d| {
            matches!(
                d.code,
                "ssl-no-certificate" | "unknown-variable" | "bind" | "no-events"
            )
        })
        .unwrap_or(compiled.diagnostics.len());
    let certificates = crate::server::tls::check(&plan).into_iter().map(|m| {
        if crate::server::tls::is_mismatch(&m) {
            config::Diagnostic::warning("ssl-key-mismatch", m).unlocated()
        } else {
            config::Diagnostic::error("ssl-certificate", m).unlocated()
        }
    });
    compiled.diagnostics.splice(at..at, certificates);
    compiled
}

/// `-t` and `-T`: nginx's lines, every diagnostic, exit 0 or 1.
pub fn test(paths: &Paths, globals: Option<String>, dump: bool, quiet: bool) -> ExitCode {
    let compiled = compile(paths, globals);
    let name = paths.conf_file.display();
    let mut err = std::io::stderr().lock();
    for d in &compiled.diagnostics {
        let _ = writeln!(err, "{}", d.nginx_line(&compiled.sources.map));
    }
    if compiled.has_errors() {
        let _ = writeln!(err, "portico: configuration file {name} test failed");
        return ExitCode::from(1);
    }
    if !quiet {
        let _ = writeln!(err, "portico: the configuration file {name} syntax is ok");
        let _ = writeln!(err, "portico: configuration file {name} test is successful");
    }
    if dump {
        let mut out = std::io::stdout().lock();
        for (_, file) in compiled.sources.map.iter() {
            if let Some(path) = file.path() {
                let _ = write!(
                    out,
                    "# configuration file {}:\n{}",
                    path.display(),
                    file.text
                );
                if !file.text.ends_with('\n') {
                    let _ = writeln!(out);
                }
                let _ = writeln!(out);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `-s SIGNAL`: signal the process named by the configuration's pid file.
pub fn signal(paths: &Paths, globals: Option<String>, signal: Signal) -> ExitCode {
    let compiled = compile(paths, globals.clone());
    let pid_path = pid_file(&compiled, paths);
    let fail = |msg: String| {
        eprintln!("portico: [error] {msg}");
        ExitCode::from(1)
    };
    let text = match std::fs::read_to_string(&pid_path) {
        Ok(t) => t,
        Err(e) => {
            let code = e.raw_os_error().unwrap_or(0);
            return fail(format!(
                "open() \"{}\" failed ({code}: {})",
                pid_path.display(),
                os_message(&e)
            ));
        }
    };
    let pid: i32 = match text.trim().parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return fail(format!(
                "invalid PID number \"{}\" in \"{}\"",
                text.trim(),
                pid_path.display()
            ));
        }
    };
    // A reload: the configuration is compiled here first, by the same pure compiler the
    // server uses, and a broken one is not signalled at all.
    let status_path = crate::server::reload::status_path(&pid_path);
    if signal == Signal::Reload
        && let Err(lines) = crate::server::reload::compile(paths, globals.clone())
    {
        for l in &lines {
            eprintln!("portico: {l}");
        }
        eprintln!(
            "portico: [emerg] configuration file {} test failed; the server was not signalled and keeps its configuration",
            paths.conf_file.display()
        );
        return ExitCode::from(1);
    }
    let sent_at = crate::server::reload::now_nanos();
    // SAFETY: kill(2) has no memory effects; a bad pid is reported through errno.
    if unsafe { libc::kill(pid, signal.number()) } != 0 {
        let e = std::io::Error::last_os_error();
        let code = e.raw_os_error().unwrap_or(0);
        return fail(format!(
            "kill({pid}, {}) failed ({code}: {})",
            signal.number(),
            os_message(&e)
        ));
    }
    if signal == Signal::Reload {
        return wait_for_reload(pid, &status_path, sent_at);
    }
    ExitCode::SUCCESS
}

/// Waits for the server to write the outcome of the reload it was asked for (one that started
/// after the signal went): 0 when it is in, 1 with its diagnostics when it failed (a bind, a
/// file changed since the check) or when no outcome came within PORTICO_RELOAD_WAIT seconds
/// (default 10).
fn wait_for_reload(pid: i32, status_path: &Path, sent_at: u128) -> ExitCode {
    use crate::server::reload::Status;
    let wait = std::env::var("PORTICO_RELOAD_WAIT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(10.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(wait);
    loop {
        if let Some(status) = Status::read(status_path).filter(|s| s.started >= sent_at) {
            if status.ok {
                for l in &status.lines {
                    eprintln!("portico: [notice] {l}");
                }
                return ExitCode::SUCCESS;
            }
            let mut lines = status.lines.iter();
            let summary = lines.next();
            for l in lines {
                eprintln!("portico: {l}");
            }
            if let Some(s) = summary {
                eprintln!("portico: [emerg] {s}");
            }
            return ExitCode::from(1);
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "portico: [error] no reload outcome from process {pid} within {wait} s (\"{}\" not written)",
                status_path.display()
            );
            return ExitCode::from(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The `pid` directive's file (relative to the prefix), or nginx's default.
fn pid_file(compiled: &Compiled, paths: &Paths) -> PathBuf {
    let from_config = compiled.sources.root.and_then(|root| {
        compiled
            .sources
            .tree(root)
            .directives
            .iter()
            .rev()
            .find(|d| d.name() == "pid")
            .and_then(|d| d.args.first())
    });
    match from_config {
        Some(arg) => paths.prefix.join(&arg.value),
        None => PathBuf::from(DEFAULT_PID),
    }
}

fn os_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.find(" (os error")
        .map_or(s.clone(), |i| s[..i].to_string())
}

/// What `portico check` is asked to do, validated.
#[derive(Debug)]
pub struct CheckArgs {
    pub files: Vec<PathBuf>,
    pub prefix: Option<PathBuf>,
    /// Where relative includes start, instead of each file's directory.
    pub conf_dir: Option<PathBuf>,
    pub color: bool,
    pub format: crate::lint::output::Format,
    pub fail_on: crate::lint::Level,
    pub strict: bool,
    /// `--map FROM=TO`, TO absolute.
    pub maps: Vec<(PathBuf, PathBuf)>,
    pub expect: Vec<PathBuf>,
    pub cwd: PathBuf,
}

/// The file system with `--map` applied: the config's paths are read from the checkout,
/// while messages keep the names the config uses.
struct MappedFs<'s> {
    settings: &'s crate::lint::Settings,
}

impl config::Fs for MappedFs<'_> {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        RealFs.read(&self.settings.map_path(path))
    }

    fn glob(&self, pattern: &Path) -> std::io::Result<Vec<PathBuf>> {
        let found = RealFs.glob(&self.settings.map_path(pattern))?;
        Ok(found
            .into_iter()
            .map(|p| {
                for (from, to) in &self.settings.maps {
                    if let Ok(rest) = p.strip_prefix(to) {
                        return from.join(rest);
                    }
                }
                p
            })
            .collect())
    }
}

/// `portico check FILE...`: every problem nginx -t would report and every lint finding, in
/// the chosen format. Exit 0 clean, 1 findings at or above `--fail-on`, 2 a config invalid.
pub fn check(args: &CheckArgs) -> ExitCode {
    use crate::lint::output::{self, Format};
    let files: Vec<PathBuf> = if args.files.is_empty() {
        vec![PathBuf::from(crate::cli::DEFAULT_CONF)]
    } else {
        args.files.clone()
    };
    let mut invalid = false;
    let mut failing = false;
    let mut located = Vec::new();
    let mut out = std::io::stdout().lock();
    for file in &files {
        let prefix = args.prefix.clone().unwrap_or_else(|| {
            file.parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
        });
        let mut paths = Paths::new(&prefix, file);
        if let Some(dir) = &args.conf_dir {
            paths.conf_prefix = dir.clone();
        }
        let settings = crate::lint::Settings {
            strict: args.strict,
            maps: args.maps.clone(),
            conf_prefix: paths.conf_prefix.clone(),
        };
        let options = crate::inspect::lower_options(&paths);
        let mut compiled = config::compile(
            &MappedFs {
                settings: &settings,
            },
            &Options {
                paths,
                globals: None,
                mode: None,
            },
        );
        let plan = crate::plan::build(&mut compiled, &options);
        let mut findings = crate::lint::lint(&compiled, &plan, &settings);
        let config_invalid = crate::lint::invalid(&compiled);
        if !config_invalid {
            let files = crate::lint::expect::MappedFiles {
                settings: &settings,
            };
            for e in &args.expect {
                findings.extend(crate::lint::expect::run(&plan, e, &files));
            }
        }
        invalid |= config_invalid;
        failing |= findings.iter().any(|f| f.level >= args.fail_on);
        let show = |name: &str| {
            let mapped = settings.map_path(Path::new(name));
            mapped
                .strip_prefix(&args.cwd)
                .map_or(mapped.clone(), Path::to_path_buf)
                .display()
                .to_string()
        };
        if args.format == Format::Text {
            // The same sources under the names shown (mapped, relative to the current directory).
            let mut shown = config::span::SourceMap::default();
            for (_, f) in compiled.sources.map.iter() {
                let origin = match &f.origin {
                    config::span::Origin::File(p) => {
                        config::span::Origin::File(PathBuf::from(show(&p.display().to_string())))
                    }
                    o => o.clone(),
                };
                shown.add(config::span::SourceFile::new(origin, f.text.clone()));
            }
            let mut findings = findings.clone();
            for f in &mut findings {
                if let Some((path, _)) = &mut f.external {
                    *path = PathBuf::from(show(&path.display().to_string()));
                }
            }
            let text = output::text(&findings, &shown, args.color);
            let _ = out.write_all(text.as_bytes());
            let count = |l| findings.iter().filter(|f| f.level == l).count();
            let _ = writeln!(
                out,
                "{}: {} error(s), {} warning(s), {} info",
                show(&file.display().to_string()),
                count(crate::lint::Level::Error),
                count(crate::lint::Level::Warning),
                count(crate::lint::Level::Info),
            );
        } else {
            located.extend(output::locate(&findings, &compiled.sources.map, &show));
        }
    }
    let doc = match args.format {
        Format::Text => String::new(),
        Format::Json => output::json(&located),
        Format::Sarif => output::sarif(&located),
        Format::Github => output::github(&located),
        Format::Checkstyle => output::checkstyle(&located),
    };
    let _ = out.write_all(doc.as_bytes());
    if invalid {
        ExitCode::from(2)
    } else if failing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `portico check --list-rules`.
pub fn list_rules() -> ExitCode {
    let mut out = std::io::stdout().lock();
    for r in crate::lint::RULES {
        let gixy = r.gixy.map(|g| format!(" (gixy: {g})")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<30} {:<8} {}{gixy}\n{:39}{}\n{:39}{}",
            r.id,
            r.level.as_str(),
            r.summary,
            "",
            r.help,
            "",
            r.url
        );
    }
    ExitCode::SUCCESS
}

/// `portico fmt [--check] FILE...`: 0 when every file is (or now is) formatted, 1 when
/// `--check` finds one that is not, 2 when a file cannot be read or parsed.
pub fn fmt(files: &[PathBuf], check: bool) -> ExitCode {
    let mut unformatted = false;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read(file) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                eprintln!("portico: {name}: {}", os_message(&e));
                failed = true;
                continue;
            }
        };
        let formatted = match crate::lint::fmt::format(&text) {
            Ok(f) => f,
            Err(m) => {
                eprintln!("portico: {name}: {m}");
                failed = true;
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        if check {
            unformatted = true;
            let _ = write!(out, "{}", crate::lint::fmt::diff(&name, &text, &formatted));
        } else if let Err(e) = std::fs::write(file, formatted) {
            eprintln!("portico: {name}: {}", os_message(&e));
            failed = true;
        }
    }
    if failed {
        ExitCode::from(2)
    } else if unformatted {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `portico directives`: the directive table, as documentation.
pub fn directives(format: TableFormat) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match format {
        TableFormat::Tsv => {
            let _ = out.write_all(config::directives::TABLE.as_bytes());
        }
        TableFormat::Markdown => {
            let _ = out.write_all(directives_markdown().as_bytes());
        }
    }
    ExitCode::SUCCESS
}

/// The directive table as a Markdown page (`grammar/DIRECTIVES.md` is this output).
pub fn directives_markdown() -> String {
    let table = Table::get();
    let mut s = String::from(
        "# Directives\n\nGenerated from `grammar/directives.tsv` by `portico directives`; do not edit.\n\n\
         Status: **yes** implemented; **noop** accepted, no effect in Portico; **no** not supported \
         yet (a warning, ignored); **closes** not supported yet and an error, because ignoring it \
         would open what the configuration closes.\n\n\
         | directive | module | contexts | arguments | status |\n|---|---|---|---|---|\n",
    );
    let tsv: Vec<Vec<&str>> = config::directives::TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    for (row, cols) in table.rows().iter().zip(&tsv) {
        let module = match row.dynamic {
            Some(d) => format!("{} (dynamic: {d})", row.module),
            None => row.module.to_string(),
        };
        let block = if cols[4] == "-" { "" } else { ", block" };
        s.push_str(&format!(
            "| `{}` | {} | {} | {}{} | {} |\n",
            row.name,
            module,
            row.context_names().join(", "),
            cols[3],
            block,
            cols[5]
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn directive_docs_are_generated_from_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grammar/DIRECTIVES.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::directives_markdown(),
            "grammar/DIRECTIVES.md is stale: run `cargo run -- directives > grammar/DIRECTIVES.md`"
        );
    }
}
