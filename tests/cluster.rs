//! Redis faults under a running fleet, on Redis servers of the tests' own: a cluster master
//! SIGKILLed and restarted (the other masters' sales go on meanwhile), and failover with a
//! replica that fell behind, on a cluster and on a single node with one replica: a decision
//! is published only once a replica has it, so a promoted replica never contradicts an
//! answer a buyer was given.

mod support;

use seckill_kafka::common::{SeckillOutcome, SeckillResult};
use seckill_kafka::redis_state::ActivityKeys;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Backend, Finished, LocalCluster, Pipeline, Program};

const WAIT: Duration = Duration::from_secs(90);

fn admin(pipeline: &Pipeline, args: &[&str]) -> Finished {
    Program::spawn("seckill_admin", args, &pipeline.env()).wait(Duration::from_secs(60))
}

/// The scenario's config without `seckill.activity_id`: the fleet serves every activity.
fn every_activity_env(pipeline: &Pipeline) -> Vec<(String, String)> {
    let path = std::env::temp_dir().join(format!("{}-every.yaml", pipeline.topic));
    let yaml = format!(
        "seckill:\n  requests_topic: {}\n  results_topic: {}\n\
         server_kafka:\n  group_id: {}\n  status_interval_secs: 1\n  timeout_ms: 0\n\
         log_worker:\n  flush_interval_ms: 100\n  lease_ms: 2000\n  activities_refresh_ms: 200\n\
         redis:\n  response_timeout_ms: 1000\n  connect_timeout_ms: 1000\n\
         kafka:\n  properties:\n    auto.commit.interval.ms: '500'\n",
        pipeline.topic, pipeline.results_topic, pipeline.group
    );
    std::fs::write(&path, yaml).unwrap();
    let mut env = pipeline.env();
    env.retain(|(key, _)| key != "SECKILL_CONFIG");
    env.push(("SECKILL_CONFIG".into(), path.display().to_string()));
    env
}

/// Sends `users` users' requests (one each) to `activity` and returns at once.
fn send(env: &[(String, String)], activity: u64, users: u64, seed: u64) {
    Program::spawn(
        "client_kafka",
        &[
            "--activity-id",
            &activity.to_string(),
            "--users",
            &users.to_string(),
            "--seed",
            &seed.to_string(),
        ],
        env,
    )
    .wait(Duration::from_secs(60))
    .assert_success("client_kafka");
}

/// Results on the scenario's results topic for `activity`, by request id.
fn results_of(pipeline: &Pipeline, activity: u64) -> BTreeMap<String, Vec<SeckillResult>> {
    support::results_of(&pipeline.brokers, &pipeline.results_topic, activity)
}

/// Each request answered with one outcome only, and SUCCESS answers = the sale's figures.
async fn assert_answers_hold(pipeline: &Pipeline, activity: u64, requests: usize) {
    let results = results_of(pipeline, activity);
    assert_eq!(results.len(), requests, "requests with an answer");
    let mut success = 0_i64;
    for (request_id, answers) in &results {
        let outcomes: HashSet<_> = answers.iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes.len(), 1, "{request_id} answered {outcomes:?}");
        success += i64::from(answers[0].outcome == SeckillOutcome::Success);
    }
    let snapshot = pipeline.redis().snapshot(activity).await.unwrap();
    assert_eq!(
        success, snapshot.success,
        "SUCCESS answers vs sales in Redis"
    );
}

fn verify(env: &[(String, String)], activity: u64) {
    let verified = Program::spawn(
        "log_worker",
        &["--verify", "--activity-id", &activity.to_string()],
        env,
    )
    .wait(Duration::from_secs(60));
    assert!(
        verified.status.success() && verified.stdout.contains("all invariants hold"),
        "{}\n{}",
        verified.stdout,
        verified.stderr
    );
}

