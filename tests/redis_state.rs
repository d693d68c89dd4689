//! The flash-sale state and Lua script against the real Redis of the dev stack.

mod support;

use seckill_kafka::common::{now_ms, SeckillOutcome, SeckillRecord, SeckillRequest};
use seckill_kafka::redis_state::{ActivityKeys, RedisState, RedisStateError};
use std::collections::HashSet;
use std::time::Duration;

fn state() -> RedisState {
    let config = support::redis_config();
    RedisState::connect(&config).expect("redis pool")
}

fn request(activity_id: u64, user_id: u64, request_id: &str) -> SeckillRequest {
    SeckillRequest {
        request_id: request_id.to_string(),
        user_id,
        activity_id,
        request_initiation_time: now_ms(),
    }
}

async fn buy(state: &RedisState, request: &SeckillRequest) -> SeckillOutcome {
    let record = SeckillRecord::new(request, now_ms());
    state
        .run_seckill_script(request, &record)
        .await
        .expect("seckill script")
}

/// 64 tasks x 1,000 requests from 20,000 users (so many users retry and some request ids
/// repeat) against stock 100: exactly 100 purchases, by 100 distinct users, and stock 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_oversell() {
    const TASKS: u64 = 64;
    const REQUESTS_PER_TASK: u64 = 1_000;
    const STOCK: u64 = 100;
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, STOCK).await.unwrap();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut successes = Vec::new();
            for n in 0..REQUESTS_PER_TASK {
                let user = rand::random_range(0..20_000u64);
                // Every 10th request reuses an id another task also sends.
                let request_id = if n % 10 == 0 {
                    format!("shared-{}", n / 10)
                } else {
                    format!("t{task}-{n}")
                };
                let request = request(activity, user, &request_id);
                if buy(&state, &request).await == SeckillOutcome::Success {
                    successes.push(user);
                }
            }
            successes
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.unwrap());
    }

    let distinct: HashSet<u64> = winners.iter().copied().collect();
    assert_eq!(winners.len() as u64, STOCK, "SUCCESS answers");
    assert_eq!(distinct.len() as u64, STOCK, "one purchase per user");
    let snapshot = state.snapshot(activity).await.unwrap();
    assert_eq!(snapshot.stock, Some(0), "stock never below 0, all sold");
    assert_eq!(snapshot.initial_stock, Some(STOCK as i64));
    assert_eq!(snapshot.success, STOCK as i64, "success counter");
    assert_eq!(snapshot.buyers, STOCK, "buyers set");
    assert_eq!(
        snapshot.queued_records, STOCK,
        "one queued record per purchase"
    );
    assert!(snapshot.over, "over flag set at 0");
    assert!(state.is_activity_over(activity).await.unwrap());

    // The queued records are exactly the winners.
    let records = state
        .log_queue(activity, "check")
        .take(1_000, Duration::ZERO)
        .await
        .unwrap();
    let recorded: HashSet<u64> = records
        .iter()
        .map(|json| SeckillRecord::from_json(json.as_bytes()).unwrap().user_id)
        .collect();
    assert_eq!(recorded, distinct);
}

#[tokio::test]
async fn repeated_request_id_is_duplicate_and_leaves_stock() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 5).await.unwrap();
    let first = request(activity, 1, "req-1");
    assert_eq!(buy(&state, &first).await, SeckillOutcome::Success);
    assert_eq!(state.get_stock(activity).await.unwrap(), Some(4));
    // Same id again, even from another user (a corrupted retry): no stock taken.
    assert_eq!(buy(&state, &first).await, SeckillOutcome::Duplicate);
    assert_eq!(
        buy(&state, &request(activity, 2, "req-1")).await,
        SeckillOutcome::Duplicate
    );
    let snapshot = state.snapshot(activity).await.unwrap();
    assert_eq!(
        (snapshot.stock, snapshot.success, snapshot.queued_records),
        (Some(4), 1, 1)
    );
}

