//! The shape of the source tree, as docs/ARCHITECTURE.md describes it: data flows one way
//! between the top-level modules of `src/` (no module reaches back into one that depends on it),
//! the library has no stringly-typed errors, and no source file outgrows what a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, with the top-level module it belongs to (`src/agent/mod.rs` →
/// `agent`, `src/token.rs` → `token`).
fn sources() -> Vec<(String, PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(src_dir()).unwrap();
            let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
            let top = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            (top, path, text)
        })
        .collect()
}

/// The code of a file without its `#[cfg(test)]` module (a trailing `mod tests`, by convention).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Top-level module → the top-level modules its non-test code names through `crate::`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let tops: BTreeSet<String> = sources.iter().map(|(t, _, _)| t.clone()).collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (top, _, text) in &sources {
        if top == "lib" || top == "main" {
            continue;
        }
        let code = without_tests(text);
        let entry = deps.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                // use crate::{a::X, b};
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group
                    .split(',')
                    .map(|p| p.trim().split("::").next().unwrap_or(""))
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            for name in names {
                if name != top && tops.contains(name) {
                    entry.insert(name.to_string());
                }
            }
        }
    }
    deps
}

#[test]
fn data_flows_one_way_between_the_top_level_modules() {
    let deps = dependencies();
    // Depth-first search for a path that comes back to where it started.
    fn find_cycle(
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in deps.get(node).into_iter().flatten() {
            if let Some(c) = find_cycle(next, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in deps.keys() {
        if let Some(cycle) = find_cycle(node, &deps, &mut Vec::new(), &mut done) {
            panic!(
                "modules depend on each other in a cycle: {} (dependencies: {deps:#?})",
                cycle.join(" → ")
            );
        }
    }
    // The request path: the server depends on the agent, never the other way round.
    assert!(deps["api"].contains("agent"), "{deps:#?}");
    assert!(!deps["agent"].contains("api"), "{deps:#?}");
    assert!(
        !deps["output"].contains("agent"),
        "sinks publish through a trait: {deps:#?}"
    );
}

#[test]
fn the_library_has_no_string_errors() {
    let mut found = Vec::new();
    for (_, path, text) in sources() {
        let code = without_tests(&text);
        let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut rest = flat.as_str();
        while let Some(i) = rest.find("Result<") {
            let tail = &rest[i + "Result<".len()..];
            // The type arguments up to the matching '>'.
            let mut depth = 1;
            let mut end = 0;
            for (j, c) in tail.char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &tail[..end];
            if args.ends_with(", String") || args.ends_with(",String") {
                found.push(format!("{}: Result<{args}>", path.display()));
            }
            rest = &tail[end..];
        }
    }
    assert!(found.is_empty(), "typed errors, not strings:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_outgrows_a_reader() {
    const MAX_LINES: usize = 700;
    let too_long: Vec<String> = sources()
        .into_iter()
        .filter_map(|(_, path, text)| {
            let n = without_tests(&text).lines().count();
            (n > MAX_LINES).then(|| format!("{}: {n} lines", path.display()))
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "split these along their seams (tests excluded, {MAX_LINES} lines at most):\n{}",
        too_long.join("\n")
    );
}