async fn wait_decided(pipeline: &Pipeline, activity: u64, requests: u64) {
    let redis = pipeline.redis();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(snapshot) = redis.snapshot(activity).await {
            if snapshot.requests_seen == requests
                && snapshot.queued_records + snapshot.processing_records == 0
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{activity}: {requests} requests not decided and stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A master SIGKILLed for a few seconds and restarted (append-only file on): the sales on
/// the other masters are answered meanwhile, the sale on the dead one finishes when it is
/// back, no program is restarted, and every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_stops_only_its_own_sales() {
    let mut cluster = LocalCluster::start(3, 0, true);
    let pipeline = Pipeline::new("dead-master").on(cluster.backend());
    let env = every_activity_env(&pipeline);
    // Sales until one sits on another master than the first.
    let victim_sale = support::unique_id();
    admin(
        &pipeline,
        &[
            "activity",
            "create",
            "--id",
            &victim_sale.to_string(),
            "--stock",
            "40",
        ],
    )
    .assert_success("create");
    let victim = cluster.master_of(&ActivityKeys::new(victim_sale).stock);
    let other_sale = loop {
        let id = support::unique_id();
        if cluster.master_of(&ActivityKeys::new(id).stock) != victim {
            break id;
        }
    };
    admin(
        &pipeline,
        &[
            "activity",
            "create",
            "--id",
            &other_sale.to_string(),
            "--stock",
            "40",
        ],
    )
    .assert_success("create");

    let server = Program::spawn("server_kafka", &[], &env);
    let worker = Program::spawn("log_worker", &[], &env);
    send(&env, victim_sale, 30, 1);
    send(&env, other_sale, 30, 2);
    wait_decided(&pipeline, victim_sale, 30).await;
    wait_decided(&pipeline, other_sale, 30).await;

    cluster.kill(victim);
    let killed_at = Instant::now();
    send(&env, victim_sale, 60, 3);
    send(&env, other_sale, 60, 4);
    // The other master's sale is answered while the victim is down.
    let answered = loop {
        let results = results_of(&pipeline, other_sale);
        if results.len() == 90 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < WAIT,
            "the other sale stalled: {} answers",
            results.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let victim_answers = results_of(&pipeline, victim_sale).len();
    assert_eq!(
        victim_answers, 30,
        "nothing answered for the dead master's sale"
    );
    eprintln!("other master's sale answered {answered:?} after the kill");
    if let Some(left) = Duration::from_secs(3).checked_sub(killed_at.elapsed()) {
        std::thread::sleep(left);
    }
    cluster.restart(victim);
    cluster.wait_ok(Duration::from_secs(30));
    wait_decided(&pipeline, victim_sale, 90).await;
    wait_decided(&pipeline, other_sale, 90).await;
    let server = server.terminate();
    server.assert_success("server_kafka, never restarted");
    assert!(server.figure("retried_calls") > 0, "{}", server.stdout);
    worker
        .terminate()
        .assert_success("log_worker, never restarted");
    for sale in [victim_sale, other_sale] {
        assert_answers_hold(&pipeline, sale, 90).await;
        verify(&env, sale);
    }
}

/// Failover on a cluster with a replica that fell behind (paused): while it cannot
/// acknowledge, nothing of its master's sale is published; its master is SIGKILLed, the
/// replica resumes and is promoted, and what the buyers are then told agrees with what it
/// holds: no request answered twice differently, SUCCESS answers = rows = its sales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_lagging_replica_contradicts_no_answer_on_a_cluster() {
    let mut cluster = LocalCluster::start(3, 1, false);
    let pipeline = Pipeline::new("failover").on(cluster.backend());
    let env = every_activity_env(&pipeline);
    let sale = support::unique_id();
    admin(
        &pipeline,
        &[
            "activity",
            "create",
            "--id",
            &sale.to_string(),
            "--stock",
            "50",
        ],
    )
    .assert_success("create");
    let master = cluster.master_of(&ActivityKeys::new(sale).stock);
    let replica = cluster.replicas_of(master)[0];

    let server = Program::spawn("server_kafka", &[], &env);
    let worker = Program::spawn("log_worker", &[], &env);
    send(&env, sale, 40, 1);
    wait_decided(&pipeline, sale, 40).await;
    assert_eq!(results_of(&pipeline, sale).len(), 40);

    cluster.pause(replica);
    send(&env, sale, 60, 2);
    // Decided on the master, but no replica acknowledges: nothing leaves the server.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        results_of(&pipeline, sale).len(),
        40,
        "published without a replica"
    );
    cluster.kill(master);
    cluster.resume(replica);
    // The cluster fails over by itself: the replica is promoted once the other masters
    // agree the master is gone (cluster-node-timeout 2 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.try_master_of(&ActivityKeys::new(sale).stock) != Some(replica) {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_decided(&pipeline, sale, 100).await;
    let deadline = Instant::now() + WAIT;
    while results_of(&pipeline, sale).len() < 100 {
        assert!(Instant::now() < deadline, "answered after the failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = server.terminate();
    server.assert_success("server_kafka, never restarted");
    worker.terminate().assert_success("log_worker");
    assert_answers_hold(&pipeline, sale, 100).await;
    verify(&env, sale);
}

/// A replica of a single node, started and paused by the test.
struct Replica {
    port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl Replica {
    fn of(master: u16) -> Self {
        let dir = std::env::temp_dir().join(support::unique_name("seckill-replica"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = support::free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--replicaof", "127.0.0.1", &master.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        support::redis_cli(master, &["config", "set", "repl-diskless-sync-delay", "0"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !support::redis_cli(master, &["info", "replication"]).contains(",state=online,") {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child }
    }

    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The failover measured on main before this change (one node, one replica 0.5 s behind,
/// master SIGKILLed, replica promoted, both programs restarted on it with --keep-state):
/// 1,197 request ids answered twice, differently, and more sales than stock. Now nothing is
/// published until the replica has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_lagging_replica_contradicts_no_answer_on_one_node() {
    let mut master = support::KillableRedis::start();
    let replica = Replica::of(master.port);
    let pipeline = Pipeline::new("single-failover").with_redis(master.url());
    let stock = "50";
    let server = pipeline.spawn("server_kafka", &["--initial-stock", stock]);
    pipeline
        .run("client_kafka", &["--users", "40", "--seed", "1"])
        .assert_success("client_kafka");
    pipeline
        .wait_for("40 decided", WAIT, |s| s.requests_seen == 40)
        .await;
    let deadline = Instant::now() + WAIT;
    while results_of(&pipeline, pipeline.activity_id).len() < 40 {
        assert!(Instant::now() < deadline, "phase one answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    replica.signal("STOP");
    pipeline
        .run("client_kafka", &["--users", "100", "--seed", "2"])
        .assert_success("client_kafka");
    pipeline
        .wait_for("decided on the master", WAIT, |s| s.requests_seen == 140)
        .await;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        results_of(&pipeline, pipeline.activity_id).len(),
        40,
        "published without the replica"
    );
    master.kill();
    drop(server.kill());
    replica.signal("CONT");
    assert_eq!(
        support::redis_cli(replica.port, &["replicaof", "no", "one"]).trim(),
        "OK"
    );

    // Both programs restarted on the promoted replica, keeping its state.
    let promoted = pipeline.on(Backend::Single(format!(
        "redis://127.0.0.1:{}/0",
        replica.port
    )));
    let server = promoted.spawn("server_kafka", &["--initial-stock", stock, "--keep-state"]);
    promoted
        .wait_for("every request decided on the replica", WAIT, |s| {
            s.requests_seen == 140
        })
        .await;
    let deadline = Instant::now() + WAIT;
    while results_of(&promoted, promoted.activity_id).len() < 140 {
        assert!(Instant::now() < deadline, "answered after the failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
        .terminate()
        .assert_success("server_kafka on the replica");
    promoted
        .run("log_worker", &["--drain"])
        .assert_success("log_worker --drain");
    assert_answers_hold(&promoted, promoted.activity_id, 140).await;
    let verified = promoted.run("log_worker", &["--verify", "--expect-buyers", "140"]);
    assert!(
        verified.stdout.contains("all invariants hold"),
        "{}",
        verified.stdout
    );
}
