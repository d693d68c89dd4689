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

/// A scenario run twice, as two tests: on the dev stack's single Redis and on its Redis
/// Cluster (`on_both!(scenario: test_on_one_redis, test_on_a_cluster);`, `scenario` an
/// `async fn(Backend)`).
#[macro_export]
macro_rules! on_both {
    ($scenario:ident: $single:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $single() {
            $scenario($crate::support::Backend::single()).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            $scenario($crate::support::Backend::cluster()).await
        }
    };
}

/// Which Redis a scenario runs against: one node, or a Redis Cluster (its seed nodes).
#[derive(Debug, Clone)]
pub enum Backend {
    Single(String),
    Cluster(Vec<String>),
}

impl Backend {
    /// The dev stack's single node.
    pub fn single() -> Self {
        Self::Single(stack_var("REDIS_URL"))
    }

    /// The dev stack's 3-master cluster.
    pub fn cluster() -> Self {
        Self::Cluster(
            stack_var("DEV_REDIS_CLUSTER_URLS")
                .split(',')
                .map(str::to_string)
                .collect(),
        )
    }

    pub fn config(&self) -> RedisConfig {
        match self {
            Self::Single(url) => RedisConfig {
                url: SecretUrl::new(url.clone()),
                ..RedisConfig::default()
            },
            Self::Cluster(urls) => RedisConfig {
                cluster_urls: urls.iter().map(|url| SecretUrl::new(url.clone())).collect(),
                ..RedisConfig::default()
            },
        }
    }

