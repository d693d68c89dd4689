//! Activities as data: seckill_admin against the real PostgreSQL and Redis (one node and the
//! cluster), and one server fleet serving many sales at once (different stock, a sale not
//! started, one ended, one with a limit of two, a sale never created).

mod support;

use seckill_kafka::common::{now_ms, Decision, SeckillOutcome, SeckillRecord, SeckillRequest};
use seckill_kafka::redis_state::{ActivityKeys, RedisState, SaleState};
use std::time::Duration;
use support::{Backend, Finished, Pipeline, Program};

fn admin(backend: &Backend, args: &[&str]) -> Finished {
    let mut env = vec![(
        "DATABASE_URL".to_string(),
        support::stack_var("DATABASE_URL"),
    )];
    env.extend(backend.env());
    Program::spawn("seckill_admin", args, &env).wait(Duration::from_secs(60))
}

/// A refused command: exit 1, one line on stderr that says `why`.
fn assert_refused(finished: &Finished, why: &str) {
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    let lines: Vec<&str> = finished.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{}", finished.stderr);
    assert!(
        lines[0].starts_with("seckill_admin: error: ") && lines[0].contains(why),
        "`{why}` in: {}",
        lines[0]
    );
}

async fn buy(redis: &RedisState, activity_id: u64, user_id: u64, request_id: &str) -> Decision {
    let request = SeckillRequest {
        request_id: request_id.into(),
        user_id,
        activity_id,
        request_initiation_time: now_ms(),
    };
    let record = SeckillRecord::new(&request, now_ms());
    redis.run_seckill_script(&request, &record).await.unwrap()
}

#[tokio::test]
async fn bad_input_is_one_line_and_changes_nothing() {
    let backend = Backend::single();
    let id = support::unique_id().to_string();
    let other = support::unique_id().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["activity", "create", "--id", &id, "--stock", "-5"],
            "--stock",
        ),
        (
            vec!["activity", "create", "--id", &id, "--stock", "lots"],
            "--stock",
        ),
        (
            vec![
                "activity",
                "create",
                "--id",
                &id,
                "--stock",
                "5",
                "--per-user-limit",
                "0",
            ],
            "--per-user-limit",
        ),
        (
            vec![
                "activity",
                "create",
                "--id",
                &id,
                "--stock",
                "5",
                "--starts-at",
                "2026-12-02T00:00:00Z",
                "--ends-at",
                "2026-12-01T00:00:00Z",
            ],
            "is not after --starts-at",
        ),
        (
            vec![
                "activity",
                "create",
                "--id",
                &id,
                "--stock",
                "5",
                "--starts-at",
                "tomorrow",
            ],
            "not an RFC 3339 time",
        ),
        (vec!["activity", "show", &other], "no activity"),
        (vec!["activity", "add-stock", &other, "3"], "no activity"),
        (vec!["activity", "add-stock", &id, "-3"], "COUNT"),
        (vec!["activity", "end", &other], "no activity"),
        (vec!["activity", "restore", &other], "no activity"),
    ];
    for (args, why) in &cases {
        assert_refused(&admin(&backend, args), why);
    }
    // None of them left anything behind.
    let redis = backend.state();
    for activity in [&id, &other] {
        let activity: u64 = activity.parse().unwrap();
        assert_eq!(redis.snapshot(activity).await.unwrap().stock, None);
        assert!(!redis.is_registered(activity).await.unwrap());
    }
    assert_refused(&admin(&backend, &["activity", "show", &id]), "no activity");

    // An existing id on create is refused, and the first definition stays.
    let created = admin(
        &backend,
        &["activity", "create", "--id", &id, "--stock", "5"],
    );
    created.assert_success("create");
    let again = admin(
        &backend,
        &["activity", "create", "--id", &id, "--stock", "9"],
    );
    assert_refused(&again, &format!("activity {id} exists"));
    assert_eq!(redis.get_stock(id.parse().unwrap()).await.unwrap(), Some(5));
}

on_both!(a_sale_is_created_changed_ended_and_restored: admin_lifecycle_on_one_redis, admin_lifecycle_on_a_redis_cluster);

