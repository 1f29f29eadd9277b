//! The crate's module layering, read from its `crate::` paths: public
//! handles → the subscriptions engine → the vocabulary callbacks are typed
//! in → low-level machinery, with no cycle apart from the two edges named
//! in `BACK_EDGES`; and each type's `impl`s in the file that defines it.
//! `DESIGN.md` ("Module layering") gives the reasons.
//!
//! Only code counts: comments (so intra-doc links) and `#[cfg(test)]` items
//! and files are skipped, because they do not make the build depend on the
//! module they name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use modules of its own layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "low-level",
        &[
            "sync",
            "error",
            "event",
            "seq",
            "seq_word",
            "warn",
            "interval_btree",
            "rcu",
            "fork",
            "lockdep",
            "context",
        ],
    ),
    (
        "vocabulary (what callbacks are typed in)",
        &["mm", "range", "ops", "observer"],
    ),
    ("engine", &["subscriptions"]),
    (
        "public handles and entry points",
        &[
            "notifier",
            "interval_node",
            "interval_notifier",
            "invalidation",
            "notify",
            "driver_lock",
        ],
    ),
];

/// The only edges allowed to point up a layer or to close a cycle.
const BACK_EDGES: &[(&str, &str, &str)] = &[
    (
        "mm",
        "subscriptions",
        "`Mm` holds its `Subscriptions` (mm_struct's notifier_subscriptions pointer)",
    ),
    (
        "rcu",
        "fork",
        "the global SRCU domain installs fork's atfork handlers when readers first can exist",
    ),
];

/// Types whose impls are still split over files (shrink only: the test
/// fails when one of them gets fixed and stays listed).
const SPLIT_IMPLS: &[&str] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

struct Crate {
    /// Top-level module → the code of its files, comments and test items removed.
    code: BTreeMap<String, Vec<(PathBuf, String)>>,
    /// Names `lib.rs` re-exports at the root → their module.
    reexports: BTreeMap<String, String>,
}

