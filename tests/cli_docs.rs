//! `pgquorum completions SHELL` and `pgquorum man` come from the clap definitions:
//! every command is in them, and bash accepts the completion script.

mod common;

use std::process::Command;

use common::BIN;

fn stdout(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_page_has_every_command_and_its_options() {
    let man = stdout(&["man"]);
    for section in [
        ".TH pgquorum 1",
        ".TH pgquorum-node 1",
        ".TH pgquorum-demo 1",
        ".TH pgquorum-ctl-switchover 1",
        ".TH pgquorum-ctl-kv-put 1",
    ] {
        assert!(man.contains(section), "no {section}");
    }
    assert!(
        man.contains("scheduled"),
        "switchover's options are documented"
    );
    assert!(
        !man.contains("pg-guard"),
        "the internal command stays hidden"
    );
}

#[test]
fn completion_scripts_load() {
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("pgquorum.bash");
    std::fs::write(&bash, stdout(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p pgquorum", bash.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pgquorum"));
    for shell in ["zsh", "fish"] {
        assert!(
            stdout(&["completions", shell]).contains("switchover"),
            "{shell}"
        );
    }
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
