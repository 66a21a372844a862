//! Location lookup at one level (a server, or inside a location), as
//! `ngx_http_core_find_location` does it: exact and prefix locations in a byte trie (the
//! longest prefix wins, in time linear in the URI, whatever the number of locations), then the
//! regex locations in configuration order unless the prefix chosen was `^~`.

use std::sync::Arc;

use super::Location;
use super::regex::Captures;

/// A node of the prefix trie. Children are kept sorted by their first byte.
#[derive(Debug, Default)]
struct Node {
    /// The edge label from the parent (a run of bytes: the trie is compressed).
    label: Vec<u8>,
    children: Vec<Node>,
    /// A `location = ...` ending here.
    exact: Option<usize>,
    /// A prefix location (`location /x` or `^~ /x`) ending here.
    prefix: Option<usize>,
}

impl Node {
    fn insert(&mut self, key: &[u8]) -> &mut Node {
        if key.is_empty() {
            return self;
        }
        let pos = self.children.binary_search_by(|c| c.label[0].cmp(&key[0]));
        match pos {
            Err(i) => {
                self.children.insert(
                    i,
                    Node {
                        label: key.to_vec(),
                        ..Node::default()
                    },
                );
                &mut self.children[i]
            }
            Ok(i) => {
                let child = &mut self.children[i];
                let common = child
                    .label
                    .iter()
                    .zip(key)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common < child.label.len() {
                    // Split the edge.
                    let tail = child.label.split_off(common);
                    let mut lower = std::mem::take(child);
                    lower.label = tail;
                    child.label = key[..common].to_vec();
                    child.children.push(lower);
                }
                child.insert(&key[common..])
            }
        }
    }
}

/// The locations of one level.
#[derive(Debug, Default)]
pub struct Locations {
    pub all: Vec<Arc<Location>>,
    root: Node,
    /// Indices into `all` of regex locations, in configuration order.
    regexes: Vec<usize>,
}

/// The result of a lookup.
#[derive(Debug, Clone)]
pub enum Match<'a> {
    Found {
        location: &'a Arc<Location>,
        /// The matches of the regexes on the way, outermost first.
        captures: Vec<Captures>,
    },
    /// The URI is a prefix location's name without its trailing slash, and that location
    /// proxies: nginx answers 301 to the name with the slash.
    Redirect(&'a Arc<Location>),
    None,
}

impl Locations {
    pub fn push(&mut self, location: Arc<Location>) {
        let i = self.all.len();
        match &location.kind {
            super::LocationKind::Exact(name) => self.root.insert(name.as_bytes()).exact = Some(i),
            super::LocationKind::Prefix { name, .. } => {
                self.root.insert(name.as_bytes()).prefix = Some(i)
            }
            super::LocationKind::Regex(_) => self.regexes.push(i),
            super::LocationKind::Named(_) => {}
        }
        self.all.push(location);
    }

    /// The exact or longest prefix location for `uri`: (exact, prefix, redirect).
    fn find_static(&self, uri: &[u8]) -> (Option<usize>, Option<usize>, Option<usize>) {
        let mut node = &self.root;
        let mut rest = uri;
        let mut best = node.prefix;
        let mut redirect = None;
        loop {
            if rest.is_empty() {
                if let Some(e) = node.exact {
                    return (Some(e), None, None);
                }
                // A child "/" one byte further may ask for the trailing-slash redirect.
                if let Some(c) = node.children.iter().find(|c| c.label == b"/") {
                    if let Some(p) = c.prefix.filter(|&p| self.all[p].auto_redirect) {
                        redirect = Some(p);
                    }
                }
                break;
            }
            let Ok(i) = node.children.binary_search_by(|c| c.label[0].cmp(&rest[0])) else {
                break;
            };
            let child = &node.children[i];
            if rest.len() < child.label.len() {
                // The URI ends inside the edge: only the redirect case can apply.
                if child.label.len() == rest.len() + 1
                    && child.label.ends_with(b"/")
                    && child.label.starts_with(rest)
                {
                    if let Some(p) = child.prefix.filter(|&p| self.all[p].auto_redirect) {
                        if child.exact.is_none() {
                            redirect = Some(p);
                        }
                    }
                }
                break;
            }
            if !rest.starts_with(&child.label) {
                break;
            }
            rest = &rest[child.label.len()..];
            node = child;
            if node.prefix.is_some() {
                best = node.prefix;
            }
        }
        (None, best, redirect)
    }

    /// nginx's `ngx_http_core_find_location` for this level and the levels below it.
    pub fn find(&self, uri: &str) -> Match<'_> {
        let (exact, prefix, redirect) = self.find_static(uri.as_bytes());
        if let Some(e) = exact {
            return Match::Found {
                location: &self.all[e],
                captures: Vec::new(),
            };
        }
        if let Some(r) = redirect {
            return Match::Redirect(&self.all[r]);
        }
        let mut noregex = false;
        let mut found = Match::None;
        if let Some(p) = prefix {
            let loc = &self.all[p];
            noregex = loc.noregex();
            found = Match::Found {
                location: loc,
                captures: Vec::new(),
            };
            // Nested locations: a definite answer there (exact, regex, redirect) stands.
            match loc.children.find(uri) {
                Match::None => {}
                Match::Found { location, captures }
                    if !location.is_regex() && !location.is_exact() =>
                {
                    // A nested prefix: regexes of this level may still win, unless the
                    // prefix of this level was `^~` (the nested one's `^~` only stops the
                    // nested regexes).
                    found = Match::Found { location, captures };
                }
                definite => return definite,
            }
        }
        if !noregex {
            for &r in &self.regexes {
                let loc = &self.all[r];
                let super::LocationKind::Regex(re) = &loc.kind else {
                    continue;
                };
                if let Some(captures) = re.captures(uri) {
                    // Nested locations of a regex location.
                    return match loc.children.find(uri) {
                        Match::None => Match::Found {
                            location: loc,
                            captures: vec![captures],
                        },
                        Match::Found {
                            location,
                            captures: inner,
                        } => Match::Found {
                            location,
                            captures: std::iter::once(captures).chain(inner).collect(),
                        },
                        other => other,
                    };
                }
            }
        }
        found
    }
}
