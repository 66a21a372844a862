//! Logging: `tracing` events written as nginx writes its error log
//! (`2026/11/24 10:00:00 [error] 1234#0: message`), to standard error until the server knows
//! its error log (`-e` or `error_log`), then to that file. `PORTICO_LOG` filters (env-filter
//! syntax, e.g. `PORTICO_LOG=debug` or `PORTICO_LOG=portico::server=trace`).

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

static TARGET: Mutex<Option<std::fs::File>> = Mutex::new(None);
/// The error log's path, for [`reopen`].
static PATH: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// The least severe level any log takes (`error_log FILE LEVEL`): 0 debug, 1 notice,
/// 2 warn, 3 error, 4 nothing Portico emits (crit, alert, emerg). Until the server sets it,
/// the `PORTICO_LOG` filter alone decides.
static MIN_LEVEL: AtomicU8 = AtomicU8::new(0);
/// The main error log's own level.
static MAIN_LEVEL: AtomicU8 = AtomicU8::new(0);
/// Whether `PORTICO_LOG` decides alone (levels of `error_log` are then not applied).
static ENV_DECIDES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An `error_log` of an http, server or location level: the file and its level.
pub struct LogFile {
    path: String,
    min: u8,
    file: Mutex<Option<std::fs::File>>,
}

impl LogFile {
    fn open(path: &str) -> Option<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("portico: [alert] open() \"{path}\" failed ({e})"))
            .ok()
    }

    fn write(&self, level: u8, line: &[u8]) {
        if level < self.min && !ENV_DECIDES.load(Ordering::Relaxed) {
            return;
        }
        if self.path == "stderr" {
            let _ = std::io::stderr().write_all(line);
            return;
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(line);
        }
    }
}

/// The files of the current plan's inner `error_log`s, by path.
static LOGS: Mutex<Vec<std::sync::Arc<LogFile>>> = Mutex::new(Vec::new());

/// Opens the inner `error_log`s of a (new) plan: (path, level). A file already open stays
/// open; the others are closed.
pub fn open_logs(list: &[(String, String)]) {
    let mut logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = Vec::new();
    for (path, level) in list {
        let min = level_rank(level);
        match logs.iter().find(|l| l.path == *path && l.min == min) {
            Some(l) => next.push(l.clone()),
            None => next.push(std::sync::Arc::new(LogFile {
                path: path.clone(),
                min,
                file: Mutex::new(if path == "stderr" {
                    None
                } else {
                    LogFile::open(path)
                }),
            })),
        }
    }
    *logs = next;
    drop(logs);
    update_gate();
}

/// The open log for an `error_log` of the plan.
pub fn request_log(path: &str, level: &str) -> Option<std::sync::Arc<LogFile>> {
    let min = level_rank(level);
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    logs.iter()
        .find(|l| l.path == path && l.min == min)
        .cloned()
}

fn update_gate() {
    if ENV_DECIDES.load(Ordering::Relaxed) {
        return;
    }
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let min = logs
        .iter()
        .map(|l| l.min)
        .chain([MAIN_LEVEL.load(Ordering::Relaxed)])
        .min()
        .unwrap_or(0);
    MIN_LEVEL.store(min, Ordering::Relaxed);
}

fn level_rank(name: &str) -> u8 {
    match name {
        "debug" => 0,
        "info" | "notice" => 1,
        "warn" => 2,
        "error" => 3,
        _ => 4,
    }
}

thread_local! {
    /// While [`capture`] runs: the lines written, with their levels.
    static CAPTURE: std::cell::RefCell<Option<Vec<(u8, Vec<u8>)>>> =
        const { std::cell::RefCell::new(None) };
}

tokio::task_local! {
    /// The error log of the request being served, when its configuration names one.
    static REQUEST_LOG: Option<std::sync::Arc<LogFile>>;
}

/// Runs `f` (synchronous: routing) and returns what it logged instead of writing it, so the
/// lines can go to the log of the location it chose.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<(u8, Vec<u8>)>) {
    let before = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let lines = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), before));
    (r, lines.unwrap_or_default())
}

/// Writes captured lines to `log`, or the main error log.
pub fn emit(lines: Vec<(u8, Vec<u8>)>, log: Option<&LogFile>) {
    for (level, line) in lines {
        match log {
            Some(l) => l.write(level, &line),
            None => write_main(level, &line),
        }
    }
}

