//! The module layout's rules, checked on the source itself (docs/architecture.md): no import
//! cycle between the modules of `src/` (each file is a module; `use` declarations, inline
//! `crate::`/`super::`/`self::` paths and, in a directory module, its children named by path
//! are its imports; re-exports count, so a module that imports through its parent's re-export
//! while the parent imports it is a cycle too; a text scan, so what it cannot see is coupling
//! through a type reached without naming its module, e.g. a field of a field), and
//! the README's and docs/architecture.md's layout drawings name exactly the files of `src/`.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`proxy::http::send`) → file, for every `.rs` file under `src/`.
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && path != root.join("main.rs") {
                // (`main.rs` is the binary's own crate: it imports the library by name.)
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    parts.pop();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    out
}

/// The file's code without its unit tests (a trailing `#[cfg(test)] mod tests`) and without
/// comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    // `a as b` imports `a`: drop the alias before the spaces go.
    let alias = regex::Regex::new(r"\s+as\s+[A-Za-z_0-9]+").unwrap();
    let tree: String = alias.replace_all(tree, "").split_whitespace().collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let Some(close) = tree.rfind('}').filter(|c| *c > open) else { return Vec::new() };
    let inner = &tree[open + 1..close];
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.is_empty())
        .flat_map(|i| {
            expand(i).into_iter().map(|p| {
                if p == "self" {
                    prefix.trim_end_matches("::").to_owned()
                } else {
                    format!("{prefix}{p}")
                }
            })
        })
        .collect()
}

/// The module a path in module `from` (defined in a `mod.rs`-like file when `dir_module`)
/// refers to, if it is one of `known`.
fn resolve(path: &str, from: &str, dir_module: bool, known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let here: Vec<&str> = if from.is_empty() { Vec::new() } else { from.split("::").collect() };
    let (mut base, rest): (Vec<&str>, &[&str]) = match segs.first().copied() {
        Some("crate") => (Vec::new(), &segs[1..]),
        Some("self") => (here.clone(), &segs[1..]),
        Some("super") => {
            let mut b = here.clone();
            let mut i = 0;
            while segs.get(i) == Some(&"super") {
                b.pop();
                i += 1;
            }
            (b, &segs[i..])
        }
        // A child module of a directory module, named without `self::`.
        Some(first) if dir_module && known.contains_key(&join(&here, first)) => (here.clone(), &segs[..]),
        _ => return None,
    };
    // The longest prefix that names a module; the base module itself when none does.
    let mut best = base.join("::");
    for s in rest {
        base.push(s);
        let candidate = base.join("::");
        if !known.contains_key(&candidate) {
            break;
        }
        best = candidate;
    }
    known.contains_key(&best).then_some(best)
}

fn join(here: &[&str], child: &str) -> String {
    if here.is_empty() {
        child.to_owned()
    } else {
        format!("{}::{child}", here.join("::"))
    }
}

