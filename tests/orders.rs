//! Orders in a sale with a payment window, against the real Redis (one node and the
//! cluster): reservations, payments (paid, late, unknown, already paid, repeated), expiry in
//! bounded slices, the unit back on sale, a payment racing its expiry, and the events the
//! scripts queue.

mod support;

use seckill_kafka::common::SeckillOutcome;
use seckill_kafka::redis_state::{
    ActivityKeys, ActivitySnapshot, LiveActivity, PaymentAnswer, RedisState,
};
use seckill_kafka::seckill::orders::{EventKind, OrderEvent, OrderState};
use std::collections::HashMap;
use std::time::Duration;
use support::Backend;

async fn windowed_sale(redis: &RedisState, stock: u64, window_ms: u64, limit: u32) -> u64 {
    let activity_id = support::unique_id();
    let created = redis
        .create_activity(&LiveActivity {
            per_user_limit: limit,
            payment_window_ms: window_ms,
            ..LiveActivity::open(activity_id, stock)
        })
        .await
        .unwrap();
    assert!(created);
    activity_id
}

/// Buys for each (request id, user) in one batch; returns (outcome, pay_by) each.
async fn buy(
    redis: &RedisState,
    activity_id: u64,
    requests: &[(&str, u64)],
) -> Vec<(SeckillOutcome, Option<i64>)> {
    let mut batch = redis.purchase_batch(activity_id);
    batch.start(seckill_kafka::common::now_ms());
    for (request_id, user_id) in requests {
        batch.push(request_id, *user_id, seckill_kafka::common::now_ms(), 0);
    }
    let decided = redis.run_purchase_batch(&batch).await.unwrap();
    decided
        .decisions
        .iter()
        .enumerate()
        .map(|(i, d)| (d.outcome, decided.pay_by(i)))
        .collect()
}

async fn pay(
    redis: &RedisState,
    activity_id: u64,
    payments: &[(&str, &str, u64)],
) -> Vec<(PaymentAnswer, bool)> {
    let mut batch = redis.payment_batch(activity_id);
    for (payment_id, order_id, user_id) in payments {
        batch.push(payment_id, order_id, *user_id);
    }
    redis.run_payment_batch(&batch).await.unwrap().answers
}

/// The events queued on the sale's log list (purchase records left out).
async fn events(redis: &RedisState, activity_id: u64) -> Vec<OrderEvent> {
    let keys = ActivityKeys::new(activity_id);
    let mut connection = redis.connection().await.unwrap();
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg(&keys.logs)
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .unwrap();
    entries
        .iter()
        .filter(|raw| OrderEvent::is_event(raw.as_bytes()))
        .map(|raw| OrderEvent::from_json(raw.as_bytes()).unwrap())
        .collect()
}

fn assert_figures_hold(s: &ActivitySnapshot) {
    let stock = s.stock.unwrap();
    assert_eq!(
        s.total_stock(),
        stock + s.reserved + s.paid,
        "initial + added = remaining + reserved + paid: {s:?}"
    );
    assert_eq!(s.success, s.reserved + s.paid + s.expired, "{s:?}");
    assert_eq!(s.deadlines as i64, s.reserved, "{s:?}");
}

