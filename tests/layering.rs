//! The floor plan of `src/` (the "Layout" of `src/lib.rs`) stays true: every `crate::…`
//! path of every file names a module of its own layer or of a layer below, features do not
//! import each other, and no two modules import each other. Test modules (`#[cfg(test)]`,
//! at the end of a file) and comments are not imports and are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of every top-level module of `src/`, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    // Plain shared data and pure logic: serde, no I/O.
    (
        "shared",
        &[
            "alert_event",
            "alert_rule",
            "backoff",
            "cloud",
            "codec",
            "lease",
            "messages",
            "reports",
            "shadow",
            "telemetry",
            "topics",
            "users",
        ],
    ),
    ("config", &["config", "certs", "logging"]),
    (
        "infrastructure",
        &[
            "audit",
            "auth",
            "batch",
            "health",
            "login_backoff",
            "metrics",
            "outbox",
            "status",
            "store",
            "systemd",
            "verifier",
        ],
    ),
    ("broker", &["broker"]),
    (
        "features",
        &[
            "alerts",
            "bridge",
            "http",
            "ingest",
            "reload",
            "service",
            "status_page",
            "system",
            "uplink",
        ],
    ),
    ("wiring", &["admin", "gateway"]),
];

/// Modules of the features layer that belong to one feature (they may import each other).
const FEATURE_PARTS: &[(&str, &str)] = &[("status_page", "http")];

/// The crate-relative paths a file imports: the first segment after `crate::`, also
/// inside a `use crate::{…}` group over several lines.
fn imports(source: &str) -> BTreeSet<String> {
    let code: String = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default()
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let (items, after) = top_level_items(group);
                found.extend(items.iter().map(|item| first_segment(item.trim())));
                rest = after;
            }
            None => {
                found.insert(first_segment(rest));
            }
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

/// The comma-separated items of a `{…}` group (nested groups kept whole), and the text
/// after its closing brace.
fn top_level_items(group: &str) -> (Vec<&str>, &str) {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return (items, &group[i + 1..]);
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    (items, "")
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module → the other top-level modules its files import.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let Some(module) = module_of(relative) else {
            continue;
        };
        let source = std::fs::read_to_string(&file).expect("read a source file");
        let used = graph.entry(module.clone()).or_default();
        used.extend(imports(&source).into_iter().filter(|m| *m != module));
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn feature_of(module: &str) -> &str {
    FEATURE_PARTS
        .iter()
        .find(|(part, _)| *part == module)
        .map_or(module, |(_, feature)| feature)
}

#[test]
fn every_module_has_a_layer() {
    let graph = import_graph();
    let missing: Vec<_> = graph.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules missing from LAYERS: {missing:?}"
    );
}

#[test]
fn imports_run_downward_only() {
    let graph = import_graph();
    let features = layer_of("service").expect("the features layer");
    let mut upward = Vec::new();
    let mut across = BTreeSet::new();
    for (module, used) in &graph {
        let Some(layer) = layer_of(module) else {
            continue;
        };
        for target in used {
            let Some(target_layer) = layer_of(target) else {
                continue;
            };
            if target_layer > layer {
                upward.push(format!(
                    "{module} ({}) imports {target} ({})",
                    LAYERS[layer].0, LAYERS[target_layer].0
                ));
            } else if layer == features
                && target_layer == features
                && feature_of(module) != feature_of(target)
            {
                across.insert((module.as_str(), target.as_str()));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    assert!(
        across.is_empty(),
        "features importing each other: {across:?}"
    );
}

#[test]
fn no_import_cycle() {
    let graph = import_graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            cycles.push(format!("{} -> {module}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for target in graph.get(module).into_iter().flatten() {
            visit(target, graph, path, done, cycles);
        }
        path.pop();
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_parser_sees_every_form_of_import() {
    let source =
        "use crate::a::B;\nuse crate::{c, d::E};\nuse crate::{\n    i::{J, K},\n    l,\n};\n\
                  fn f() { crate::g::h(); } // crate::comment\n\
                  #[cfg(test)]\nmod tests {\n    use crate::in_test;\n}\n";
    let found: Vec<_> = imports(source).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "g", "i", "l"]);
}
