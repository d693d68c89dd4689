//! `make -C schemas validate` and `sync` as `make test` runs them: the real schemas pass,
//! a broken `.proto` or `.avsc` fails naming the file, a stale ConfigMap fails the check.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of `schemas/` (Makefile included) and of the committed ConfigMap in a scratch
/// folder, removed on drop.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let root = std::env::temp_dir().join(support::unique_name("schemas"));
        let repo = support::repo_root();
        for folder in ["schemas", "schemas/avro", "schemas/proto", "deploy/k8s"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
            for entry in std::fs::read_dir(repo.join(folder)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    std::fs::copy(&path, root.join(folder).join(path.file_name().unwrap()))
                        .unwrap();
                }
            }
        }
        Self { root }
    }

    fn schemas(&self) -> PathBuf {
        self.root.join("schemas")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `make -C dir target` with the built schema_tool; returns success and the output.
fn make(dir: &Path, target: &str, ci: bool) -> (bool, String) {
    let mut command = Command::new("make");
    command
        .arg("--no-print-directory")
        .arg("-C")
        .arg(dir)
        .arg(target)
        // Quoted for the recipe's shell: the checkout's path may hold a space.
        .arg(format!(
            "TOOL='{}'",
            env!("CARGO_BIN_EXE_schema_tool").replace('\'', r"'\''")
        ))
        .env_remove("CI");
    if ci {
        command.env("CI", "true");
    }
    let output = command.output().expect("make runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_repository_schemas_validate_and_the_configmap_is_current() {
    let schemas = support::repo_root().join("schemas");
    let (ok, output) = make(&schemas, "validate", false);
    assert!(ok, "{output}");
    assert!(output.contains("ok ./proto/user_event.proto"), "{output}");
    let (ok, output) = make(&schemas, "sync", true);
    assert!(ok, "the committed ConfigMap is stale:\n{output}");
}

#[test]
fn a_broken_proto_fails_validation_naming_the_file() {
    let scratch = Scratch::new();
    let proto = scratch.schemas().join("proto/user_event.proto");
    let text = std::fs::read_to_string(&proto).unwrap();
    std::fs::write(
        &proto,
        text.replace("string user_id = 3;", "Strng user_id = 3;"),
    )
    .unwrap();
    let (ok, output) = make(&scratch.schemas(), "validate", false);
    assert!(!ok, "a broken .proto passed:\n{output}");
    assert!(output.contains("user_event.proto"), "{output}");
}

#[test]
fn a_broken_avsc_fails_validation_naming_the_file() {
    let scratch = Scratch::new();
    let avsc = scratch.schemas().join("avro/sum_result.avsc");
    let text = std::fs::read_to_string(&avsc).unwrap();
    std::fs::write(&avsc, text.replace("\"long\"", "\"lnog\"")).unwrap();
    let (ok, output) = make(&scratch.schemas(), "validate", false);
    assert!(!ok, "a broken .avsc passed:\n{output}");
    assert!(output.contains("sum_result.avsc"), "{output}");
}

#[test]
fn a_changed_schema_makes_the_committed_configmap_stale_in_ci() {
    let scratch = Scratch::new();
    let avsc = scratch.schemas().join("avro/integer_list.avsc");
    let text = std::fs::read_to_string(&avsc).unwrap();
    std::fs::write(&avsc, text.replace("a list of integers", "integers")).unwrap();
    let (ok, output) = make(&scratch.schemas(), "sync", true);
    assert!(!ok, "a stale ConfigMap passed in CI:\n{output}");
    assert!(output.contains("is stale"), "{output}");
    // Outside CI, sync rewrites it; then the check passes.
    let (ok, output) = make(&scratch.schemas(), "sync", false);
    assert!(ok, "{output}");
    let (ok, output) = make(&scratch.schemas(), "sync", true);
    assert!(ok, "{output}");
}