/// Runs `fut` with `log` as the error log of what it logs.
/// Not an `async fn`: that would hold `fut` twice in its state, as its argument and inside
/// the scope it is moved into.
pub fn scoped<F: std::future::Future>(
    log: Option<std::sync::Arc<LogFile>>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST_LOG.scope(log, fut)
}

fn write_main(level: u8, line: &[u8]) {
    if level < MAIN_LEVEL.load(Ordering::Relaxed) && !ENV_DECIDES.load(Ordering::Relaxed) {
        return;
    }
    let mut guard = TARGET.lock().unwrap_or_else(|e| e.into_inner());
    let _ = match guard.as_mut() {
        Some(f) => f.write_all(line),
        None => std::io::stderr().write_all(line),
    };
}

/// The target of events written whatever the error_log level (a reload's outcome line).
pub const ALWAYS: &str = "portico::always";

fn rank(level: &Level) -> u8 {
    match *level {
        Level::TRACE | Level::DEBUG => 0,
        Level::INFO => 1,
        Level::WARN => 2,
        Level::ERROR => 3,
    }
}

/// Installs the subscriber. Call once, first thing.
pub fn init() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTICO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let by_level = tracing_subscriber::filter::filter_fn(|m| {
        m.target() == ALWAYS || rank(m.level()) >= MIN_LEVEL.load(Ordering::Relaxed)
    });
    let layer = tracing_subscriber::fmt::layer()
        // A log file, like nginx's, holds no terminal colour codes (in structured fields).
        .with_ansi(false)
        .event_format(NginxFormat)
        .with_writer(Target)
        .with_filter(filter)
        .with_filter(by_level);
    tracing_subscriber::registry().with(layer).init();
}

/// nginx's `error_log` level: what is less severe is not written. nginx's default is
/// `error`. `PORTICO_LOG`, when set, decides alone.
pub fn set_level(name: &str) {
    if std::env::var_os("PORTICO_LOG").is_some() {
        ENV_DECIDES.store(true, Ordering::Relaxed);
        return;
    }
    MAIN_LEVEL.store(level_rank(name), Ordering::Relaxed);
    update_gate();
}

/// From now on, write the log to `path` (appending); "stderr" keeps standard error.
pub fn set_error_log(path: &Path) -> std::io::Result<()> {
    if path == Path::new("stderr") {
        *TARGET.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *PATH.lock().unwrap_or_else(|e| e.into_inner()) = None;
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *TARGET.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    *PATH.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
    Ok(())
}

/// SIGUSR1 (logrotate): opens the error log's path again, so lines go to the new file once the
/// old one was moved away. On failure the old file is kept, and the failure logged there.
pub fn reopen() {
    let path = PATH.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(path) = path {
        if let Err(e) = set_error_log(&path) {
            tracing::error!("open() \"{}\" failed ({e})", path.display());
        }
    }
    for log in LOGS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if log.path != "stderr" {
            *log.file.lock().unwrap_or_else(|e| e.into_inner()) = LogFile::open(&log.path);
        }
    }
}

struct Target;

struct TargetWriter {
    level: u8,
}

impl Write for TargetWriter {
    /// One formatted event: to the capture, the request's log, or the main log.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(lines) => {
                lines.push((self.level, buf.to_vec()));
                true
            }
            None => false,
        });
        if captured {
            return Ok(buf.len());
        }
        if let Ok(Some(log)) = REQUEST_LOG.try_with(|l| l.clone()) {
            log.write(self.level, buf);
            return Ok(buf.len());
        }
        write_main(self.level, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Target {
    type Writer = TargetWriter;
    fn make_writer(&'a self) -> TargetWriter {
        TargetWriter { level: 3 }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> TargetWriter {
        // Lines for every log pass every level check.
        let level = if meta.target() == ALWAYS {
            u8::MAX
        } else {
            rank(meta.level())
        };
        TargetWriter { level }
    }
}

struct NginxFormat;

impl<S, N> FormatEvent<S, N> for NginxFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "notice",
            Level::DEBUG | Level::TRACE => "debug",
        };
        write!(w, "{} [{level}] {}#0: ", timestamp(), std::process::id())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// `YYYY/MM/DD HH:MM:SS` in UTC.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}/{m:02}/{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
