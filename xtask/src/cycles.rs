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

/// `mod x;` declarations (with a `#[path = "…"]` if one precedes it); inline
/// `mod x { … }` blocks are part of their file's module.
fn mod_decls(code: &str, raw: &str) -> Vec<(String, Option<String>)> {
    let explicit = path_attrs(raw);
    let mut out = Vec::new();
    let words: Vec<&str> =
        code.split(|c: char| c.is_whitespace()).filter(|w| !w.is_empty()).collect();
    for (i, w) in words.iter().enumerate() {
        if *w != "mod" {
            continue;
        }
        let Some(next) = words.get(i + 1) else { continue };
        let Some(name) = next.strip_suffix(';') else { continue };
        if !is_ident(name) {
            continue;
        }
        out.push((name.to_string(), explicit.get(name).cloned()));
    }
    out
}

/// `#[path = "file"] mod name;` in the raw source (the stripped one has
/// lost its strings): name → file.
fn path_attrs(raw: &str) -> BTreeMap<String, String> {
    const ATTR: &str = "#[path = \"";
    let mut out = BTreeMap::new();
    let mut s = raw;
    while let Some(at) = s.find(ATTR) {
        let rest = &s[at + ATTR.len()..];
        let Some(q) = rest.find('"') else { break };
        let file = rest[..q].to_string();
        let after = &rest[q..];
        if let Some(m) = after.find("mod ") {
            let name: String = after[m + 4..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name, file);
        }
        s = &rest[q..];
    }
    out
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Removes `//` and `/* */` comments and the contents of string literals
/// (raw ones too); char literals stay. `#[path = "…"]` keeps its string.
pub fn strip_comments_and_strings(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !is_ident_byte(b[i - 1])) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> =
                    std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
                let _ = start;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\'', '"') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    out.push_str("' '");
                    i = j + 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    out.push_str("' '");
                    i += 3;
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            c => {
                // Multi-byte UTF-8 is copied whole.
                let len = utf8_len(c);
                out.push_str(&src[i..i + len]);
                i += len;
            }
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Removes every item under `#[cfg(test)]` that is a `mod … { … }` block
/// (the unit tests) or a `mod …;` line.
fn strip_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        if let Some(m) = trimmed.strip_prefix("mod ") {
            let stop = m.find(['{', ';']).unwrap_or(m.len());
            if m[stop..].starts_with(';') {
                rest = &m[stop + 1..];
                continue;
            }
            let mut depth = 0;
            let mut end = m.len();
            for (k, ch) in m[stop..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = stop + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &m[end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// An inline `mod x { … }` (not a test one) counts as part of its file's
/// module: its `super::` is that module, written `self::` here.
fn inline_modules_flat(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = find_word(rest, "mod") {
        let after = &rest[at + 3..];
        let name_len = after
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .count();
        let skip = after.len() - after.trim_start().len() + name_len;
        if name_len == 0 || !after[skip..].trim_start().starts_with('{') {
            out.push_str(&rest[..at + 3]);
            rest = after;
            continue;
        }
        let open = skip + after[skip..].find('{').unwrap_or(0);
        let mut depth = 0;
        let mut end = after.len();
        for (k, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push_str(&rest[..at + 3]);
        out.push_str(&after[..open]);
        out.push_str(&after[open..end].replace("super::", "self::"));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every module path the code names: the expanded trees of its `use`
/// items, and `crate::`/`super::`/`self::`/`child::` paths elsewhere. Each is
/// a list of segments as written (`["super", "maps", "FLOWS"]`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = String::with_capacity(code.len());
    let mut s = code;
    // `use` items first (their braces need expanding), then the remainder.
    while let Some(at) = find_word(s, "use") {
        rest.push_str(&s[..at]);
        let item = &s[at + 3..];
        let end = item.find(';').unwrap_or(item.len());
        expand(item[..end].trim(), &mut Vec::new(), &mut out);
        s = &item[(end + 1).min(item.len())..];
    }
    rest.push_str(s);
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_ident_byte(b[i]) && (i == 0 || !(is_ident_byte(b[i - 1]) || b[i - 1] == b':')) {
            let mut j = i;
            let mut segs = Vec::new();
            loop {
                let st = j;
                while j < b.len() && is_ident_byte(b[j]) {
                    j += 1;
                }
                segs.push(rest[st..j].to_string());
                if rest[j..].starts_with("::")
                    && rest[j + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if segs.len() > 1 {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(k) = s[from..].find(word) {
        let at = from + k;
        let before_ok = at == 0 || !is_ident_byte(b[at - 1]);
        let after_ok = b.get(at + word.len()).is_some_and(u8::is_ascii_whitespace);
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands a use tree (`crate::{a::{B, c}, d}`) into its paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    // The empty tree after a trailing comma.
    if tree.is_empty() {
        return;
    }
    let tree = tree.strip_prefix("::").unwrap_or(tree);
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches(':').trim();
        let n = prefix.len();
        prefix.extend(head.split("::").filter(|s| !s.is_empty()).map(|s| s.trim().to_string()));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (k, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..k], prefix, out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        prefix.truncate(n);
    } else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let mut full = prefix.clone();
        full.extend(
            path.split("::")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s != "self" && s != "*"),
        );
        if !full.is_empty() {
            out.push(full);
        }
    }
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
    fn use_trees_expand_to_every_path() {
        let mut out = Vec::new();
        expand("crate::{a::{B, c as d}, e::F, self}", &mut Vec::new(), &mut out);
        let got: Vec<String> = out.iter().map(|p| p.join("::")).collect();
        assert_eq!(got, ["crate::a::B", "crate::a::c", "crate::e::F", "crate"]);
    }

    #[test]
    fn comments_strings_and_test_modules_do_not_count() {
        let code = strip_test_modules(&strip_comments_and_strings(
            "// crate::a::x\nlet s = \"crate::b::y\"; let c = '\"'; /* crate::c */ crate::d::z();\n#[cfg(test)]\nmod tests { use crate::e::W; }\n",
        ));
        let got: Vec<String> = paths(&code).iter().map(|p| p.join("::")).collect();
        assert_eq!(got, ["crate::d::z"]);
    }

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
