//! One log_worker's side of an activity's reliable record queue: it takes records into its
//! own processing list, acknowledges them once stored, keeps a lease alive, and claims the
//! lists of workers whose lease lapsed (the scripts `log_*.lua`).

use super::{duration_ms, ActivityKeys, ActivitySnapshot, RedisState, RedisStateError};
use std::time::Duration;

/// How long a take on a cluster waits before it looks again at an empty queue.
const CLUSTER_POLL: Duration = Duration::from_millis(50);

impl RedisState {
    /// The reliable log queue of an activity as seen by one log_worker.
    pub fn log_queue(&self, activity_id: u64, worker: impl Into<String>) -> LogQueue {
        let keys = ActivityKeys::new(activity_id);
        let worker = worker.into();
        LogQueue {
            state: self.clone(),
            processing: keys.processing(&worker),
            lease: keys.lease(&worker),
            keys,
            worker,
        }
    }
}

/// Activities looked at in one round trip on a single node ([`RedisState::probe_queues`]).
const PROBE_CHUNK: usize = 512;
/// Probes in flight at once on a cluster.
const CLUSTER_PROBES: usize = 64;

/// Which log queues may give a worker that has not joined them something to do
/// ([`LogQueue::has_work`]).
#[derive(Debug, Default)]
pub struct QueueProbe {
    pub with_work: Vec<u64>,
    pub idle: Vec<u64>,
    /// On a cluster: activities whose master did not answer (transient errors only).
    pub unreachable: Vec<(u64, RedisStateError)>,
}

impl RedisState {
    /// Probes the log queues of `activity_ids`, writing nothing. On one node one pipelined
    /// round trip per 512 activities; on a cluster (no pipeline across slots) concurrent
    /// probes, so a master that is down makes only its own activities unreachable.
    pub async fn probe_queues(&self, activity_ids: &[u64]) -> Result<QueueProbe, RedisStateError> {
        let mut probe = QueueProbe::default();
        if self.is_cluster() {
            use futures::StreamExt;
            let answers: Vec<(u64, Result<bool, RedisStateError>)> =
                futures::stream::iter(activity_ids)
                    .map(|&id| async move { (id, self.log_queue(id, "").has_work().await) })
                    .buffered(CLUSTER_PROBES)
                    .collect()
                    .await;
            for (id, answer) in answers {
                match answer {
                    Ok(true) => probe.with_work.push(id),
                    Ok(false) => probe.idle.push(id),
                    Err(error) if error.is_transient() => probe.unreachable.push((id, error)),
                    Err(error) => return Err(error),
                }
            }
            return Ok(probe);
        }
        for chunk in activity_ids.chunks(PROBE_CHUNK) {
            let mut pipe = redis::pipe();
            for &id in chunk {
                let keys = ActivityKeys::new(id);
                pipe.llen(&keys.logs)
                    .scard(&keys.log_workers)
                    .llen(&keys.legacy_processing);
            }
            let mut connection = self.connection().await?;
            let lengths: Vec<u64> = pipe.query_async(&mut connection).await?;
            for (&id, three) in chunk.iter().zip(lengths.chunks(3)) {
                if three.iter().sum::<u64>() > 0 {
                    probe.with_work.push(id);
                } else {
                    probe.idle.push(id);
                }
            }
        }
        Ok(probe)
    }
}

/// One log_worker's side of an activity's reliable log queue: it takes records into its own
/// processing list, acknowledges them once stored, keeps a lease alive, and claims the lists
/// of workers whose lease lapsed.
#[derive(Clone)]
pub struct LogQueue {
    state: RedisState,
    keys: ActivityKeys,
    worker: String,
    processing: String,
    lease: String,
}

impl LogQueue {
    /// This worker's id (part of its keys).
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The activity's counters ([`RedisState::snapshot`]).
    pub async fn snapshot(&self) -> Result<ActivitySnapshot, RedisStateError> {
        self.state.snapshot(self.keys.activity_id).await
    }

    /// Whether the queue may give this worker anything to do before it joins: records
    /// queued, or workers registered (one of them may have died holding records), or the
    /// shared list of earlier versions. One round trip, nothing written: serving every
    /// activity, a worker joins only the queues with work, so idle sales cost no lease.
    pub async fn has_work(&self) -> Result<bool, RedisStateError> {
        let mut connection = self.state.connection().await?;
        let (queued, workers, legacy): (u64, u64, u64) = redis::pipe()
            .llen(&self.keys.logs)
            .scard(&self.keys.log_workers)
            .llen(&self.keys.legacy_processing)
            .query_async(&mut connection)
            .await?;
        Ok(queued + workers + legacy > 0)
    }

