//! Hostile but ordinary set-ups, run through the real programs: passwords pasted with
//! reserved characters unencoded must never be shown, and a failure must print each of its
//! causes once.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{Finished, Program};

const PROGRAMS: [&str; 5] = [
    "client_kafka",
    "server_kafka",
    "log_worker",
    "stream_sum",
    "zstd_producer",
];

/// Every password holds `Zq` and one or all of the characters a URL reserves; nothing a
/// program prints may hold `Zq`.
const PASSWORDS: [&str; 8] = [
    "Zq/one",
    "Zq?two",
    "Zq#three",
    "Zq@four",
    "Zq:five",
    "Zq%six",
    "Zq seven",
    "Zq/?#@:% eight",
];
const MARK: &str = "Zq";

/// The environment of a child: none of the caller's SECKILL_/stack variables, then `env`.
fn command(program: &str, args: &[&str], env: &[(String, String)], dir: &Path) -> Command {
    let mut command = Command::new(support::binary(program));
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("SECKILL_")
            || ["KAFKA_BROKERS", "KAFKA_BROKER", "REDIS_URL", "DATABASE_URL"]
                .contains(&name.as_str())
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

fn run(program: &str, args: &[&str], env: &[(String, String)], dir: &Path) -> Output {
    command(program, args, env, dir)
        .output()
        .expect("program starts")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(support::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child's environment.
type Env = Vec<(String, String)>;

/// How a password reaches a program.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Channel {
    File,
    Env,
    Flag,
}

fn redis_url(password: &str) -> String {
    format!("redis://:{password}@127.0.0.1:1/0")
}

fn postgres_url(password: &str) -> String {
    format!("postgres://seckill:{password}@127.0.0.1:1/seckill")
}

/// The arguments and environment that hand `password` to `program` through `channel` (in
/// the Redis and PostgreSQL URLs, and as the Kafka SASL password where the channel allows
/// one), or `None` when the program has no such flag.
fn set_up(
    program: &str,
    channel: Channel,
    password: &str,
    dir: &Path,
) -> Option<(Vec<String>, Env)> {
    let mut args = Vec::new();
    let mut env = vec![("RUST_LOG".to_string(), "trace".to_string())];
    match channel {
        Channel::File => {
            // Single-quoted YAML takes every character as it is.
            let yaml = format!(
                "redis:\n  url: '{}'\npostgres:\n  url: '{}'\n",
                redis_url(password),
                postgres_url(password)
            );
            let path = dir.join(format!("{program}-{}.yaml", support::unique_id()));
            std::fs::write(&path, yaml).unwrap();
            args.extend(["--config".to_string(), path.display().to_string()]);
        }
        Channel::Env => {
            env.push(("REDIS_URL".into(), redis_url(password)));
            env.push(("DATABASE_URL".into(), postgres_url(password)));
            env.push(("SECKILL_KAFKA_SASL_PASSWORD".into(), password.into()));
        }
        Channel::Flag => match program {
            "server_kafka" => args.extend(["--redis-url".into(), redis_url(password)]),
            "log_worker" => args.extend([
                "--redis-url".into(),
                redis_url(password),
                "--database-url".into(),
                postgres_url(password),
            ]),
            _ => return None,
        },
    }
    Some((args, env))
}

fn assert_no_password(what: &str, text: &str) {
    assert!(!text.contains(MARK), "{what} shows a password:\n{text}");
}

/// `--print-config` of every program, with the passwords in the config file, the
/// environment and the flags, at trace level.
#[test]
fn print_config_never_shows_a_password() {
    let dir = scratch_dir("hostile-print");
    for program in PROGRAMS {
        for channel in [Channel::File, Channel::Env, Channel::Flag] {
            for password in PASSWORDS {
                let Some((mut args, env)) = set_up(program, channel, password, &dir) else {
                    continue;
                };
                args.push("--print-config".into());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let output = run(program, &args, &env, &dir);
                let what = format!("{program} --print-config ({channel:?}, {password:?})");
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                assert!(output.status.success(), "{what}:\n{all}");
                assert_no_password(&what, &all);
                assert!(all.contains("***"), "{what} redacts:\n{all}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failing start of the programs that use the URLs (an unparsable URL stops at once, an
/// unreachable service is retried until SIGTERM), at trace level, with the metrics page on:
/// no password in any log line, in the error, or on the page.
#[test]
fn a_failing_start_never_shows_a_password() {
    let dir = scratch_dir("hostile-start");
    let mut cases = Vec::new();
    for program in ["server_kafka", "log_worker"] {
        for channel in [Channel::File, Channel::Env, Channel::Flag] {
            for password in PASSWORDS {
                cases.push((program, channel, password, false));
            }
        }
    }
    // log_worker reaches Redis only once PostgreSQL answers: give it the real one.
    for password in PASSWORDS {
        cases.push(("log_worker", Channel::Env, password, true));
    }
    // A few cases at a time: each waits for a retry or an exit.
    for chunk in cases.chunks(8) {
        std::thread::scope(|scope| {
            for &(program, channel, password, real_postgres) in chunk {
                let dir = &dir;
                scope.spawn(move || {
                    let (mut args, mut env) = set_up(program, channel, password, dir).unwrap();
                    if real_postgres {
                        env.retain(|(name, _)| name != "DATABASE_URL");
                        env.push(("DATABASE_URL".into(), support::stack_var("DATABASE_URL")));
                    }
                    let port = support::free_port();
                    args.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
                    env.push(("SECKILL_REDIS_CONNECT_TIMEOUT_MS".into(), "300".into()));
                    env.push(("SECKILL_POSTGRES_CONNECT_TIMEOUT_MS".into(), "300".into()));
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let what = format!(
                        "{program} ({channel:?}, {password:?}, real postgres {real_postgres})"
                    );
                    let (finished, page) = run_until_retrying_or_exit(program, &args, &env, port);
                    let all = format!("{}{}{}", finished.stdout, finished.stderr, page);
                    assert_no_password(&what, &all);
                    assert_eq!(finished.status.code(), Some(1), "{what}:\n{all}");
                    let last = finished.stderr.lines().last().unwrap_or_default();
                    assert!(
                        last.starts_with(&format!("{program}: error: ")),
                        "{what}: {last}"
                    );
                });
            }
        });
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `program` until it exits by itself or reports a retry; then scrapes its metrics
/// page and stops it with SIGTERM. Returns what it printed and the page ("" if none).
fn run_until_retrying_or_exit(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    port: u16,
) -> (Finished, String) {
    let mut child = Program::spawn(program, args, env);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if !child.is_running() {
            return (child.wait(Duration::from_secs(1)), String::new());
        }
        if child.stderr_so_far().contains("retrying") {
            let page = support::scrape(port).unwrap_or_default();
            assert!(
                page.starts_with("HTTP/1.1 200"),
                "{program}: metrics page: {page}"
            );
            return (child.terminate(), page);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{program} neither retried nor exited:\n{}",
            child.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first fragment an error line repeats: its `: `-separated parts, where one equals
/// another or (for longer parts) holds it.
fn repeated_fragment(line: &str) -> Option<String> {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, first) in parts.iter().enumerate() {
        for second in &parts[i + 1..] {
            let repeats = (first.len() >= 4 && first == second)
                || (first.len() >= 12 && second.contains(first))
                || (second.len() >= 12 && first.contains(second));
            if repeats {
                return Some(format!("{first:?} / {second:?}"));
            }
        }
    }
    None
}

#[test]
fn repeated_fragments_are_found() {
    let twice = "server_kafka: error: cannot read config file x.yaml: No such file or directory (os error 2): No such file or directory (os error 2)";
    assert!(repeated_fragment(twice).is_some());
    let nested = "server_kafka: error: Redis: invalid Redis configuration (redis.url): Redis URL did not parse - InvalidClientConfig: invalid Redis configuration (redis.url): Redis URL did not parse - InvalidClientConfig";
    assert!(repeated_fragment(nested).is_some());
    assert_eq!(
        repeated_fragment("log_worker: error: stopped while PostgreSQL was unreachable: cannot connect to PostgreSQL at postgres://u:***@h/db: pool timed out while waiting for an open connection"),
        None
    );
}

/// Each program through failing set-ups: a missing config file, bad YAML, URLs that do not
/// parse, services that do not answer (short timeouts). The last line is one error, and no
/// cause in it is printed twice.
#[test]
fn every_cause_is_printed_once() {
    let dir = scratch_dir("hostile-causes");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "server_kafka: [unclosed\n").unwrap();
    let bad = bad.display().to_string();
    let missing = dir.join("missing.yaml").display().to_string();
    let unreachable_kafka = vec![
        ("KAFKA_BROKERS".to_string(), "127.0.0.1:1".to_string()),
        ("SECKILL_KAFKA_CLIENT_ID".to_string(), "causes".to_string()),
    ];
    let short = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("SECKILL_REDIS_CONNECT_TIMEOUT_MS".into(), "200".into()));
        env.push(("SECKILL_POSTGRES_CONNECT_TIMEOUT_MS".into(), "200".into()));
        env
    };
    let mut cases: Vec<(&str, Vec<String>, Env)> = Vec::new();
    for program in PROGRAMS {
        cases.push((program, vec!["--config".into(), missing.clone()], vec![]));
        cases.push((program, vec!["--config".into(), bad.clone()], vec![]));
    }
    cases.push((
        "server_kafka",
        vec![],
        short(&[("REDIS_URL", "redis://:pa/ss@127.0.0.1:1/0")]),
    ));
    cases.push((
        "server_kafka",
        vec![],
        short(&[("REDIS_URL", "redis://127.0.0.1:1/0")]),
    ));
    cases.push((
        "log_worker",
        vec![],
        short(&[("DATABASE_URL", "postgres://u:se/cret@127.0.0.1:1/db")]),
    ));
    cases.push((
        "log_worker",
        vec![],
        short(&[("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/db")]),
    ));
    let real_postgres = support::stack_var("DATABASE_URL");
    cases.push((
        "log_worker",
        vec![],
        short(&[
            ("DATABASE_URL", real_postgres.as_str()),
            ("REDIS_URL", "redis://:pa#ss@127.0.0.1:1/0"),
        ]),
    ));
    cases.push(("stream_sum", vec!["run".into()], unreachable_kafka.clone()));
    cases.push((
        "zstd_producer",
        vec!["--verify".into()],
        unreachable_kafka.clone(),
    ));
    std::thread::scope(|scope| {
        for (program, args, env) in &cases {
            scope.spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut env = env.clone();
                env.push(("RUST_LOG".into(), "warn".into()));
                let mut child = Program::spawn(program, &args, &env);
                // Set-ups that would retry for ever are stopped once they said so.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while child.is_running() && !child.stderr_so_far().contains("retrying") {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{program} {args:?} hangs"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                let finished = if child.is_running() {
                    child.terminate()
                } else {
                    child.wait(Duration::from_secs(1))
                };
                let what = format!("{program} {args:?} {env:?}");
                assert_eq!(
                    finished.status.code(),
                    Some(1),
                    "{what}:\n{}",
                    finished.stderr
                );
                let last = finished.stderr.lines().last().unwrap_or_default();
                assert!(
                    last.starts_with(&format!("{program}: error: ")),
                    "{what}: {last}"
                );
                assert_eq!(repeated_fragment(last), None, "{what}: {last}");
                assert!(!finished.stderr.contains("panicked"), "{what} panicked");
            });
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
