//! The bounded channel between a worker's consuming thread and its producing thread.
//!
//! It carries batches, not single records, so the two threads meet (lock, maybe wake) once
//! per batch instead of once per record; emptied batches come back through the same queue's
//! free list, so steady-state processing allocates nothing. A full queue makes the consumer
//! wait (bounded, with a timeout so it can go back to serving its consumer's rebalances):
//! that is the back-pressure that keeps memory flat when producing is slower than consuming.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct State<T> {
    full: VecDeque<Vec<T>>,
    free: Vec<Vec<T>>,
    closed: bool,
    checkpoints_requested: u64,
    checkpoints_done: u64,
    last_checkpoint_succeeded: bool,
}

/// A bounded queue of batches of `T`, for one consuming and one producing thread.
pub struct BatchQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled when a batch is pushed or the queue is closed.
    pushed: Condvar,
    /// Signalled when a batch is popped.
    popped: Condvar,
    /// Signalled when a requested checkpoint is done.
    checkpointed: Condvar,
    capacity: usize,
    batch_len: usize,
}

/// What [`BatchQueue::pop`] found.
pub enum Popped<T> {
    Batch(Vec<T>),
    /// Nothing arrived within the timeout.
    Empty,
    /// Everything queued was popped and the consumer asked for a checkpoint: make what was
    /// popped durable, then call [`BatchQueue::checkpoint_done`].
    CheckpointRequested,
    /// Closed and drained: nothing will ever arrive.
    Closed,
}

impl<T> BatchQueue<T> {
    /// Room for `capacity` batches of up to `batch_len` records each.
    pub fn new(capacity: usize, batch_len: usize) -> Self {
        Self {
            state: Mutex::new(State {
                full: VecDeque::with_capacity(capacity.max(1)),
                free: Vec::new(),
                closed: false,
                checkpoints_requested: 0,
                checkpoints_done: 0,
                last_checkpoint_succeeded: false,
            }),
            pushed: Condvar::new(),
            popped: Condvar::new(),
            checkpointed: Condvar::new(),
            capacity: capacity.max(1),
            batch_len: batch_len.max(1),
        }
    }

