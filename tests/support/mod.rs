//! Helpers shared by the integration tests: where the dev stack is, and unique names so
//! tests can run in parallel against one Redis, PostgreSQL and broker.
#![allow(dead_code)] // each test binary uses a different subset

use seckill_kafka::config::{KafkaConfig, PostgresConfig, RedisConfig};
use seckill_kafka::secret::SecretUrl;
use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A stack address from the environment, else from `.dev/env` written by
/// `scripts/dev-stack.sh up`. Panics with the fix when neither has it: a test that needs a
/// service must not pass without one.
pub fn stack_var(name: &str) -> String {
    if let Ok(value) = std::env::var(name) {
        if !value.is_empty() {
            return value;
        }
    }
    let env_file = repo_root().join(".dev/env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| shell_unquote(value))
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set and {} does not have it: start the stack with \
                 `scripts/dev-stack.sh up` (or run `make test`)",
                env_file.display()
            )
        })
}

/// A value as the shell reads it from `printf %q` (backslash escapes, single quotes): the
/// stack's env lines quote paths, which may hold spaces.
pub fn shell_unquote(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted => out.extend(chars.next()),
            other => out.push(other),
        }
    }
    out
}

pub fn redis_config() -> RedisConfig {
    RedisConfig {
        url: SecretUrl::new(stack_var("REDIS_URL")),
        ..RedisConfig::default()
    }
}

pub fn postgres_config() -> PostgresConfig {
    PostgresConfig {
        url: SecretUrl::new(stack_var("DATABASE_URL")),
        ..PostgresConfig::default()
    }
}

pub fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        brokers: stack_var("KAFKA_BROKERS"),
        ..KafkaConfig::default()
    }
}

/// A number no other test (in this run or an earlier one) uses: activity ids, name
/// suffixes. Random rather than clock-based so parallel test processes cannot collide; kept
/// below i64::MAX because activity ids are BIGINT in PostgreSQL.
pub fn unique_id() -> u64 {
    rand::random_range(1_000_000..i64::MAX as u64)
}

pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", unique_id())
}

// ------------------------------------------------------------------ running the programs

use seckill_kafka::redis_state::{ActivitySnapshot, RedisState};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A program of the suite running as a child process, its output captured to files.
pub struct Program {
    pub name: String,
    child: Child,
    dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// What a finished program left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The number after `name=` in the program's summary (stdout).
    pub fn figure(&self, name: &str) -> u64 {
        let needle = format!("{name}=");
        self.stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&needle))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no {name}= in stdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

pub fn binary(name: &str) -> &'static str {
    match name {
        "client_kafka" => env!("CARGO_BIN_EXE_client_kafka"),
        "server_kafka" => env!("CARGO_BIN_EXE_server_kafka"),
        "log_worker" => env!("CARGO_BIN_EXE_log_worker"),
        "stream_sum" => env!("CARGO_BIN_EXE_stream_sum"),
        "zstd_producer" => env!("CARGO_BIN_EXE_zstd_producer"),
        "seckill_admin" => env!("CARGO_BIN_EXE_seckill_admin"),
        other => panic!("unknown program {other}"),
    }
}

