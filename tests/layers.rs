//! The crate's modules import one way: every `crate::<module>` reference in
//! `src/` must be allowed by the table in ARCHITECTURE.md ("Layers"), the table
//! must have no circle, and no two files of one module import each other (directly
//! or around a circle). A new import that breaks the layering fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `module -> modules it may import`, from the table between the markers.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let doc = fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = doc
        .find("<!-- layers:begin -->")
        .expect("layers:begin marker");
    let end = doc.find("<!-- layers:end -->").expect("layers:end marker");
    let mut table = BTreeMap::new();
    for line in doc[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `module` | `a`, `b` |
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let deps = cells[2]
            .split(',')
            .map(|d| d.trim().trim_matches('`').to_string())
            .filter(|d| !d.is_empty() && d != "—")
            .collect();
        table.insert(name, deps);
    }
    assert!(!table.is_empty(), "no rows in the layers table");
    table
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `lib.rs`/`main.rs` are the root.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(Path::new(ROOT).join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without its comments (line comments and doc comments).
fn code(file: &Path) -> String {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every identifier that follows `prefix` in `text`.
fn idents_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push(&rest[..n]);
    }
    out
}

fn has_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_layers_table_has_no_circle() {
    if let Some(c) = has_cycle(&allowed()) {
        panic!(
            "the layers table in ARCHITECTURE.md has a circle: {}",
            c.join(" -> ")
        );
    }
}

#[test]
fn every_import_is_allowed_by_the_layers_table() {
    let table = allowed();
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let mut wrong = BTreeSet::new();
    for f in &files {
        let path = module_path(f);
        let Some(top) = path.first() else { continue };
        let Some(may) = table.get(top) else {
            wrong.insert(format!(
                "module `{top}` ({}) is not in the layers table",
                f.display()
            ));
            continue;
        };
        for dep in idents_after(&code(f), "crate::") {
            if dep != top && !may.contains(dep) {
                wrong.insert(format!("`{top}` imports `{dep}` ({})", f.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers table in ARCHITECTURE.md:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_two_files_of_a_module_import_each_other() {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let path = module_path(f);
        if path.len() != 2 {
            continue;
        }
        let text = code(f);
        let mut deps: Vec<&str> = idents_after(&text, "super::");
        let own = format!("crate::{}::", path[0]);
        deps.extend(idents_after(&text, &own));
        for d in deps {
            let sibling = vec![path[0].clone(), d.to_string()];
            if d != path[1] && modules.contains(&sibling) {
                graph
                    .entry(path.join("::"))
                    .or_default()
                    .insert(sibling.join("::"));
            }
        }
    }
    if let Some(c) = has_cycle(&graph) {
        panic!("files of one module import each other: {}", c.join(" -> "));
    }
}
