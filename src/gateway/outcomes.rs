//! The requests this gateway accepted and their outcomes: a bounded table of pending
//! requests (a purchase or a long-poll waits on its entry) and the newest outcomes, kept for
//! `GET /requests/{id}` after they arrived. The results reader completes entries.

use crate::common::SeckillResult;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The most entries the table is sized for up front (2^21 buckets of 41 bytes: ~84 MB of
/// address space, touched as it fills; the defaults, 300,000 entries, ~21 MB).
const PRESIZED_ENTRIES: usize = 1 << 20;

/// Small (two pointers) so the table, sized up front, costs little before it fills.
struct Entry {
    result: Option<Box<SeckillResult>>,
    /// Woken when the result arrives.
    arrived: Arc<Notify>,
}

struct Table {
    entries: HashMap<String, Entry>,
    /// Request ids with an outcome, oldest first (evicted beyond `recent`).
    completed: VecDeque<String>,
    pending: usize,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Decided(Box<SeckillResult>),
    Pending,
    Unknown,
}

/// Why a request cannot be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Shared by the handlers and the results reader.
pub struct Outcomes {
    table: Mutex<Table>,
    max_pending: usize,
    recent: usize,
}

impl Outcomes {
    pub fn new(max_pending: usize, recent: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                // Sized for its bound once: growing a table of a hundred thousand entries
                // rehashes all of them under the lock, stalling every handler meanwhile.
                // (Up to a limit: a bound set far higher grows past it as it fills.)
                entries: HashMap::with_capacity(
                    max_pending.saturating_add(recent).min(PRESIZED_ENTRIES),
                ),
                // One over: an id is pushed before the oldest is evicted.
                completed: VecDeque::with_capacity(recent.saturating_add(1).min(PRESIZED_ENTRIES)),
                pending: 0,
            }),
            max_pending,
            recent: recent.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-changed in a way that
        // matters more than refusing service: use it as it is.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `request_id` as pending unless it is known. `Ok(true)`: newly pending.
    pub fn register(&self, request_id: &str) -> Result<bool, TableFull> {
        let mut table = self.lock();
        if table.entries.contains_key(request_id) {
            return Ok(false);
        }
        if table.pending >= self.max_pending {
            return Err(TableFull);
        }
        table.entries.insert(
            request_id.to_string(),
            Entry {
                result: None,
                arrived: Arc::new(Notify::new()),
            },
        );
        table.pending += 1;
        Ok(true)
    }

    /// Forgets a pending request that was never sent.
    pub fn abandon(&self, request_id: &str) {
        let mut table = self.lock();
        if table
            .entries
            .get(request_id)
            .is_some_and(|entry| entry.result.is_none())
        {
            table.entries.remove(request_id);
            table.pending -= 1;
        }
    }

    /// An outcome arrived (the first one counts; a result read twice changes nothing). One
    /// of a request not pending here (accepted by another gateway, or before a restart) is
    /// kept too, so its owner may ask any gateway. True when it completed a request
    /// pending here.
    pub fn complete(&self, result: SeckillResult) -> bool {
        let id = result.request_id.clone();
        // Allocated before the lock is taken.
        let result = Box::new(result);
        let mut table = self.lock();
        let was_pending = match table.entries.get_mut(&id) {
            Some(entry) if entry.result.is_some() => return false,
            Some(entry) => {
                entry.result = Some(result);
                entry.arrived.notify_waiters();
                table.pending -= 1;
                true
            }
            None => {
                table.entries.insert(
                    id.clone(),
                    Entry {
                        result: Some(result),
                        arrived: Arc::new(Notify::new()),
                    },
                );
                false
            }
        };
        table.completed.push_back(id);
        while table.completed.len() > self.recent {
            if let Some(old) = table.completed.pop_front() {
                table.entries.remove(&old);
            }
        }
        was_pending
    }

    pub fn lookup(&self, request_id: &str) -> Lookup {
        match self.lock().entries.get(request_id) {
            Some(Entry {
                result: Some(result),
                ..
            }) => Lookup::Decided(result.clone()),
            Some(_) => Lookup::Pending,
            None => Lookup::Unknown,
        }
    }

    /// Waits up to `wait` for `request_id`'s outcome.
    pub async fn wait(&self, request_id: &str, wait: Duration) -> Lookup {
        if wait.is_zero() {
            // No timer for a look (`wait_ms=0`, the default of a long-poll).
            return self.lookup(request_id);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = {
                let table = self.lock();
                match table.entries.get(request_id) {
                    None => return Lookup::Unknown,
                    Some(Entry {
                        result: Some(result),
                        ..
                    }) => return Lookup::Decided(result.clone()),
                    Some(entry) => entry.arrived.clone(),
                }
            };
            let notified = arrived.notified();
            // The result may have come between the look and the wait.
            if let Lookup::Decided(result) = self.lookup(request_id) {
                return Lookup::Decided(result);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lookup(request_id);
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.lock().pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::SeckillOutcome;

    fn result(id: &str) -> SeckillResult {
        SeckillResult {
            request_id: id.into(),
            user_id: 1,
            activity_id: 2,
            outcome: SeckillOutcome::Success,
            repeat: false,
            request_initiation_time: 0,
            decided_at: 1,
            cost_ms: 1,
            pay_by: None,
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_outcome_and_the_table_stays_bounded() {
        let outcomes = Arc::new(Outcomes::new(2, 2));
        assert_eq!(outcomes.register("a"), Ok(true));
        assert_eq!(outcomes.register("a"), Ok(false));
        assert_eq!(outcomes.register("b"), Ok(true));
        assert_eq!(outcomes.register("c"), Err(TableFull));
        let waiter = {
            let outcomes = outcomes.clone();
            tokio::spawn(async move { outcomes.wait("a", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(outcomes.complete(result("a")), "a was pending here");
        assert!(
            !outcomes.complete(result("a")),
            "read twice: changes nothing"
        );
        assert!(matches!(waiter.await.unwrap(), Lookup::Decided(_)));
        assert_eq!(
            outcomes.wait("b", Duration::from_millis(10)).await,
            Lookup::Pending
        );
        outcomes.complete(result("b"));
        assert_eq!(outcomes.register("c"), Ok(true));
        outcomes.complete(result("c"));
        // Only the two newest outcomes are kept.
        assert_eq!(outcomes.lookup("a"), Lookup::Unknown);
        // One accepted elsewhere (or before a restart) is kept as well.
        assert!(!outcomes.complete(result("elsewhere")), "not pending here");
        assert!(matches!(outcomes.lookup("elsewhere"), Lookup::Decided(_)));
        outcomes.abandon("c");
        assert!(matches!(outcomes.lookup("c"), Lookup::Decided(_)));
        assert_eq!(outcomes.pending(), 0);
    }
}
