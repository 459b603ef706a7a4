//! The committed CRD YAML (kustomize's `crds/` and the chart's) is exactly
//! what the code generates.

use std::path::Path;

#[test]
fn committed_crds_match_the_generated_ones() {
    check(Path::new("crds"));
}

#[test]
fn chart_crds_match_the_generated_ones() {
    check(Path::new("charts/kiln/crds"));
}

fn check(relative: &Path) {
    let shown = relative.display();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let mut expected_files = Vec::new();
    for crd in kiln::crdgen::crds() {
        let name = kiln::crdgen::file_name(&crd);
        let generated = kiln::crdgen::to_yaml(&crd).expect("CRD serializes");
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("{shown}/{name} is missing ({e}); run `make crds` and commit it")
        });
        assert!(
            committed == generated,
            "{shown}/{name} differs from what the code generates; run `make crds` and commit the result"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "{shown} holds exactly the generated CRDs; remove stale files"
    );
}