async fn a_sale_is_created_changed_ended_and_restored(backend: Backend) {
    let redis = backend.state();
    let activity = support::unique_id();
    let id = activity.to_string();
    let created = admin(
        &backend,
        &[
            "activity",
            "create",
            "--id",
            &id,
            "--stock",
            "2",
            "--name",
            "lifecycle",
        ],
    );
    created.assert_success("create");
    assert!(
        created.stdout.contains("state            open"),
        "{}",
        created.stdout
    );
    assert!(redis.is_registered(activity).await.unwrap());

    assert_eq!(
        buy(&redis, activity, 1, "r1").await,
        Decision::first(SeckillOutcome::Success)
    );
    assert_eq!(
        buy(&redis, activity, 2, "r2").await,
        Decision::first(SeckillOutcome::Success)
    );
    assert_eq!(
        buy(&redis, activity, 3, "r3").await,
        Decision::first(SeckillOutcome::SoldOut)
    );
    assert_eq!(
        redis.snapshot(activity).await.unwrap().state(),
        SaleState::SoldOut
    );

    // Added stock takes effect at once and re-opens the sale.
    let added = admin(&backend, &["activity", "add-stock", &id, "3"]);
    added.assert_success("add-stock");
    assert!(
        added.stdout.contains("remaining        3"),
        "{}",
        added.stdout
    );
    assert!(!redis.is_activity_over(activity).await.unwrap());
    assert_eq!(
        buy(&redis, activity, 4, "r4").await,
        Decision::first(SeckillOutcome::Success)
    );
    assert_eq!(
        buy(&redis, activity, 1, "r5").await,
        Decision::first(SeckillOutcome::AlreadyBought),
        "one per user"
    );

    let listed = admin(&backend, &["activity", "list"]);
    listed.assert_success("list");
    let line = listed
        .stdout
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} listed:\n{}", listed.stdout));
    assert!(
        line.contains("open") && line.contains("lifecycle"),
        "{line}"
    );

    let ended = admin(&backend, &["activity", "end", &id]);
    ended.assert_success("end");
    assert!(
        ended.stdout.contains("state            ended"),
        "{}",
        ended.stdout
    );
    assert_eq!(
        buy(&redis, activity, 9, "r9").await,
        Decision::first(SeckillOutcome::Ended)
    );

    // Restore refuses while the live state exists.
    assert_refused(
        &admin(&backend, &["activity", "restore", &id]),
        "restore refuses",
    );

    // The purchases reach PostgreSQL, then the live state is lost.
    let pipeline = Pipeline::new("lifecycle").on(backend.clone());
    let stored = Program::spawn(
        "log_worker",
        &["--activity-id", &id, "--drain"],
        &pipeline.env(),
    )
    .wait(Duration::from_secs(60));
    stored.assert_success("log_worker --drain");
    assert_eq!(
        stored.figure("inserted"),
        3,
        "{}\n{}",
        stored.stdout,
        stored.stderr
    );
    {
        let keys = ActivityKeys::new(activity);
        let mut connection = redis.connection().await.unwrap();
        let () = redis::cmd("DEL")
            .arg(&[
                &keys.meta,
                &keys.stock,
                &keys.initial_stock,
                &keys.added_stock,
                &keys.over,
                &keys.holdings,
                &keys.decided,
                &keys.outcome_counts,
                &keys.success,
            ])
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    assert_eq!(
        redis.snapshot(activity).await.unwrap().state(),
        SaleState::Missing
    );

    let restored = admin(&backend, &["activity", "restore", &id]);
    restored.assert_success("restore");
    let snapshot = redis.snapshot(activity).await.unwrap();
    assert_eq!(snapshot.stock, Some(2), "2 + 3 added - 3 sold");
    assert_eq!((snapshot.success, snapshot.buyers), (3, 3));
    assert_eq!(snapshot.state(), SaleState::Ended, "its end came back too");
    // A winning request delivered again is answered SUCCESS again; the others' outcomes
    // are what a restore cannot bring back.
    assert_eq!(
        buy(&redis, activity, 1, "r1").await,
        Decision::repeat(SeckillOutcome::Success)
    );
    let verify = Program::spawn(
        "log_worker",
        &["--verify", "--activity-id", &id],
        &pipeline.env(),
    )
    .wait(Duration::from_secs(60));
    verify.assert_success("verify after restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sales_on_one_redis() {
    let redis = support::KillableRedis::start();
    one_fleet_serves_many_sales(Backend::Single(redis.url())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sales_on_a_redis_cluster() {
    let cluster = support::LocalCluster::start(3, 0, false);
    one_fleet_serves_many_sales(cluster.backend()).await
}

/// Eight sales and one that was never created, one server and one log_worker for all of
/// them: each sale gets the answers its definition calls for, and every invariant holds.
/// On a Redis of its own: a log_worker serving every activity serves whatever sale it finds
/// in its Redis, other tests' too.
async fn one_fleet_serves_many_sales(backend: Backend) {
    let pipeline = Pipeline::new("many").on(backend.clone());
    let ids: Vec<u64> = (0..9).map(|_| support::unique_id()).collect();
    let (open, limited, not_started, ended, unknown) = (ids[0], ids[1], ids[2], ids[3], ids[8]);
    let in_an_hour = chrono_like(now_ms() + 3_600_000);
    let an_hour_ago = chrono_like(now_ms() - 3_600_000);
    let creates: Vec<Vec<String>> = vec![
        vec!["--stock".into(), "50".into()],
        vec![
            "--stock".into(),
            "10".into(),
            "--per-user-limit".into(),
            "2".into(),
        ],
        vec![
            "--stock".into(),
            "30".into(),
            "--starts-at".into(),
            in_an_hour,
        ],
        vec![
            "--stock".into(),
            "30".into(),
            "--ends-at".into(),
            an_hour_ago,
        ],
        vec!["--stock".into(), "5".into()],
        vec!["--stock".into(), "5".into()],
        vec!["--stock".into(), "5".into()],
        vec!["--stock".into(), "200".into()],
    ];
    for (id, flags) in ids.iter().zip(&creates) {
        let id = id.to_string();
        let mut args = vec!["activity", "create", "--id", &id];
        args.extend(flags.iter().map(String::as_str));
        admin(&backend, &args).assert_success("create");
    }
    // No --activity-id: the server and the worker serve every activity.
    let mut env = pipeline.env();
    env.retain(|(key, _)| key != "SECKILL_CONFIG");
    let config = pipeline_config_without_activity(&pipeline);
    env.push(("SECKILL_CONFIG".into(), config.display().to_string()));
    let server = Program::spawn("server_kafka", &[], &env);
    let worker = Program::spawn("log_worker", &[], &env);

    // Every sale but the limited one, and the unknown one, through one client run; users
    // spread their three attempts over three different sales.
    let spread: Vec<u64> = ids.iter().copied().filter(|&id| id != limited).collect();
    let planned = seckill_kafka::seckill::results::PlannedRequests {
        activity_ids: spread.clone(),
        seed: 11,
        users: 300,
        requests_per_user: 3,
    };
    let mut requests_of = std::collections::HashMap::new();
    for user in 1..=planned.users {
        for attempt in 0..planned.requests_per_user {
            *requests_of
                .entry(planned.activity_of(user, attempt))
                .or_insert(0_u64) += 1;
        }
    }
    let list: Vec<String> = spread.iter().map(u64::to_string).collect();
    let client = Program::spawn(
        "client_kafka",
        &[
            "--activity-ids",
            &list.join(","),
            "--users",
            "300",
            "--requests-per-user",
            "3",
            "--seed",
            "11",
            "--await-results",
        ],
        &env,
    )
    .wait(Duration::from_secs(120));
    client.assert_success("client_kafka");
    // Each user asks the limited sale three times: two purchases, then the limit.
    let limited_client = Program::spawn(
        "client_kafka",
        &[
            "--activity-id",
            &limited.to_string(),
            "--users",
            "4",
            "--requests-per-user",
            "3",
            "--seed",
            "12",
            "--await-results",
        ],
        &env,
    )
    .wait(Duration::from_secs(120));
    limited_client.assert_success("client_kafka on the limited sale");
    assert!(
        limited_client
            .stdout
            .contains("answered=12/12 users SUCCESS=4 SOLD_OUT=0 ALREADY_BOUGHT=4"),
        "{}",
        limited_client.stdout
    );

    let per_activity = |id: u64| -> String {
        client
            .stdout
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("activity {id} ")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{}", client.stdout))
            .to_string()
    };
    for (id, outcome) in [
        (not_started, "NOT_STARTED"),
        (ended, "ENDED"),
        (unknown, "UNKNOWN_ACTIVITY"),
    ] {
        let n = requests_of[&id];
        assert!(
            per_activity(id).ends_with(&format!("answered={n}/{n} requests {outcome}={n}")),
            "{}",
            per_activity(id)
        );
    }
    let n = requests_of[&open];
    assert!(
        per_activity(open).ends_with(&format!(
            "answered={n}/{n} requests SUCCESS=50 SOLD_OUT={}",
            n - 50
        )),
        "{}",
        per_activity(open)
    );

    // Every record stored, then the invariants of each sale.
    let redis = backend.state();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for &id in &ids[..8] {
        loop {
            let snapshot = redis.snapshot(id).await.unwrap();
            if snapshot.queued_records + snapshot.processing_records == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{id}: {snapshot:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let server = server.terminate();
    server.assert_success("server_kafka");
    worker.terminate().assert_success("log_worker");
    assert!(
        server.stdout.contains("every activity: 9 answered"),
        "{}",
        server.stdout
    );
    // Not remembered, so a request delivered again (a rebalance) is answered again.
    assert!(server.figure("unknown_activity") >= requests_of[&unknown]);
    assert_eq!(server.figure("not_started"), requests_of[&not_started]);
    assert_eq!(server.figure("ended"), requests_of[&ended]);

    let verify =
        Program::spawn("log_worker", &["--verify", "--all"], &env).wait(Duration::from_secs(60));
    for &id in &ids[..8] {
        let line = verify
            .stdout
            .lines()
            .find(|line| line.starts_with(&format!("activity {id} ")))
            .unwrap_or_else(|| panic!("{id} in --verify --all:\n{}", verify.stdout));
        assert!(line.ends_with(" ok"), "{line}");
    }
    let limited_snapshot = redis.snapshot(limited).await.unwrap();
    assert_eq!(
        (
            limited_snapshot.success,
            limited_snapshot.buyers,
            limited_snapshot.per_user_limit
        ),
        (8, 4, 2)
    );
    // The sale that was never created got no state and no registration.
    assert_eq!(redis.snapshot(unknown).await.unwrap().stock, None);
    assert_eq!(redis.snapshot(unknown).await.unwrap().requests_seen, 0);
    assert!(!redis.is_registered(unknown).await.unwrap());
}

/// `ms` as an RFC 3339 time (UTC).
fn chrono_like(ms: i64) -> String {
    seckill_kafka::seckill::admin::format_ms(ms)
}

/// The pipeline's config file without `seckill.activity_id`.
fn pipeline_config_without_activity(pipeline: &Pipeline) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-every.yaml", pipeline.topic));
    let yaml = format!(
        "seckill:\n  requests_topic: {}\n  results_topic: {}\n\
         server_kafka:\n  group_id: {}\n  status_interval_secs: 1\n  timeout_ms: 0\n\
         log_worker:\n  flush_interval_ms: 100\n  lease_ms: 2000\n  activities_refresh_ms: 200\n\
         kafka:\n  properties:\n    auto.commit.interval.ms: '500'\n",
        pipeline.topic, pipeline.results_topic, pipeline.group
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `SCRIPT FLUSH` on every node of the cluster (as after a restart or a failover to a node
/// that never saw the scripts): each script is loaded again into the node of its keys, and
/// the purchases go on.
#[tokio::test]
async fn scripts_are_loaded_again_on_the_cluster_node_that_lacks_them() {
    let backend = Backend::cluster();
    let Backend::Cluster(urls) = &backend else {
        unreachable!()
    };
    let redis = backend.state();
    let activity = support::unique_id();
    redis.init_state(activity, 1).await.unwrap();
    for url in urls {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(support::redis_cli(port, &["script", "flush"]).trim(), "OK");
    }
    let mut batch = redis.purchase_batch(activity);
    batch.start(now_ms());
    batch.push("r1", 1, now_ms(), 0);
    batch.push("r2", 2, now_ms(), 0);
    let decided = redis.run_purchase_batch(&batch).await.unwrap();
    assert_eq!(
        decided.decisions,
        [
            Decision::first(SeckillOutcome::Success),
            Decision::first(SeckillOutcome::SoldOut)
        ]
    );
    for url in urls {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(support::redis_cli(port, &["script", "flush"]).trim(), "OK");
    }
    assert_eq!(
        buy(&redis, activity, 3, "r3").await,
        Decision::first(SeckillOutcome::SoldOut)
    );
}

/// `log_worker --activity-ids` moves the records of the sales it names and no other's.
#[tokio::test]
async fn log_worker_moves_only_the_listed_sales() {
    let redis_server = support::KillableRedis::start();
    let backend = Backend::Single(redis_server.url());
    let (listed, other) = (support::unique_id(), support::unique_id());
    for id in [listed, other] {
        admin(
            &backend,
            &[
                "activity",
                "create",
                "--id",
                &id.to_string(),
                "--stock",
                "5",
            ],
        )
        .assert_success("create");
    }
    let redis = backend.state();
    for id in [listed, other] {
        for user in 1..=3 {
            let decision = buy(&redis, id, user, &format!("{id}-{user}")).await;
            assert_eq!(decision.outcome, SeckillOutcome::Success);
        }
    }
    let mut env = vec![(
        "DATABASE_URL".to_string(),
        support::stack_var("DATABASE_URL"),
    )];
    env.extend(backend.env());
    let moved = Program::spawn(
        "log_worker",
        &["--activity-ids", &listed.to_string(), "--drain"],
        &env,
    )
    .wait(Duration::from_secs(60));
    moved.assert_success("log_worker --activity-ids --drain");
    assert!(
        moved.stdout.contains("(1 listed activity): inserted=3 "),
        "{}",
        moved.stdout
    );
    assert_eq!(redis.snapshot(listed).await.unwrap().queued_records, 0);
    assert_eq!(redis.snapshot(other).await.unwrap().queued_records, 3);
    let verify = Program::spawn(
        "log_worker",
        &["--verify", "--activity-ids", &listed.to_string()],
        &env,
    )
    .wait(Duration::from_secs(60));
    verify.assert_success("log_worker --verify --activity-ids");
}
