//! The import-cycle check of `cargo xtask lint`: a layer imports only the
//! layers below it, so no crate may hold two modules that reach each other.
//!
//! Every crate root of every workspace package (`src/lib.rs`,
//! `src/main.rs`, `src/bin/*.rs`, `tests/*.rs`, `benches/*.rs`, `build.rs`)
//! is followed through its `mod` declarations to the files of its modules.
//! An edge A → B is a path in A (a `use` item or an expression) that names
//! module B through `crate::`, `super::`, `self::` or one of A's own child
//! modules. Comments, string literals and `#[cfg(test)]` modules do not
//! count: a unit test may reach anywhere. A path into the crate root's
//! re-exports (`pub use a::X;` at the root) counts as a path into `a`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

mod scan;

use scan::{
    expand, inline_modules_flat, mod_decls, paths, strip_comments_and_strings, strip_test_modules,
};

/// One module of a crate: its path (`["datapath", "attach"]`, empty for
/// the root), its file and its source with comments, strings and test
/// modules removed.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    code: String,
    children: Vec<String>,
}

/// The cycles of one crate: each is the list of modules (as `a::b`, the
/// root as `crate`) that reach one another, and the file of each.
pub fn crate_cycles(root: &Path) -> Result<Vec<Vec<(String, PathBuf)>>> {
    let mut modules = Vec::new();
    load(root, &[], &mut modules)?;
    let index: BTreeMap<Vec<String>, usize> =
        modules.iter().enumerate().map(|(i, m)| (m.path.clone(), i)).collect();
    let reexports = reexports(&modules[0]);
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); modules.len()];
    for (i, m) in modules.iter().enumerate() {
        for path in paths(&m.code) {
            let Some(abs) = absolute(&m.path, &m.children, &path) else { continue };
            let abs = match abs.split_first() {
                Some((first, rest)) if !index.contains_key(&vec![first.clone()]) => match reexports
                    .get(first)
                {
                    Some(target) => target.iter().cloned().chain(rest.iter().cloned()).collect(),
                    None => abs,
                },
                _ => abs,
            };
            // The longest prefix of the path that is a module.
            let target = (0..=abs.len()).rev().find_map(|n| index.get(&abs[..n]).copied());
            if let Some(t) = target
                && t != i
            {
                edges[i].insert(t);
            }
        }
    }
    Ok(strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.into_iter().map(|i| (name(&modules[i].path), modules[i].file.clone())).collect())
        .collect())
}

fn name(path: &[String]) -> String {
    if path.is_empty() { "crate".into() } else { path.join("::") }
}

/// Reads `file` as module `path` and, through its `mod x;` declarations,
/// every module below it.
fn load(file: &Path, path: &[String], out: &mut Vec<Module>) -> Result<()> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let code = inline_modules_flat(&strip_test_modules(&strip_comments_and_strings(&text)));
    let decls = mod_decls(&code, &text);
    let own_dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => {
            file.parent().unwrap_or(Path::new(".")).to_path_buf()
        }
        _ if path.is_empty() => file.parent().unwrap_or(Path::new(".")).to_path_buf(),
        _ => file.with_extension(""),
    };
    out.push(Module {
        path: path.to_vec(),
        file: file.to_path_buf(),
        code,
        children: decls.iter().map(|d| d.0.clone()).collect(),
    });
    for (child, explicit) in decls {
        let child_file = if let Some(p) = explicit {
            file.parent().unwrap_or(Path::new(".")).join(p)
        } else {
            let flat = own_dir.join(format!("{child}.rs"));
            if flat.exists() { flat } else { own_dir.join(&child).join("mod.rs") }
        };
        let mut child_path = path.to_vec();
        child_path.push(child);
        load(&child_file, &child_path, out)?;
    }
    Ok(())
}

/// The path from the crate root that a path written in module `at` names,
/// or `None` when it leaves the crate (another crate, `std`, a local name).
fn absolute(at: &[String], children: &[String], path: &[String]) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.to_vec()),
        "super" => {
            let mut base = at[..at.len().checked_sub(1)?].to_vec();
            let mut rest = rest;
            while let Some(("super", r)) = rest.split_first().map(|(a, r)| (a.as_str(), r)) {
                base.pop()?;
                rest = r;
            }
            base.extend(rest.iter().cloned());
            Some(base)
        }
        "self" => Some(at.iter().chain(rest).cloned().collect()),
        c if children.iter().any(|x| x == c) => Some(at.iter().chain(path).cloned().collect()),
        _ => None,
    }
}

/// `pub use a::b::X;` (or `pub use a::{X, Y}`) at the crate root: `X` → `a::b`.
fn reexports(root: &Module) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut s = root.code.as_str();
    while let Some(at) = s.find("pub use ") {
        let item = &s[at + 8..];
        let end = item.find(';').unwrap_or(item.len());
        let mut paths = Vec::new();
        expand(&item[..end], &mut Vec::new(), &mut paths);
        for p in paths {
            let p: Vec<String> = if p.first().is_some_and(|f| f == "crate" || f == "self") {
                p[1..].to_vec()
            } else {
                p
            };
            if let Some((last, module)) = p.split_last()
                && root.children.iter().any(|c| Some(c) == module.first())
            {
                out.insert(last.clone(), module.to_vec());
            }
        }
        s = &item[end.min(item.len())..];
    }
    out
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct T<'a> {
        edges: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &t.edges[v] {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            comp.sort_unstable();
            t.out.push(comp);
        }
    }
    let n = edges.len();
    let mut t = T {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Every crate root of the workspace's packages.
pub fn crate_roots(workspace: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for pkg in ["forwarder-common", "forwarder-ebpf", "forwarder-user", "xtask", "tests"] {
        let dir = workspace.join(pkg);
        for f in ["src/lib.rs", "src/main.rs", "build.rs"] {
            if dir.join(f).exists() {
                roots.push(dir.join(f));
            }
        }
        for sub in ["src/bin", "tests", "benches"] {
            if let Ok(entries) = fs::read_dir(dir.join(sub)) {
                let mut files: Vec<PathBuf> =
                    entries.filter_map(|e| Some(e.ok()?.path())).collect();
                files.sort();
                for f in files {
                    if f.extension().is_some_and(|e| e == "rs") {
                        roots.push(f);
                    } else if f.join("main.rs").exists() {
                        roots.push(f.join("main.rs"));
                    }
                }
            }
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circle_between_two_modules_is_found_and_a_line_is_not() {
        let dir = std::env::temp_dir().join(format!("xtask-cycles-{}", std::process::id()));
        let src = dir.join("src");
        fs::create_dir_all(src.join("b")).unwrap();
        fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
        fs::write(src.join("a.rs"), "use crate::b::x::Y;\npub fn f() {}\n").unwrap();
        fs::write(src.join("b/mod.rs"), "pub mod x;\n").unwrap();
        fs::write(src.join("b/x.rs"), "pub struct Y;\nfn g() { super::super::c::h(); }\n").unwrap();
        fs::write(src.join("c.rs"), "pub fn h() {}\n").unwrap();
        assert!(crate_cycles(&src.join("lib.rs")).unwrap().is_empty());
        fs::write(src.join("c.rs"), "pub fn h() { crate::a::f() }\n").unwrap();
        let cycles = crate_cycles(&src.join("lib.rs")).unwrap();
        let names: Vec<&str> = cycles[0].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b::x", "c"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
