//! The directive table (`grammar/directives.tsv`): for every directive nginx knows, where it
//! may appear, how many arguments it takes, what its block holds and whether Portico
//! implements it. The compiler, the linter and the docs all read this one table.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The table's text, compiled into the binary.
pub const TABLE: &str = include_str!("../../grammar/directives.tsv");

/// Where a directive stands: nginx's configuration contexts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    Main,
    Events,
    Http,
    Server,
    Location,
    Upstream,
    ServerIf,
    LocationIf,
    LimitExcept,
    Stream,
    StreamServer,
    StreamUpstream,
    Mail,
    MailServer,
    /// Inside `types`, `map`, `geo`, `split_clients` or `charset_map`: entries, not directives.
    Opaque(&'static str),
}

impl Context {
    fn bit(self) -> u32 {
        match self {
            Context::Main => 1,
            Context::Events => 1 << 1,
            Context::Http => 1 << 2,
            Context::Server => 1 << 3,
            Context::Location => 1 << 4,
            Context::Upstream => 1 << 5,
            Context::ServerIf => 1 << 6,
            Context::LocationIf => 1 << 7,
            Context::LimitExcept => 1 << 8,
            Context::Stream => 1 << 9,
            Context::StreamServer => 1 << 10,
            Context::StreamUpstream => 1 << 11,
            Context::Mail => 1 << 12,
            Context::MailServer => 1 << 13,
            Context::Opaque(_) => 0,
        }
    }

    fn parse(word: &str) -> Option<u32> {
        Some(match word {
            "main" => Context::Main.bit(),
            "events" => Context::Events.bit(),
            "http" => Context::Http.bit(),
            "server" => Context::Server.bit(),
            "location" => Context::Location.bit(),
            "upstream" => Context::Upstream.bit(),
            "server_if" => Context::ServerIf.bit(),
            "location_if" => Context::LocationIf.bit(),
            "limit_except" => Context::LimitExcept.bit(),
            "stream" => Context::Stream.bit(),
            "stream_server" => Context::StreamServer.bit(),
            "stream_upstream" => Context::StreamUpstream.bit(),
            "mail" => Context::Mail.bit(),
            "mail_server" => Context::MailServer.bit(),
            "any" => u32::MAX,
            _ => return None,
        })
    }
}

/// What a block directive's braces hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    /// A simple directive, ended by `;`.
    None,
    Context(Context),
    /// `if`: a `server_if` or `location_if` block, depending on where the `if` stands.
    If,
    /// Entries read by the directive itself (`types`, `map`, ...).
    Opaque,
}

/// How many arguments a directive takes (not counting its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arity {
    /// Bit n set: exactly n arguments are accepted.
    exact: u16,
    /// At least this many are accepted.
    at_least: Option<u8>,
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        (n < 16 && self.exact & (1 << n) != 0) || self.at_least.is_some_and(|m| n >= m as usize)
    }

    fn parse(word: &str) -> Option<Arity> {
        let mut arity = Arity {
            exact: 0,
            at_least: None,
        };
        match word {
            "any" => arity.at_least = Some(0),
            "flag" => arity.exact = 1 << 1,
            _ => {
                for part in word.split(',') {
                    if let Some(n) = part.strip_suffix('+') {
                        arity.at_least = Some(n.parse().ok()?);
                    } else if let Some((a, b)) = part.split_once('-') {
                        let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                        for n in a..=b {
                            arity.exact |= 1 << n;
                        }
                    } else {
                        arity.exact |= 1 << part.parse::<u16>().ok()?;
                    }
                }
            }
        }
        Some(arity)
    }
}

/// Whether Portico implements a directive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Yes,
    /// Accepted and has no effect in Portico (a tuning knob of nginx's own design).
    Noop,
    /// Not supported yet: a warning, and the directive is ignored.
    No,
    /// Not supported yet, and an error: ignoring it would open what the config closes.
    Closes,
}

/// How nginx checks a directive's argument when the directive takes one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Any,
    Flag,
    Num,
    Size,
    Offset,
    Msec,
    Sec,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub module: &'static str,
    contexts: u32,
    pub arity: Arity,
    pub inner: Inner,
    pub status: Status,
    /// The dynamic module that must be loaded for nginx to know the directive.
    pub dynamic: Option<&'static str>,
    pub value: Value,
    /// nginx rejects a second occurrence at the same level.
    pub once: bool,
}

impl Spec {
    pub fn allowed_in(&self, ctx: Context) -> bool {
        self.contexts & ctx.bit() != 0
    }