    /// Records per batch.
    pub fn batch_len(&self) -> usize {
        self.batch_len
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves only plain data behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An empty batch to fill: a recycled one when there is one.
    pub fn empty_batch(&self) -> Vec<T> {
        self.lock()
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.batch_len))
    }

    /// Returns an emptied batch for reuse.
    pub fn recycle(&self, mut batch: Vec<T>) {
        batch.clear();
        let mut state = self.lock();
        // Batches in circulation are bounded by capacity + the two threads' own.
        if state.free.len() <= self.capacity + 2 {
            state.free.push(batch);
        }
    }

    /// Queues `batch`, waiting up to `timeout` for room. Gives the batch back when the
    /// queue stayed full (or was closed).
    pub fn push(&self, batch: Vec<T>, timeout: Duration) -> Result<(), Vec<T>> {
        // The clock is read only when there is something to wait for.
        let mut deadline = None;
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(batch);
            }
            if state.full.len() < self.capacity {
                state.full.push_back(batch);
                drop(state);
                self.pushed.notify_one();
                return Ok(());
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            if now >= deadline {
                return Err(batch);
            }
            state = self
                .popped
                .wait_timeout(state, deadline - now)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// The next batch, waiting up to `timeout`.
    pub fn pop(&self, timeout: Duration) -> Popped<T> {
        let mut deadline = None;
        let mut state = self.lock();
        loop {
            if let Some(batch) = state.full.pop_front() {
                drop(state);
                self.popped.notify_one();
                return Popped::Batch(batch);
            }
            if state.checkpoints_requested > state.checkpoints_done {
                return Popped::CheckpointRequested;
            }
            if state.closed {
                return Popped::Closed;
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            if now >= deadline {
                return Popped::Empty;
            }
            state = self
                .pushed
                .wait_timeout(state, deadline - now)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Asks the popping thread for a checkpoint of everything pushed so far and waits up to
    /// `timeout` for it. True when it was made; false when it failed, did not happen in
    /// time, or the queue is closed.
    pub fn request_checkpoint(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        state.checkpoints_requested += 1;
        let ticket = state.checkpoints_requested;
        self.pushed.notify_one();
        loop {
            if state.checkpoints_done >= ticket {
                return state.last_checkpoint_succeeded;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return false;
            }
            state = self
                .checkpointed
                .wait_timeout(state, deadline - now)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// The checkpoint asked for by [`request_checkpoint`](Self::request_checkpoint) was
    /// made (`succeeded`) or given up.
    pub fn checkpoint_done(&self, succeeded: bool) {
        let mut state = self.lock();
        state.checkpoints_done = state.checkpoints_requested;
        state.last_checkpoint_succeeded = succeeded;
        drop(state);
        self.checkpointed.notify_all();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// No more pushes: the consumer has stopped. Batches already queued are still popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.pushed.notify_all();
        self.popped.notify_all();
        self.checkpointed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_queue_refuses_after_timeout_and_accepts_after_a_pop() {
        let queue = BatchQueue::new(2, 4);
        queue.push(vec![1], Duration::ZERO).unwrap();
        queue.push(vec![2], Duration::ZERO).unwrap();
        let refused = queue.push(vec![3], Duration::from_millis(10));
        assert_eq!(refused, Err(vec![3]), "bounded: the third batch waits");
        assert!(matches!(queue.pop(Duration::ZERO), Popped::Batch(b) if b == vec![1]));
        queue.push(vec![3], Duration::ZERO).unwrap();
    }

    #[test]
    fn close_drains_then_reports_closed() {
        let queue = BatchQueue::new(4, 4);
        queue.push(vec![7], Duration::ZERO).unwrap();
        queue.close();
        assert_eq!(queue.push(vec![8], Duration::ZERO), Err(vec![8]));
        assert!(matches!(queue.pop(Duration::ZERO), Popped::Batch(b) if b == vec![7]));
        assert!(matches!(queue.pop(Duration::ZERO), Popped::Closed));
    }

    #[test]
    fn a_checkpoint_request_comes_after_the_queued_batches_and_waits_for_done() {
        let queue = Arc::new(BatchQueue::new(4, 4));
        queue.push(vec![1], Duration::ZERO).unwrap();
        let requester = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.request_checkpoint(Duration::from_secs(30)))
        };
        let mut popped = Vec::new();
        loop {
            match queue.pop(Duration::from_secs(30)) {
                Popped::Batch(batch) => popped.extend(batch),
                Popped::CheckpointRequested => break,
                _ => panic!("expected the batch, then the request"),
            }
        }
        assert_eq!(popped, vec![1], "queued batches first");
        queue.checkpoint_done(true);
        assert!(requester.join().unwrap());
        assert!(matches!(queue.pop(Duration::ZERO), Popped::Empty));
        queue.close();
        assert!(!queue.request_checkpoint(Duration::from_secs(30)), "closed");
    }

    #[test]
    fn recycled_batches_are_reused() {
        let queue: BatchQueue<u64> = BatchQueue::new(2, 64);
        let batch = queue.empty_batch();
        let address = batch.as_ptr();
        queue.recycle(batch);
        let again = queue.empty_batch();
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty() && again.capacity() >= 64);
    }

    #[test]
    fn a_blocked_push_wakes_when_the_other_thread_pops() {
        let queue = Arc::new(BatchQueue::new(1, 1));
        queue.push(vec![1], Duration::ZERO).unwrap();
        let consumer = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.push(vec![2], Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(queue.pop(Duration::ZERO), Popped::Batch(_)));
        assert_eq!(consumer.join().unwrap(), Ok(()));
        let mut received = Vec::new();
        while let Popped::Batch(batch) = queue.pop(Duration::from_millis(50)) {
            received.extend(batch);
        }
        assert_eq!(received, vec![2]);
    }
}
