//! Where a problem is: key paths ([`Seg`]) and the line each one starts on in the original text.
//!
//! serde reports unknown keys as paths and the validators build paths for their problems; the
//! [`Locator`] walks a path through the document (parsed again with `toml_edit`, which keeps
//! spans) and answers the line of the deepest part that exists, so a problem about a missing key
//! still points into the right table.

use crate::error::ConfigProblem;

/// A step in a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// The key path serde_ignored reports for an unknown key.
pub(super) fn segments(p: &serde_ignored::Path) -> Vec<Seg> {
    fn walk(p: &serde_ignored::Path, out: &mut Vec<Seg>) {
        match p {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = Vec::new();
    walk(p, &mut out);
    out
}

/// A key path as problems show it: `role[0].identities[1]`.
pub(super) fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Finds the line of a key path in the original text.
pub(super) struct Locator<'a> {
    text: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml_edit::Document::parse(text).ok(),
        }
    }

    /// The 1-based line of a byte offset.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The line of the deepest part of `path` that exists in the document.
    pub(super) fn line(&self, path: &[Seg]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for seg in path {
            node = match (node, seg) {
                (Node::Table(t), Seg::Key(k)) => {
                    let Some((key, item)) = t.get_key_value(k) else { break };
                    if let Some(span) = key.span() {
                        best = Some(span.start);
                    }
                    Node::of_item(item)
                }
                (Node::Tables(a), Seg::Index(i)) => {
                    let Some(t) = a.get(*i) else { break };
                    if let Some(span) = t.span() {
                        best = Some(span.start);
                    }
                    Node::Table(t)
                }
                (Node::Array(a), Seg::Index(i)) => {
                    let Some(v) = a.get(*i) else { break };
                    if let Some(span) = v.span() {
                        best = Some(span.start);
                    }
                    Node::of_value(v)
                }
                _ => break,
            };
        }
        best.map(|o| self.line_of(o))
    }
}

/// Where [`Locator::line`] stands while walking a key path.
enum Node<'d> {
    Table(&'d dyn toml_edit::TableLike),
    Tables(&'d toml_edit::ArrayOfTables),
    Array(&'d toml_edit::Array),
    Leaf,
}

impl<'d> Node<'d> {
    fn of_item(item: &'d toml_edit::Item) -> Node<'d> {
        match item {
            toml_edit::Item::Table(t) => Node::Table(t),
            toml_edit::Item::ArrayOfTables(a) => Node::Tables(a),
            toml_edit::Item::Value(v) => Node::of_value(v),
            toml_edit::Item::None => Node::Leaf,
        }
    }
    fn of_value(v: &'d toml_edit::Value) -> Node<'d> {
        match v {
            toml_edit::Value::InlineTable(t) => Node::Table(t),
            toml_edit::Value::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }
}

/// The path of a key in a table: `key(&["agent", "socket"])` is `agent.socket`.
pub(super) fn key(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key((*p).to_string())).collect()
}

/// The path of a field in one entry of an array of tables: `at("role", 0, "rate")` is `role[0].rate`.
pub(super) fn at(section: &str, index: usize, field: &str) -> Vec<Seg> {
    vec![Seg::Key(section.into()), Seg::Index(index), Seg::Key(field.into())]
}

/// A TOML syntax or type error as a problem, on the line its span starts.
pub(super) fn toml_problem(locator: &Locator, e: &toml::de::Error) -> ConfigProblem {
    let line = e.span().map(|s| locator.line_of(s.start));
    ConfigProblem {
        line,
        key: "syntax".into(),
        message: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;
    use crate::config::test_support::{TestContext, good};

    #[test]
    fn every_problem_is_reported_with_its_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path())
            .replace("refresh_at = 0.8", "refresh_at = 0.99\nsocket_mod = \"0666\"")
            .replace("identities = [\"payments\"]", "identities = [\"payments\", \"nope\"]")
            .replace("provider = \"corp\"\ngrant", "provider = \"elsewhere\"\ngrant");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        let lines: Vec<String> = err.problems.iter().map(|p| p.to_string()).collect();
        let find = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
                .unwrap_or_else(|| panic!("no {needle} in {lines:#?}"))
        };
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(find("agent.refresh_at").starts_with(&format!("line {}:", line_of("refresh_at = 0.99"))));
        assert!(find("agent.socket_mod").starts_with(&format!("line {}:", line_of("socket_mod"))));
        assert!(find("unknown key").contains("socket_mod"));
        assert!(find("identity[1].provider").contains("elsewhere"));
        assert!(find("role[0].identities[1]").contains("nope"));
        assert_eq!(err.problems.len(), 4, "{lines:#?}");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse(
            "[agent]\nsocket = \n",
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap_err();
        assert_eq!(err.problems[0].line, Some(2), "{err}");
        let err = parse(
            "[agent]\nrefresh_at = \"high\"\n",
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap_err();
        assert_eq!(err.problems[0].line, Some(2), "{err}");
    }
}
