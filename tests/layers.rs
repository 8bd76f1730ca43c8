//! The workspace's layers point one way. Between crates the compiler holds it (each crate names its
//! dependencies: server → core, tools → core, the binary → all three), and this test keeps the
//! manifests so; inside each crate, every `crate::<module>` or `super::<module>` path in a file
//! names a module of a lower layer or the file's own top-level module, and no two files import each
//! other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate's top-level modules by layer; a module may use only modules of a lower layer.
const CRATES: &[(&str, &[(&str, u32)])] = &[
    (
        "crates/core",
        &[
            ("error", 0),
            ("config", 0),
            ("clock", 0),
            ("files", 0),
            ("linalg", 1),
            ("gate", 1),
            ("bundle", 2),
            ("inference", 2),
            ("data", 2),
            ("stats", 3),
            ("store", 3),
            ("expert", 4),
            ("evaluation", 5),
            ("service", 6),
        ],
    ),
    ("crates/server", &[("etcd", 0), ("control", 1), ("http", 2)]),
    ("crates/tools", &[("bench", 0), ("embed_cache", 0), ("open_world", 0), ("report", 0), ("select", 0), ("fit", 1)]),
];

/// The workspace crates each crate may depend on.
const DEPENDENCIES: &[(&str, &[&str])] = &[
    ("crates/core", &[]),
    ("crates/server", &["moe-core"]),
    ("crates/tools", &["moe-core"]),
    (".", &["moe-core", "moe-server", "moe-tools"]),
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module paths a file's code names through `crate::` or `super::` (comments and the inline
/// test module stripped), from the crate root. `me`: the file's own module path (a::b for a/b.rs
/// and a/b/mod.rs).
fn module_paths(src: &str, me: &[String]) -> BTreeSet<Vec<String>> {
    let code = src.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    // `super` of a/b.rs and of a/b/mod.rs (both module a::b) is a.
    let parent: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let push = |parts: Vec<String>, out: &mut BTreeSet<Vec<String>>| {
            if !parts.is_empty() && parts[0] != "*" {
                out.insert(base.iter().cloned().chain(parts).collect());
            }
        };
        for (i, _) in code.match_indices(prefix) {
            if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::` inside `crate::a::super`-like paths, or `moe_core::crate`
            }
            let rest = &code[i + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c}` groups
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let parts = item.trim().split("::").map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
                    push(parts.collect(), &mut out);
                }
                continue;
            }
            let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            push(path.split("::").filter(|p| !p.is_empty()).map(String::from).collect(), &mut out);
        }
    }
    out
}

/// The module path of a file: src/service/set.rs -> service::set, src/service/mod.rs -> service.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().to_string()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// What is wrong with one crate's layers: imports against them, or a circle.
fn check_crate(dir: &str, layers: &[(&str, u32)]) -> Vec<String> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let layer: BTreeMap<&str, u32> = layers.iter().copied().collect();
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().map(|f| (module_of(&src, f), f.clone())).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let me = module_of(&src, f);
        if me.is_empty() {
            continue; // the crate root declares every module
        }
        let Some(&my_layer) = layer.get(me[0].as_str()) else {
            wrong.push(format!("{dir}: module {} has no layer in CRATES", me[0]));
            continue;
        };
        for path in module_paths(&std::fs::read_to_string(f).unwrap(), &me) {
            let top = path[0].as_str();
            let Some(&their) = layer.get(top) else { continue }; // `crate::Error` / `crate::Result`
            if top != me[0] && their >= my_layer {
                wrong.push(format!("{} (layer {my_layer}) uses {} (layer {their})", f.display(), path.join("::")));
            }
            // the longest prefix that is a file-module is the file this path points into
            if let Some(target) = (1..=path.len()).rev().map(|k| path[..k].to_vec()).find(|m| modules.contains_key(m))
                && target != me
            {
                if me.starts_with(&target) {
                    // a folder's mod.rs uses its children, never the other way
                    wrong.push(format!("{} uses {} from its parent module", f.display(), path.join("::")));
                }
                edges.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    if let Some(circle) = find_circle(&modules, &edges) {
        let names: Vec<String> = circle.iter().map(|c| c.join("::")).collect();
        wrong.push(format!("{dir}: import circle: {}", names.join(" -> ")));
    }
    wrong
}

/// Depth-first search for a circle among file-modules.
fn find_circle(
    modules: &BTreeMap<Vec<String>, PathBuf>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Option<Vec<Vec<String>>> {
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for n in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    modules.keys().find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

#[test]
fn layers_point_one_way_and_no_file_imports_in_a_circle() {
    let wrong: Vec<String> = CRATES.iter().flat_map(|(dir, layers)| check_crate(dir, layers)).collect();
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn crates_depend_one_way_and_the_server_never_on_the_tools() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (dir, allowed) in DEPENDENCIES {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
        let deps = manifest.split("\n[").find(|s| s.starts_with("dependencies]")).unwrap_or("");
        let named: BTreeSet<&str> = ["moe-core", "moe-server", "moe-tools"]
            .into_iter()
            .filter(|c| deps.lines().any(|l| l.starts_with(&format!("{c}.")) || l.starts_with(&format!("{c} "))))
            .collect();
        assert_eq!(named, allowed.iter().copied().collect(), "{dir}/Cargo.toml");
    }
}

#[test]
fn the_checker_sees_imports() {
    let me = vec!["http".to_string(), "handlers".to_string()];
    let src = "use crate::core::{Core, Paths};\nuse crate::{Error, experts::Metric};\n// crate::http\n\
               use super::state::AppState;\n#[cfg(test)]\nmod tests {\n    use crate::stats;\n}\n";
    let paths = module_paths(src, &me);
    assert!(paths.contains(&vec!["core".to_string()]));
    assert!(paths.contains(&vec!["experts".to_string(), "Metric".to_string()]));
    assert!(paths.contains(&vec!["http".to_string(), "state".to_string(), "AppState".to_string()]));
    assert!(!paths.iter().any(|p| p[0] == "stats"), "the test module is not an import");
    let in_mod_rs = module_paths("use super::x;", &["http".to_string()]);
    assert!(in_mod_rs.contains(&vec!["x".to_string()]), "super of a mod.rs is its folder's parent");
}
