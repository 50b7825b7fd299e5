//! Reading Rust source for the cycle check: comments, strings and test
//! modules removed, `mod` declarations (with `#[path]`), and every module
//! path a file names (expanded `use` trees, `crate::`/`super::`/`self::`
//! paths).

use std::collections::BTreeMap;

/// `mod x;` declarations (with a `#[path = "…"]` if one precedes it); inline
/// `mod x { … }` blocks are part of their file's module.
pub(super) fn mod_decls(code: &str, raw: &str) -> Vec<(String, Option<String>)> {
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
pub(super) fn path_attrs(raw: &str) -> BTreeMap<String, String> {
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

pub(super) fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Removes `//` and `/* */` comments and the contents of string literals
/// (raw ones too); char literals stay. `#[path = "…"]` keeps its string.
pub(super) fn strip_comments_and_strings(src: &str) -> String {
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

pub(super) fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

pub(super) fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Removes every item under `#[cfg(test)]` that is a `mod … { … }` block
/// (the unit tests) or a `mod …;` line.
pub(super) fn strip_test_modules(code: &str) -> String {
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
pub(super) fn inline_modules_flat(code: &str) -> String {
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
pub(super) fn paths(code: &str) -> Vec<Vec<String>> {
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

pub(super) fn find_word(s: &str, word: &str) -> Option<usize> {
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
pub(super) fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
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
}
