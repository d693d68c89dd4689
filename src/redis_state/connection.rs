//! The connection to Redis: a pool of connections to one node (`redis.url`), or one
//! multiplexed Redis Cluster connection (`redis.cluster_urls`, redis-rs `cluster-async`)
//! that routes each command to the master of its key's slot and follows redirects.
//!
//! [`Conn`] is either, behind redis-rs's `ConnectionLike`, so commands, pipelines and
//! scripts are written once. Scripts go through [`Conn::eval_script`]: `EVALSHA`, and on
//! `NOSCRIPT` a `SCRIPT LOAD` sent to the node of the script's first key (its master),
//! then the call again. redis-rs's own reload sends `SCRIPT LOAD` to every node of a
//! cluster, which fails while any one of them is down.
//!
//! A cluster connection that gets no reply at all for three response timeouts while its
//! commands time out is replaced by a new one ([`Cluster`]): a master that is down only
//! times out its own slots, so silence from every node means the connection is stuck.

use super::RedisStateError;
use crate::config::RedisConfig;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Response timeouts without any reply from the cluster after which its connection is
/// replaced ([`Cluster::timed_out`]).
const STALL_TIMEOUTS: u64 = 3;

/// A Redis Cluster: its client, the connection made on first use, and what tells a
/// stalled connection.
pub struct Cluster {
    client: ClusterClient,
    connection: std::sync::Mutex<Option<ClusterConnection>>,
    /// Held while a connection is made, so concurrent callers make one.
    connecting: tokio::sync::Mutex<()>,
    /// When a command last got a reply (ms since `epoch`), and when one last timed out.
    epoch: std::time::Instant,
    last_reply_ms: AtomicU64,
    /// No reply at all for this long, while commands time out: the connection is replaced.
    stall: Duration,
}

impl Cluster {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A reply came (an error reply too: the node answered).
    fn replied(&self) {
        self.last_reply_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A command timed out. A master that is down times out only its own slots' commands
    /// while the others are answered; nothing answered for `stall` means the connection
    /// itself is stuck (seen with redis-rs 1.8: a slot refresh begun while a master was
    /// down under load never completed, and every later command timed out, on every node,
    /// for good). Then the next caller makes a new connection.
    fn timed_out(&self) {
        let silent = self
            .now_ms()
            .saturating_sub(self.last_reply_ms.load(Ordering::Relaxed));
        if u128::from(silent) < self.stall.as_millis() {
            return;
        }
        if let Ok(mut connection) = self.connection.lock() {
            if connection.take().is_some() {
                tracing::warn!(
                    event = "retry",
                    silent_ms = silent,
                    "no reply from the Redis Cluster while commands time out; making a new connection"
                );
                // Counted from now: the new connection gets a full `stall` to answer.
                self.replied();
            }
        }
    }

    async fn connection(&self) -> Result<ClusterConnection, RedisStateError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let connection = self.client.get_async_connection().await?;
        self.replied();
        if let Ok(mut slot) = self.connection.lock() {
            *slot = Some(connection.clone());
        }
        Ok(connection)
    }

    fn current(&self) -> Option<ClusterConnection> {
        self.connection.lock().ok().and_then(|slot| slot.clone())
    }
}

/// Where the flash-sale state lives.
#[derive(Clone)]
pub enum RedisConnection {
    /// One node, pooled connections (each call takes one).
    Single(Pool),
    /// A Redis Cluster: one multiplexed connection, made on first use (its slot map read
    /// then), cloned per call.
    Cluster(Arc<Cluster>),
}

