//! Every configuration we ship or show — `examples/*.toml` and each ```toml block in README.md
//! and in docs/*.md — uses only keys the agent knows and is valid TOML. Fragments may leave out
//! what a whole file needs (an identity, a secret file); only unknown keys and syntax count.
//! docs/ is listed when the test runs, so a page added later is checked too.

use std::path::{Path, PathBuf};

use cortexid::config::unknown_keys;

/// The sections a headerless fragment (keys with no table above them) may be the body of.
const SECTIONS: [&str; 5] = ["[agent]", "[[provider]]", "[[identity]]", "[[role]]", "[[sink]]"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path as the failure list shows it: from the crate's root.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// Each ```toml block of a Markdown file: the line its text starts on, and the text.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut open {
            None if fence.starts_with("```toml") => open = Some((n + 2, String::new())),
            Some(_) if fence.starts_with("```") => blocks.extend(open.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "a ```toml block is never closed");
    blocks
}

/// Whether the first key comes before any table header: the fragment is one section's body.
fn headerless(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| !l.starts_with('['))
}

/// What is wrong with one configuration text (`None` when nothing is), lines counted from its
/// first. A headerless fragment is right when it is right as the body of one of the sections.
fn check(text: &str, name: &Path) -> Option<String> {
    let unknown = match unknown_keys(text, name) {
        Ok(unknown) if unknown.is_empty() => return None,
        Ok(unknown) => unknown,
        Err(e) => return Some(e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")),
    };
    if headerless(text)
        && SECTIONS
            .iter()
            .any(|s| unknown_keys(&format!("{s}\n{text}"), name).is_ok_and(|u| u.is_empty()))
    {
        return None;
    }
    Some(format!("unknown keys {unknown:?}"))
}

#[test]
fn every_shipped_config_has_only_known_keys() {
    let root = root();
    let mut failures = Vec::new();
    let mut checked = 0;

    let example = root.join("examples/cortexid.toml");
    assert!(example.is_file(), "{} is missing", example.display());
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    for path in examples {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Some(why) = check(&text, &path) {
            failures.push(format!("{}: {why}", shown(&root, &path)));
        }
        checked += 1;
    }

    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut blocks = 0;
    for page in pages {
        let markdown = std::fs::read_to_string(&page).unwrap();
        for (line, text) in toml_blocks(&markdown) {
            if let Some(why) = check(&text, &page) {
                failures.push(format!(
                    "{}, the ```toml block at line {line}: {why}",
                    shown(&root, &page)
                ));
            }
            blocks += 1;
        }
    }
    checked += blocks;

    assert!(blocks >= 1, "no ```toml block found in README.md or docs/*.md");
    assert!(
        failures.is_empty(),
        "{} of {checked} configurations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_fragment_is_checked_as_the_body_of_a_section() {
    let name = Path::new("fragment");
    assert_eq!(check("client_secret_file = \"/etc/secret\"\n", name), None);
    assert!(check("client_secret_fil = \"/etc/secret\"\n", name).is_some());
    assert!(check("[[provider]]\nclient_secret_fil = \"x\"\n", name).is_some());
    assert!(check("[agent\n", name).is_some());
    assert_eq!(
        toml_blocks("text\n```toml\na = 1\n```\n```sh\nb\n```\n  ```toml\nc = 2\n  ```\n"),
        vec![(3, "a = 1\n".to_string()), (9, "c = 2\n".to_string())]
    );
}
