//! When a decision counts as made: Redis replicates asynchronously, so a master that dies
//! right after a purchase script can be replaced by a replica that never saw it, and a
//! buyer told SUCCESS would lose the item (and the stock be sold again). The server therefore
//! sends `WAIT <replicas> <timeout>` right behind a batch's script call, on the same
//! connection to the same master (in one pipeline, which a cluster client routes by the
//! script's key), and publishes nothing of the batch until enough replicas have its writes.
//!
//! `redis.wait_replicas`: `auto` (the default) waits for one replica when the master has a
//! replica online (asked with `ROLE` in a pipeline behind a command on the activity's key,
//! so it reaches that key's master; at most once a second per activity; a replica still in
//! its first sync is not online, and has no data to fail over with) and for none
//! when it has none (a lone node: nothing to fail over to); a number waits for that many
//! replicas (0: never wait, as before). `redis.wait_timeout_ms` bounds each wait; a batch
//! whose wait fell short is not published, and is tried again.

use super::connection::Conn;
use super::RedisStateError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many replicas must have a decision before it is published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplicaWait {
    /// One when the master has a replica connected, none otherwise.
    #[default]
    Auto,
    Count(u32),
}

impl fmt::Display for ReplicaWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Count(count) => write!(f, "{count}"),
        }
    }
}

impl Serialize for ReplicaWait {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Count(count) => serializer.serialize_u32(*count),
        }
    }
}

impl<'de> Deserialize<'de> for ReplicaWait {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(count) => Ok(Self::Count(count)),
            Raw::Text(text) if text == "auto" => Ok(Self::Auto),
            Raw::Text(text) => text.parse().map(Self::Count).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is neither `auto` nor a number of replicas"
                ))
            }),
        }
    }
}

/// How long `auto` trusts what `ROLE` said about a master's replicas.
const ROLE_TTL: Duration = Duration::from_secs(1);

/// The replica wait of one server process.
pub(crate) struct Durability {
    wait: ReplicaWait,
    timeout: Duration,
    /// Per activity (its master): replicas seen connected, and when.
    known: Mutex<HashMap<u64, (Instant, u32)>>,
}

impl Durability {
    pub(crate) fn new(wait: ReplicaWait, timeout: Duration) -> Self {
        Self {
            wait,
            timeout,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Replicas the writes to `key` (of `activity_id`) must reach before they count.
    pub(crate) async fn replicas_needed(
        &self,
        connection: &mut Conn,
        activity_id: u64,
        key: &str,
    ) -> Result<u32, RedisStateError> {
        match self.wait {
            ReplicaWait::Count(count) => Ok(count),
            ReplicaWait::Auto => {
                if let Ok(known) = self.known.lock() {
                    if let Some((at, replicas)) = known.get(&activity_id) {
                        if at.elapsed() < ROLE_TTL {
                            return Ok((*replicas).min(1));
                        }
                    }
                }
                let role: redis::Value = connection.query_at_key(redis::cmd("ROLE"), key).await?;
                let replicas = connected_replicas(&role);
                if let Ok(mut known) = self.known.lock() {
                    known.insert(activity_id, (Instant::now(), replicas));
                }
                Ok(replicas.min(1))
            }
        }
    }

    /// Forgets what `ROLE` said about `activity_id`'s master (after a wait fell short, or a
    /// failover), so the next call asks again.
    pub(crate) fn forget(&self, activity_id: u64) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(&activity_id);
        }
    }
}

/// The replicas a `ROLE` reply lists: `["master", offset, [[ip, port, offset], ...]]`. A
/// replica (or anything else) has none of its own.
fn connected_replicas(role: &redis::Value) -> u32 {
    use redis::Value;
    let Value::Array(parts) = role else {
        return 0;
    };
    let is_master = matches!(parts.first(), Some(Value::BulkString(name)) if name == b"master")
        || matches!(parts.first(), Some(Value::SimpleString(name)) if name == "master");
    match (is_master, parts.get(2)) {
        (true, Some(Value::Array(replicas))) => u32::try_from(replicas.len()).unwrap_or(u32::MAX),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn role_replies_give_the_connected_replicas() {
        let master = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(3129659),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::BulkString(b"9001".to_vec()),
                Value::BulkString(b"3129242".to_vec()),
            ])]),
        ]);
        assert_eq!(connected_replicas(&master), 1);
        let lone = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        assert_eq!(connected_replicas(&lone), 0);
        let replica = Value::Array(vec![
            Value::BulkString(b"slave".to_vec()),
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(9000),
        ]);
        assert_eq!(connected_replicas(&replica), 0);
    }

    #[test]
    fn the_setting_reads_auto_or_a_number() {
        for (yaml, wait) in [
            ("auto", ReplicaWait::Auto),
            ("0", ReplicaWait::Count(0)),
            ("2", ReplicaWait::Count(2)),
            ("'1'", ReplicaWait::Count(1)),
        ] {
            assert_eq!(serde_yaml::from_str::<ReplicaWait>(yaml).unwrap(), wait);
        }
        let error = serde_yaml::from_str::<ReplicaWait>("some").unwrap_err();
        assert!(error.to_string().contains("neither `auto`"), "{error}");
        assert_eq!(
            serde_yaml::to_string(&ReplicaWait::Auto).unwrap().trim(),
            "auto"
        );
    }
}
