//! Migrations against the real PostgreSQL of the dev stack.

mod support;

use seckill_kafka::config::PostgresConfig;
use seckill_kafka::postgres::{connect, migrate, PostgresError};
use seckill_kafka::secret::SecretUrl;

/// A purchase is a row per request id: a replayed record is a no-op, and a user may hold
/// several rows of a sale (its per-user limit is checked in Redis and by `--verify`).
#[tokio::test]
async fn migrations_apply_twice_and_enforce_one_row_per_request() {
    let pool = connect(&support::postgres_config()).await.unwrap();
    // Idempotent: the second run finds everything applied (tests also run in parallel).
    migrate(&pool).await.unwrap();
    migrate(&pool).await.unwrap();

    let activity = support::unique_id() as i64;
    let insert = "INSERT INTO seckill_records
            (request_id, activity_id, user_id, request_initiation_time, processed_time, cost_ms)
        VALUES ($1, $2, $3, now(), now(), 1)
        ON CONFLICT (activity_id, request_id) DO NOTHING";
    let mut affected = Vec::new();
    for request_id in ["r1", "r1", "r2"] {
        let result = sqlx::query(insert)
            .bind(request_id)
            .bind(activity)
            .bind(7_i64)
            .execute(&pool)
            .await
            .unwrap();
        affected.push(result.rows_affected());
    }
    assert_eq!(
        affected,
        [1, 0, 1],
        "the replay of r1 is a no-op; r2 is a second purchase"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM seckill_records WHERE activity_id = $1")
            .bind(activity)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 2);

    // Without ON CONFLICT the constraint itself rejects a second row of one request.
    let error = sqlx::query(
        "INSERT INTO seckill_records
            (request_id, activity_id, user_id, request_initiation_time, processed_time, cost_ms)
         VALUES ('r1', $1, 8, now(), now(), 1)",
    )
    .bind(activity)
    .execute(&pool)
    .await
    .unwrap_err();
    let constraint = error
        .as_database_error()
        .and_then(|e| e.constraint().map(str::to_owned));
    assert_eq!(
        constraint.as_deref(),
        Some("seckill_records_activity_request_key")
    );

    // The activities table refuses what seckill_admin refuses too.
    for (stock, limit) in [(-1_i64, 1_i32), (5, 0)] {
        let refused =
            sqlx::query("INSERT INTO activities (id, stock, per_user_limit) VALUES ($1, $2, $3)")
                .bind(activity)
                .bind(stock)
                .bind(limit)
                .execute(&pool)
                .await;
        assert!(refused.is_err(), "stock {stock} limit {limit}");
    }
}

#[tokio::test]
async fn connection_errors_name_the_host_but_not_the_password() {
    let config = PostgresConfig {
        // Port 1 on loopback: nothing listens there.
        url: SecretUrl::new("postgres://seckill:hunter2@127.0.0.1:1/seckill"),
        connect_timeout_ms: 2_000,
        ..PostgresConfig::default()
    };
    let error = connect(&config).await.unwrap_err();
    assert!(matches!(error, PostgresError::Connect { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
