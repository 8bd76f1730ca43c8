//! What the repository carries stays modest and its own: the bundles in `models/` under 150 MB,
//! no other tracked file over 10 MB (scratch files that tools leave in the working directory, such
//! as ONNX Runtime's `sym_shape_infer_temp.onnx` and its `<uuid>.data`, or a build output), and no
//! tracked file that names the shared folder beside the checkout, which nothing may read at build,
//! test or run time.

use std::path::Path;
use std::process::Command;

const MODELS_LIMIT: u64 = 150_000_000;
const FILE_LIMIT: u64 = 10_000_000;

/// Every tracked file with its size in the working tree (0 when deleted there).
fn tracked() -> Vec<(String, u64)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(root).output().expect("git runs");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let path = String::from_utf8_lossy(p).into_owned();
            let len = std::fs::metadata(root.join(&path)).map_or(0, |m| m.len());
            (path, len)
        })
        .collect()
}

#[test]
fn the_repository_carries_modest_files() {
    let files = tracked();
    assert!(files.len() > 100, "git ls-files listed only {} files", files.len());
    let models: u64 = files.iter().filter(|(p, _)| p.starts_with("models/")).map(|(_, n)| n).sum();
    assert!(models > 0 && models < MODELS_LIMIT, "models/ holds {models} bytes (limit {MODELS_LIMIT})");
    let big: Vec<_> = files.iter().filter(|(p, n)| !p.starts_with("models/") && *n > FILE_LIMIT).collect();
    assert!(big.is_empty(), "tracked files over {FILE_LIMIT} bytes outside models/: {big:?}");
}

#[test]
fn no_tracked_file_names_the_shared_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in two pieces so that this file does not name it.
    let needle = format!("{}/{}", "..", "shared");
    let naming: Vec<_> = tracked()
        .into_iter()
        .filter(|(_, n)| *n <= FILE_LIMIT)
        .filter(|(p, _)| {
            let bytes = std::fs::read(root.join(p)).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|(p, _)| p)
        .collect();
    assert!(naming.is_empty(), "tracked files name {needle}: {naming:?}");
}

/// The lines of each function in `src` (name, first line, lines), found by matching braces from
/// each `fn` line; comments, string literals and brace character literals do not count.
fn function_lengths(src: &str) -> Vec<(String, usize, usize)> {
    let code: Vec<String> = src.lines().map(strip_literals).collect();
    let mut out = Vec::new();
    for (i, line) in code.iter().enumerate() {
        let t = line.trim_start();
        let Some(at) = t.find("fn ") else { continue };
        let head = &t[..at];
        let modifiers = ["pub", "pub(crate)", "pub(super)", "async", "const", "unsafe", "extern", "\"C\""];
        if !head.split_whitespace().all(|w| modifiers.contains(&w)) {
            continue;
        }
        let name: String = t[at + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in code[i..].iter().enumerate() {
            for c in l.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                if opened {
                    out.push((name.clone(), i + 1, j + 1));
                }
                break;
            }
        }
    }
    out
}

/// A line without its `//` comment, string literals and `'{'` / `'}'` character literals.
fn strip_literals(line: &str) -> String {
    let line = line.replace("'{'", "' '").replace("'}'", "' '");
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Functions stay under 80 lines in the crates and the binary (house style); the tests may run
/// longer. Python's are checked by training/tests/test_function_length.py.
#[test]
fn no_function_in_the_crates_runs_over_80_lines() {
    let long: Vec<String> = tracked()
        .into_iter()
        .filter(|(p, _)| p.ends_with(".rs") && (p.starts_with("crates/") || p.starts_with("src/")))
        .flat_map(|(p, _)| {
            let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&p)).unwrap_or_default();
            function_lengths(&src)
                .into_iter()
                .filter(|(_, _, n)| *n > 80)
                .map(move |(f, l, n)| format!("{p}:{l} {f}: {n}"))
        })
        .collect();
    assert!(long.is_empty(), "functions over 80 lines:\n{}", long.join("\n"));
    // The scanner itself: a 3-line function, braces in strings and comments not counted.
    let probe = "pub async fn f() {\n    let s = \"{{\"; // }\n}\nfn g();\n";
    assert_eq!(function_lengths(probe), vec![("f".to_string(), 1, 3)]);
    let long = format!("fn h() {{\n{}}}\n", "    let _ = '}';\n".repeat(79));
    assert_eq!(function_lengths(&long), vec![("h".to_string(), 1, 81)]);
}
