//! The flash-sale state and Lua script against the real Redis of the dev stack.

mod support;

use seckill_kafka::common::{now_ms, Decision, SeckillOutcome, SeckillRecord, SeckillRequest};
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

async fn buy(state: &RedisState, request: &SeckillRequest) -> Decision {
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
                if buy(&state, &request).await == Decision::first(SeckillOutcome::Success) {
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

/// A request id is decided once: repeating it (a redelivery, a duplicated send, even with
/// another user id) gets the first outcome again, flagged as a repeat, and changes nothing.
#[tokio::test]
async fn a_repeated_request_gets_its_first_outcome_and_changes_nothing() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 1).await.unwrap();
    let first = request(activity, 1, "req-1");
    assert_eq!(
        buy(&state, &first).await,
        Decision::first(SeckillOutcome::Success)
    );
    assert_eq!(state.get_stock(activity).await.unwrap(), Some(0));
    assert_eq!(
        buy(&state, &first).await,
        Decision::repeat(SeckillOutcome::Success)
    );
    assert_eq!(
        buy(&state, &request(activity, 2, "req-1")).await,
        Decision::repeat(SeckillOutcome::Success)
    );
    let sold_out = request(activity, 3, "req-3");
    assert_eq!(
        buy(&state, &sold_out).await,
        Decision::first(SeckillOutcome::SoldOut)
    );
    assert_eq!(
        buy(&state, &sold_out).await,
        Decision::repeat(SeckillOutcome::SoldOut)
    );
    let snapshot = state.snapshot(activity).await.unwrap();
    assert_eq!(
        (snapshot.stock, snapshot.success, snapshot.queued_records),
        (Some(0), 1, 1)
    );
    // Each request id decided once and counted once, by outcome.
    assert_eq!(
        (
            snapshot.requests_seen,
            snapshot.sold_out,
            snapshot.already_bought
        ),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn second_request_of_a_user_is_already_bought() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 5).await.unwrap();
    assert_eq!(
        buy(&state, &request(activity, 9, "a")).await,
        Decision::first(SeckillOutcome::Success)
    );
    assert_eq!(
        buy(&state, &request(activity, 9, "b")).await,
        Decision::first(SeckillOutcome::AlreadyBought)
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
        Decision::first(SeckillOutcome::Success)
    );
    assert!(
        state.is_activity_over(activity).await.unwrap(),
        "over once stock hits 0"
    );
    assert_eq!(
        buy(&state, &request(activity, 2, "b")).await,
        Decision::first(SeckillOutcome::SoldOut)
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
    assert_eq!(
        buy(&state, &request).await,
        Decision::first(SeckillOutcome::Success)
    );
}

#[tokio::test]
async fn script_survives_script_flush() {
    let state = state();
    let activity = support::unique_id();
    state.init_state(activity, 10).await.unwrap();
    assert_eq!(
        buy(&state, &request(activity, 1, "a")).await,
        Decision::first(SeckillOutcome::Success)
    );
    {
        let mut connection = state.connection().await.unwrap();
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    // EVALSHA now answers NOSCRIPT; the call must load the script again and succeed.
    assert_eq!(
        buy(&state, &request(activity, 2, "b")).await,
        Decision::first(SeckillOutcome::Success)
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
        Decision::first(SeckillOutcome::Success)
    );
}

/// Waits until Redis reports a client blocked in a command (a BLMOVE waiting for records).
async fn wait_until_a_client_blocks(state: &RedisState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut connection = state.connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut connection)
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
    queue.ack(&first[..2], &[]).await.unwrap();
    assert_eq!(queue.held().await.unwrap(), first[2..].to_vec());

    let rest = queue.take(10, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 2);
    // Not the head of the list (first[2] is): removed by value; one kept as dead.
    queue.ack(&rest, &rest[1..]).await.unwrap();
    assert_eq!(queue.held().await.unwrap(), first[2..].to_vec());
    {
        let mut connection = state.connection().await.unwrap();
        let dead: Vec<String> = redis::cmd("LRANGE")
            .arg(&keys.dead)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(dead, rest[1..].to_vec());
        for record in &rest {
            let () = redis::cmd("RPUSH")
                .arg(keys.processing(queue.worker()))
                .arg(record)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    }
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
    alive.ack(&alive_holds, &[]).await.unwrap();
    assert_eq!(alive.unregister().await.unwrap(), 0);
    assert!(!alive.renew(Duration::from_secs(30)).await.unwrap());

    // Records in the single list of earlier versions are claimed too.
    let keys = ActivityKeys::new(activity);
    let mut connection = state.connection().await.unwrap();
    let () = redis::cmd("RPUSH")
        .arg(&keys.legacy_processing)
        .arg("legacy-record")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(claimer.claim_abandoned().await.unwrap(), 1);
    assert_eq!(
        claimer.held().await.unwrap().last().unwrap(),
        "legacy-record"
    );
}

mod batch_equals_one_call_per_request {
    //! The batch purchase script against the single-request one: random request sequences
    //! (repeated request ids, several requests per user, stock running out, requests of
    //! another activity) go through one call per request in one pair of activities and
    //! through batches of random sizes in another; every outcome and every Redis key must
    //! be the same.

    use super::*;
    use proptest::prelude::*;
    use seckill_kafka::common::SeckillRecord;

    /// Request ids include characters JSON must escape.
    const REQUEST_IDS: [&str; 8] = ["r1", "r2", "r\"3", "r/4", "r\\5", "ü6", "r 7", "r8"];
    const PROCESSED_TIME: i64 = 1_700_000_000_500;

    #[derive(Debug, Clone)]
    struct Step {
        /// 0 or 1: which of the two activities.
        activity: usize,
        request: usize,
        user: u64,
        initiated_ago_ms: i64,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            (0..2usize, 0..REQUEST_IDS.len(), 0..6u64, 0..2_000i64).prop_map(
                |(activity, request, user, initiated_ago_ms)| Step {
                    activity,
                    request,
                    user,
                    initiated_ago_ms,
                },
            ),
            0..40,
        )
    }

    fn request_of(step: &Step, activity_id: u64) -> SeckillRequest {
        SeckillRequest {
            request_id: REQUEST_IDS[step.request].to_string(),
            user_id: step.user,
            activity_id,
            request_initiation_time: PROCESSED_TIME - step.initiated_ago_ms,
        }
    }

    /// Everything Redis holds for an activity, with the activity id taken out of the
    /// records so that two activities can be compared.
    #[derive(Debug, PartialEq)]
    struct State {
        stock: Option<String>,
        initial: Option<String>,
        over: bool,
        buyers: Vec<(String, String)>,
        decided: Vec<(String, String)>,
        outcome_counts: Vec<(String, String)>,
        success: Option<String>,
        records: Vec<SeckillRecord>,
    }

    async fn state_of(redis: &RedisState, activity_id: u64) -> State {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = redis.connection().await.unwrap();
        fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
            v.sort();
            v
        }
        type Reply = (
            Option<String>,
            Option<String>,
            bool,
            Vec<(String, String)>,
            Vec<(String, String)>,
            Vec<(String, String)>,
            Option<String>,
            Vec<String>,
        );
        let (stock, initial, over, buyers, decided, outcome_counts, success, records): Reply =
            redis::pipe()
                .get(&keys.stock)
                .get(&keys.initial_stock)
                .exists(&keys.over)
                .hgetall(&keys.holdings)
                .hgetall(&keys.decided)
                .hgetall(&keys.outcome_counts)
                .get(&keys.success)
                .lrange(&keys.logs, 0, -1)
                .query_async(&mut connection)
                .await
                .unwrap();
        State {
            stock,
            initial,
            over,
            buyers: sorted(buyers),
            decided: sorted(decided),
            outcome_counts: sorted(outcome_counts),
            success,
            records: records
                .iter()
                .map(|json| {
                    let mut record = SeckillRecord::from_json(json.as_bytes())
                        .unwrap_or_else(|e| panic!("{json}: {e}"));
                    record.activity_id = 0;
                    record
                })
                .collect(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn batches_give_every_request_the_same_outcome_and_leave_the_same_keys(
            steps in steps(),
            stocks in (0..5u64, 0..5u64),
            cuts in proptest::collection::vec(1..8usize, 1..20),
        ) {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let redis = state();
                let single = [support::unique_id(), support::unique_id()];
                let batched = [support::unique_id(), support::unique_id()];
                for (activities, stock) in [(single, stocks.0), (batched, stocks.0)] {
                    redis.init_state(activities[0], stock).await.unwrap();
                    redis.init_state(activities[1], stocks.1).await.unwrap();
                }

                // One call per request, in order.
                let mut expected = Vec::new();
                for step in &steps {
                    let request = request_of(step, single[step.activity]);
                    let record = SeckillRecord::new(&request, PROCESSED_TIME);
                    expected.push(redis.run_seckill_script(&request, &record).await.unwrap());
                }

                // Batches of random sizes; inside one, a call per activity, in order.
                let mut got = vec![None; steps.len()];
                let mut start = 0;
                let mut cut = cuts.iter().cycle();
                while start < steps.len() {
                    let end = (start + cut.next().copied().unwrap_or(1)).min(steps.len());
                    for (activity, &activity_id) in batched.iter().enumerate() {
                        let mut batch = redis.purchase_batch(activity_id);
                        batch.start(PROCESSED_TIME);
                        let members: Vec<usize> =
                            (start..end).filter(|&i| steps[i].activity == activity).collect();
                        for &i in &members {
                            let request = request_of(&steps[i], activity_id);
                            batch.push(
                                &request.request_id,
                                request.user_id,
                                request.request_initiation_time,
                                request.cost_ms(PROCESSED_TIME),
                            );
                        }
                        let outcomes = redis.run_purchase_batch(&batch).await.unwrap();
                        assert_eq!(outcomes.decisions.len(), members.len());
                        for (&i, outcome) in members.iter().zip(&outcomes.decisions) {
                            got[i] = Some(*outcome);
                        }
                    }
                    start = end;
                }
                let got: Vec<Decision> = got.into_iter().map(Option::unwrap).collect();
                assert_eq!(got, expected, "outcomes of {steps:?}");
                for activity in 0..2 {
                    assert_eq!(
                        state_of(&redis, batched[activity]).await,
                        state_of(&redis, single[activity]).await,
                        "activity {activity} after {steps:?}"
                    );
                }
            });
        }
    }

    /// A batch larger than the script's chunk of set members (1,000), with repeated request
    /// ids and users across chunk borders, against one call per request.
    #[tokio::test]
    async fn a_batch_of_thousands_equals_one_call_per_request() {
        let redis = state();
        let (single, batched) = (support::unique_id(), support::unique_id());
        for activity in [single, batched] {
            redis.init_state(activity, 1_500).await.unwrap();
        }
        let steps: Vec<(String, u64)> = (0..2_600u64)
            .map(|n| (format!("r{}", n % 2_300), n % 1_900))
            .collect();
        let mut expected = Vec::new();
        for (request_id, user) in &steps {
            let request = SeckillRequest {
                request_id: request_id.clone(),
                user_id: *user,
                activity_id: single,
                request_initiation_time: PROCESSED_TIME - 10,
            };
            let record = SeckillRecord::new(&request, PROCESSED_TIME);
            expected.push(redis.run_seckill_script(&request, &record).await.unwrap());
        }
        let mut batch = redis.purchase_batch(batched);
        batch.start(PROCESSED_TIME);
        for (request_id, user) in &steps {
            batch.push(request_id, *user, PROCESSED_TIME - 10, 10);
        }
        let got = redis.run_purchase_batch(&batch).await.unwrap();
        assert_eq!(got.decisions, expected);
        assert_eq!(
            state_of(&redis, batched).await,
            state_of(&redis, single).await
        );
    }

    /// A batch for an activity that was never initialised changes nothing and says so.
    #[tokio::test]
    async fn an_uninitialised_activity_fails_the_whole_batch() {
        let redis = state();
        let activity = support::unique_id();
        let mut batch = redis.purchase_batch(activity);
        batch.start(PROCESSED_TIME);
        batch.push("r1", 1, PROCESSED_TIME, 0);
        let error = redis.run_purchase_batch(&batch).await.unwrap_err();
        assert!(matches!(error, RedisStateError::NotInitialised(id) if id == activity));
        assert!(state_of(&redis, activity).await.decided.is_empty());
    }

    /// After SCRIPT FLUSH (or a Redis restart) the batch script is loaded again.
    #[tokio::test]
    async fn the_batch_script_survives_script_flush() {
        let redis = state();
        let activity = support::unique_id();
        redis.init_state(activity, 1).await.unwrap();
        {
            let mut connection = redis.connection().await.unwrap();
            let () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut connection)
                .await
                .unwrap();
        }
        let mut batch = redis.purchase_batch(activity);
        batch.start(PROCESSED_TIME);
        batch.push("r1", 1, PROCESSED_TIME, 0);
        batch.push("r2", 2, PROCESSED_TIME, 0);
        let outcomes = redis.run_purchase_batch(&batch).await.unwrap();
        assert_eq!(
            outcomes.decisions,
            [
                Decision::first(SeckillOutcome::Success),
                Decision::first(SeckillOutcome::SoldOut)
            ]
        );
    }
}
