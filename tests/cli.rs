//! The programs as a user runs them: `--help`, config loading, one-line config errors,
//! and no secrets in what they print.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

const PROGRAMS: [(&str, &str); 5] = [
    ("client_kafka", env!("CARGO_BIN_EXE_client_kafka")),
    ("server_kafka", env!("CARGO_BIN_EXE_server_kafka")),
    ("log_worker", env!("CARGO_BIN_EXE_log_worker")),
    ("stream_sum", env!("CARGO_BIN_EXE_stream_sum")),
    ("zstd_producer", env!("CARGO_BIN_EXE_zstd_producer")),
];

/// Runs a program in an empty directory (no stray config.yaml) with no SECKILL_/stack vars.
fn run(binary: &str, args: &[&str], env: &[(&str, &str)], dir: &PathBuf) -> Output {
    let mut command = Command::new(binary);
    command
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1");
    for (name, _) in std::env::vars() {
        if name.starts_with("SECKILL_")
            || ["KAFKA_BROKERS", "REDIS_URL", "DATABASE_URL"].contains(&name.as_str())
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("program starts")
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(support::unique_name("seckill-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_program_has_help_and_loads_the_defaults() {
    let dir = temp_dir();
    for (name, binary) in PROGRAMS {
        let help = run(binary, &["--help"], &[], &dir);
        assert!(help.status.success(), "{name} --help");
        let usage = text(&help.stdout);
        assert!(
            usage.contains("--config") && usage.contains("--brokers"),
            "{name}:\n{usage}"
        );

        let printed = run(binary, &["--print-config"], &[], &dir);
        assert!(
            printed.status.success(),
            "{name}: {}",
            text(&printed.stderr)
        );
        let config: seckill_kafka::config::Config =
            serde_yaml::from_slice(&printed.stdout).unwrap();
        assert_eq!(config, seckill_kafka::config::Config::default(), "{name}");
    }
}

#[test]
fn unknown_key_is_one_line_naming_key_and_file() {
    let dir = temp_dir();
    std::fs::write(dir.join("bad.yaml"), "server_kafka:\n  consumerz: 4\n").unwrap();
    for (name, binary) in PROGRAMS {
        let output = run(binary, &["--config", "bad.yaml"], &[], &dir);
        assert_eq!(output.status.code(), Some(1), "{name}");
        let stderr = text(&output.stderr);
        assert_eq!(
            stderr,
            format!("{name}: error: config file bad.yaml: unknown key `server_kafka.consumerz`\n")
        );
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    }
}

#[test]
fn config_file_env_and_flags_reach_the_program() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("config.yaml"),
        "server_kafka:\n  consumers: 3\n  concurrency: 5\n",
    )
    .unwrap();
    let binary = PROGRAMS[1].1;
    // ./config.yaml is read by default; env beats file; flags beat env.
    let output = run(
        binary,
        &["--print-config", "--concurrency", "9"],
        &[
            ("SECKILL_SERVER_KAFKA_CONCURRENCY", "7"),
            ("KAFKA_BROKERS", "b:9092"),
        ],
        &dir,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed: serde_yaml::Value = serde_yaml::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["server_kafka"]["consumers"], 3);
    assert_eq!(printed["server_kafka"]["concurrency"], 9);
    assert_eq!(printed["kafka"]["brokers"], "b:9092");

    // SECKILL_CONFIG names a file; a missing one is an error, not silently skipped.
    let output = run(binary, &[], &[("SECKILL_CONFIG", "missing.yaml")], &dir);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read config file missing.yaml"));

    // Bad values from the environment name the variable and the key.
    let output = run(
        binary,
        &[],
        &[("SECKILL_SERVER_KAFKA_CONSUMERS", "many")],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("server_kafka: error: environment variable SECKILL_SERVER_KAFKA_CONSUMERS: key `server_kafka.consumers`:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn secrets_never_appear_in_output() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("secret.yaml"),
        "kafka:\n  sasl_username: app\n  properties:\n    sasl.oauthbearer.client.secret: s3cret-oauth\n",
    )
    .unwrap();
    let env = [
        (
            "DATABASE_URL",
            "postgres://seckill:s3cret-pg@db:5432/seckill",
        ),
        ("REDIS_URL", "redis://:s3cret-redis@cache:6379/0"),
        ("SECKILL_KAFKA_SASL_PASSWORD", "s3cret-sasl"),
        ("RUST_LOG", "trace"),
    ];
    for (name, binary) in PROGRAMS {
        let output = run(
            binary,
            &["--config", "secret.yaml", "--print-config"],
            &env,
            &dir,
        );
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));
        let all = text(&output.stdout) + &text(&output.stderr);
        assert!(!all.contains("s3cret"), "{name} leaked a secret:\n{all}");
    }
    let printed = run(
        PROGRAMS[2].1,
        &["--config", "secret.yaml", "--print-config"],
        &env,
        &dir,
    );
    assert!(text(&printed.stdout).contains("postgres://seckill:***@db:5432/seckill"));
}

