//! Command-line flags, as nginx spells them, plus Portico's own subcommands.
//! Raw flags (clap) are turned into a validated [`Action`] before anything runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Default paths of the nginx build Portico stands in for (Debian's).
pub const DEFAULT_PREFIX: &str = "/usr/share/nginx/";
pub const DEFAULT_CONF: &str = "/etc/nginx/nginx.conf";
pub const DEFAULT_PID: &str = "/run/nginx.pid";

/// The nginx version whose behaviour Portico follows.
pub const NGINX_VERSION: &str = "1.22.1";

#[derive(Parser, Debug)]
#[command(
    name = "portico",
    about = "An nginx-compatible front server that reads your existing nginx configuration.",
    long_about = "An nginx-compatible front server that reads your existing nginx configuration.\n\n\
        The flags are nginx's, so scripts, systemd units and nginx's own test harness can drive \
        Portico unchanged. `portico -t -c /etc/nginx/nginx.conf` tests a configuration; a lone \
        sites-available file (server, upstream and map blocks at the top) is read as the inside \
        of `http {}`.\n\nLogging: set PORTICO_LOG (e.g. PORTICO_LOG=debug) to filter traces.",
    disable_version_flag = true,
    disable_help_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Use an alternative configuration file (default: /etc/nginx/nginx.conf).
    #[arg(short = 'c', value_name = "FILE")]
    pub conf: Option<PathBuf>,
    /// Set the prefix path (default: /usr/share/nginx/).
    #[arg(short = 'p', value_name = "PREFIX")]
    pub prefix: Option<PathBuf>,
    /// Set the error log file ("stderr" for standard error).
    #[arg(short = 'e', value_name = "ERROR_LOG")]
    pub error_log: Option<String>,
    /// Set global directives out of the configuration file, e.g. -g 'daemon off;'.
    #[arg(short = 'g', value_name = "DIRECTIVES")]
    pub globals: Option<String>,
    /// Test the configuration and exit: 0 when it is valid, 1 when it is not.
    #[arg(short = 't')]
    pub test: bool,
    /// Test the configuration, print it (every file, as read) and exit.
    #[arg(short = 'T')]
    pub test_dump: bool,
    /// Suppress non-error messages while testing.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Send a signal to the running server: stop, quit, reopen, reload.
    #[arg(short = 's', value_name = "SIGNAL")]
    pub signal: Option<Signal>,
    /// Do not reload when a configuration file changes (reload with SIGHUP or -s reload only).
    /// PORTICO_NO_WATCH=1 does the same.
    #[arg(long = "no-watch")]
    pub no_watch: bool,
    /// Print the version and exit.
    #[arg(short = 'v')]
    pub version: bool,
    /// Print the version and the configure arguments (modules present and absent), then exit.
    #[arg(short = 'V')]
    pub version_configure: bool,
    /// Print help.
    #[arg(short = 'h', short_alias = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Signal {
    /// Fast shutdown (SIGTERM).
    Stop,
    /// Graceful shutdown (SIGQUIT).
    Quit,
    /// Reopen log files (SIGUSR1).
    Reopen,
    /// Reload the configuration (SIGHUP).
    Reload,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Stop => libc::SIGTERM,
            Signal::Quit => libc::SIGQUIT,
            Signal::Reopen => libc::SIGUSR1,
            Signal::Reload => libc::SIGHUP,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check configuration files: every error nginx -t would report (all of them, not just the
    /// first) and the lint rules (security and deployment mistakes nginx accepts).
    /// No side effects: nothing is bound, resolved or written.
    ///
    /// Exit status: 0 clean; 1 findings at or above --fail-on; 2 a configuration is invalid
    /// (nginx -t would fail); 3 usage error. Silence a finding with a comment on its line or
    /// the line before: `# portico-ignore: RULE[,RULE] reason`.
    #[command(after_help = "Rules: see `portico check --list-rules`.\n\
        Example: portico check --format sarif --map /etc/nginx=./nginx nginx/nginx.conf > portico.sarif")]
    Check {
        /// Configuration files (default: /etc/nginx/nginx.conf).
        files: Vec<PathBuf>,
        /// Prefix for relative paths.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<PathBuf>,
        /// Colour: auto (on a terminal), always, never.
        #[arg(long, value_enum, default_value_t = ColorWhen::Auto)]
        color: ColorWhen,
        /// The directory relative includes start from (default: each file's own). nginx reads
        /// them from the main nginx.conf's directory: give it when checking a file that is
        /// included from elsewhere (a sites-available file, a snippet).
        #[arg(long, value_name = "DIR")]
        conf_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::lint::output::Format::Text)]
        format: crate::lint::output::Format,
        /// Exit 1 when a finding is at least this severe.
        #[arg(long, value_enum, default_value_t = FailOn::Warning)]
        fail_on: FailOn,
        /// Missing certificate files and host names that need DNS are errors, not warnings.
        #[arg(long)]
        strict: bool,
        /// Read paths under FROM from TO, e.g. --map /etc/nginx=./nginx (repeatable): check a
        /// checkout where the configuration names its installed place.
        #[arg(long = "map", value_name = "FROM=TO", value_parser = parse_map)]
        maps: Vec<(PathBuf, PathBuf)>,
        /// Route expectations to check (one a line: `GET http://host/path -> proxy URL`).
        #[arg(long, value_name = "FILE")]
        expect: Vec<PathBuf>,
        /// Print the rules (id, level, what they find) and exit.
        #[arg(long)]
        list_rules: bool,
        /// Print help.
        #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Rewrite configuration files in the canonical layout, keeping comments.
    /// With --check, change nothing: exit 1 and show a diff when a file is not formatted.
    Fmt {
        /// Print help.
        #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Files to format.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only check: exit 1 when a file would change.
        #[arg(long)]
        check: bool,
    },
    /// Explain how a request would be routed: the server and location chosen (with file:line),
    /// the handler, and for a proxy the exact request the upstream would get.
    ///
    /// Example: portico route -c site.conf -H 'Cookie: a=1' 'GET http://example.com/app/?x=1'
    Route {
        /// The request: a method and a target, absolute (http://host/path) or origin-form
        /// (/path, with the host from -H 'Host: ...' or --to).
        request: String,
        /// The configuration file (default: /etc/nginx/nginx.conf).
        #[arg(short = 'c', value_name = "FILE")]
        conf: Option<PathBuf>,
        /// The prefix path (default: /usr/share/nginx/).
        #[arg(short = 'p', value_name = "PREFIX")]
        prefix: Option<PathBuf>,
        /// A request header, 'Name: value' (repeatable, kept in order).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The listening address the request arrives on (default: the first one configured).
        #[arg(long, value_name = "ADDR:PORT")]
        to: Option<String>,
        /// The client's address.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:50000")]
        from: std::net::SocketAddr,
        /// The request has a body of this many bytes.
        #[arg(long, value_name = "BYTES")]
        body: Option<u64>,
        /// The request comes over TLS.
        #[arg(long)]
        https: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the compiled plan: sockets, servers, locations, upstreams.
    Plan {
        /// The configuration file (default: /etc/nginx/nginx.conf).
        #[arg(short = 'c', value_name = "FILE")]
        conf: Option<PathBuf>,
        /// The prefix path (default: /usr/share/nginx/).
        #[arg(short = 'p', value_name = "PREFIX")]
        prefix: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the directive table (what Portico knows and implements) as Markdown or TSV.
    Directives {
        #[arg(long, value_enum, default_value_t = TableFormat::Markdown)]
        format: TableFormat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// `check --fail-on`: the least severe finding that fails the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
    Info,
}

impl FailOn {
    pub fn level(self) -> crate::lint::Level {
        match self {
            FailOn::Error => crate::lint::Level::Error,
            FailOn::Warning => crate::lint::Level::Warning,
            FailOn::Info => crate::lint::Level::Info,
        }
    }
}

fn parse_map(v: &str) -> Result<(PathBuf, PathBuf), String> {
    let (from, to) = v
        .split_once('=')
        .ok_or_else(|| format!("expected FROM=TO, e.g. /etc/nginx=./nginx, not {v:?}"))?;
    if from.is_empty() || to.is_empty() {
        return Err(format!("both sides of {v:?} must be paths"));
    }
    Ok((PathBuf::from(from), PathBuf::from(to)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Markdown,
    Tsv,
}

/// What the command line asks for, validated.
#[derive(Debug)]
pub enum Action {
    Version {
        configure: bool,
    },
    Test {
        paths: crate::config::Paths,
        globals: Option<String>,
        dump: bool,
        quiet: bool,
    },
    Signal {
        paths: crate::config::Paths,
        globals: Option<String>,
        signal: Signal,
    },
    Serve {
        paths: crate::config::Paths,
        globals: Option<String>,
        options: crate::server::ServeOptions,
    },
    Check(crate::commands::CheckArgs),
    Fmt {
        files: Vec<PathBuf>,
        check: bool,
    },
    ListRules,
    Directives {
        format: TableFormat,
    },
    Route(crate::inspect::RouteArgs),
    Plan {
        paths: crate::config::Paths,
        format: OutputFormat,
    },
}

impl Cli {
    pub fn action(self) -> Action {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        match self.command {
            Some(Command::Check {
                files,
                prefix,
                conf_dir,
                color,
                format,
                fail_on,
                strict,
                maps,
                expect,
                list_rules,
                ..
            }) => {
                use std::io::IsTerminal;
                if list_rules {
                    return Action::ListRules;
                }
                let color = match color {
                    ColorWhen::Always => true,
                    ColorWhen::Never => false,
                    ColorWhen::Auto => std::io::stdout().is_terminal(),
                };
                let prefix = prefix.map(|p| cwd.join(p));
                let files = files.into_iter().map(|f| cwd.join(f)).collect();
                let maps = maps
                    .into_iter()
                    .map(|(from, to)| (from, cwd.join(to)))
                    .collect();
                let expect = expect.into_iter().map(|f| cwd.join(f)).collect();
                return Action::Check(crate::commands::CheckArgs {
                    files,
                    prefix,
                    conf_dir: conf_dir.map(|d| cwd.join(d)),
                    color,
                    format,
                    fail_on: fail_on.level(),
                    strict,
                    maps,
                    expect,
                    cwd,
                });
            }
            Some(Command::Fmt { files, check, .. }) => {
                let files = files.into_iter().map(|f| cwd.join(f)).collect();
                return Action::Fmt { files, check };
            }
            Some(Command::Directives { format }) => return Action::Directives { format },
            Some(Command::Route {
                request,
                conf,
                prefix,
                headers,
                to,
                from,
                body,
                https,
                format,
            }) => {
                return Action::Route(crate::inspect::RouteArgs {
                    paths: paths_of(&cwd, prefix, conf),
                    request,
                    headers,
                    to,
                    from,
                    body,
                    https,
                    format,
                });
            }
            Some(Command::Plan {
                conf,
                prefix,
                format,
            }) => {
                return Action::Plan {
                    paths: paths_of(&cwd, prefix, conf),
                    format,
                };
            }
            None => {}
        }
        if self.version || self.version_configure {
            return Action::Version {
                configure: self.version_configure,
            };
        }
        let prefix = match self.prefix {
            Some(p) => cwd.join(p),
            None => PathBuf::from(DEFAULT_PREFIX),
        };
        let conf = self.conf.unwrap_or_else(|| PathBuf::from(DEFAULT_CONF));
        // nginx resolves -c against the prefix; a relative prefix against the current directory.
        let paths = crate::config::Paths::new(&prefix, &conf);
        let globals = self.globals;
        if self.test || self.test_dump {
            return Action::Test {
                paths,
                globals,
                dump: self.test_dump,
                quiet: self.quiet,
            };
        }
        if let Some(signal) = self.signal {
            return Action::Signal {
                paths,
                globals,
                signal,
            };
        }
        Action::Serve {
            paths,
            globals,
            options: crate::server::ServeOptions {
                error_log: self.error_log,
                watch: !self.no_watch,
            },
        }
    }
}

/// Paths from -p and -c of the inspection subcommands: both relative to the current directory,
/// as a tool's file arguments are (nginx's own -c is relative to the prefix).
fn paths_of(
    cwd: &std::path::Path,
    prefix: Option<PathBuf>,
    conf: Option<PathBuf>,
) -> crate::config::Paths {
    let prefix = prefix.map_or_else(|| PathBuf::from(DEFAULT_PREFIX), |p| cwd.join(p));
    let conf = conf.map_or_else(|| PathBuf::from(DEFAULT_CONF), |c| cwd.join(c));
    crate::config::Paths::new(&prefix, &conf)
}