#[tokio::test]
async fn second_request_of_a_user_is_already_bought() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 5).await.unwrap();
    assert_eq!(
        buy(&state, &request(activity, 9, "a")).await,
        SeckillOutcome::Success
    );
    assert_eq!(
        buy(&state, &request(activity, 9, "b")).await,
        SeckillOutcome::AlreadyBought
    );
    assert_eq!(state.get_stock(activity).await.unwrap(), Some(4));
    assert_eq!(state.snapshot(activity).await.unwrap().success, 1);
}

#[tokio::test]
async fn sold_out_sets_the_over_flag() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 1).await.unwrap();
    assert!(!state.is_activity_over(activity).await.unwrap());
    assert_eq!(
        buy(&state, &request(activity, 1, "a")).await,
        SeckillOutcome::Success
    );
    assert!(
        state.is_activity_over(activity).await.unwrap(),
        "over once stock hits 0"
    );
    assert_eq!(
        buy(&state, &request(activity, 2, "b")).await,
        SeckillOutcome::SoldOut
    );
    assert_eq!(state.get_stock(activity).await.unwrap(), Some(0));
    state.set_activity_over(activity, false).await.unwrap();
    assert!(!state.is_activity_over(activity).await.unwrap());
    state.set_activity_over(activity, true).await.unwrap();
    assert!(state.is_activity_over(activity).await.unwrap());
}

#[tokio::test]
async fn uninitialised_activity_is_an_error_and_records_nothing() {
    let state = state();
    let activity = support::unique_id();
    let request = request(activity, 1, "a");
    let record = SeckillRecord::new(&request, now_ms());
    let error = state
        .run_seckill_script(&request, &record)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RedisStateError::NotInitialised(id) if id == activity),
        "{error}"
    );
    assert_eq!(state.get_stock(activity).await.unwrap(), None);
    // The request id was not remembered: after init the same request succeeds.
    state.init_state(activity, 1).await.unwrap();
    assert_eq!(buy(&state, &request).await, SeckillOutcome::Success);
}

#[tokio::test]
async fn script_survives_script_flush() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 10).await.unwrap();
    assert_eq!(
        buy(&state, &request(activity, 1, "a")).await,
        SeckillOutcome::Success
    );
    {
        let mut connection = state.pool().get().await.unwrap();
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut *connection)
            .await
            .unwrap();
    }
    // EVALSHA now answers NOSCRIPT; the call must load the script again and succeed.
    assert_eq!(
        buy(&state, &request(activity, 2, "b")).await,
        SeckillOutcome::Success
    );
    assert_eq!(state.get_stock(activity).await.unwrap(), Some(8));
}

#[tokio::test]
async fn init_state_resets_everything() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 2).await.unwrap();
    buy(&state, &request(activity, 1, "a")).await;
    buy(&state, &request(activity, 2, "b")).await;
    state.init_state(activity, 3).await.unwrap();
    let snapshot = state.snapshot(activity).await.unwrap();
    assert_eq!(snapshot.stock, Some(3));
    assert_eq!(snapshot.initial_stock, Some(3));
    assert_eq!(
        (snapshot.success, snapshot.buyers, snapshot.queued_records),
        (0, 0, 0)
    );
    assert!(!snapshot.over);
    // The old request ids and buyers are forgotten.
    assert_eq!(
        buy(&state, &request(activity, 1, "a")).await,
        SeckillOutcome::Success
    );
}

