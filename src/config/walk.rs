//! The walk over toml's spanned document tree, and the problems it collects.
//!
//! A [`Section`] is one table of the document; reading a key from it converts the value with
//! its [`Scalar`] conversion and, on failure, reports a [`ConfigProblem`] with the key's dotted
//! path and line instead of stopping, so that [`ConfigErrors`] holds every problem of a file.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::hints::unknown_key;
use super::scalars::{Scalar, got};

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigErrors {
    /// The file's path, or [`EMBEDDED_ORIGIN`](super::EMBEDDED_ORIGIN).
    pub(crate) origin: String,
    /// In file order; problems without a line come last.
    pub(crate) problems: Vec<ConfigProblem>,
}

/// One problem: the dotted key it concerns (empty for a file that is not TOML at all or that
/// cannot be read), the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigProblem {
    pub(crate) key: String,
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigProblem {}

/// One line per problem: `<origin>:<line>: <key>: <message>`.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return write!(f, "{}: invalid configuration", self.origin);
        }
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.origin)?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a key or value is in the file's text, in bytes.
pub(super) type Span = Range<usize>;

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// 1-based column (in characters) of a byte offset, 0 when it is not on a char boundary.
pub(super) fn column_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    let start = text.as_bytes()[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    text.get(start..end).map_or(0, |s| s.chars().count() + 1)
}

/// Problems found so far, and what is needed to turn spans into lines.
pub(super) struct Ctx<'t> {
    pub(super) text: &'t str,
    /// Directory a relative `auth.secrets-file` is taken relative to.
    pub(super) base_dir: Option<&'t Path>,
    /// Set only by the fuzz targets, whose text names files at random: then
    /// only small regular files inside this (canonical) directory are read,
    /// so no input makes the loader read /dev/zero or wait on a FIFO.
    pub(super) sandbox: Option<&'t Path>,
    pub(super) problems: Vec<ConfigProblem>,
}

impl Ctx<'_> {
    /// Whether the file at `path` may be read: always, except outside the sandbox.
    pub(super) fn may_read(&self, path: &Path) -> Result<(), String> {
        let Some(sandbox) = self.sandbox else {
            return Ok(());
        };
        let inside = path
            .canonicalize()
            .ok()
            .filter(|real| real.starts_with(sandbox))
            .and_then(|real| std::fs::metadata(real).ok())
            .is_some_and(|meta| meta.is_file() && meta.len() <= 1 << 20);
        if inside {
            Ok(())
        } else {
            Err(format!(
                "cannot read {:?}: outside the sandbox",
                path.display().to_string()
            ))
        }
    }

    pub(super) fn report(
        &mut self,
        key: impl Into<String>,
        span: Option<&Span>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.problems.push(ConfigProblem {
            key: key.into(),
            line,
            message: message.into(),
        });
    }
}

/// A value read from the file, or its default. `ok` is false when a problem was reported for
/// it: the value is then a stand-in that keeps the walk going, and later checks that involve
/// it are skipped so as not to pile up follow-on problems. (No [`Config`](super::Config) is
/// returned once a problem has been reported, so a stand-in never escapes.)
pub(super) struct Val<T> {
    pub(super) value: T,
    /// The key's span when the key is in the file.
    pub(super) span: Option<Span>,
    pub(super) ok: bool,
}

/// An element of an array, with its own span so that a problem points at its line.
pub(super) struct Item<T> {
    pub(super) value: T,
    pub(super) span: Option<Span>,
}

/// One table of the document, with the dotted path used in messages.
pub(super) struct Section<'a, 'i> {
    pub(super) path: String,
    /// Where the table is declared; `None` for the root and for an absent table.
    pub(super) span: Option<Span>,
    table: Option<&'a DeTable<'i>>,
}