fn read_crate() -> Crate {
    let root = src_dir();
    let mut files = Vec::new();
    collect_rs(&root, &mut files);
    let mut stripped: Vec<(PathBuf, String)> = Vec::new();
    let mut test_files = BTreeSet::new();
    for path in &files {
        let (code, tests) = strip(&fs::read_to_string(path).unwrap());
        for name in tests {
            test_files.insert(child_file(path, &name));
        }
        stripped.push((path.clone(), code));
    }
    let mut code: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    let mut reexports = BTreeMap::new();
    for (path, text) in stripped {
        let rel = path.strip_prefix(&root).unwrap();
        if rel == Path::new("lib.rs") {
            reexports = parse_reexports(&text);
            continue;
        }
        if test_files.contains(&path) {
            continue;
        }
        let first = rel.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        code.entry(module).or_default().push((path, text));
    }
    Crate { code, reexports }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file `mod name;` in `parent` loads.
fn child_file(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.parent().unwrap();
    let stem = parent.file_stem().unwrap();
    let base = if stem == "mod" || stem == "lib" {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    let file = base.join(format!("{name}.rs"));
    if file.exists() {
        file
    } else {
        base.join(name).join("mod.rs")
    }
}

/// `src` without comments and `#[cfg(test)]` modules, and the names of the
/// `#[cfg(test)] mod name;` files it declares.
fn strip(src: &str) -> (String, Vec<String>) {
    let no_comments = strip_comments(src);
    let mut out = String::new();
    let mut test_mods = Vec::new();
    let mut lines = no_comments.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        let is_test_cfg = trimmed.starts_with("#[cfg(") && mentions_test(trimmed);
        let next_is_mod = lines
            .peek()
            .is_some_and(|next| next.trim_start().starts_with("mod "));
        if !(is_test_cfg && next_is_mod) {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let decl = lines.next().unwrap().trim();
        let name = decl["mod ".len()..]
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap();
        if decl.ends_with(';') {
            test_mods.push(name.to_owned());
            continue;
        }
        let mut depth = brace_delta(decl);
        while depth > 0 {
            depth += brace_delta(lines.next().expect("unclosed test module"));
        }
    }
    (out, test_mods)
}

fn mentions_test(attribute: &str) -> bool {
    attribute
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|word| word == "test")
}

fn brace_delta(line: &str) -> i32 {
    line.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// Removes `//` and `/* */` comments, keeping string literals intact.
fn strip_comments(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let rest = &src[i..];
        if in_string {
            if rest.starts_with("\\") && i + 1 < bytes.len() {
                out.push_str(&rest[..2.min(rest.len())]);
                i += 2;
                continue;
            }
            if rest.starts_with('"') {
                in_string = false;
            }
        } else if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
            continue;
        } else if rest.starts_with('"') && !src[..i].ends_with('\'') {
            in_string = true;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// `pub use module::{A, B};` and `pub use module::A;` lines of `lib.rs`.
fn parse_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let (module, names) = path.split_once("::").unwrap();
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    map
}

/// The first path segments after each `crate::` in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').expect("unclosed use group")];
            for item in group.split(',') {
                names.push(first_segment(item));
            }
        } else {
            names.push(first_segment(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// module → the modules its code names.
fn module_graph(krate: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, files) in &krate.code {
        let targets: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
        for (path, code) in files {
            for name in crate_paths(code) {
                let target = if krate.code.contains_key(&name) {
                    name
                } else {
                    krate.reexports.get(&name).cloned().unwrap_or_else(|| {
                        panic!(
                            "{}: `crate::{name}` is neither a module nor a root re-export",
                            path.display()
                        )
                    })
                };
                if &target != module {
                    targets.insert(target);
                }
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, members)| members.contains(&module))
}

fn is_back_edge(from: &str, to: &str) -> bool {
    BACK_EDGES.iter().any(|&(f, t, _)| f == from && t == to)
}

fn format_graph(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    graph
        .iter()
        .map(|(m, ts)| {
            format!(
                "  {m} -> {}\n",
                ts.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

#[test]
fn every_module_sits_in_one_layer() {
    let krate = read_crate();
    let unplaced: Vec<_> = krate
        .code
        .keys()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS: {unplaced:?}"
    );
    let stale: Vec<_> = LAYERS
        .iter()
        .flat_map(|(_, members)| members.iter())
        .filter(|m| !krate.code.contains_key(**m))
        .collect();
    assert!(
        stale.is_empty(),
        "LAYERS names modules that do not exist: {stale:?}"
    );
}

#[test]
fn modules_depend_only_downward() {
    let graph = module_graph(&read_crate());
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for to in targets {
            let (Some(lf), Some(lt)) = (layer_of(from), layer_of(to)) else {
                continue;
            };
            if lt > lf && !is_back_edge(from, to) {
                upward.push(format!(
                    "{from} ({}) -> {to} ({})",
                    LAYERS[lf].0, LAYERS[lt].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "upward dependencies:\n{}\nthe graph:\n{}",
        upward.join("\n"),
        format_graph(&graph)
    );
}

#[test]
fn no_import_cycle_apart_from_the_named_back_edges() {
    let mut graph = module_graph(&read_crate());
    for (from, to, _) in BACK_EDGES {
        let present = graph.get_mut(*from).is_some_and(|ts| ts.remove(*to));
        assert!(
            present,
            "back edge {from} -> {to} no longer exists: drop it from BACK_EDGES"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle: {}\nthe graph:\n{}",
            cycle.join(" -> "),
            format_graph(&graph)
        );
    }
}

/// A cycle of `graph` as its modules (first repeated last), if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn each_impl_lives_in_the_file_that_defines_its_type() {
    let krate = read_crate();
    let mut defined: BTreeMap<String, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut impls: BTreeMap<String, BTreeSet<PathBuf>> = BTreeMap::new();
    for (path, code) in krate.code.values().flatten() {
        for line in code.lines() {
            if let Some(name) = defined_type(line) {
                defined.entry(name).or_default().insert(path.clone());
            }
            if let Some(name) = impl_target(line) {
                impls.entry(name).or_default().insert(path.clone());
            }
        }
    }
    let mut split = BTreeSet::new();
    for (name, files) in &impls {
        // Types defined in several files are cfg alternatives (sync
        // backends) or private namesakes; each file's impl is its own.
        let Some(homes) = defined.get(name).filter(|h| h.len() == 1) else {
            continue;
        };
        if files.iter().any(|f| !homes.contains(f)) {
            split.insert(name.as_str());
        }
    }
    let known: BTreeSet<&str> = SPLIT_IMPLS.iter().copied().collect();
    assert_eq!(split, known, "types with an impl outside their file");
}

fn defined_type(line: &str) -> Option<String> {
    let line = line.trim_start();
    let line = line
        .strip_prefix("pub(crate) ")
        .or_else(|| line.strip_prefix("pub(super) "))
        .or_else(|| line.strip_prefix("pub "))
        .unwrap_or(line);
    let rest = line
        .strip_prefix("struct ")
        .or_else(|| line.strip_prefix("enum "))?;
    Some(first_segment(rest))
}

/// The type an `impl` line is for (inherent or trait impl).
fn impl_target(line: &str) -> Option<String> {
    let line = line.strip_prefix("unsafe ").unwrap_or(line);
    let rest = line.strip_prefix("impl")?;
    if !(rest.starts_with(' ') || rest.starts_with('<')) {
        return None;
    }
    let rest = if rest.starts_with('<') {
        skip_generics(rest)
    } else {
        rest
    };
    let rest = rest.split_once(" for ").map_or(rest, |(_, ty)| ty);
    Some(first_segment(rest.trim_start_matches(['&', ' '])))
}

/// `rest` after its leading `<…>`.
fn skip_generics(rest: &str) -> &str {
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => {
                depth -= 1;
                if depth == 0 {
                    return &rest[i + 1..];
                }
            }
            _ => {}
        }
    }
    rest
}
