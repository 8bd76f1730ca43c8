//! The crate's layers point one way (see the doc of src/lib.rs): every `crate::<module>` path in a
//! file under src/ names a module of a lower layer or the file's own top-level module, and no two
//! files import each other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer; a module may use only modules of a lower layer.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("config", 0),
    ("clock", 0),
    ("gate", 1),
    ("experts", 2),
    ("inference", 2),
    ("expert", 3),
    ("core", 4),
    ("eval", 5),
    ("bench", 6),
    ("control", 6),
    ("http", 7),
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

/// `crate::a::b::C` paths of a source file (comments stripped), as module paths `a::b`.
fn crate_paths(src: &str) -> BTreeSet<Vec<String>> {
    let code: String = src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let parts: Vec<String> = path.split("::").filter(|p| !p.is_empty()).map(String::from).collect();
        if !parts.is_empty() {
            out.insert(parts);
        }
    }
    // `use crate::{a, b::c}` groups
    for (i, _) in code.match_indices("crate::{") {
        let rest = &code[i + "crate::{".len()..];
        let group = &rest[..rest.find('}').unwrap_or(rest.len())];
        for item in group.split(',') {
            let parts: Vec<String> =
                item.trim().split("::").map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
            if !parts.is_empty() {
                out.insert(parts);
            }
        }
    }
    out
}

/// The module path of a file: src/core/set.rs -> core::set, src/core/mod.rs -> core.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().to_string()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

#[test]
fn layers_point_one_way_and_no_file_imports_in_a_circle() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().map(|f| (module_of(&src, f), f.clone())).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let me = module_of(&src, f);
        if me.is_empty() || me == ["lib"] || me == ["main"] {
            continue; // the crate root and the binary may use everything
        }
        let my_layer = *layer.get(me[0].as_str()).unwrap_or_else(|| panic!("{} has no layer in LAYERS", me[0]));
        for path in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            let top = path[0].as_str();
            let Some(&their) = layer.get(top) else { continue }; // `crate::Error` / `crate::Result`
            if top != me[0] && their >= my_layer {
                wrong.push(format!(
                    "{} (layer {my_layer}) uses crate::{} (layer {their})",
                    f.display(),
                    path.join("::")
                ));
            }
            // the longest prefix that is a file-module is the file this path points into
            if let Some(target) = (1..=path.len()).rev().map(|k| path[..k].to_vec()).find(|m| modules.contains_key(m))
                && target != me
            {
                edges.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
    // Depth-first search for a circle among file-modules.
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
    for m in modules.keys() {
        if let Some(circle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let names: Vec<String> = circle.iter().map(|c| c.join("::")).collect();
            panic!("import circle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    let paths = crate_paths("use crate::core::{Core, Paths};\nuse crate::{Error, experts::Metric};\n// crate::http\n");
    assert!(paths.contains(&vec!["core".to_string()]));
    assert!(paths.contains(&vec!["experts".to_string(), "Metric".to_string()]));
    assert!(!paths.iter().any(|p| p[0] == "http"), "comments are not imports");
}
