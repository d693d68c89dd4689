//! The `activities` table: each sale's definition in PostgreSQL (what seckill_admin writes
//! and reads back), and the list of activities log_worker and `--verify --all` serve: those
//! defined here and those in the Redis registry (the quick path,
//! `server_kafka --initial-stock`, writes only Redis).

use crate::postgres::PostgresError;
use crate::redis_state::{LiveActivity, RedisState, RedisStateError};
use sqlx::{PgExecutor, PgPool};

/// A sale as PostgreSQL holds it. Times are ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub id: u64,
    pub name: String,
    /// Stock at creation.
    pub stock: u64,
    /// Stock added since (`activity add-stock`).
    pub added_stock: u64,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub per_user_limit: u32,
    /// When `activity end` ended it.
    pub ended_at_ms: Option<i64>,
    /// Time to pay for a purchase; 0: purchases are final.
    pub payment_window_ms: u64,
}

impl Activity {
    /// What its live state in Redis holds of it.
    pub fn live(&self) -> LiveActivity {
        LiveActivity {
            activity_id: self.id,
            stock: self.stock,
            starts_at_ms: self.starts_at_ms.unwrap_or(0),
            ends_at_ms: self.ends_at_ms.unwrap_or(0),
            per_user_limit: self.per_user_limit,
            payment_window_ms: self.payment_window_ms,
        }
    }
}

/// Ids are BIGINT: every id the suite accepts fits (requests above i64::MAX are refused).
fn id(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

type Row = (
    i64,
    String,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    i32,
    Option<f64>,
    i64,
);

const SELECT: &str = "SELECT id, name, stock, added_stock,
        EXTRACT(EPOCH FROM starts_at)::float8 * 1000, EXTRACT(EPOCH FROM ends_at)::float8 * 1000,
        per_user_limit, EXTRACT(EPOCH FROM ended_at)::float8 * 1000, payment_window_ms
    FROM activities";

fn from_row(row: Row) -> Activity {
    let (id, name, stock, added_stock, starts, ends, limit, ended, window) = row;
    let ms = |value: Option<f64>| value.map(|ms| ms.round() as i64);
    Activity {
        id: u64::try_from(id).unwrap_or(0),
        name,
        stock: u64::try_from(stock).unwrap_or(0),
        added_stock: u64::try_from(added_stock).unwrap_or(0),
        starts_at_ms: ms(starts),
        ends_at_ms: ms(ends),
        per_user_limit: u32::try_from(limit).unwrap_or(1),
        ended_at_ms: ms(ended),
        payment_window_ms: u64::try_from(window).unwrap_or(0),
    }
}

/// Inserts a new sale. `false`: one with this id exists (nothing changed).
pub async fn insert(
    executor: impl PgExecutor<'_>,
    activity: &Activity,
) -> Result<bool, PostgresError> {
    let inserted = sqlx::query(
        "INSERT INTO activities (id, name, stock, starts_at, ends_at, per_user_limit,
             payment_window_ms)
         VALUES ($1, $2, $3, to_timestamp($4 / 1000.0), to_timestamp($5 / 1000.0), $6, $7)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id(activity.id))
    .bind(&activity.name)
    .bind(id(activity.stock))
    .bind(activity.starts_at_ms)
    .bind(activity.ends_at_ms)
    .bind(i32::try_from(activity.per_user_limit).unwrap_or(i32::MAX))
    .bind(id(activity.payment_window_ms))
    .execute(executor)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn get(
    executor: impl PgExecutor<'_>,
    activity_id: u64,
) -> Result<Option<Activity>, PostgresError> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
        .bind(id(activity_id))
        .fetch_optional(executor)
        .await?;
    Ok(row.map(from_row))
}

/// Every sale, by id.
pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<Activity>, PostgresError> {
    let rows: Vec<Row> = sqlx::query_as(&format!("{SELECT} ORDER BY id"))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Records `units` more stock. `false`: no such sale.
pub async fn add_stock(
    executor: impl PgExecutor<'_>,
    activity_id: u64,
    units: u64,
) -> Result<bool, PostgresError> {
    let updated = sqlx::query("UPDATE activities SET added_stock = added_stock + $2 WHERE id = $1")
        .bind(id(activity_id))
        .bind(id(units))
        .execute(executor)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

/// Records that the sale ended at `ends_at_ms` (by Redis's clock), now.
pub async fn set_ended(
    executor: impl PgExecutor<'_>,
    activity_id: u64,
    ends_at_ms: i64,
) -> Result<bool, PostgresError> {
    let updated = sqlx::query(
        "UPDATE activities SET ends_at = to_timestamp($2 / 1000.0), ended_at = now(),
             starts_at = LEAST(starts_at, to_timestamp($2 / 1000.0))
         WHERE id = $1",
    )
    .bind(id(activity_id))
    .bind(ends_at_ms)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// The stored purchases of a sale: request id and user id of each row.
pub async fn purchases(
    executor: impl PgExecutor<'_>,
    activity_id: u64,
) -> Result<Vec<(String, u64)>, PostgresError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT request_id, user_id FROM seckill_records WHERE activity_id = $1 ORDER BY id",
    )
    .bind(id(activity_id))
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(request_id, user_id)| (request_id, u64::try_from(user_id).unwrap_or(0)))
        .collect())
}

/// Every activity to serve, sorted: registered in Redis (every sale whose live state was
/// written), and defined in PostgreSQL unless it ended more than a day ago (such a sale's
/// records, if any are left, are still found through the registry; the bound keeps years of
/// finished sales out of the sweep).
pub async fn known_activities(pool: &PgPool, redis: &RedisState) -> Result<Vec<u64>, KnownError> {
    let defined: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM activities WHERE ends_at IS NULL OR ends_at > now() - interval '1 day'",
    )
    .fetch_all(pool)
    .await
    .map_err(PostgresError::from)?;
    let mut ids: Vec<u64> = defined
        .into_iter()
        .filter_map(|id| u64::try_from(id).ok())
        .collect();
    ids.extend(redis.registered_activities().await?);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Why the activities could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
}

impl KnownError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Postgres(error) => error.is_transient(),
            Self::Redis(error) => error.is_transient(),
        }
    }
}
