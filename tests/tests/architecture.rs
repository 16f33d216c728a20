//! The dependency rules of ARCHITECTURE.md, checked over `cargo metadata` and the sources.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Package name -> names of its normal and build dependencies (dev-dependencies left out: a
/// test may use anything).
type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph_of(metadata: &Value) -> Graph {
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let mut graph = Graph::new();
    for node in metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
    {
        let name = names[node["id"].as_str().expect("node id")].to_string();
        let deps = graph.entry(name).or_default();
        for dep in node["deps"].as_array().expect("deps") {
            let kinds = dep["dep_kinds"].as_array().expect("dep_kinds");
            if kinds.iter().any(|k| k["kind"].as_str() != Some("dev")) {
                deps.insert(names[dep["pkg"].as_str().expect("pkg")].to_string());
            }
        }
    }
    graph
}

fn closure(graph: &Graph, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

/// Every broken rule, one line each.
fn violations(graph: &Graph, members: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let daemon = closure(graph, "storaged");
    if daemon.contains("crypto") {
        found.push("storaged depends on crypto: the server could open chunks".to_string());
    }
    for client_side in ["client", "keystore"] {
        if daemon.contains(client_side) {
            found.push(format!(
                "storaged depends on {client_side}: key files and client logins belong to \
                 vault-admin and vaultfs"
            ));
        }
    }
    for (external, owner) in [
        ("fuser", "vaultfs"),
        ("mongodb", "storaged"),
        ("rusqlite", "storaged"),
    ] {
        for member in members.iter().filter(|m| **m != owner) {
            if graph
                .get(*member)
                .is_some_and(|deps| deps.contains(external))
            {
                found.push(format!("{member} depends on {external}; only {owner} may"));
            }
        }
    }
    for pure in ["format", "identity", "crypto"] {
        let deps = closure(graph, pure);
        for io in ["tokio", "tonic", "fuser", "mongodb", "rusqlite", "proto"] {
            if deps.contains(io) {
                found.push(format!("{pure} must stay pure but depends on {io}"));
            }
        }
    }
    found
}

fn workspace_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &host_triple(),
        ])
        .current_dir(tests::workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// The platform the tests run on: only its dependencies matter (and are downloaded).
fn host_triple() -> String {
    format!(
        "{}-unknown-{}-gnu",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

fn member_names(metadata: &Value) -> Vec<String> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|id| id.as_str().expect("member id"))
        .collect();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| members.contains(p["id"].as_str().expect("id")))
        .map(|p| p["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn dependency_rules_hold() {
    let metadata = workspace_metadata();
    let members = member_names(&metadata);
    for expected in [
        "format", "identity", "crypto", "proto", "vaultfs", "storaged", "admin", "vmctl", "netctl",
    ] {
        assert!(
            members.iter().any(|m| m == expected),
            "workspace member {expected} is missing"
        );
    }
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let found = violations(&graph_of(&metadata), &members);
    assert!(
        found.is_empty(),
        "ARCHITECTURE.md rules broken:\n{}",
        found.join("\n")
    );
}

/// Binaries share one target directory: two with one name would overwrite each other (a
/// benchmark named `storaged` once replaced the daemon and started itself recursively).
#[test]
fn binary_names_are_unique() {
    let metadata = workspace_metadata();
    let mut seen = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        for target in package["targets"].as_array().expect("targets") {
            let is_bin = target["kind"]
                .as_array()
                .expect("kind")
                .iter()
                .any(|k| k == "bin");
            if !is_bin {
                continue;
            }
            let name = target["name"].as_str().expect("name").to_string();
            let owner = package["name"].as_str().expect("package").to_string();
            if let Some(other) = seen.insert(name.clone(), owner.clone()) {
                panic!("binary {name} is built by both {other} and {owner}");
            }
        }
    }
    assert!(seen.contains_key("storaged") && seen.contains_key("vaultfs"));
}

/// The checker itself finds each kind of violation, so that the test above can fail.
#[test]
fn checker_finds_broken_rules() {
    let mut graph = Graph::new();
    let mut add = |from: &str, to: &str| {
        graph
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string());
    };
    add("storaged", "helper");
    add("helper", "crypto");
    add("helper", "keystore");
    add("netctl", "fuser");
    add("vmctl", "mongodb");
    add("crypto", "tokio");
    let found = violations(&graph, &["storaged", "netctl", "vmctl", "crypto", "helper"]);
    assert_eq!(found.len(), 5, "{found:#?}");
}