    /// Joins the workers set and takes a lease of `lease`; call again after
    /// [`LogQueue::renew`] said the worker lost its records.
    pub async fn register(&self, lease: Duration) -> Result<(), RedisStateError> {
        let mut connection = self.state.connection().await?;
        redis::pipe()
            .atomic()
            .sadd(&self.keys.log_workers, &self.worker)
            .ignore()
            .pset_ex(&self.lease, 1, duration_ms(lease))
            .ignore()
            .exec_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Extends the lease. `false`: the worker's records were claimed by another worker (its
    /// lease had lapsed) or the activity was reset; it must register again and must not store
    /// what it holds in memory (the claimer stores it).
    pub async fn renew(&self, lease: Duration) -> Result<bool, RedisStateError> {
        let mut connection = self.state.connection().await?;
        let renewed: i64 = self
            .state
            .scripts
            .log_renew_lease
            .call(&[&self.keys.log_workers, &self.lease])
            .arg(&self.worker)
            .arg(duration_ms(lease))
            .invoke(&mut connection)
            .await?;
        Ok(renewed == 1)
    }

    /// Leaves the workers set when nothing is held (a clean stop). Returns the records
    /// still held; then the registration stays, and the records are claimed once the lease
    /// lapses.
    pub async fn unregister(&self) -> Result<u64, RedisStateError> {
        let mut connection = self.state.connection().await?;
        self.state
            .scripts
            .log_unregister
            .call(&[&self.keys.log_workers, &self.lease, &self.processing])
            .arg(&self.worker)
            .invoke(&mut connection)
            .await
    }

    /// Moves the records of every worker whose lease lapsed (and of the legacy shared list)
    /// to this worker's processing list. Returns how many were moved.
    pub async fn claim_abandoned(&self) -> Result<u64, RedisStateError> {
        let mut connection = self.state.connection().await?;
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.log_workers)
            .query_async(&mut connection)
            .await?;
        let mut victims: Vec<(String, String, String)> = workers
            .iter()
            .filter(|worker| **worker != self.worker)
            .map(|worker| {
                (
                    worker.clone(),
                    self.keys.lease(worker),
                    self.keys.processing(worker),
                )
            })
            .collect();
        // The shared list of earlier versions has no lease: always claimable.
        victims.push((
            String::new(),
            // A lease no worker has (ids are never empty).
            self.keys.lease(""),
            self.keys.legacy_processing.clone(),
        ));
        let mut claimed = 0;
        for (worker, lease, list) in victims {
            let moved: i64 = self
                .state
                .scripts
                .log_claim
                .call(&[&self.keys.log_workers, &lease, &list, &self.processing])
                .arg(&worker)
                .invoke(&mut connection)
                .await?;
            if moved > 0 {
                tracing::warn!(
                    event = "recover",
                    from_worker = %worker,
                    records = moved,
                    "claimed the records of a log_worker whose lease lapsed"
                );
                claimed += moved as u64;
            }
        }
        Ok(claimed)
    }

    /// Moves up to `max` queued records to this worker's processing list and returns them.
    /// When the queue is empty, waits up to `wait` (capped below the response timeout) for
    /// one. After an error the move may have happened with its reply lost:
    /// [`LogQueue::held`] then says what this worker holds.
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<String>, RedisStateError> {
        let mut connection = self.state.connection().await?;
        let mut taken: Vec<String> = self
            .state
            .scripts
            .log_take
            .call(&[&self.keys.logs, &self.processing])
            .arg(max)
            .invoke(&mut connection)
            .await?;
        if taken.is_empty() && !wait.is_zero() && max > 0 && self.state.is_cluster() {
            // No blocking move on a cluster: it would hold up every other command sent on the
            // shared connection to that node. A short sleep instead; the caller takes again.
            tokio::time::sleep(wait.min(CLUSTER_POLL)).await;
        } else if taken.is_empty() && !wait.is_zero() && max > 0 {
            let wait = wait.min(self.state.longest_block);
            let first: Option<String> = redis::cmd("BLMOVE")
                .arg(&self.keys.logs)
                .arg(&self.processing)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(wait.as_secs_f64())
                .query_async(&mut connection)
                .await?;
            if let Some(first) = first {
                taken.push(first);
                let rest: Vec<String> = self
                    .state
                    .scripts
                    .log_take
                    .call(&[&self.keys.logs, &self.processing])
                    .arg(max - 1)
                    .invoke(&mut connection)
                    .await?;
                taken.extend(rest);
            }
        }
        Ok(taken)
    }

    /// Removes records from this worker's processing list once they are stored; `dead`
    /// (undecodable ones among them) are kept in the dead-letter list, in the same atomic
    /// step, so none is in neither.
    pub async fn ack(&self, records: &[String], dead: &[String]) -> Result<(), RedisStateError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut call = self
            .state
            .scripts
            .log_ack
            .call(&[&self.processing, &self.keys.dead]);
        call.arg(dead.len());
        for record in dead {
            call.arg(record);
        }
        for record in records.iter().filter(|record| !dead.contains(record)) {
            call.arg(record);
        }
        let mut connection = self.state.connection().await?;
        let _: i64 = call.invoke(&mut connection).await?;
        Ok(())
    }

    /// The records this worker took and has not acknowledged: after a failed take, and
    /// after claiming another worker's records.
    pub async fn held(&self) -> Result<Vec<String>, RedisStateError> {
        let mut connection = self.state.connection().await?;
        Ok(redis::cmd("LRANGE")
            .arg(&self.processing)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await?)
    }
}