/// Waits until Redis reports a client blocked in a command (a BLMOVE waiting for records).
async fn wait_until_a_client_blocks(state: &RedisState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut connection = state.pool().get().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut *connection)
            .await
            .unwrap();
        let blocked = info
            .lines()
            .find_map(|line| line.strip_prefix("blocked_clients:"))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if blocked > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no client blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn log_records_move_reliably() {
    let state = state();
    let activity = support::unique_id();
    let keys = ActivityKeys::new(activity);
    state.init_state(activity, 10).await.unwrap();
    for user in 0..5 {
        buy(&state, &request(activity, user, &format!("r{user}"))).await;
    }
    let queue = state.log_queue(activity, "w-1");
    queue.register(Duration::from_secs(30)).await.unwrap();
    let first = queue.take(3, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 3);
    let users: Vec<u64> = first
        .iter()
        .map(|json| SeckillRecord::from_json(json.as_bytes()).unwrap().user_id)
        .collect();
    assert_eq!(
        users,
        vec![0, 1, 2],
        "records leave the queue in purchase order"
    );
    // Taken but not acknowledged: they sit in the worker's processing list.
    assert_eq!(queue.held().await.unwrap(), first);
    queue.ack(&first[..2]).await.unwrap();
    assert_eq!(queue.held().await.unwrap(), first[2..].to_vec());

    let rest = queue.take(10, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 2);
    let snapshot = state.snapshot(activity).await.unwrap();
    assert_eq!(
        (snapshot.queued_records, snapshot.processing_records),
        (0, 3)
    );

    // An empty queue with a wait returns empty after the wait, or a record pushed meanwhile.
    let started = std::time::Instant::now();
    assert!(queue
        .take(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.take(10, Duration::from_secs(5)).await })
    };
    // The purchase comes only once the waiter blocks, so the wake-up is what is tested.
    wait_until_a_client_blocks(&state).await;
    buy(&state, &request(activity, 7, "r7")).await;
    let woken = waiter.await.unwrap().unwrap();
    assert_eq!(woken.len(), 1);
    assert!(keys.logs.ends_with(":logs"));
}

/// Records of a worker whose lease is alive are never taken by another; once it lapses, a
/// live worker claims them all in one step, and the dead worker learns it lost them.
#[tokio::test]
async fn a_dead_workers_records_are_claimed_only_after_its_lease_lapses() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 10).await.unwrap();
    for user in 0..6 {
        buy(&state, &request(activity, user, &format!("r{user}"))).await;
    }
    let alive = state.log_queue(activity, "alive");
    let dying = state.log_queue(activity, "dying");
    let claimer = state.log_queue(activity, "claimer");
    alive.register(Duration::from_secs(30)).await.unwrap();
    dying.register(Duration::from_millis(300)).await.unwrap();
    claimer.register(Duration::from_secs(30)).await.unwrap();
    let alive_holds = alive.take(2, Duration::ZERO).await.unwrap();
    let dying_holds = dying.take(3, Duration::ZERO).await.unwrap();
    assert_eq!((alive_holds.len(), dying_holds.len()), (2, 3));

    // Both leases alive: nothing to claim.
    assert_eq!(claimer.claim_abandoned().await.unwrap(), 0);
    assert!(claimer.held().await.unwrap().is_empty());

    // The dying worker stops renewing; after its lease lapses its records move over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let claimed = loop {
        let claimed = claimer.claim_abandoned().await.unwrap();
        if claimed > 0 {
            break claimed;
        }
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(claimed, 3);
    assert_eq!(claimer.held().await.unwrap(), dying_holds);
    assert!(dying.held().await.unwrap().is_empty());
    assert_eq!(
        alive.held().await.unwrap(),
        alive_holds,
        "a live worker keeps its records"
    );
    assert!(
        !dying.renew(Duration::from_secs(30)).await.unwrap(),
        "the dead worker lost them"
    );
    assert!(alive.renew(Duration::from_secs(30)).await.unwrap());
    assert_eq!(
        state.snapshot(activity).await.unwrap().processing_records,
        5
    );

    // A clean stop leaves the set only when nothing is held.
    assert_eq!(alive.unregister().await.unwrap(), 2);
    alive.ack(&alive_holds).await.unwrap();
    assert_eq!(alive.unregister().await.unwrap(), 0);
    assert!(!alive.renew(Duration::from_secs(30)).await.unwrap());

    // Records in the single list of earlier versions are claimed too.
    let keys = ActivityKeys::new(activity);
    let mut connection = state.pool().get().await.unwrap();
    let () = redis::cmd("RPUSH")
        .arg(&keys.legacy_processing)
        .arg("legacy-record")
        .query_async(&mut *connection)
        .await
        .unwrap();
    assert_eq!(claimer.claim_abandoned().await.unwrap(), 1);
    assert_eq!(
        claimer.held().await.unwrap().last().unwrap(),
        "legacy-record"
    );
}