async fn reservations_are_paid_expired_and_bought_again(backend: Backend) {
    let redis = backend.state();
    let sale = windowed_sale(&redis, 3, 400, 1).await;
    let bought = buy(
        &redis,
        sale,
        &[("o-1", 1), ("o-2", 2), ("o-3", 3), ("o-4", 4)],
    )
    .await;
    assert_eq!(bought[0].0, SeckillOutcome::Success);
    let pay_by = bought[0].1.expect("a reservation carries pay_by");
    assert!(bought[..3]
        .iter()
        .all(|(o, p)| *o == SeckillOutcome::Success && *p == Some(pay_by)));
    assert_eq!(bought[3], (SeckillOutcome::SoldOut, None));
    // A repeated request id gets the same reservation back, deadline included.
    assert_eq!(
        buy(&redis, sale, &[("o-1", 1)]).await[0],
        (SeckillOutcome::Success, Some(pay_by))
    );

    let answers = pay(
        &redis,
        sale,
        &[
            ("p-1", "o-1", 1),
            ("p-1", "o-1", 1),  // the same payment again
            ("p-2", "o-1", 1),  // another payment of a paid order
            ("p-3", "o-2", 99), // someone else's order
            ("p-4", "nope", 1), // no such order
        ],
    )
    .await;
    assert_eq!(
        answers,
        vec![
            (PaymentAnswer::Paid, false),
            (PaymentAnswer::Paid, true),
            (PaymentAnswer::AlreadyPaid, false),
            (PaymentAnswer::Unknown, false),
            (PaymentAnswer::Unknown, false),
        ]
    );
    let s = redis.snapshot(sale).await.unwrap();
    assert_eq!((s.reserved, s.paid, s.stock), (2, 1, Some(0)));
    assert_figures_hold(&s);

    // Past the deadline: o-2 and o-3 expire, their units come back, the sale re-opens.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let slice = redis.expire_due(sale, 500).await.unwrap().unwrap();
    assert_eq!(slice.expired, 2);
    assert_eq!(slice.next_due_ms, None);
    assert_eq!(
        redis.expire_due(sale, 500).await.unwrap().unwrap().expired,
        0
    );
    let s = redis.snapshot(sale).await.unwrap();
    assert_eq!((s.reserved, s.paid, s.expired, s.stock), (0, 1, 2, Some(2)));
    assert!(!s.over, "a sold-out sale re-opens");
    assert_figures_hold(&s);
    // A late payment takes no stock; the user whose order expired may buy again.
    assert_eq!(
        pay(&redis, sale, &[("p-5", "o-2", 2)]).await,
        vec![(PaymentAnswer::Late, false)]
    );
    let again = buy(&redis, sale, &[("o-5", 2), ("o-6", 1)]).await;
    assert_eq!(again[0].0, SeckillOutcome::Success);
    assert_eq!(
        again[1].0,
        SeckillOutcome::AlreadyBought,
        "user 1 holds a paid order"
    );
    let s = redis.snapshot(sale).await.unwrap();
    assert_eq!((s.reserved, s.paid, s.expired, s.stock), (1, 1, 2, Some(1)));
    assert_figures_hold(&s);
    assert_eq!(s.payments, [1, 1, 2, 1]);

    // One event per change, none for the repeated payment.
    let events = events(&redis, sale).await;
    let orders: Vec<(&str, OrderState)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Order)
        .map(|e| (e.id.as_str(), e.state.unwrap()))
        .collect();
    assert_eq!(
        orders,
        vec![
            ("o-1", OrderState::Paid),
            ("o-2", OrderState::Expired),
            ("o-3", OrderState::Expired)
        ]
    );
    let payments: Vec<(&str, PaymentAnswer)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Payment)
        .map(|e| (e.id.as_str(), e.answer.unwrap()))
        .collect();
    assert_eq!(
        payments,
        vec![
            ("p-1", PaymentAnswer::Paid),
            ("p-2", PaymentAnswer::AlreadyPaid),
            ("p-3", PaymentAnswer::Unknown),
            ("p-4", PaymentAnswer::Unknown),
            ("p-5", PaymentAnswer::Late),
        ]
    );
}

#[tokio::test]
async fn reservations_are_paid_expired_and_bought_again_on_one_node() {
    reservations_are_paid_expired_and_bought_again(Backend::single()).await;
}

#[tokio::test]
async fn reservations_are_paid_expired_and_bought_again_on_the_cluster() {
    reservations_are_paid_expired_and_bought_again(Backend::cluster()).await;
}

#[tokio::test]
async fn expiry_runs_in_bounded_slices_and_a_sale_without_window_takes_no_payment() {
    let redis = Backend::single().state();
    let sale = windowed_sale(&redis, 25, 50, 1).await;
    let ids: Vec<String> = (0..25).map(|i| format!("o-{i}")).collect();
    let requests: Vec<(&str, u64)> = ids
        .iter()
        .zip(1..)
        .map(|(id, u)| (id.as_str(), u))
        .collect();
    buy(&redis, sale, &requests).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let mut slices = Vec::new();
    loop {
        let slice = redis.expire_due(sale, 10).await.unwrap().unwrap();
        slices.push(slice.expired);
        if slice.expired < 10 {
            break;
        }
    }
    assert_eq!(slices, vec![10, 10, 5]);
    let s = redis.snapshot(sale).await.unwrap();
    assert_eq!((s.expired, s.stock), (25, Some(25)));
    assert_figures_hold(&s);

    // A sale whose purchases are final: a payment is unknown, and the single-request script
    // refuses a sale with a window.
    let plain = support::unique_id();
    redis.init_state(plain, 5).await.unwrap();
    buy(&redis, plain, &[("o-1", 1)]).await;
    assert_eq!(
        pay(&redis, plain, &[("p-1", "o-1", 1)]).await,
        vec![(PaymentAnswer::Unknown, false)]
    );
    let request = seckill_kafka::common::SeckillRequest {
        request_id: "single".into(),
        user_id: 9,
        activity_id: sale,
        request_initiation_time: 0,
    };
    let record = seckill_kafka::common::SeckillRecord::new(&request, 0);
    assert!(redis.run_seckill_script(&request, &record).await.is_err());
}

