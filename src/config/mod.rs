//! The compiler: nginx configuration text in, a checked tree and *all* diagnostics out.
//! No sockets, no tokio, no global state; file access only through [`load::Fs`].

pub mod ast;
pub mod diag;
pub mod directives;
pub mod load;
pub mod parse;
pub mod print;
pub mod span;
pub mod validate;

pub use diag::{Diagnostic, Severity};
pub use load::{Fs, Paths, RealFs, Sources};
pub use validate::Mode;

/// A compiled configuration: its sources and everything found wrong with them.
#[derive(Debug)]
pub struct Compiled {
    pub sources: Sources,
    pub mode: Mode,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The first error, as nginx would report it (nginx stops there).
    pub fn first_error(&self) -> Option<&Diagnostic> {
        self.diagnostics.iter().find(|d| d.is_error())
    }
}

/// What to compile.
#[derive(Clone, Debug)]
pub struct Options {
    pub paths: Paths,
    /// `-g` directives.
    pub globals: Option<String>,
    /// Force a mode instead of detecting it from the main file's top level.
    pub mode: Option<Mode>,
}

/// Reads, parses and checks a configuration, with no side effects: nothing is resolved,
/// looked up or bound.
pub fn compile(fs: &dyn Fs, options: &Options) -> Compiled {
    compile_in(fs, None, options)
}

/// As [`compile`], and with `env` also makes the checks `nginx -t` makes of the machine:
/// upstream host names resolve, `user` exists, listen addresses can be bound.
pub fn compile_in(fs: &dyn Fs, env: Option<&dyn env::Environment>, options: &Options) -> Compiled {
    let sources = load::load(fs, &options.paths, options.globals.as_deref());
    let mode = options
        .mode
        .unwrap_or_else(|| validate::detect_mode(&sources));
    let diagnostics = validate::validate(&sources, mode, env);
    Compiled {
        sources,
        mode,
        diagnostics,
    }
}
pub mod env;
pub mod vars;
