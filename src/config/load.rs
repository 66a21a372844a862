//! Reading a configuration: the main file, `-g` directives and every file reached through
//! `include`, each parsed once. Include cycles are cut and reported, never followed.
//!
//! File access goes through [`Fs`], so tests and the fuzzer can compile configs held in
//! memory and `check` can map `/etc/nginx/...` onto a checkout.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::ast::{Directive, File};
use super::diag::Diagnostic;
use super::parse::parse;
use super::span::{FileId, Origin, SourceFile, SourceMap, Span};

/// Include chains deeper than this are reported (nginx has no limit, but recursion needs one).
pub const MAX_INCLUDE_DEPTH: usize = 64;

/// The file system, as the compiler sees it: reading files and expanding globs.
pub trait Fs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Paths matching a glob pattern, in nginx's (byte-wise sorted) order.
    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The real file system.
pub struct RealFs;

impl Fs for RealFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let pattern = pattern.to_string_lossy();
        let paths = glob::glob_with(&pattern, options)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.msg))?;
        let mut out: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
        out.sort_by(|a, b| {
            a.as_os_str()
                .as_encoded_bytes()
                .cmp(b.as_os_str().as_encoded_bytes())
        });
        Ok(out)
    }
}

/// What an `include` directive resolved to.
#[derive(Debug, Clone)]
pub enum Included {
    Files(Vec<FileId>),
    Failed(Diagnostic),
}

/// Every source of one configuration, parsed.
#[derive(Debug, Default)]
pub struct Sources {
    pub map: SourceMap,
    /// The tree of each file, indexed by `FileId`.
    pub trees: Vec<File>,
    /// Syntax errors of each file, in file order.
    pub syntax_errors: Vec<Vec<Diagnostic>>,
    /// Each include directive's files, keyed by the directive's file and terminator offset.
    pub includes: HashMap<(FileId, u32), Included>,
    /// The main file; `None` when it could not be read.
    pub root: Option<FileId>,
    /// The `-g` directives, if given.
    pub globals: Option<FileId>,
    /// Why the main file could not be read.
    pub root_error: Option<Diagnostic>,
}

impl Sources {
    pub fn tree(&self, id: FileId) -> &File {
        &self.trees[id.0 as usize]
    }

    /// The files an include directive brings in (none when it failed).
    pub fn included(&self, file: FileId, d: &Directive) -> Option<&Included> {
        self.includes.get(&(file, d.end))
    }

    /// nginx's reading order of the text: which include brought each file in first.
    pub fn reading_order(&self) -> ReadingOrder {
        let mut parent: HashMap<FileId, (FileId, u32)> = HashMap::new();
        let mut sites: Vec<_> = self.includes.iter().collect();
        sites.sort_by_key(|((f, at), _)| (f.0, *at));
        for ((from, at), inc) in sites {
            if let Included::Files(files) = inc {
                for f in files {
                    parent.entry(*f).or_insert((*from, *at));
                }
            }
        }
        ReadingOrder { parent }
    }

    /// The first `http { }` block in reading order: its file and the offset of its `}`.
    pub fn http_block_end(&self) -> Option<Span> {
        fn walk(src: &Sources, file: FileId, ds: &[Directive], depth: usize) -> Option<Span> {
            for d in ds {
                if d.name() == "http" {
                    let close = d.block.as_ref()?.close?;
                    return Some(Span::new(file, close as usize, close as usize + 1));
                }
                if d.name() == "include"
                    && depth < 32
                    && let Some(Included::Files(files)) = src.included(file, d)
                {
                    for f in files {
                        if let Some(s) = walk(src, *f, &src.tree(*f).directives, depth + 1) {
                            return Some(s);
                        }
                    }
                }
            }
            None
        }
        let root = self.root?;
        walk(self, root, &self.tree(root).directives, 0)
    }
}

/// See [`Sources::reading_order`].
pub struct ReadingOrder {
    parent: HashMap<FileId, (FileId, u32)>,
}

impl ReadingOrder {
    /// Where `span` comes as nginx reads: the offsets of the include directives that lead to
    /// its file from the main one, then its own offset. Keys compare as nginx meets the text.
    pub fn key(&self, span: Span) -> Vec<u32> {
        let mut key = vec![span.start];
        let mut file = span.file;
        while let Some(&(up, at)) = self.parent.get(&file) {
            if key.len() > 64 {
                break;
            }
            key.push(at);
            file = up;
        }
        key.reverse();
        key
    }
}

/// Where a config lives: nginx's prefix and configuration prefix.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `-p`: the prefix that relative paths of the running server (logs, pid) start from.
    pub prefix: PathBuf,
    /// The main file, absolute.
    pub conf_file: PathBuf,
    /// The directory of the main file: relative `include` paths start here, as in nginx.
    pub conf_prefix: PathBuf,
}

impl Paths {
    /// nginx's rules: `-c` relative to the prefix; the conf prefix is the file's directory.
    pub fn new(prefix: &Path, conf_file: &Path) -> Paths {
        let conf_file = prefix.join(conf_file);
        let conf_prefix = conf_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| prefix.to_path_buf());
        Paths {
            prefix: prefix.to_path_buf(),
            conf_file,
            conf_prefix,
        }
    }
}

