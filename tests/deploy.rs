//! docker-compose.yml and the Dockerfile agree with the code (Docker itself is not
//! available where this suite runs): every program a service runs is built into the image
//! and accepts the service's command line and environment; every variable set for a
//! program is one it reads; no program service publishes a port it does not listen on.

mod support;

use seckill_kafka::config::{key_of_env_var, program_reads, PROGRAM_SECTIONS};
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use support::Program;

const IMAGE: &str = "seckill-kafka:latest";

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(support::repo_root().join(name)).unwrap()
}

fn compose() -> Value {
    let mut compose: Value = serde_yaml::from_str(&repo_file("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    compose
}

/// Services that run one of our programs: name -> (command, environment).
fn program_services(compose: &Value) -> BTreeMap<String, (Vec<String>, BTreeMap<String, String>)> {
    let mut services = BTreeMap::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        if service["image"].as_str() != Some(IMAGE) {
            continue;
        }
        let command: Vec<String> = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name:?}: command as a list"))
            .iter()
            .map(|part| part.as_str().unwrap().to_string())
            .collect();
        let environment = service["environment"]
            .as_mapping()
            .map(|env| {
                env.iter()
                    .map(|(k, v)| {
                        let value = match v {
                            Value::String(s) => s.clone(),
                            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                        };
                        (k.as_str().unwrap().to_string(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        services.insert(name.as_str().unwrap().to_string(), (command, environment));
    }
    services
}

fn cargo_binaries() -> Vec<String> {
    let manifest = repo_file("Cargo.toml");
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            section
                .lines()
                .find_map(|line| line.trim().strip_prefix("name = "))
                .map(|name| name.trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn every_program_service_runs_a_built_program_that_accepts_its_command_and_environment() {
    let compose = compose();
    let services = program_services(&compose);
    let programs: Vec<&str> = PROGRAM_SECTIONS.iter().map(|(name, _)| *name).collect();
    let ran: std::collections::BTreeSet<&str> = services
        .values()
        .map(|(command, _)| command[0].as_str())
        .collect();
    assert_eq!(
        ran.into_iter().collect::<Vec<_>>(),
        {
            let mut all = programs.clone();
            all.sort();
            all
        },
        "compose runs each of the programs"
    );
    let binaries = cargo_binaries();
    let dockerfile = repo_file("Dockerfile");
    for (service, (command, environment)) in &services {
        let program = command[0].as_str();
        assert!(
            binaries.iter().any(|b| b == program),
            "{service}: {program} is not a Cargo binary"
        );
        assert!(
            dockerfile.contains(&format!("--bin {program}"))
                && dockerfile.contains(&format!("/build/target/release/{program}")),
            "{service}: the Dockerfile does not build and copy {program}"
        );
        for name in environment.keys() {
            // Not configuration: the log filter, and the gateway's token secret (read
            // straight from the environment, never a config key).
            if name == "RUST_LOG" || name == seckill_kafka::gateway::auth::SECRET_ENV {
                continue;
            }
            let key = key_of_env_var(name)
                .unwrap_or_else(|| panic!("{service}: {name} is not a variable the programs read"));
            assert!(
                program_reads(program, &key),
                "{service}: {program} does not read {name} ({key})"
            );
        }
        // The program itself accepts the command line and the environment: the
        // configuration loads and validates (--print-config stops right there).
        let mut args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        args.push("--print-config");
        let env: Vec<(String, String)> = environment.clone().into_iter().collect();
        let finished = Program::spawn(program, &args, &env).wait(Duration::from_secs(30));
        finished.assert_success(&format!("{service}: {}", command.join(" ")));
        for (name, value) in environment {
            if let Some(key) = key_of_env_var(name).filter(|k| !k.contains("url")) {
                let leaf = key.rsplit('.').next().unwrap();
                assert!(
                    finished.stdout.contains(&format!("{leaf}: {value}"))
                        || finished.stdout.contains(&format!("{leaf}: '{value}'")),
                    "{service}: {name}={value} did not reach {key}:\n{}",
                    finished.stdout
                );
            }
        }
    }
}

#[test]
fn program_services_publish_only_the_port_their_metrics_listen_on() {
    let compose = compose();
    let mut published = 0;
    for (service, (command, environment)) in program_services(&compose) {
        // The program's only listener: the metrics endpoint, from the flag or the variable.
        let flag = command
            .iter()
            .position(|part| part == "--metrics-addr")
            .map(|i| command[i + 1].clone());
        // seckill_gateway's listener is its HTTP address.
        let listens = flag
            .or_else(|| environment.get("SECKILL_TELEMETRY_METRICS_ADDR").cloned())
            .or_else(|| environment.get("SECKILL_GATEWAY_LISTEN").cloned())
            .map(|addr| addr.rsplit(':').next().unwrap().to_string());
        let definition = &compose["services"][service.as_str()];
        let mut ports: Vec<String> = Vec::new();
        for port in definition["ports"].as_sequence().into_iter().flatten() {
            // host:container -> the container side.
            ports.push(
                port.as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        for port in definition["expose"].as_sequence().into_iter().flatten() {
            ports.push(port.as_str().unwrap().to_string());
        }
        for port in ports {
            assert_eq!(
                Some(&port),
                listens.as_ref(),
                "{service} publishes {port}, but its program listens on {listens:?}"
            );
            published += 1;
        }
    }
    assert!(published > 0, "the metrics endpoints are published");
}

#[test]
fn dependencies_name_services_with_a_health_check_or_a_one_shot() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    for (name, service) in services {
        let Some(depends) = service.get("depends_on").and_then(Value::as_mapping) else {
            continue;
        };
        for (dependency, condition) in depends {
            let target = services
                .get(dependency)
                .unwrap_or_else(|| panic!("{name:?} depends on unknown {dependency:?}"));
            match condition["condition"].as_str() {
                Some("service_healthy") => assert!(
                    target.get("healthcheck").is_some(),
                    "{name:?} waits for {dependency:?} to be healthy, which has no health check"
                ),
                Some("service_completed_successfully") => assert_eq!(
                    target["restart"].as_str(),
                    Some("no"),
                    "{dependency:?} must be a one-shot"
                ),
                other => panic!("{name:?} -> {dependency:?}: condition {other:?}"),
            }
        }
    }
}

#[test]
fn the_image_is_multi_stage_non_root_and_holds_the_config() {
    let dockerfile = repo_file("Dockerfile");
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "multi-stage");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        user.trim() != "root" && user.trim() != "0",
        "runs as {user}"
    );
    assert!(
        dockerfile.contains("COPY config.yaml"),
        "config.yaml in the image"
    );
    let ignore = repo_file(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore skips target/"
    );
}

#[test]
fn make_help_lists_the_targets_the_issue_names_and_each_one_exists() {
    let root = support::repo_root();
    let help = std::process::Command::new("make")
        .arg("--no-print-directory")
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let listed: Vec<&str> = help
        .lines()
        .filter_map(|line| line.trim().strip_prefix("make "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    for wanted in [
        "build",
        "test",
        "lint",
        "demo",
        "run-server",
        "run-client",
        "run-log-worker",
        "run-stream",
        "run-zstd",
        "bench",
        "bench-stream",
        "stack-up",
        "stack-down",
        "clean",
        "help",
        "compose-up",
        "compose-demo",
        "compose-down",
        "docker-build",
        "docker-run",
    ] {
        assert!(
            listed.contains(&wanted),
            "make help does not list {wanted}:\n{help}"
        );
    }
    for target in listed {
        // A dry run: the target exists and its recipe expands.
        let dry = std::process::Command::new("make")
            .args(["--no-print-directory", "-n", "-C"])
            .arg(&root)
            .arg(target)
            .output()
            .unwrap();
        assert!(
            dry.status.success(),
            "make -n {target}: {}",
            String::from_utf8_lossy(&dry.stderr)
        );
    }
}

/// The runtime stage installs the Debian package of every shared library the programs link
/// beyond glibc (librdkafka links the system's OpenSSL, libcurl and zlib), so the image's
/// programs start. Read from a binary the suite built (`readelf -d`: its direct needs; what
/// those pull in comes with their packages).
#[test]
fn the_runtime_stage_installs_every_shared_library_the_programs_link() {
    let dockerfile = repo_file("Dockerfile");
    let runtime = dockerfile
        .split("AS runtime")
        .nth(1)
        .expect("a runtime stage");
    // glibc's and gcc's own libraries come with the base image.
    let base = [
        "libc.so",
        "libm.so",
        "libgcc_s",
        "ld-linux",
        "libpthread",
        "libdl.so",
        "librt.so",
    ];
    // Each library and the Debian package (bookworm) that ships it.
    let packages = [
        ("libssl.so.3", "libssl3"),
        ("libcrypto.so.3", "libssl3"),
        ("libcurl.so.4", "libcurl4"),
        ("libz.so.1", "zlib1g"),
    ];
    let readelf = std::process::Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_server_kafka")])
        .output()
        .expect("readelf");
    let needed: Vec<String> = String::from_utf8_lossy(&readelf.stdout)
        .lines()
        .filter_map(|line| line.split_once("Shared library: [")?.1.strip_suffix(']'))
        .filter(|name| !base.iter().any(|b| name.starts_with(b)))
        .map(str::to_string)
        .collect();
    assert!(
        needed.iter().any(|n| n == "libssl.so.3"),
        "TLS from the system: {needed:?}"
    );
    for name in &needed {
        let package = packages
            .iter()
            .find(|(library, _)| library == name)
            .map(|(_, package)| *package)
            .unwrap_or_else(|| panic!("server_kafka needs {name}: name its Debian package here"));
        assert!(
            runtime.contains(package),
            "server_kafka links {name}: the runtime stage must install {package}"
        );
    }
}