#[test]
fn shipped_config_yaml_is_the_defaults() {
    use seckill_kafka::config::{Config, ConfigLoader};
    let mut loader = ConfigLoader::new();
    loader
        .file(&support::repo_root().join("config.yaml"))
        .unwrap();
    assert_eq!(
        loader.build().unwrap(),
        Config::default(),
        "config.yaml drifted from the defaults"
    );
}

#[test]
fn readme_documents_every_key_and_env_name() {
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    for (key, env) in seckill_kafka::config::ConfigLoader::new().env_names() {
        assert!(
            readme.contains(&format!("`{key}`")),
            "README lacks key `{key}`"
        );
        assert!(readme.contains(&env), "README lacks {env}");
    }
}

/// Unreachable Redis and PostgreSQL (port 1 on loopback, passwords in the URLs): the
/// programs retry with backoff and say so, stop cleanly on SIGTERM with one error line, and
/// never print a password, even at trace level.
#[test]
fn unreachable_services_are_retried_and_reported_without_secrets() {
    let env = vec![
        (
            "DATABASE_URL".to_string(),
            "postgres://seckill:s3cret-pg@127.0.0.1:1/seckill".to_string(),
        ),
        (
            "REDIS_URL".to_string(),
            "redis://:s3cret-redis@127.0.0.1:1/0".to_string(),
        ),
        ("KAFKA_BROKERS".to_string(), "127.0.0.1:1".to_string()),
        (
            "SECKILL_KAFKA_SASL_PASSWORD".to_string(),
            "s3cret-sasl".to_string(),
        ),
        ("RUST_LOG".to_string(), "trace".to_string()),
    ];
    for name in ["server_kafka", "log_worker"] {
        let mut program = support::Program::spawn(name, &[], &env);
        program.wait_for_stderr("retrying", std::time::Duration::from_secs(30));
        let finished = program.terminate();
        assert_eq!(
            finished.status.code(),
            Some(1),
            "{name}: {}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains("retrying"),
            "{name} reports its retries:\n{}",
            finished.stderr
        );
        let last = finished.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{name}: error: ")),
            "{name}: {last}"
        );
        assert!(
            !finished.stderr.contains("s3cret") && !finished.stdout.contains("s3cret"),
            "{name} leaked a secret"
        );
        assert!(!finished.stderr.contains("panicked"), "{name} panicked");
    }
}

/// Kafka credentials from the environment and from a password file, with trace logging and
/// the metrics endpoint on: neither the logs nor the metrics page ever show them.
#[test]
fn kafka_credentials_stay_out_of_logs_and_metrics() {
    let dir = temp_dir();
    let key_password = dir.join("key-password");
    std::fs::write(&key_password, "s3cret-key\n").unwrap();
    let port = support::free_port();
    let env = vec![
        (
            "KAFKA_BROKERS".to_string(),
            support::stack_var("KAFKA_BROKERS"),
        ),
        (
            "SECKILL_KAFKA_SECURITY_PROTOCOL".to_string(),
            "sasl_plaintext".to_string(),
        ),
        (
            "SECKILL_KAFKA_SASL_MECHANISM".to_string(),
            "PLAIN".to_string(),
        ),
        ("SECKILL_KAFKA_SASL_USERNAME".to_string(), "app".to_string()),
        (
            "SECKILL_KAFKA_SASL_PASSWORD".to_string(),
            "s3cret/?#@:% sasl".to_string(),
        ),
        (
            "SECKILL_KAFKA_SSL_KEY_PASSWORD_FILE".to_string(),
            key_password.display().to_string(),
        ),
        (
            "SECKILL_TELEMETRY_METRICS_ADDR".to_string(),
            format!("127.0.0.1:{port}"),
        ),
        (
            "SECKILL_KAFKA_STATISTICS_INTERVAL_MS".to_string(),
            "200".to_string(),
        ),
        ("RUST_LOG".to_string(), "trace".to_string()),
    ];
    for (name, args) in [
        ("stream_sum", &["run"][..]),
        ("zstd_producer", &["--events", "0"][..]),
    ] {
        let mut program = support::Program::spawn(name, args, &env);
        // Running, logging at trace level, and serving its page (the SASL handshake with the
        // dev broker never completes, so librdkafka's statistics may not come).
        program.wait_for_stderr(" TRACE ", std::time::Duration::from_secs(30));
        let page = support::scrape_until(port, &[], |page| page.starts_with("HTTP/1.1 200"))
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let finished = program.terminate();
        assert!(page.starts_with("HTTP/1.1 200"), "{name}: {page}");
        let all = format!("{}{}{page}", finished.stdout, finished.stderr);
        assert!(
            finished.stderr.contains(" TRACE "),
            "{name}: trace logging ran:\n{}",
            finished.stderr
        );
        assert!(!all.contains("s3cret"), "{name} leaked a secret:\n{all}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