    /// What a program of the suite needs in its environment to use it.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Single(url) => vec![("REDIS_URL".into(), url.clone())],
            Self::Cluster(urls) => vec![("SECKILL_REDIS_CLUSTER_URLS".into(), urls.join(","))],
        }
    }

    pub fn state(&self) -> RedisState {
        RedisState::connect(&self.config()).unwrap()
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

/// A program a test left running (it failed, or forgot) is killed with it, so no stray
/// server or worker goes on serving the shared stack.
impl Drop for Program {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
        "seckill_gateway" => env!("CARGO_BIN_EXE_seckill_gateway"),
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
    /// Payments (`<topic>-payments`) and order events (`<topic>-events`).
    pub payments_topic: String,
    pub events_topic: String,
    pub brokers: String,
    /// The stack's single Redis unless [`Pipeline::with_redis`] or [`Pipeline::on`] named
    /// another.
    pub backend: Backend,
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
        let payments_topic = format!("{topic}-payments");
        let events_topic = format!("{topic}-events");
        let config_path = std::env::temp_dir().join(format!("{topic}.yaml"));
        // Offsets commit every 0.5 s (server_kafka notices a killed member within seconds
        // by itself: its session defaults are short).
        let yaml = format!(
            "seckill:\n  activity_id: {activity_id}\n  requests_topic: {topic}\n  results_topic: {results_topic}\n\
             \x20 payments_topic: {payments_topic}\n  order_events_topic: {events_topic}\n\
             server_kafka:\n  group_id: {group}\n  status_interval_secs: 1\n  timeout_ms: 0\n\
             log_worker:\n  flush_interval_ms: 100\n  lease_ms: 2000\n\
             kafka:\n  properties:\n    auto.commit.interval.ms: '500'\n"
        );
        std::fs::write(&config_path, yaml).unwrap();
        create_topics(
            &brokers,
            &[
                (&topic, 4),
                (&results_topic, 4),
                (&payments_topic, 4),
                (&events_topic, 4),
            ],
        );
        Self {
            activity_id,
            topic,
            group,
            results_topic,
            payments_topic,
            events_topic,
            brokers,
            backend: Backend::single(),
            config_path,
        }
    }

    /// The same scenario on another Redis (a private server a test may kill).
    pub fn with_redis(mut self, url: String) -> Self {
        self.backend = Backend::Single(url);
        self
    }

    /// The same scenario on `backend`.
    pub fn on(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SECKILL_CONFIG".into(),
                self.config_path.display().to_string(),
            ),
            ("KAFKA_BROKERS".into(), self.brokers.clone()),
            ("DATABASE_URL".into(), stack_var("DATABASE_URL")),
            ("RUST_LOG".into(), "info".into()),
        ]
        .into_iter()
        .chain(self.backend.env())
        .collect()
    }

    pub fn spawn(&self, program: &str, args: &[&str]) -> Program {
        Program::spawn(program, args, &self.env())
    }

    /// Runs a program to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Finished {
        self.spawn(program, args).wait(Duration::from_secs(120))
    }

    pub fn redis(&self) -> RedisState {
        self.backend.state()
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
        results_of(&self.brokers, &self.results_topic, self.activity_id)
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

/// Every result on `topic` (from its oldest record to its end now) for `activity_id`, by
/// request id: the outcomes published for it, and how often.
pub fn results_of(
    brokers: &str,
    topic: &str,
    activity_id: u64,
) -> std::collections::BTreeMap<String, Vec<seckill_kafka::common::SeckillResult>> {
    use rdkafka::message::Message;
    let mut results: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    read_all(brokers, topic, |message| {
        let result =
            seckill_kafka::common::SeckillResult::from_json(message.payload().unwrap_or_default())
                .expect("a result");
        assert_eq!(
            message.key(),
            Some(result.user_id.to_string().as_bytes()),
            "keyed by user id"
        );
        if result.activity_id == activity_id {
            results
                .entry(result.request_id.clone())
                .or_default()
                .push(result);
        }
    });
    results
}

/// Hands every message of `topic`, from its oldest record to its end now, to `each`.
pub fn read_all(
    brokers: &str,
    topic: &str,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    use seckill_kafka::kafka::topic_reader::{read_ranges, retained_ranges};
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("topic-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let ranges = retained_ranges(&consumer, topic, Duration::from_secs(10)).unwrap();
    read_ranges(&consumer, topic, &ranges, Duration::from_secs(30), each).unwrap();
}

/// One message of a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The `seckill.error` and `seckill.source` headers.
    pub reason: String,
    pub source: String,
}

/// Messages of the dead-letter topic `topic`, from its start, until `done` says the ones
/// read so far are enough (waiting up to a minute for each). At least once: a message may
/// come twice, so `done` should look at what it needs, not at a count.
pub async fn dead_letters(
    brokers: &str,
    topic: &str,
    done: impl Fn(&[DeadLetter]) -> bool,
) -> Vec<DeadLetter> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use seckill_kafka::seckill::server::{DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut dead = Vec::new();
    while !done(&dead) {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("dead letters")
            .unwrap();
        let headers = message.headers().expect("DLQ headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        dead.push(DeadLetter {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            reason: header(DLQ_ERROR_HEADER),
            source: header(DLQ_SOURCE_HEADER),
        });
    }
    dead
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
/// A free port for a Redis Cluster node: at most 55535, with its bus port (+10000) free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

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

// ------------------------------------------------------------------ a private Redis Cluster

/// A Redis Cluster of a test's own (masters, and replicas of them), in a scratch directory,
/// whose nodes the test may kill, restart, pause and resume. Append-only files on
/// (`appendfsync always`) when asked, so a killed master comes back with every write it
/// acknowledged.
pub struct LocalCluster {
    pub nodes: Vec<ClusterNode>,
    dir: PathBuf,
    aof: bool,
}

pub struct ClusterNode {
    pub port: u16,
    child: Option<Child>,
}

impl LocalCluster {
    /// `masters` masters with `replicas` replicas each; waits until the cluster is ok.
    pub fn start(masters: usize, replicas: usize, aof: bool) -> Self {
        let dir = std::env::temp_dir().join(unique_name("seckill-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
            aof,
        };
        for index in 0..masters * (1 + replicas) {
            // A port found free may be taken again before the node binds it (or its bus
            // port, +10000): then another.
            for attempt in 1.. {
                let port = free_cluster_port();
                cluster.nodes.push(ClusterNode { port, child: None });
                if cluster.try_restart(index) {
                    break;
                }
                cluster.nodes.pop();
                let _ = std::fs::remove_dir_all(cluster.dir.join(index.to_string()));
                assert!(attempt < 10, "no port for cluster node {index}");
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_ok(Duration::from_secs(30));
        // Every master with its replicas connected and in sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = cluster
                .nodes
                .iter()
                .map(|node| redis_cli(node.port, &["info", "replication"]))
                .filter(|info| info.contains("role:master"))
                .all(|info| info.matches(",state=online,").count() == replicas);
            if synced {
                break;
            }
            assert!(Instant::now() < deadline, "replicas did not connect");
            std::thread::sleep(Duration::from_millis(100));
        }
        // And every node knows them as replicas (its view of the cluster is by gossip).
        loop {
            let known = cluster.nodes.iter().all(|node| {
                redis_cli(node.port, &["cluster", "nodes"])
                    .lines()
                    .filter(|line| {
                        line.split_whitespace()
                            .nth(2)
                            .is_some_and(|flags| flags.split(',').any(|flag| flag == "slave"))
                    })
                    .count()
                    == masters * replicas
            });
            if known {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas not known to every node"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    pub fn backend(&self) -> Backend {
        Backend::Cluster(self.urls())
    }

    /// Starts node `index` on its port and data.
    pub fn restart(&mut self, index: usize) {
        let port = self.nodes[index].port;
        assert!(self.try_restart(index), "node {port} exited at start");
    }

    /// [`restart`](Self::restart); false when redis-server exited at once (its port taken).
    fn try_restart(&mut self, index: usize) -> bool {
        let node_dir = self.dir.join(index.to_string());
        std::fs::create_dir_all(&node_dir).unwrap();
        let port = self.nodes[index].port;
        assert!(self.nodes[index].child.is_none(), "node {index} runs");
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut child = command.spawn().expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis_cli(port, &["ping"]).trim() != "PONG" {
            if child.try_wait().expect("redis-server status").is_some() {
                return false;
            }
            assert!(Instant::now() < deadline, "node {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nodes[index].child = Some(child);
        true
    }

    /// SIGKILL of node `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT of node `index`: a node that stops answering (a paused VM, a slow
    /// link) without its connections closing.
    pub fn pause(&self, index: usize) {
        self.signal(index, "STOP");
    }

    pub fn resume(&self, index: usize) {
        self.signal(index, "CONT");
    }

    fn signal(&self, index: usize, signal: &str) {
        let pid = self.nodes[index].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until every running node says the cluster is ok.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|node| node.child.is_some())
                .all(|node| {
                    redis_cli(node.port, &["cluster", "info"]).contains("cluster_state:ok")
                });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node that is master of `key`'s slot now (asked of a running node).
    pub fn master_of(&self, key: &str) -> usize {
        self.try_master_of(key)
            .unwrap_or_else(|| panic!("no live master holds the slot of {key}"))
    }

    /// [`LocalCluster::master_of`], or `None` while the slot's master is failing.
    pub fn try_master_of(&self, key: &str) -> Option<usize> {
        let asked = self
            .nodes
            .iter()
            .find(|node| node.child.is_some())
            .expect("a running node");
        let slot: u16 = redis_cli(asked.port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        let nodes = redis_cli(asked.port, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split('@')
                .next()
                .and_then(|address| address.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .unwrap_or(0);
            let holds = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((low, high)) => {
                    (low.parse().unwrap_or(u16::MAX)..=high.parse().unwrap_or(0)).contains(&slot)
                }
                None => range.parse::<u16>() == Ok(slot),
            });
            if holds {
                return self.nodes.iter().position(|node| node.port == port);
            }
        }
        None
    }

    /// The replicas of the master at `index` (their indexes).
    pub fn replicas_of(&self, index: usize) -> Vec<usize> {
        let id = redis_cli(self.nodes[index].port, &["cluster", "myid"]);
        let id = id.trim();
        let nodes = redis_cli(self.nodes[index].port, &["cluster", "nodes"]);
        nodes
            .lines()
            .filter(|line| line.split_whitespace().nth(3) == Some(id))
            .filter_map(|line| {
                let port: u16 = line
                    .split_whitespace()
                    .nth(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                self.nodes.iter().position(|node| node.port == port)
            })
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].child.is_some() {
                // A paused node must be running to die of SIGKILL's cleanup promptly.
                let _ = Command::new("kill")
                    .args([
                        "-s",
                        "CONT",
                        &self.nodes[index].child.as_ref().unwrap().id().to_string(),
                    ])
                    .status();
            }
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS...`, its standard output (empty when it fails).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).to_string())
        .unwrap_or_default()
}
