//! Dependencies point one way (docs/architecture.md):
//! kiln-core (api, domain) <- provider/executor <- dereference <- retention
//! <- controller <- cli. The crate boundary keeps kiln-core free of I/O; this
//! test keeps the modules of the `kiln` crate in their layers.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The kiln modules each module may import (kiln-core's re-exports, `api`,
/// `conditions`, `image_build` and `reasons`, are open to all).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("child", &[][..]),
        ("metrics", &[][..]),
        ("crdgen", &[][..]),
        ("validate", &["crdgen"][..]),
        ("packer", &["child"][..]),
        ("provider", &[][..]),
        ("executor", &["packer", "child"][..]),
        ("dereference", &["provider", "executor"][..]),
        ("retention", &["dereference", "provider"][..]),
        ("server", &["metrics"][..]),
        (
            "controller",
            &[
                "child",
                "metrics",
                "crdgen",
                "packer",
                "provider",
                "executor",
                "dereference",
                "retention",
                "server",
            ][..],
        ),
        (
            "cli",
            &[
                "child",
                "metrics",
                "crdgen",
                "validate",
                "packer",
                "provider",
                "executor",
                "dereference",
                "retention",
                "server",
                "controller",
            ][..],
        ),
    ])
}

const CORE: &[&str] = &["api", "conditions", "image_build", "reasons"];

/// The first path segment of every `crate::` path in `text`, including those
/// inside `use crate::{a::.., b, c::{..}}` groups.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut at_item = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && at_item && (c.is_alphanumeric() || c == '_') {
                    ident.push(c);
                } else if !ident.is_empty() {
                    out.insert(std::mem::take(&mut ident));
                    at_item = false;
                }
                if depth == 1 && c == ',' {
                    at_item = true;
                }
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(ident);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn kiln_modules_import_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let allowed = allowed();
    let mut broken = Vec::new();
    for path in all {
        let rel = path.strip_prefix(&src).expect("under src/");
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_owned())
            .expect("a module");
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push(format!("{module}: not in the layer map of tests/layers.rs"));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("readable source");
        for import in imports(&text) {
            let ok = import == module
                || CORE.contains(&import.as_str())
                || import == "install_crypto_provider"
                || may.contains(&import.as_str());
            if !ok {
                broken.push(format!("{}: imports crate::{import}", rel.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layering:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_grouped_and_nested_paths() {
    let found = imports(
        "use crate::{\n    api::X,\n    retention::{self, Y},\n    provider,\n};\nlet x = crate::metrics::M;",
    );
    assert_eq!(
        found,
        ["api", "metrics", "provider", "retention"]
            .map(String::from)
            .into()
    );
}

/// kiln-core is the pure core: nothing in its dependency tree talks to a
/// network, an apiserver or a cloud.
#[test]
fn kiln_core_depends_on_no_client() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "kiln-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let forbidden = [
        "kube-client ",
        "kube-runtime ",
        "hyper ",
        "reqwest ",
        "tokio ",
        "aws-",
    ];
    let found: Vec<&str> = tree
        .lines()
        .filter(|l| forbidden.iter().any(|f| l.starts_with(f)))
        .collect();
    assert!(found.is_empty(), "kiln-core pulls in I/O crates: {found:?}");
}
