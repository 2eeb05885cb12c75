//! Issue 15, "one concept per file": no import circles between the files of a crate.
//!
//! Reads every crate's sources, finds the modules each file names (`crate::a::b`, and
//! `super::x` in a child), and, for every pair of sibling modules, the edge "a uses b".
//! Two siblings that use each other are refused, naming them: shared types belong in the
//! lower module. In `monetize-tower`, `monetize-axum` and `monetize-providers` no longer
//! circle exists either (a second test). `monetize-core` keeps one, three long:
//! `customer` (its state holds the metering, which reads the compiled configuration) ->
//! `compiled` (which compiles the rules) -> `govern` (whose conditions read the customer's
//! state) -> `customer`. A parent using its children (and children their
//! parent) is the ordinary module tree, not a circle. Comments and test code (files named
//! `tests.rs`, `*_tests.rs`, `spool_suite.rs`, and everything after a `#[cfg(test)]` module
//! declaration at the end of a file) are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 4] = [
    "monetize-core",
    "monetize-tower",
    "monetize-axum",
    "monetize-providers",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package is in the workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `report/reporter/mod.rs` is `report::reporter`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn is_test_file(file: &Path) -> bool {
    let name = file.file_name().unwrap().to_string_lossy();
    name == "tests.rs" || name.ends_with("_tests.rs") || name == "spool_suite.rs"
}

/// The file's code without comments and without its trailing test modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split("//").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// Every `prefix::ident::ident...` path in `code`, as its identifiers.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find(prefix) {
        let start = at + i;
        at = start + prefix.len();
        if start > 0 {
            let before = bytes[start - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        let mut path = Vec::new();
        let mut rest = &code[at..];
        loop {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() || !ident.starts_with(|c: char| c.is_ascii_lowercase()) {
                break;
            }
            rest = &rest[ident.len()..];
            path.push(ident);
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        if !path.is_empty() {
            found.push(path);
        }
    }
    found
}

/// Sibling edges of one crate: parent module -> (child a -> children b that a uses).
type Edges = BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>>;

fn edges_of(krate: &str) -> Edges {
    let src = root().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = Edges::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let from = module_of(&src, file);
        let text = code(&std::fs::read_to_string(file).unwrap());
        let mut targets: Vec<Vec<String>> = paths_after(&text, "crate::");
        for p in paths_after(&text, "super::") {
            let mut base = from.clone();
            base.pop();
            base.extend(p);
            targets.push(base);
        }
        for target in targets {
            // The longest module that the path names.
            let Some(to) = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // a module and its ancestor or descendant
            }
            edges
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    edges
}

/// The pairs of one graph that use each other.
fn pairs(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for (a, bs) in graph {
        for b in bs {
            if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                out.push(BTreeSet::from([a.clone(), b.clone()]));
            }
        }
    }
    out
}

/// The circles (strongly connected sets of two or more) of one graph.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(n) = todo.pop() {
            for next in graph.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for node in graph.keys() {
        let from_node = reach(node);
        let set: BTreeSet<String> = from_node
            .iter()
            .filter(|other| *other != node && reach(other).contains(node))
            .cloned()
            .chain(std::iter::once(node.clone()))
            .collect();
        if set.len() > 1 && !out.contains(&set) {
            out.push(set);
        }
    }
    out
}

fn circles_in(crates: &[&str], longest: usize) -> Vec<String> {
    let mut found = Vec::new();
    for krate in crates {
        for (parent, graph) in edges_of(krate) {
            let found_here = if longest == 2 {
                pairs(&graph)
            } else {
                circles(&graph)
            };
            for circle in found_here {
                found.push(format!(
                    "{krate}: in `{}`: {}",
                    if parent.is_empty() {
                        "crate".to_owned()
                    } else {
                        parent.join("::")
                    },
                    circle.into_iter().collect::<Vec<_>>().join(" <-> ")
                ));
            }
        }
    }
    found
}

#[test]
fn no_two_sibling_modules_import_each_other() {
    let found = circles_in(&CRATES, 2);
    assert!(
        found.is_empty(),
        "modules that import each other (move the shared types to the lower module):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_import_circles_in_the_tower_axum_and_providers_crates() {
    let found = circles_in(&CRATES[1..], usize::MAX);
    assert!(
        found.is_empty(),
        "import circles (move the shared types to the lower module):\n{}",
        found.join("\n")
    );
}

/// The checker itself finds a circle, and only a real one.
#[test]
fn the_checker_sees_a_circle_and_a_tree() {
    let graph = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
        }
        g
    };
    let three = circles(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
    assert_eq!(three.len(), 1);
    assert_eq!(three[0].len(), 3);
    assert!(circles(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    // A pair inside a longer circle is still a pair.
    let pair = pairs(&graph(&[("a", "b"), ("b", "a"), ("b", "c"), ("c", "a")]));
    assert_eq!(pair, vec![BTreeSet::from(["a".to_owned(), "b".to_owned()])]);
    assert_eq!(
        paths_after("use crate::config::{A, B};\nmycrate::no", "crate::"),
        vec![vec!["config".to_owned()]]
    );
    assert_eq!(
        code("let a = 1; // crate::x\n// crate::y\n"),
        "let a = 1; \n"
    );
}
