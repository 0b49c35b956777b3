//! Every config shipped under `cluster-configs/` passes `pgquorum check-config`, and
//! the three-host files describe one cluster (the same members everywhere).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

fn shipped(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cluster-configs")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_configs_check() {
    if !Path::new("/usr/lib/postgresql").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI without PostgreSQL");
        return;
    }
    let files: Vec<PathBuf> = ["local-3node", "three-hosts"]
        .iter()
        .flat_map(|d| shipped(d))
        .collect();
    assert_eq!(files.len(), 7, "{files:?}");
    for f in &files {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn three_host_files_agree_on_the_members() {
    let members = |f: &Path| -> toml::Value {
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        assert!(
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                .count()
                <= 20,
            "{} should stay short",
            f.display()
        );
        doc["initial_cluster"].clone()
    };
    let files = shipped("three-hosts");
    let first = members(&files[0]);
    for f in &files[1..] {
        assert_eq!(members(f), first, "{}", f.display());
    }
}