impl Program {
    /// Starts `name` with `args`, the given environment, and no inherited SECKILL_/stack
    /// variables, in a scratch directory (so no stray config.yaml is read).
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Program {
        let dir = std::env::temp_dir().join(unique_name(&format!("seckill-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (key, _) in std::env::vars() {
            if key.starts_with("SECKILL_")
                || ["KAFKA_BROKERS", "REDIS_URL", "DATABASE_URL"].contains(&key.as_str())
            {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Program {
            name: name.to_string(),
            child,
            dir,
            stdout_path,
            stderr_path,
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {}", self.name);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the program to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let finished = Finished {
                    status,
                    stdout: std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
                    stderr: std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
                };
                let _ = std::fs::remove_dir_all(&self.dir);
                return finished;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{stderr}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the program wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the program's stderr holds `needle` (a log line it prints when it
    /// reaches a state), failing the test after `timeout` or when the program exits first.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr_so_far();
            if stderr.contains(needle) {
                return;
            }
            assert!(
                self.is_running(),
                "{} exited before printing {needle:?}:\n{stderr}",
                self.name
            );
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {timeout:?}:\n{stderr}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the drain to finish.
    pub fn terminate(self) -> Finished {
        self.signal("TERM");
        self.wait(Duration::from_secs(60))
    }

    /// SIGKILL: no drain, no commit, no flush.
    pub fn kill(self) -> Finished {
        self.signal("KILL");
        self.wait(Duration::from_secs(10))
    }
}

/// One flash-sale scenario's names and settings: a unique activity, topic and group, a
/// config file with test-friendly Kafka timings, and the stack's addresses.
pub struct Pipeline {
    pub activity_id: u64,
    pub topic: String,
    pub group: String,
    /// Where server_kafka answers (`<topic>-results`).
    pub results_topic: String,
    pub brokers: String,
    /// The stack's Redis unless [`Pipeline::with_redis`] named another.
    pub redis_url: String,
    config_path: PathBuf,
}

impl Pipeline {
    pub fn new(prefix: &str) -> Self {
        Self::with_brokers(prefix, stack_var("KAFKA_BROKERS"))
    }

    pub fn with_brokers(prefix: &str, brokers: String) -> Self {
        let activity_id = unique_id();
        let topic = unique_name(prefix);
        let group = format!("{topic}-group");
        let results_topic = format!("{topic}-results");
        let config_path = std::env::temp_dir().join(format!("{topic}.yaml"));
        // Offsets commit every 0.5 s (server_kafka notices a killed member within seconds
        // by itself: its session defaults are short).
        let yaml = format!(
            "seckill:\n  activity_id: {activity_id}\n  requests_topic: {topic}\n  results_topic: {results_topic}\n\
             server_kafka:\n  group_id: {group}\n  status_interval_secs: 1\n  timeout_ms: 0\n\
             log_worker:\n  flush_interval_ms: 100\n  lease_ms: 2000\n\
             kafka:\n  properties:\n    auto.commit.interval.ms: '500'\n"
        );
        std::fs::write(&config_path, yaml).unwrap();
        create_topics(&brokers, &[(&topic, 4), (&results_topic, 4)]);
        Self {
            activity_id,
            topic,
            group,
            results_topic,
            brokers,
            redis_url: stack_var("REDIS_URL"),
            config_path,
        }
    }

    /// The same scenario on another Redis (a private server a test may kill).
    pub fn with_redis(mut self, url: String) -> Self {
        self.redis_url = url;
        self
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SECKILL_CONFIG".into(),
                self.config_path.display().to_string(),
            ),
            ("KAFKA_BROKERS".into(), self.brokers.clone()),
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("DATABASE_URL".into(), stack_var("DATABASE_URL")),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    pub fn spawn(&self, program: &str, args: &[&str]) -> Program {
        Program::spawn(program, args, &self.env())
    }

    /// Runs a program to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Finished {
        self.spawn(program, args).wait(Duration::from_secs(120))
    }

    pub fn redis(&self) -> RedisState {
        let config = RedisConfig {
            url: SecretUrl::new(self.redis_url.clone()),
            ..RedisConfig::default()
        };
        RedisState::connect(&config).unwrap()
    }

    /// Polls the activity's Redis figures until `done` holds.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ActivitySnapshot) -> bool,
    ) -> ActivitySnapshot {
        let redis = self.redis();
        let deadline = Instant::now() + timeout;
        loop {
            // A Redis a test restarts does not answer for a moment.
            let snapshot = match redis.snapshot(self.activity_id).await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "timed out waiting for {what}: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if done(&snapshot) {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {snapshot:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every result on the results topic (from its oldest record to its end now) for this
    /// scenario's activity, by request id: the outcomes published for it, and how often.
    pub fn results(
        &self,
    ) -> std::collections::BTreeMap<String, Vec<seckill_kafka::common::SeckillResult>> {
        use rdkafka::message::Message;
        use seckill_kafka::kafka::topic_reader::{read_ranges, retained_ranges};
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", unique_name("results-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let ranges =
            retained_ranges(&consumer, &self.results_topic, Duration::from_secs(10)).unwrap();
        let mut results: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        read_ranges(
            &consumer,
            &self.results_topic,
            &ranges,
            Duration::from_secs(30),
            |message| {
                let result = seckill_kafka::common::SeckillResult::from_json(
                    message.payload().unwrap_or_default(),
                )
                .expect("a result");
                assert_eq!(
                    message.key(),
                    Some(result.user_id.to_string().as_bytes()),
                    "keyed by user id"
                );
                if result.activity_id == self.activity_id {
                    results
                        .entry(result.request_id.clone())
                        .or_default()
                        .push(result);
                }
            },
        )
        .unwrap();
        results
    }

    /// Rows of the activity in PostgreSQL.
    pub async fn rows(&self) -> i64 {
        let pool = seckill_kafka::postgres::connect(&postgres_config())
            .await
            .unwrap();
        seckill_kafka::postgres::migrate(&pool).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM seckill_records WHERE activity_id = $1")
            .bind(self.activity_id as i64)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Creates topics through the Admin API (any broker; on the dev broker, which cannot, they are
/// created when first used), from sync or async tests alike.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let kafka = KafkaConfig {
        brokers: brokers.to_string(),
        ..KafkaConfig::default()
    };
    let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let specs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        runtime
            .block_on(seckill_kafka::kafka::admin::ensure_topics(
                &kafka,
                "test-admin",
                &specs,
            ))
            .unwrap();
    })
    .join()
    .unwrap();
}

/// Produces `(key, payload)` messages (payload `None` = no payload) and waits for every
/// delivery report.
pub async fn produce(brokers: &str, topic: &str, messages: &[(String, Option<Vec<u8>>)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let deliveries: Vec<_> = messages
        .iter()
        .map(|(key, payload)| {
            let mut record = FutureRecord::<str, [u8]>::to(topic).key(key.as_str());
            if let Some(payload) = payload {
                record = record.payload(payload.as_slice());
            }
            producer.send(record, Duration::from_secs(60))
        })
        .collect();
    for delivery in futures::future::join_all(deliveries).await {
        delivery.map_err(|(error, _)| error).expect("delivered");
    }
}

/// A JSON request as client_kafka would send it.
pub fn request_json(activity_id: u64, user_id: u64, request_id: &str) -> Vec<u8> {
    let request = seckill_kafka::common::SeckillRequest {
        request_id: request_id.to_string(),
        user_id,
        activity_id,
        request_initiation_time: seckill_kafka::common::now_ms(),
    };
    serde_json::to_vec(&request).unwrap()
}

// ------------------------------------------------------------------ ports and metrics pages

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics`, or `None` while nothing listens yet.
pub fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Scrapes until every `needle` is in the page and `ready` holds (within 2 minutes: a
/// consumer group's first join on a busy dev broker can take tens of seconds).
pub fn scrape_until(
    port: u16,
    needles: &[&str],
    ready: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(page) = scrape(port) {
            if needles.iter().all(|needle| page.contains(needle)) && ready(&page) {
                return Ok(page);
            }
            last = page;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let missing: Vec<&&str> = needles.iter().filter(|n| !last.contains(**n)).collect();
    Err(format!("missing {missing:?} in:\n{last}"))
}

/// Requests a server_kafka has answered (every outcome), from its metrics page; `None`
/// while the page does not answer.
pub fn answered(port: u16) -> Option<u64> {
    let page = scrape(port)?;
    Some(
        page.lines()
            .filter(|line| line.starts_with("seckill_requests_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// Whether `GET /ready` answers 200.
pub fn is_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ =
        stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// The value of the first sample of `metric` (any labels) in a Prometheus page.
pub fn sample(page: &str, metric: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(metric))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

// ------------------------------------------------------------------ a Redis a test may kill

/// A private redis-server with the append-only file on, in a scratch directory, that a test
/// can SIGKILL and start again on the same port and data.
pub struct KillableRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl KillableRedis {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique_name("seckill-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port: free_port(),
            dir,
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server on its port and data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            // Every write is on disk before its reply, so a SIGKILL loses nothing that was
            // acknowledged (with `everysec` the last second may go).
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/dev-stack.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KillableRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------ a reply lost on the way

/// A TCP proxy in front of a server that swallows one reply: the first server-to-client
/// chunk holding `needle` is never delivered and that connection is cut, as when a server
/// dies right after executing a command. Every other byte passes through.
pub struct ReplyDroppingProxy {
    pub port: u16,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ReplyDroppingProxy {
    pub fn start(upstream_port: u16, needle: &'static [u8]) -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (mut client_in, mut server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_in, &mut server_out);
                    let _ = server_out.shutdown(Shutdown::Both);
                });
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let (mut server_in, mut client_out) = (server, client);
                    let mut buffer = vec![0; 64 * 1024];
                    loop {
                        let read = match server_in.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(read) => read,
                        };
                        let chunk = &buffer[..read];
                        let holds = chunk.windows(needle.len()).any(|w| w == needle);
                        if holds && !flag.swap(true, Ordering::SeqCst) {
                            break;
                        }
                        if client_out.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = client_out.shutdown(Shutdown::Both);
                    let _ = server_in.shutdown(Shutdown::Both);
                });
            }
        });
        Self { port, dropped }
    }
}
