//! The shape of `crates/server/src`, checked by reading the source (LAYOUT.md): a module is a top-level
//! file or folder, with the edge counted apart from what it serves — each capability's `handlers.rs`,
//! `auth::extract` (the extractors, which read the application state) and `app::state` (the state
//! handlers read, which names only services) — and no two modules may reach each other through any
//! chain of `crate::` / `super::` paths. A capability's
//! `service.rs` speaks the domain: no axum, no HTTP kit, no application state, no HTTP error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module segments of a file below `src/`: `apikeys/handlers.rs` is `["apikeys", "handlers"]`,
/// `apikeys/mod.rs` is `["apikeys"]`.
fn segments(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs").to_owned();
    if stem != "mod" {
        parts.push(stem);
    }
    parts
}

/// The node a module path belongs to: the top-level module, or `top::handlers` for a handlers file.
fn node(path: &[String]) -> Option<String> {
    let top = path.first()?;
    if top == "lib" || top == "main" {
        return None;
    }
    Some(match (top.as_str(), path.get(1).map(String::as_str)) {
        (_, Some("handlers")) | ("auth", Some("extract")) | ("app", Some("state")) => {
            format!("{top}::{}", path[1])
        }
        _ => top.clone(),
    })
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(text: &str) -> &str {
    let end = text.find(|c: char| !is_ident(c)).unwrap_or(text.len());
    &text[..end]
}

/// Code without comments (doc links name modules without importing them).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path this code reaches, absolute from the crate root, up to two segments deep.
fn referenced(code: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", own[..own.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(is_ident) {
                continue;
            }
            let mut heads: Vec<Vec<String>> = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the top-level names of the group.
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.trim();
                    let first = ident_at(item);
                    let second = item
                        .strip_prefix(first)
                        .and_then(|r| r.strip_prefix("::"))
                        .map(ident_at)
                        .filter(|s| !s.is_empty());
                    if !first.is_empty() {
                        heads.push(
                            std::iter::once(first)
                                .chain(second)
                                .map(str::to_owned)
                                .collect(),
                        );
                    }
                }
            } else {
                let first = ident_at(rest);
                let second = rest[first.len()..]
                    .strip_prefix("::")
                    .map(ident_at)
                    .filter(|s| !s.is_empty());
                heads.push(
                    std::iter::once(first)
                        .chain(second)
                        .map(str::to_owned)
                        .collect(),
                );
            }
            for head in heads {
                if head.len() == 1 {
                    // `use crate::apikeys;` then `apikeys::handlers::routes()`.
                    let name = &head[0];
                    let used = code.match_indices(&format!("{name}::")).any(|(at, _)| {
                        let before = code[..at].chars().next_back();
                        !before.is_some_and(|c| is_ident(c) || c == ':')
                            && code[at + name.len() + 2..].starts_with("handlers")
                    });
                    if used {
                        let mut path = base.clone();
                        path.extend([name.clone(), "handlers".to_owned()]);
                        found.push(path);
                    }
                }
                let mut path = base.clone();
                path.extend(head);
                found.push(path);
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    source_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let own = segments(&file);
        let Some(from) = node(&own) else { continue };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let targets = edges.entry(from.clone()).or_default();
        for path in referenced(&code, &own) {
            if let Some(to) = node(&path)
                && to != from
            {
                targets.insert(to);
            }
        }
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    edges: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in edges.get(at).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_owned());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(cycle) = cycle_from(edges, start, next, path, seen) {
                return Some(cycle);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn the_reader_sees_the_modules_it_should() {
    // The checks below are only as good as the graph: it must see the real structure.
    let edges = graph();
    for capability in [
        "users",
        "tokens",
        "signing_keys",
        "apikeys",
        "sessions",
        "audit",
        "pages",
        "auth",
        "http",
        "app",
    ] {
        assert!(
            edges.contains_key(capability),
            "no module {capability} in src/: {edges:?}"
        );
    }
    for handlers in [
        "users",
        "tokens",
        "signing_keys",
        "apikeys",
        "sessions",
        "audit",
    ] {
        let node = format!("{handlers}::handlers");
        assert!(edges.contains_key(&node), "no {node}");
        assert!(
            edges[&node].contains("app::state"),
            "{node} is not seen reading the state: {:?}",
            edges[&node]
        );
    }
    assert!(
        edges["apikeys::handlers"].contains("apikeys"),
        "{:?}",
        edges["apikeys::handlers"]
    );
    assert!(
        edges["app"].contains("apikeys::handlers"),
        "the router's merge is not seen"
    );
    assert!(
        edges["auth::extract"].contains("app::state"),
        "{:?}",
        edges["auth::extract"]
    );
    // A `use crate::{a, b}` group and a `super::` path are both read.
    let refs = referenced(
        "use crate::{apikeys, http::error};\nuse super::handlers::x;\nfn f() { apikeys::handlers::routes() }",
        &["users".into(), "service".into()],
    );
    let refs: BTreeSet<_> = refs.into_iter().map(|p| p.join("::")).collect();
    let want: BTreeSet<_> = [
        "apikeys",
        "apikeys::handlers",
        "http::error",
        "users::handlers::x",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(refs, want);
}

#[test]
fn no_import_cycle_between_modules() {
    let edges = graph();
    let mut cycles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        if let Some(cycle) = cycle_from(&edges, start, start, &mut vec![start.clone()], &mut seen) {
            cycles.push(cycle.join(" -> "));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n{}",
        cycles.join("\n")
    );
}

/// The capabilities' own files other than their edge (`handlers.rs`): the services and what they use
/// (`ring.rs`, `writer.rs`, `throttle.rs`, …), and the credential pipeline's `auth::authenticate`.
fn domain_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for capability in [
        "users",
        "tokens",
        "signing_keys",
        "apikeys",
        "sessions",
        "audit",
        "oauth",
    ] {
        source_files(&src().join(capability), &mut files);
    }
    // The edges: each capability's handlers, and the OAuth error's rendering.
    files.retain(|f| {
        f.file_name().is_some_and(|n| n != "handlers.rs") && !f.ends_with("oauth/error.rs")
    });
    files.push(src().join("auth/mod.rs"));
    files
}

#[test]
fn services_speak_the_domain_not_http() {
    let files = domain_files();
    let services = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "service.rs"))
        .count();
    assert!(
        services >= 4 && files.len() >= 15,
        "domain files found: {files:?}"
    );
    let forbidden = [
        "axum",
        "crate::http",
        "crate::app",
        "AppState",
        "ApiError",
        "handlers::",
        "StatusCode",
        "HeaderMap",
    ];
    let mut found = Vec::new();
    for file in &files {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for word in forbidden {
            if code.contains(word) {
                found.push(format!(
                    "{} uses {word}",
                    file.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