/// Reads and parses the main file, the `-g` directives and everything they include.
pub fn load(fs: &dyn Fs, paths: &Paths, globals: Option<&str>) -> Sources {
    let mut loader = Loader {
        fs,
        paths,
        sources: Sources::default(),
        by_path: HashMap::new(),
        state: Vec::new(),
    };
    if let Some(g) = globals {
        let id = loader.add(Origin::CommandLine, g.to_string());
        loader.sources.globals = Some(id);
        // nginx reads -g as a parameter, not a file: its own wording for the same errors.
        for e in &mut loader.sources.syntax_errors[id.0 as usize] {
            if e.message.starts_with("unexpected end of file") {
                e.message = "unexpected end of parameter, expecting \";\"".to_string();
            }
        }
    }
    match loader.read(&paths.conf_file) {
        Ok(id) => {
            loader.sources.root = Some(id);
            loader.resolve(id, 0);
        }
        Err(e) => loader.sources.root_error = Some(e),
    }
    loader.sources
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    New,
    InProgress,
    Done,
}

struct Loader<'a> {
    fs: &'a dyn Fs,
    paths: &'a Paths,
    sources: Sources,
    by_path: HashMap<PathBuf, FileId>,
    state: Vec<State>,
}

impl Loader<'_> {
    fn add(&mut self, origin: Origin, text: String) -> FileId {
        let id = FileId(self.sources.map.len() as u32);
        let (tree, errors) = parse(id, &text);
        let added = self.sources.map.add(SourceFile::new(origin, text));
        debug_assert_eq!(added, id);
        self.sources.trees.push(tree);
        self.sources.syntax_errors.push(errors);
        self.state.push(State::New);
        id
    }

    /// Reads and parses a file, once per path.
    fn read(&mut self, path: &Path) -> Result<FileId, Diagnostic> {
        if let Some(&id) = self.by_path.get(path) {
            return Ok(id);
        }
        let bytes = self
            .fs
            .read(path)
            .map_err(|e| io_error("open()", path, &e))?;
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let id = self.add(Origin::File(path.to_path_buf()), text);
        self.by_path.insert(path.to_path_buf(), id);
        Ok(id)
    }

    /// Resolves every include of `file`, depth first, cutting cycles.
    fn resolve(&mut self, file: FileId, depth: usize) {
        self.state[file.0 as usize] = State::InProgress;
        let mut pending = Vec::new();
        collect_includes(
            &self.sources.trees[file.0 as usize].directives,
            &mut pending,
        );
        for (end, arg, span) in pending {
            let result = self.include(file, &arg, span, depth);
            self.sources.includes.insert((file, end), result);
        }
        self.state[file.0 as usize] = State::Done;
    }

    fn include(&mut self, file: FileId, arg: &str, span: Span, depth: usize) -> Included {
        let path = self.paths.conf_prefix.join(arg);
        let targets = if arg.contains(['*', '?', '[']) {
            match self.fs.glob(&path) {
                Ok(paths) => paths,
                Err(e) => return Included::Failed(io_error("glob()", &path, &e).at(span)),
            }
        } else {
            vec![path]
        };
        let mut ids = Vec::new();
        for target in targets {
            let id = match self.read(&target) {
                Ok(id) => id,
                Err(d) => return Included::Failed(d.at(span)),
            };
            match self.state[id.0 as usize] {
                State::InProgress => {
                    let this = self.sources.map.get(file).name();
                    let d = Diagnostic::error(
                        "include-cycle",
                        format!(
                            "include cycle: \"{}\" is already being included",
                            target.display()
                        ),
                    )
                    .at(span)
                    .note(format!(
                        "\"{this}\" includes \"{}\", which leads back to it",
                        target.display()
                    ))
                    .note("nginx would include it again until it runs out of file descriptors");
                    return Included::Failed(d);
                }
                State::New if depth + 1 >= MAX_INCLUDE_DEPTH => {
                    let d = Diagnostic::error(
                        "include-depth",
                        format!("includes are nested deeper than {MAX_INCLUDE_DEPTH} files"),
                    )
                    .at(span);
                    return Included::Failed(d);
                }
                State::New => self.resolve(id, depth + 1),
                _ => {}
            }
            ids.push(id);
        }
        Included::Files(ids)
    }
}

/// Every `include` with one argument, at any depth, with its terminator offset.
fn collect_includes(directives: &[Directive], out: &mut Vec<(u32, String, Span)>) {
    for d in directives {
        if d.name() == "include" && d.args.len() == 1 && d.block.is_none() {
            out.push((d.end, d.args[0].value.clone(), d.args[0].span));
        }
        if let Some(b) = &d.block {
            collect_includes(&b.directives, out);
        }
    }
}

/// nginx's wording for a failed system call: `open() "/x" failed (2: No such file or directory)`.
fn io_error(call: &str, path: &Path, e: &io::Error) -> Diagnostic {
    let (call, detail) = match e.raw_os_error() {
        Some(code) => {
            // A directory opens fine; nginx's read of it is what fails.
            let call = if code == libc::EISDIR {
                "pread()"
            } else {
                call
            };
            (call, format!("{code}: {}", strerror(code)))
        }
        None => (call, e.to_string()),
    };
    Diagnostic::error(
        "include",
        format!("{call} \"{}\" failed ({detail})", path.display()),
    )
}

fn strerror(code: i32) -> String {
    let s = io::Error::from_raw_os_error(code).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
