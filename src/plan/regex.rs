//! Regular expressions as nginx compiles them: PCRE syntax (lookaround, `\Q..\E`, possessive
//! quantifiers), which Rust's `regex` crate does not accept, so the engine is PCRE2 itself.

use std::fmt;

use pcre2::bytes::{Regex as Pcre, RegexBuilder};

/// A compiled regular expression with its source and capture names.
#[derive(Clone)]
pub struct Regex {
    source: String,
    caseless: bool,
    re: Pcre,
    /// Capture names by group index (`None` for unnamed groups), index 0 being the whole match.
    names: Vec<Option<String>>,
}

/// The groups of one match, as byte ranges of the subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures {
    /// The subject the ranges refer to.
    pub subject: String,
    /// Ranges by group index; `None` for a group that did not take part in the match.
    pub groups: Vec<Option<(usize, usize)>>,
    /// Named groups: name and index.
    pub names: Vec<(String, usize)>,
}

impl Captures {
    /// The text of group `i` (`$1` is `group(1)`); empty when unset, as in nginx.
    pub fn group(&self, i: usize) -> &str {
        match self.groups.get(i) {
            Some(Some((s, e))) => &self.subject[*s..*e],
            _ => "",
        }
    }

    pub fn named(&self, name: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| self.group(*i))
    }

    /// How many numbered groups exist beyond the whole match.
    pub fn len(&self) -> usize {
        self.groups.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Regex {
    /// Compiles `source`; the error is worded as nginx words PCRE2's:
    /// `pcre2_compile() failed: missing closing parenthesis in "(a" at ""`.
    pub fn new(source: &str, caseless: bool) -> Result<Regex, String> {
        let re = RegexBuilder::new()
            .caseless(caseless)
            .jit_if_available(true)
            .build(source)
            .map_err(|e| {
                let text = e.to_string();
                // pcre2's Display is "PCRE2: error compiling pattern at offset N: message".
                let message = text.rsplit(": ").next().unwrap_or(&text).to_string();
                match e.offset().filter(|&o| o < source.len()) {
                    Some(o) => {
                        let at = source.get(o..).unwrap_or("");
                        format!("pcre2_compile() failed: {message} in \"{source}\" at \"{at}\"")
                    }
                    None => format!("pcre2_compile() failed: {message} in \"{source}\""),
                }
            })?;
        let names = re.capture_names().to_vec();
        Ok(Regex {
            source: source.to_string(),
            caseless,
            re,
            names,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn caseless(&self) -> bool {
        self.caseless
    }

    /// Names of the named groups, in group order.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().flatten().map(String::as_str)
    }

    pub fn is_match(&self, subject: &str) -> bool {
        self.re.is_match(subject.as_bytes()).unwrap_or(false)
    }

    /// Matches `subject`, keeping every group. A PCRE run-time failure (match limit) is no
    /// match, as nginx treats it after logging.
    pub fn captures(&self, subject: &str) -> Option<Captures> {
        let caps = self.re.captures(subject.as_bytes()).ok()??;
        let groups = (0..caps.len())
            .map(|i| caps.get(i).map(|m| (m.start(), m.end())))
            .collect();
        let names = self
            .names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.clone().map(|n| (n, i)))
            .collect();
        Some(Captures {
            subject: subject.to_string(),
            groups,
            names,
        })
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{:?}",
            if self.caseless { "~*" } else { "~" },
            self.source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcre_features_nginx_configs_use() {
        let r = Regex::new(r"/\.(?!well-known)", true).unwrap();
        assert!(r.is_match("/.git/config"));
        assert!(!r.is_match("/.well-known/acme"));
        let q = Regex::new(r"^\Q/a.b\E$", false).unwrap();
        assert!(q.is_match("/a.b") && !q.is_match("/axb"));
        let n = Regex::new(r"^/(?<app>\w+)/(\d+)$", false).unwrap();
        let c = n.captures("/shop/42").unwrap();
        assert_eq!(
            (c.group(1), c.group(2), c.named("app")),
            ("shop", "42", Some("shop"))
        );
        assert_eq!(c.group(7), "");
    }

    #[test]
    fn errors_are_worded_as_nginx() {
        let e = Regex::new("(a", false).unwrap_err();
        assert!(
            e.starts_with("pcre2_compile() failed: missing closing parenthesis"),
            "{e}"
        );
        assert!(e.ends_with("in \"(a\""), "{e}");
    }
}
