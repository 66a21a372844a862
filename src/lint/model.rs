//! The include-expanded tree the rules read: every directive with the file it was written in,
//! `include`s replaced by what they bring in, and the blocks the rules ask about (http,
//! server, location, upstream) found once.

use crate::config::Mode;
use crate::config::ast::Directive;
use crate::config::load::{Included, Sources};
use crate::config::span::{FileId, Span};

/// Deeper include chains are not followed (the loader reports them).
const MAX_DEPTH: usize = 64;

/// A directive, with its block's contents include-expanded.
#[derive(Debug)]
pub struct Node<'a> {
    pub d: &'a Directive,
    pub file: FileId,
    pub children: Vec<Node<'a>>,
}

impl<'a> Node<'a> {
    pub fn name(&self) -> &'a str {
        self.d.name()
    }

    pub fn args(&self) -> impl Iterator<Item = &'a str> {
        self.d.args.iter().map(|a| a.value.as_str())
    }

    pub fn arg(&self, i: usize) -> Option<&'a str> {
        self.d.args.get(i).map(|a| a.value.as_str())
    }

    /// The span of the directive's name (where findings point by default).
    pub fn span(&self) -> Span {
        self.d.name.span
    }

    /// The span of argument `i`, or of the name when there is none.
    pub fn arg_span(&self, i: usize) -> Span {
        self.d.args.get(i).map_or(self.d.name.span, |a| a.span)
    }

    pub fn is_block(&self) -> bool {
        self.d.block.is_some()
    }

    /// Direct children with this name.
    pub fn all(&self, name: &'static str) -> impl Iterator<Item = &Node<'a>> {
        self.children.iter().filter(move |c| c.name() == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.children.iter().any(|c| c.name() == name)
    }
}

/// The configuration as the rules see it.
pub struct Model<'a> {
    /// The top level of the main file, include-expanded.
    pub top: Vec<Node<'a>>,
    /// Whether the top level is the inside of `http {}` (a lone sites-available file).
    pub top_is_http: bool,
}

impl<'a> Model<'a> {
    pub fn new(sources: &'a Sources, mode: Mode) -> Model<'a> {
        let top = match sources.root {
            Some(root) => expand(sources, root, &sources.tree(root).directives, 0),
            None => Vec::new(),
        };
        Model {
            top,
            top_is_http: mode == Mode::Http,
        }
    }

    /// The contents of every http context: each `http {}` block, or the top level itself.
    pub fn http_bodies(&self) -> Vec<&[Node<'a>]> {
        if self.top_is_http {
            return vec![&self.top];
        }
        self.top
            .iter()
            .filter(|n| n.name() == "http")
            .map(|n| n.children.as_slice())
            .collect()
    }

    /// Every server block, with the http body it is in.
    pub fn servers(&self) -> Vec<(&[Node<'a>], &Node<'a>)> {
        let mut out = Vec::new();
        for http in self.http_bodies() {
            for n in http.iter().filter(|n| n.name() == "server" && n.is_block()) {
                out.push((http, n));
            }
        }
        out
    }

    /// Walks every directive under the http contexts, giving each its chain of enclosing
    /// blocks (outermost first; the http level is not in the chain).
    pub fn walk(&self, f: &mut dyn FnMut(At<'_, 'a>)) {
        fn go<'m, 'a>(
            http: &'m [Node<'a>],
            nodes: &'m [Node<'a>],
            chain: &mut Vec<&'m Node<'a>>,
            f: &mut dyn FnMut(At<'_, 'a>),
        ) {
            for n in nodes {
                f(At {
                    node: n,
                    chain,
                    http,
                });
                if n.is_block() {
                    chain.push(n);
                    go(http, &n.children, chain, f);
                    chain.pop();
                }
            }
        }
        for http in self.http_bodies() {
            go(http, http, &mut Vec::new(), f);
        }
    }
}

/// A directive met by [`Model::walk`], with where it is.
#[derive(Clone, Copy)]
pub struct At<'c, 'a> {
    pub node: &'c Node<'a>,
    /// The enclosing blocks below the http level, outermost first.
    pub chain: &'c [&'c Node<'a>],
    /// The http level's contents.
    pub http: &'c [Node<'a>],
}

impl<'c, 'a> At<'c, 'a> {
    /// The innermost enclosing block named `name`.
    pub fn enclosing(&self, name: &str) -> Option<&'c Node<'a>> {
        self.chain.iter().rev().find(|n| n.name() == name).copied()
    }

    /// The directive's own block, if it is directly inside one.
    pub fn parent(&self) -> Option<&'c Node<'a>> {
        self.chain.last().copied()
    }

    /// The directives `name` that apply here, nginx's way for array directives (add_header,
    /// proxy_set_header, allow/deny): those of the innermost level that has any, the http
    /// level last. `from_inside` includes the directive's own block's children.
    pub fn inherited(&self, names: &[&str]) -> Vec<&'c Node<'a>> {
        for level in self.chain.iter().rev() {
            let found: Vec<_> = level
                .children
                .iter()
                .filter(|c| names.contains(&c.name()))
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        self.http
            .iter()
            .filter(|c| names.contains(&c.name()))
            .collect()
    }

    /// Whether an include that could not be read sits at any level that applies here: then
    /// "there is no X" cannot be concluded.
    pub fn unknown(&self) -> bool {
        self.chain.iter().any(|l| l.has("include"))
            || self.http.iter().any(|d| d.name() == "include")
    }

    /// As [`At::inherited`], starting above the innermost `skip` levels.
    pub fn inherited_above(&self, skip: usize, names: &[&str]) -> Vec<&'c Node<'a>> {
        let keep = self.chain.len().saturating_sub(skip);
        At {
            node: self.node,
            chain: &self.chain[..keep],
            http: self.http,
        }
        .inherited(names)
    }
}

fn expand<'a>(
    sources: &'a Sources,
    file: FileId,
    directives: &'a [Directive],
    depth: usize,
) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    if depth > MAX_DEPTH {
        return out;
    }
    for d in directives {
        // An include that could not be read stays in the tree: what it would bring is
        // unknown, so rules about something missing stay quiet there.
        if d.name() == "include"
            && d.block.is_none()
            && let Some(Included::Files(files)) = sources.included(file, d)
        {
            for &f in files {
                out.extend(expand(sources, f, &sources.tree(f).directives, depth + 1));
            }
            continue;
        }
        let children = match &d.block {
            Some(b) => expand(sources, file, &b.directives, depth + 1),
            None => Vec::new(),
        };
        out.push(Node { d, file, children });
    }
    out
}