/// Payments and expiries of the same orders, at their deadline, from concurrent callers:
/// each order ends paid or expired, exactly once, with one event, and a payment is PAID
/// exactly when its order is.
#[tokio::test]
async fn a_payment_racing_its_expiry_is_settled_once() {
    for backend in [Backend::single(), Backend::cluster()] {
        let redis = backend.state();
        let orders = 300_u64;
        let sale = windowed_sale(&redis, orders, 300, 1).await;
        let ids: Vec<String> = (0..orders).map(|i| format!("o-{i}")).collect();
        let requests: Vec<(&str, u64)> = ids
            .iter()
            .zip(1..)
            .map(|(id, u)| (id.as_str(), u))
            .collect();
        let bought = buy(&redis, sale, &requests).await;
        let pay_by = bought[0].1.unwrap();
        // Wake up just before the deadline, then pay one order at a time while two expirers
        // run: the deadline passes in the middle.
        let wait = pay_by - seckill_kafka::common::now_ms() - 30;
        tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        let expirers: Vec<_> = (0..2)
            .map(|_| {
                let redis = redis.clone();
                tokio::spawn(async move {
                    let mut expired = 0;
                    for _ in 0..100 {
                        expired += redis.expire_due(sale, 7).await.unwrap().unwrap().expired;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    expired
                })
            })
            .collect();
        let mut answers = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let payment = format!("p-{i}");
            let answer = pay(&redis, sale, &[(&payment, id, i as u64 + 1)]).await[0].0;
            answers.insert(id.clone(), answer);
        }
        let mut expired_by_expirers = 0;
        for expirer in expirers {
            expired_by_expirers += expirer.await.unwrap();
        }
        while redis.expire_due(sale, 500).await.unwrap().unwrap().expired > 0 {}
        let s = redis.snapshot(sale).await.unwrap();
        assert_figures_hold(&s);
        assert_eq!(s.reserved, 0);
        assert_eq!(s.paid + s.expired, orders as i64);
        let events = events(&redis, sale).await;
        let mut settled: HashMap<String, Vec<OrderState>> = HashMap::new();
        for event in events.iter().filter(|e| e.kind == EventKind::Order) {
            settled
                .entry(event.id.clone())
                .or_default()
                .push(event.state.unwrap());
        }
        assert_eq!(settled.len(), orders as usize, "every order settled");
        for (order, states) in &settled {
            assert_eq!(states.len(), 1, "{order} settled once: {states:?}");
            let paid = states[0] == OrderState::Paid;
            assert_eq!(
                answers[order] == PaymentAnswer::Paid,
                paid,
                "{order}: payment answered {:?}, order {:?}",
                answers[order],
                states[0]
            );
        }
        assert!(
            s.paid > 0 && s.expired > 0,
            "the deadline fell inside the run: paid {} expired {} (expirers {expired_by_expirers})",
            s.paid,
            s.expired
        );
    }
}

/// Every event on the pipeline's order events topic for its activity.
fn published_events(pipeline: &support::Pipeline) -> Vec<OrderEvent> {
    use rdkafka::message::Message;
    let mut events = Vec::new();
    support::read_all(&pipeline.brokers, &pipeline.events_topic, |message| {
        let event = OrderEvent::from_json(message.payload().unwrap_or_default()).expect("an event");
        assert_eq!(
            message.key(),
            Some(event.user_id.to_string().as_bytes()),
            "keyed by user id"
        );
        if event.activity_id == pipeline.activity_id {
            events.push(event);
        }
    });
    events
}

