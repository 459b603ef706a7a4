//! `kiln demo --once` (what `make demo ARGS=--once` runs) does the main job
//! end to end and prints the result.

use std::process::Command;

#[test]
fn demo_once_builds_prunes_and_prints_the_view() {
    let state = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["demo", "--once", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("run kiln demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("demo: 4 builds Ready, 4 AMIs pruned"),
        "{stdout}"
    );
    // The apiserver's view of both kinds, with an AMI ID and the prune count.
    let build_row = stdout
        .lines()
        .find(|l| l.starts_with("base-ami "))
        .unwrap_or_else(|| panic!("no ImageBuild row:\n{stdout}"));
    assert!(
        build_row.contains("True") && build_row.contains("ami-"),
        "{build_row}"
    );
    let policy_row = stdout
        .lines()
        .find(|l| l.starts_with("base-ami-retention"))
        .unwrap_or_else(|| panic!("no ImagePolicy row:\n{stdout}"));
    let cells: Vec<&str> = policy_row.split_whitespace().collect();
    assert_eq!(cells.get(5), Some(&"4"), "DELETED column: {policy_row}");
    // What was pruned, and what remains: two AMIs per region.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("beyond keepLast 2"))
            .count(),
        4,
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .rposition(|l| l.starts_with("REGION") && l.contains("NAME"))
        .expect("the AMI table");
    let remaining = lines[header + 1..]
        .iter()
        .filter(|l| l.contains(" ami-"))
        .count();
    assert_eq!(remaining, 4, "two AMIs remain per region:\n{stdout}");
    assert!(
        stderr.contains("==> starting a local control plane"),
        "progress goes to stderr"
    );
}