    /// The contexts, as the table writes them.
    pub fn context_names(&self) -> Vec<&'static str> {
        [
            "main",
            "events",
            "http",
            "server",
            "location",
            "upstream",
            "server_if",
            "location_if",
            "limit_except",
            "stream",
            "stream_server",
            "stream_upstream",
            "mail",
            "mail_server",
        ]
        .into_iter()
        .filter(|w| Context::parse(w).is_some_and(|b| b & self.contexts != 0))
        .collect()
    }
}

/// The parsed table.
pub struct Table {
    rows: Vec<Spec>,
    by_name: HashMap<&'static str, Vec<usize>>,
}

impl Table {
    /// The table, parsed once.
    pub fn get() -> &'static Table {
        static TABLE_CELL: OnceLock<Table> = OnceLock::new();
        TABLE_CELL.get_or_init(|| {
            Table::parse(TABLE).unwrap_or_else(|e| panic!("grammar/directives.tsv: {e}"))
        })
    }

    /// Every row for `name`, in table order.
    pub fn lookup(&self, name: &str) -> impl Iterator<Item = &Spec> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.rows[i])
    }

    pub fn rows(&self) -> &[Spec] {
        &self.rows
    }

    fn parse(text: &'static str) -> Result<Table, String> {
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let bad = |what: &str| format!("line {}: bad {what}: {line:?}", n + 1);
            let cols: Vec<&'static str> = line.split('\t').collect();
            let [
                name,
                module,
                contexts,
                args,
                block,
                status,
                dynamic,
                value,
                once,
            ] = cols[..]
            else {
                return Err(bad("column count"));
            };
            let mut ctx = 0;
            for c in contexts.split(',') {
                ctx |= Context::parse(c).ok_or_else(|| bad("context"))?;
            }
            let inner = match block {
                "-" => Inner::None,
                "if" => Inner::If,
                "opaque" => Inner::Opaque,
                "events" => Inner::Context(Context::Events),
                "http" => Inner::Context(Context::Http),
                "server" => Inner::Context(Context::Server),
                "location" => Inner::Context(Context::Location),
                "upstream" => Inner::Context(Context::Upstream),
                "limit_except" => Inner::Context(Context::LimitExcept),
                "stream" => Inner::Context(Context::Stream),
                "stream_server" => Inner::Context(Context::StreamServer),
                "stream_upstream" => Inner::Context(Context::StreamUpstream),
                "mail" => Inner::Context(Context::Mail),
                "mail_server" => Inner::Context(Context::MailServer),
                _ => return Err(bad("block")),
            };
            let status = match status {
                "yes" => Status::Yes,
                "noop" => Status::Noop,
                "no" => Status::No,
                "closes" => Status::Closes,
                _ => return Err(bad("status")),
            };
            let value = match value {
                "-" => Value::Any,
                "flag" => Value::Flag,
                "num" => Value::Num,
                "size" => Value::Size,
                "off" => Value::Offset,
                "msec" => Value::Msec,
                "sec" => Value::Sec,
                _ => return Err(bad("value")),
            };
            rows.push(Spec {
                name,
                module,
                contexts: ctx,
                arity: Arity::parse(args).ok_or_else(|| bad("args"))?,
                inner,
                status,
                dynamic: (dynamic != "-").then_some(dynamic),
                value,
                once: match once {
                    "once" => true,
                    "-" => false,
                    _ => return Err(bad("once")),
                },
            });
        }
        let mut by_name: HashMap<&'static str, Vec<usize>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_name.entry(r.name).or_default().push(i);
        }
        Ok(Table { rows, by_name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_knows_the_core() {
        let t = Table::get();
        assert!(t.rows().len() > 600);
        let listen = t.lookup("listen").next().unwrap();
        assert!(listen.allowed_in(Context::Server) && !listen.allowed_in(Context::Http));
        assert!(listen.arity.accepts(1) && listen.arity.accepts(7) && !listen.arity.accepts(0));
        let server: Vec<_> = t.lookup("server").map(|s| s.inner).collect();
        assert!(server.contains(&Inner::Context(Context::Server)) && server.contains(&Inner::None));
        let location = t.lookup("location").next().unwrap();
        assert!(location.arity.accepts(2) && !location.arity.accepts(3));
        assert_eq!(
            t.lookup("auth_basic").next().unwrap().status,
            Status::Closes
        );
        assert!(
            t.lookup("include")
                .next()
                .unwrap()
                .allowed_in(Context::Upstream)
        );
    }

    #[test]
    fn arity_forms() {
        let a = Arity::parse("1,3").unwrap();
        assert!(a.accepts(1) && !a.accepts(2) && a.accepts(3));
        let b = Arity::parse("2+").unwrap();
        assert!(!b.accepts(1) && b.accepts(2) && b.accepts(9));
        let f = Arity::parse("flag").unwrap();
        assert!(f.accepts(1) && !f.accepts(0) && !f.accepts(2));
    }
}