/// A server_kafka whose consumers all have their partitions: requests sent now are decided
/// together (on the dev broker a consumer that joins late waits out a session first, and a
/// reservation could expire before the last requests are decided).
fn ready_server(pipeline: &support::Pipeline) -> support::Program {
    let port = support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let server = pipeline.spawn("server_kafka", &["--metrics-addr", &metrics]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !support::is_ready(port) {
        assert!(
            std::time::Instant::now() < deadline,
            "server_kafka never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn create_windowed(pipeline: &support::Pipeline, stock: u64, window_ms: u64) {
    let id = pipeline.activity_id.to_string();
    let (stock, window) = (stock.to_string(), window_ms.to_string());
    pipeline
        .run(
            "seckill_admin",
            &[
                "activity",
                "create",
                "--id",
                &id,
                "--stock",
                &stock,
                "--payment-window-ms",
                &window,
            ],
        )
        .assert_success("create");
}

async fn drained(pipeline: &support::Pipeline) -> ActivitySnapshot {
    pipeline
        .wait_for("the log queue drained", Duration::from_secs(60), |s| {
            s.queued_records == 0 && s.processing_records == 0
        })
        .await
}

/// The demo's story at test size: a third of the winners never pay, their units come back
/// and a later wave of buyers takes them; every order ends paid or expired, in Redis,
/// PostgreSQL and the events alike.
#[tokio::test]
async fn unpaid_units_return_and_a_later_wave_buys_them() {
    let pipeline = support::Pipeline::new("orders");
    create_windowed(&pipeline, 60, 5_000);
    let server = ready_server(&pipeline);
    let worker = pipeline.spawn("log_worker", &[]);
    let client = |seed: &str, ratio: &str| {
        let finished = pipeline.run(
            "client_kafka",
            &[
                "--users",
                "100",
                "--await-results",
                "--pay-ratio",
                ratio,
                "--pay-delay-ms",
                "0..300",
                "--seed",
                seed,
            ],
        );
        finished.assert_success("client_kafka");
        finished
    };
    let first = client("1", "0.66");
    assert_eq!(first.figure("reserved"), 60, "{}", first.stdout);
    let (paid, expired) = (first.figure("paid"), first.figure("expired"));
    assert_eq!(paid + expired, 60);
    assert!(paid > 0 && expired > 0, "{}", first.stdout);
    assert_eq!(first.figure("unsettled"), 0);
    assert_eq!(first.figure("PAID"), paid);

    // Users who paid hold their limit; the others take the returned units, and pay.
    let second = client("2", "1");
    assert_eq!(second.figure("reserved"), expired, "{}", second.stdout);
    assert_eq!(second.figure("paid"), expired);
    assert_eq!(second.figure("ALREADY_BOUGHT"), paid);

    drained(&pipeline).await;
    let s = redis_figures(&pipeline).await;
    assert_eq!(
        (s.stock, s.reserved, s.paid, s.expired),
        (Some(0), 0, 60, expired as i64)
    );
    assert_figures_hold(&s);
    let verify = pipeline.run("log_worker", &["--verify"]);
    verify.assert_success("verify");
    assert!(
        verify.stdout.contains("orders in PostgreSQL = Redis"),
        "{}",
        verify.stdout
    );
    let events = published_events(&pipeline);
    let expired_events = events
        .iter()
        .filter(|e| e.state == Some(OrderState::Expired))
        .count();
    assert!(expired_events as u64 >= expired);

    // Bad payments are dead-lettered with their reason; one for another sale is skipped by a
    // server that serves one sale (as requests are); nothing else changes.
    let bad: Vec<(String, Option<Vec<u8>>)> = vec![
        ("bad-1".into(), Some(b"not json".to_vec())),
        (
            "bad-2".into(),
            Some(
                br#"{"payment_id":"p","order_id":"o","user_id":1,"activity_id":42,"x":1}"#.to_vec(),
            ),
        ),
        (
            "bad-3".into(),
            Some(
                format!(
                    r#"{{"payment_id":"p","order_id":"o","user_id":1,"activity_id":{}}}"#,
                    support::unique_id()
                )
                .into_bytes(),
            ),
        ),
    ];
    support::produce(&pipeline.brokers, &pipeline.payments_topic, &bad).await;
    let dead = dead_letters(&pipeline, 2).await;
    assert!(
        dead[&b"bad-1".to_vec()].contains("not valid JSON"),
        "{dead:?}"
    );
    assert!(
        dead[&b"bad-2".to_vec()].contains("unknown field"),
        "{dead:?}"
    );
    assert_eq!(redis_figures(&pipeline).await, s);
    let server = server.terminate();
    server.assert_success("server_kafka");
    assert!(
        server.stdout.contains("payments paid=60 late=0"),
        "{}",
        server.stdout
    );
    worker.terminate().assert_success("log_worker");
}

/// The figures that matter here (not the clock).
async fn redis_figures(pipeline: &support::Pipeline) -> ActivitySnapshot {
    ActivitySnapshot {
        redis_time_ms: 0,
        ..pipeline
            .redis()
            .snapshot(pipeline.activity_id)
            .await
            .unwrap()
    }
}

/// Messages of `<payments topic>.dlq` until `count` distinct keys came: key -> reason.
async fn dead_letters(pipeline: &support::Pipeline, count: usize) -> HashMap<Vec<u8>, String> {
    let dlq = format!("{}.dlq", pipeline.payments_topic);
    let mut dead = HashMap::new();
    let enough = |read: &[support::DeadLetter]| {
        read.iter()
            .map(|d| d.key.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= count
    };
    for letter in support::dead_letters(&pipeline.brokers, &dlq, enough).await {
        assert!(letter.source.starts_with(&pipeline.payments_topic));
        dead.insert(letter.key.unwrap_or_default(), letter.reason);
    }
    dead
}

/// server_kafka and log_worker SIGKILLed while payments are applied, and again while
/// reservations expire, and restarted: every order is settled once, every event published,
/// every figure holds.
#[tokio::test]
async fn orders_survive_kills_during_payments_and_expiries() {
    let pipeline = support::Pipeline::new("orders-crash");
    create_windowed(&pipeline, 300, 4_000);
    let mut server = ready_server(&pipeline);
    let mut worker = pipeline.spawn("log_worker", &[]);
    // Payments spread over 0 to 6 s: some land before the deadline, some after it.
    let client = pipeline.spawn(
        "client_kafka",
        &[
            "--users",
            "600",
            "--await-results",
            "--pay-ratio",
            "0.5",
            "--pay-delay-ms",
            "0..6000",
            "--seed",
            "3",
        ],
    );
    // Killed once payments are being applied, and again once reservations are expiring.
    type Reached = fn(&ActivitySnapshot) -> bool;
    let stages: [(&str, Reached); 2] = [
        ("payments applied", |s| s.payments.iter().sum::<u64>() > 0),
        ("reservations expiring", |s| s.expired > 0),
    ];
    for (what, reached) in stages {
        pipeline
            .wait_for(what, Duration::from_secs(60), reached)
            .await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server = pipeline.spawn("server_kafka", &[]);
        worker = pipeline.spawn("log_worker", &[]);
    }
    let finished = client.wait(Duration::from_secs(120));
    finished.assert_success("client_kafka");
    // 300 units, and more reservations when the server was slow enough for some to expire
    // before the last requests were decided (their units sold again).
    let reserved = finished.figure("reserved");
    assert!(reserved >= 300, "{}", finished.stdout);
    assert_eq!(finished.figure("unsettled"), 0);
    assert_eq!(finished.figure("unanswered"), 0);

    drained(&pipeline).await;
    let s = redis_figures(&pipeline).await;
    assert_figures_hold(&s);
    assert_eq!(s.reserved, 0);
    assert_eq!(s.paid + s.expired, s.success);
    assert_eq!(s.success as u64, reserved);
    assert!(s.paid > 0 && s.expired > 0 && s.payments[1] > 0, "{s:?}");
    pipeline
        .run("log_worker", &["--verify"])
        .assert_success("verify");

    // Each order settled once (a publish repeated after a kill repeats the same event) and
    // each payment answered once; all of them published.
    let mut settled: HashMap<String, OrderState> = HashMap::new();
    let mut answered: HashMap<String, PaymentAnswer> = HashMap::new();
    for event in published_events(&pipeline) {
        match event.kind {
            EventKind::Order => {
                let state = event.state.unwrap();
                let first = *settled.entry(event.id.clone()).or_insert(state);
                assert_eq!(first, state, "{}", event.id);
            }
            EventKind::Payment => {
                let answer = event.answer.unwrap();
                assert_eq!(*answered.entry(event.id.clone()).or_insert(answer), answer);
            }
        }
    }
    let paid = settled.values().filter(|s| **s == OrderState::Paid).count() as i64;
    assert_eq!((paid, settled.len() as i64 - paid), (s.paid, s.expired));
    assert_eq!(answered.len() as u64, s.payments.iter().sum::<u64>());
    // The rows agree too, one per order.
    let pool = seckill_kafka::postgres::connect(&support::postgres_config())
        .await
        .unwrap();
    let rows = seckill_kafka::seckill::orders::store::orders_by_state(&pool, pipeline.activity_id)
        .await
        .unwrap();
    assert_eq!(rows, [0, s.paid, s.expired]);
    server.terminate().assert_success("server_kafka");
    worker.terminate().assert_success("log_worker");
}