impl RedisConnection {
    /// Prepares the connection `redis:` asks for: to the cluster when `cluster_urls` is set,
    /// else to `url`. Nothing is contacted until the first call.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisStateError> {
        if config.cluster_urls.is_empty() {
            return Ok(Self::Single(create_pool(config)?));
        }
        let urls: Vec<&str> = config.cluster_urls.iter().map(|url| url.expose()).collect();
        let client = ClusterClient::builder(urls.clone())
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .response_timeout(Duration::from_millis(config.response_timeout_ms))
            // A call (with its redirects and retries) ends in about the response timeout;
            // the caller retries with its own backoff, aware of shutdown.
            .overall_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)))
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(200)
            .build()
            .map_err(|error| {
                let hint = urls
                    .iter()
                    .map(|url| crate::secret::url_parse_hint(url))
                    .find(|hint| !hint.is_empty())
                    .unwrap_or_default();
                RedisStateError::Config(format!("redis.cluster_urls: {error}{hint}"))
            })?;
        Ok(Self::Cluster(Arc::new(Cluster {
            client,
            connection: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            epoch: std::time::Instant::now(),
            last_reply_ms: AtomicU64::new(0),
            stall: Duration::from_millis(config.response_timeout_ms.saturating_mul(STALL_TIMEOUTS)),
        })))
    }

    /// A connection for one call (or a few in a row).
    pub async fn get(&self) -> Result<Conn, RedisStateError> {
        Ok(match self {
            Self::Single(pool) => Conn::Single(pool.get().await?),
            Self::Cluster(cluster) => Conn::Cluster(cluster.connection().await?, cluster.clone()),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// Creates the connection pool of a single node from the `redis:` section.
pub fn create_pool(config: &RedisConfig) -> Result<Pool, RedisStateError> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)));
    let manager = Manager::new_with_config(config.url.expose(), connection).map_err(|error| {
        RedisStateError::Config(format!(
            "{error}{}",
            crate::secret::url_parse_hint(config.url.expose())
        ))
    })?;
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| RedisStateError::Config(error.to_string()))
}

/// One connection: a pooled one to the single node, or a handle on the cluster connection
/// (with its [`Cluster`], told of each reply and timeout).
pub enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(ClusterConnection, Arc<Cluster>),
}

/// Notes on `cluster` whether `result` is a reply or a timeout.
fn observe<T>(cluster: &Cluster, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
    match &result {
        Err(error) if error.is_timeout() => cluster.timed_out(),
        Err(error) if error.is_io_error() || error.is_connection_dropped() => {}
        _ => cluster.replied(),
    }
    result
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection, cluster) => {
                Box::pin(async move { observe(cluster, connection.req_packed_command(cmd).await) })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection, cluster) => Box::pin(async move {
                observe(
                    cluster,
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await,
                )
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection, _) => connection.get_db(),
        }
    }
}

impl Conn {
    /// Runs `command`, which names no key, on the master that holds `key` (on a single node:
    /// just runs it). It rides in a pipeline behind `EXISTS key`, which a cluster client
    /// routes, and re-routes after a redirect, to that master: sent alone, a keyless command
    /// may go to whichever node the client happens to be connected to.
    pub async fn query_at_key<T: redis::FromRedisValue>(
        &mut self,
        command: Cmd,
        key: &str,
    ) -> Result<T, RedisStateError> {
        let (_, value): (redis::Value, redis::Value) = redis::pipe()
            .exists(key)
            .add_command(command)
            .query_async(self)
            .await?;
        Ok(redis::from_redis_value(value)?)
    }

    /// Loads `script` into the master of `key` (on a single node: into it).
    pub async fn load_script(&mut self, script: &str, key: &str) -> Result<(), RedisStateError> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(script);
        let _: String = self.query_at_key(load, key).await?;
        Ok(())
    }

    /// Runs `call` (an `EVALSHA` of `script`, or a pipeline that starts with one); on
    /// `NOSCRIPT` (Redis restarted, `SCRIPT FLUSH`, a failover to a replica that never saw the
    /// script) loads the script into the node of `first_key` and runs the call again.
    pub async fn eval_script<T: redis::FromRedisValue>(
        &mut self,
        call: &ScriptCall<'_>,
        script: &str,
        first_key: &str,
    ) -> Result<T, RedisStateError> {
        match call.run(self).await {
            Err(error) if is_noscript(&error) => {
                self.load_script(script, first_key).await?;
                Ok(call.run(self).await?)
            }
            other => Ok(other?),
        }
    }
}

/// A script call as sent: one `EVALSHA` command, or a pipeline whose first command is one.
pub enum ScriptCall<'a> {
    Command(&'a Cmd),
    Pipeline(&'a Pipeline),
}

impl ScriptCall<'_> {
    async fn run<T: redis::FromRedisValue>(&self, connection: &mut Conn) -> redis::RedisResult<T> {
        match self {
            Self::Command(command) => command.query_async(connection).await,
            Self::Pipeline(pipeline) => pipeline.query_async(connection).await,
        }
    }
}

fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