/// Module → the modules it imports.
fn imports(known: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let use_decl = regex::Regex::new(r"(?m)^\s*(?:pub(?:\([a-z ]+\))?\s+)?use\s+([^;]+);").unwrap();
    let inline = regex::Regex::new(r"\b((?:crate|super|self)(?:::[A-Za-z_0-9]+)+)").unwrap();
    let mut out = BTreeMap::new();
    for (module, path) in known {
        let dir_module = matches!(path.file_stem().and_then(|s| s.to_str()), Some("mod" | "lib" | "main"));
        let text = code(path);
        let mut deps = BTreeSet::new();
        for cap in use_decl.captures_iter(&text) {
            for p in expand(&cap[1]) {
                deps.extend(resolve(&p, module, dir_module, known));
            }
        }
        // Paths in the code itself (not in `use` declarations, read above): `crate::`,
        // `super::`, `self::`, and in a directory module its children by name.
        let body = use_decl.replace_all(&text, "");
        for cap in inline.captures_iter(&body) {
            deps.extend(resolve(&cap[1], module, dir_module, known));
        }
        if dir_module {
            let prefix = if module.is_empty() { String::new() } else { format!("{module}::") };
            for child in
                known.keys().filter_map(|k| k.strip_prefix(&prefix)).filter(|c| !c.is_empty() && !c.contains("::"))
            {
                let used = regex::Regex::new(&format!(r"(?:^|[^A-Za-z_0-9:]){child}::")).unwrap();
                if used.is_match(&body) {
                    deps.insert(format!("{prefix}{child}"));
                }
            }
        }
        deps.remove(module);
        out.insert(module.clone(), deps);
    }
    out
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_cycle_between_modules() {
    let known = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let graph = imports(&known);
    let found = cycles(&graph);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .map(|m| {
                    let to: Vec<&str> = graph[m].iter().filter(|d| c.contains(d)).map(String::as_str).collect();
                    format!("  {m} -> {}", to.join(", "))
                })
                .collect();
            format!("cycle:\n{}", edges.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "import cycles between modules of src/:\n{}", shown.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_resolves_use_trees() {
    // The checker itself: a cycle through a re-export, and `super::{a, b::{c}}` trees.
    assert_eq!(expand("super::{a, b::{c, d}}"), ["super::a", "super::b::c", "super::b::d"]);
    assert_eq!(expand("crate::x::{self, Y}"), ["crate::x", "crate::x::Y"]);
    assert_eq!(expand("super::{drain as d, b::C as D}"), ["super::drain", "super::b::C"]);
    let known: BTreeMap<String, PathBuf> =
        ["", "p", "p::a", "p::b"].iter().map(|m| ((*m).to_owned(), PathBuf::new())).collect();
    assert_eq!(resolve("super::b::Thing", "p::a", false, &known).as_deref(), Some("p::b"));
    assert_eq!(resolve("crate::p::Thing", "p::a", false, &known).as_deref(), Some("p"));
    assert_eq!(resolve("b::Thing", "p", true, &known).as_deref(), Some("p::b"));
    assert_eq!(resolve("std::sync::Arc", "p", true, &known), None);
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("p", vec!["p::a"]), ("p::a", vec!["p::b"]), ("p::b", vec!["p"]), ("", vec![])]
            .into_iter()
            .map(|(m, d)| (m.to_owned(), d.into_iter().map(str::to_owned).collect()))
            .collect();
    assert_eq!(cycles(&graph), [vec!["p".to_owned(), "p::a".to_owned(), "p::b".to_owned()]]);
}

/// The `src/**.rs` files a document's layout drawing names: the first code block after its
/// `## Layout` heading, a tree of names indented two spaces per level (`name/` a directory).
fn layout_paths(doc: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap();
    let after = text.split("\n## Layout").nth(1).unwrap_or_else(|| panic!("{doc} has no ## Layout section"));
    let block = after.split("```").nth(1).unwrap_or_else(|| panic!("{doc}: no code block under ## Layout"));
    let mut dirs: Vec<(usize, String)> = Vec::new();
    let mut out = BTreeSet::new();
    for line in block.lines().skip(1) {
        let indent = line.len() - line.trim_start().len();
        let Some(name) = line.split_whitespace().next() else { continue };
        // A continuation line of the previous entry's description.
        if !(name.ends_with('/') || name.contains('.')) || indent % 2 != 0 {
            continue;
        }
        while dirs.last().is_some_and(|(i, _)| *i >= indent) {
            dirs.pop();
        }
        let parent: String = dirs.iter().map(|(_, d)| d.as_str()).collect();
        if name.ends_with('/') {
            dirs.push((indent, name.to_owned()));
        } else if Path::new(name).extension().is_some_and(|e| e == "rs") {
            let path = format!("{parent}{name}");
            if path.starts_with("src/") {
                out.insert(path);
            }
        }
    }
    out
}

#[test]
fn layout_lists_match_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: BTreeSet<String> = modules(&root.join("src"))
        .values()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    files.insert("src/main.rs".to_owned());
    for doc in ["README.md", "docs/architecture.md"] {
        let named = layout_paths(doc);
        let missing: Vec<_> = files.difference(&named).collect();
        let stale: Vec<_> = named.difference(&files).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{doc}: files not described: {missing:?}; described but absent: {stale:?}"
        );
    }
}