impl<'a, 'i> Section<'a, 'i> {
    /// Open a table, reporting every key not in `known`.
    pub(super) fn open(
        cx: &mut Ctx<'_>,
        path: String,
        span: Option<Span>,
        table: Option<&'a DeTable<'i>>,
        known: &[&str],
    ) -> Self {
        let section = Section { path, span, table };
        for key in table.into_iter().flat_map(|t| t.keys()) {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                let hint = unknown_key(name, known);
                cx.report(section.key(name), Some(&key.span()), hint);
            }
        }
        section
    }

    /// Dotted path of a key of this table.
    pub(super) fn key(&self, name: &str) -> String {
        let name = key_segment(name);
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn entry(&self, name: &str) -> Option<(&'a Spanned<DeString<'i>>, &'a Spanned<DeValue<'i>>)> {
        self.table?.get_key_value(name)
    }

    /// An optional scalar.
    pub(super) fn opt<T: Scalar>(&self, cx: &mut Ctx<'_>, name: &str) -> Val<Option<T>> {
        let Some((key, value)) = self.entry(name) else {
            return Val {
                value: None,
                span: None,
                ok: true,
            };
        };
        let span = Some(key.span());
        match T::from_toml(value.get_ref()) {
            Ok(v) => Val {
                value: Some(v),
                span,
                ok: true,
            },
            Err(message) => {
                cx.report(self.key(name), span.as_ref(), message);
                Val {
                    value: None,
                    span,
                    ok: false,
                }
            }
        }
    }

    /// A scalar with a default.
    pub(super) fn get<T: Scalar>(&self, cx: &mut Ctx<'_>, name: &str, default: T) -> Val<T> {
        let v = self.opt(cx, name);
        Val {
            value: v.value.unwrap_or(default),
            span: v.span,
            ok: v.ok,
        }
    }

    /// An array of scalars with a default; every bad element is reported.
    pub(super) fn list<T: Scalar>(
        &self,
        cx: &mut Ctx<'_>,
        name: &str,
        default: Vec<T>,
    ) -> Val<Vec<Item<T>>> {
        let Some((key, value)) = self.entry(name) else {
            let value = default
                .into_iter()
                .map(|value| Item { value, span: None })
                .collect();
            return Val {
                value,
                span: None,
                ok: true,
            };
        };
        let span = Some(key.span());
        let DeValue::Array(array) = value.get_ref() else {
            let message = format!("expected an array, got {}", got(value.get_ref()));
            cx.report(self.key(name), span.as_ref(), message);
            return Val {
                value: Vec::new(),
                span,
                ok: false,
            };
        };
        let mut items = Vec::new();
        let mut ok = true;
        for (i, element) in array.iter().enumerate() {
            match T::from_toml(element.get_ref()) {
                Ok(value) => items.push(Item {
                    value,
                    span: Some(element.span()),
                }),
                Err(message) => {
                    ok = false;
                    let key = format!("{}[{i}]", self.key(name));
                    cx.report(key, Some(&element.span()), message);
                }
            }
        }
        Val {
            value: items,
            span,
            ok,
        }
    }

    /// A sub-table such as `[relay]`; absent or of the wrong type, it reads as empty.
    pub(super) fn section(&self, cx: &mut Ctx<'_>, name: &str, known: &[&str]) -> Section<'a, 'i> {
        let path = self.key(name);
        match self.entry(name) {
            None => Section::open(cx, path, None, None, known),
            Some((_, value)) => match value.get_ref() {
                DeValue::Table(table) => {
                    Section::open(cx, path, Some(value.span()), Some(table), known)
                }
                other => {
                    let message = format!("expected a table like [{path}], got {}", got(other));
                    cx.report(path.clone(), Some(&value.span()), message);
                    Section::open(cx, path, None, None, known)
                }
            },
        }
    }

    /// An array of tables such as `[[listen]]`.
    pub(super) fn sections(
        &self,
        cx: &mut Ctx<'_>,
        name: &str,
        known: &[&str],
    ) -> Val<Vec<Section<'a, 'i>>> {
        let path = self.key(name);
        let Some((key, value)) = self.entry(name) else {
            return Val {
                value: Vec::new(),
                span: None,
                ok: true,
            };
        };
        let span = Some(key.span());
        let DeValue::Array(array) = value.get_ref() else {
            let message = format!(
                "expected an array of tables like [[{path}]], got {}",
                got(value.get_ref())
            );
            cx.report(path, Some(&value.span()), message);
            return Val {
                value: Vec::new(),
                span,
                ok: false,
            };
        };
        let mut sections = Vec::new();
        let mut ok = true;
        for (i, element) in array.iter().enumerate() {
            let path = format!("{path}[{i}]");
            match element.get_ref() {
                DeValue::Table(table) => {
                    sections.push(Section::open(
                        cx,
                        path,
                        Some(element.span()),
                        Some(table),
                        known,
                    ));
                }
                other => {
                    ok = false;
                    let message = format!("expected a table, got {}", got(other));
                    cx.report(path, Some(&element.span()), message);
                }
            }
        }
        Val {
            value: sections,
            span,
            ok,
        }
    }
}

/// A key as written in a dotted path: quoted unless it is a bare TOML key.
fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// The values of array items, without their spans.
pub(super) fn values<T>(items: Vec<Item<T>>) -> Vec<T> {
    items.into_iter().map(|i| i.value).collect()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{MINIMAL, parse_err};

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = "\
[[listen]]
address = \"0.0.0.0:3478\"
[relay]
ports = \"70000-80000\"
foo = 1
allow-peers = [\"10.0.0.0/8\", \"10.0.0.300/8\", \"nope\"]
[auth]
secrets = [\"0123456789abcdef\"]
[[auth.users]]
name = \"alice\"
password = \"pw\"
[[auth.users]]
name = \"bob\"
key = \"0xZZ\"
";
        let e = parse_err(text);
        let got: Vec<(&str, Option<usize>)> = e
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("relay.ports", Some(4)),
                ("relay.foo", Some(5)),
                ("relay.allow-peers[1]", Some(6)),
                ("relay.allow-peers[2]", Some(6)),
                ("auth.users[1].key", Some(14)),
            ]
        );
        let shown = e.to_string();
        assert!(shown.contains(
            "test.toml:4: relay.ports: expected a port range like \"49152-65535\", got \"70000-80000\""
        ), "{shown}");
        assert_eq!(shown.lines().count(), 5);
    }

    #[test]
    fn unknown_keys_suggest_the_spelling() {
        let e = parse_err(&format!("{MINIMAL}[relay]\nmax_allocations = 5\n"));
        assert_eq!(e.problems[0].key, "relay.max_allocations");
        assert_eq!(
            e.problems[0].message,
            "unknown key; did you mean max-allocations?"
        );
    }
}