/// Within storaged, only the backend modules name their database crates.
#[test]
fn database_crates_stay_in_their_backends() {
    let root = tests::workspace_root();
    for (krate, allowed) in [("mongodb", "meta/mongo"), ("rusqlite", "meta/sqlite")] {
        for file in rust_files(&root.join("storaged/src")) {
            let relative = file
                .strip_prefix(root.join("storaged/src"))
                .expect("under src");
            if relative.to_string_lossy().starts_with(allowed) {
                continue;
            }
            let text = fs::read_to_string(&file).expect("source is readable");
            assert!(
                !text.contains(&format!("{krate}::")),
                "{} names {krate}; only storaged/src/{allowed}* may",
                file.display()
            );
        }
    }
}

/// The pure crates do no I/O of their own.
#[test]
fn pure_crates_do_no_io() {
    let root = tests::workspace_root();
    for krate in ["format", "identity", "crypto"] {
        for file in rust_files(&root.join(krate).join("src")) {
            let text = fs::read_to_string(&file).expect("source is readable");
            for io in ["std::fs", "std::net", "std::process", "tokio"] {
                assert!(!text.contains(io), "{} uses {io}", file.display());
            }
        }
    }
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Invariant 11: the types that hold private key bytes zeroize them on drop. The compiler
/// checks it: a type that stops doing so no longer satisfies `ZeroizeOnDrop`.
#[test]
fn private_key_bytes_are_zeroized_on_drop() {
    fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroizes_on_drop::<crypto::DataKey>();
    zeroizes_on_drop::<crypto::ChunkCipher>();
    zeroizes_on_drop::<identity::Identity>();
    zeroizes_on_drop::<keystore::Passphrase>();
}
/// Source files read in one sitting (tests excepted) and functions fit on a screen.
const FILE_LINES_MAX: usize = 700;
const FUNCTION_LINES_MAX: usize = 80;

#[test]
fn sources_and_functions_stay_small() {
    let root = tests::workspace_root();
    let mut found = Vec::new();
    for file in workspace_sources(&root) {
        let relative = file
            .strip_prefix(&root)
            .expect("under the root")
            .to_path_buf();
        let text = fs::read_to_string(&file).expect("source is readable");
        let in_tests = relative.components().any(|c| c.as_os_str() == "tests");
        let lines = text.lines().count();
        if !in_tests && lines > FILE_LINES_MAX {
            found.push(format!("{}: {lines} lines", relative.display()));
        }
        for (line, name, length) in long_functions(&text, FUNCTION_LINES_MAX) {
            found.push(format!(
                "{}:{line}: fn {name} is {length} lines",
                relative.display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "over {FILE_LINES_MAX} lines a file (outside tests) or {FUNCTION_LINES_MAX} a \
         function:\n{}",
        found.join("\n")
    );
}

/// The measure itself finds a long function and passes over braces in strings, characters and
/// comments, so that the test above can fail.
#[test]
fn function_lengths_are_measured_from_fn_to_its_closing_brace() {
    let body: String = (0..79)
        .map(|i| format!("    let _x{i} = '{{';\n"))
        .collect();
    let text = format!(
        "trait T {{\n    fn declared(&self);\n}}\n\npub(crate) async fn long() {{\n{body}}}\n\n\
         fn short() {{\n    let s = \"}}}}\"; // }}\n    /* }} */\n}}\n"
    );
    assert_eq!(long_functions(&text, 80), vec![(5, "long".to_string(), 81)]);
    assert_eq!(long_functions(&text, 81), vec![]);
}

/// Every `.rs` file of the workspace's crates (not the build output or other checkouts).
fn workspace_sources(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).expect("workspace root").flatten() {
        let path = entry.path();
        if path.join("Cargo.toml").is_file() {
            out.extend(rust_files(&path));
        }
    }
    out
}

/// (first line, name, lines) of each function longer than `max` lines in `text`, counting
/// from the line of `fn` to the line of its closing brace.
fn long_functions(text: &str, max: usize) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        if let Some(end) = closing_line(&lines[index..])
            && end + 1 > max
        {
            found.push((index + 1, name, end + 1));
        }
    }
    found
}

/// The name of the function a line starts to define, if it does.
fn function_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    for qualifier in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let name: String = rest
        .strip_prefix("fn ")?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The offset of the line whose `}` closes the body opened after the first line's `fn`, or
/// `None` for a declaration without a body.
fn closing_line(lines: &[&str]) -> Option<usize> {
    let mut depth = 0usize;
    let mut opened = false;
    let mut in_string = false;
    let mut block_comments = 0usize;
    for (offset, line) in lines.iter().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let (c, next) = (chars[i], chars.get(i + 1).copied());
            if block_comments > 0 {
                match (c, next) {
                    ('*', Some('/')) => (block_comments -= 1, i += 1).1,
                    ('/', Some('*')) => (block_comments += 1, i += 1).1,
                    _ => {}
                }
            } else if in_string {
                match c {
                    '\\' => i += 1,
                    '"' => in_string = false,
                    _ => {}
                }
            } else {
                match (c, next) {
                    ('/', Some('/')) => break,
                    ('/', Some('*')) => (block_comments += 1, i += 1).1,
                    ('"', _) => in_string = true,
                    ('\'', Some('\\')) => i += chars[i + 2..].iter().position(|&c| c == '\'')? + 2,
                    ('\'', _) if chars.get(i + 2) == Some(&'\'') => i += 2,
                    (';', _) if !opened => return None,
                    ('{', _) => (depth += 1, opened = true).1,
                    ('}', _) => {
                        depth = depth.checked_sub(1)?;
                        if opened && depth == 0 {
                            return Some(offset);
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
    }
    None
}

/// ARCHITECTURE.md: each invariant is at most four lines and ends with the tests that check it
/// (in `*...*`), and every test it names exists.
#[test]
fn every_invariant_names_tests_that_exist() {
    let root = tests::workspace_root();
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let invariants = text
        .split("## Invariants")
        .nth(1)
        .expect("an Invariants section");
    let sources: String = workspace_sources(&root)
        .iter()
        .map(|file| fs::read_to_string(file).expect("source is readable"))
        .collect();
    let mut items: Vec<Vec<&str>> = Vec::new();
    for line in invariants.lines() {
        let starts_item = line.split_once(". ").is_some_and(|(number, _)| {
            !number.is_empty() && number.chars().all(|c| c.is_ascii_digit())
        });
        if starts_item {
            items.push(vec![line]);
        } else if let Some(item) = items.last_mut().filter(|_| !line.trim().is_empty()) {
            item.push(line);
        }
    }
    assert!(items.len() >= 19, "{} invariants found", items.len());
    for item in &items {
        let head = item[0];
        assert!(item.len() <= 4, "longer than four lines: {head}");
        let joined = item.join(" ");
        let tests = joined.rsplit_once(" *").map(|(_, tests)| tests);
        let tests = tests.filter(|t| t.ends_with('*')).unwrap_or_else(|| {
            panic!("names no test (in *...* at its end): {head}");
        });
        let names: Vec<&str> = tests.split('`').skip(1).step_by(2).collect();
        let functions = names.iter().filter(|n| !n.contains(['.', '/', ' ']));
        for name in functions {
            assert!(
                sources.contains(&format!("fn {name}(")),
                "`{name}` of invariant `{head}` is no function in the workspace"
            );
        }
    }
}
