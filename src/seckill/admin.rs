//! seckill_admin's engine: activities as data. The definition lives in PostgreSQL
//! (`activities`), the live state in Redis (stock, window, per-user limit), written when
//! the sale is created. A change that touches both holds a PostgreSQL transaction open
//! across the Redis step and commits only after it:
//!
//! - Redis refuses or fails: the transaction rolls back; nothing changed anywhere.
//! - The commit fails after Redis changed (the database went away in between): Redis has
//!   the change and PostgreSQL not; the error says exactly that and how to see it
//!   (`activity show` prints both sides). Redis is the one that decides purchases.
//!
//! `activity end` changes Redis first (the sale stops at once), then records the end.
//! `activity restore` rebuilds a lost live state from the definition and the stored rows,
//! refusing while any of it exists; it cannot bring back the outcomes of requests that did
//! not buy (they are decided anew if delivered again), nor records that were still queued
//! in Redis when the state was lost.

use crate::config::{PostgresConfig, RedisConfig};
use crate::postgres::{self, PostgresError};
use crate::redis_state::{ActivitySnapshot, RedisState, RedisStateError, RestoreOutcome};
use crate::seckill::activities::{self, Activity};
use sqlx::PgPool;
use std::fmt;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Bad input: nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("activity {0} exists")]
    Exists(u64),
    #[error("no activity {0} (seckill_admin activity list shows them)")]
    Unknown(u64),
    #[error("activity {0} has live state in Redis without a definition (it was made by server_kafka --initial-stock?): nothing changed")]
    LiveStateExists(u64),
    #[error("activity {0} has no live state in Redis: rebuild it with `seckill_admin activity restore {0}`")]
    NoLiveState(u64),
    #[error("activity {0} has live state in Redis: restore refuses to overwrite it")]
    RestoreRefused(u64),
    #[error("activity {0} has a payment window: restore rebuilds only sales without one (the reservations' deadlines and the payments are not rebuilt)")]
    RestoreWindowed(u64),
    #[error("activity {0}: records wait in Redis, not yet stored in PostgreSQL: run log_worker (it stores them), then restore")]
    RecordsQueued(u64),
    #[error("activity {activity_id}: Redis has the change ({what}) but PostgreSQL did not record it (its commit failed); `seckill_admin activity show {activity_id}` shows both sides")]
    Diverged {
        activity_id: u64,
        what: String,
        source: PostgresError,
    },
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
}

impl From<sqlx::Error> for AdminError {
    fn from(error: sqlx::Error) -> Self {
        Self::Postgres(error.into())
    }
}

/// A new sale as `activity create` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    pub id: u64,
    pub name: String,
    pub stock: u64,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub per_user_limit: u32,
    /// 0: purchases are final.
    pub payment_window_ms: u64,
}

/// The longest payment window accepted: a week.
pub const MAX_PAYMENT_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;

impl NewActivity {
    /// Checks what the flags' types alone do not.
    pub fn validate(&self) -> Result<(), AdminError> {
        if i64::try_from(self.id).is_err() {
            return Err(AdminError::Invalid(format!(
                "--id {} is above the largest id {}",
                self.id,
                i64::MAX
            )));
        }
        if i64::try_from(self.stock).is_err() {
            return Err(AdminError::Invalid(format!(
                "--stock {} is above {}",
                self.stock,
                i64::MAX
            )));
        }
        if self.per_user_limit == 0 {
            return Err(AdminError::Invalid(
                "--per-user-limit must be at least 1".into(),
            ));
        }
        if self.payment_window_ms > MAX_PAYMENT_WINDOW_MS {
            return Err(AdminError::Invalid(format!(
                "--payment-window-ms {} is above a week ({MAX_PAYMENT_WINDOW_MS})",
                self.payment_window_ms
            )));
        }
        if let (Some(starts), Some(ends)) = (self.starts_at_ms, self.ends_at_ms) {
            if ends <= starts {
                return Err(AdminError::Invalid(format!(
                    "--ends-at {} is not after --starts-at {}",
                    format_ms(ends),
                    format_ms(starts)
                )));
            }
        }
        Ok(())
    }
}

/// The two stores of activities.
pub struct Admin {
    pool: PgPool,
    redis: RedisState,
}

impl Admin {
    pub async fn connect(
        redis: &RedisConfig,
        postgres: &PostgresConfig,
    ) -> Result<Self, AdminError> {
        let pool = postgres::connect(postgres).await?;
        postgres::migrate(&pool).await?;
        Ok(Self {
            pool,
            redis: RedisState::connect(redis)?,
        })
    }

    pub fn redis(&self) -> &RedisState {
        &self.redis
    }

    /// Defines a sale and pre-warms its live state.
    pub async fn create(&self, new: &NewActivity) -> Result<ActivityView, AdminError> {
        new.validate()?;
        let activity = Activity {
            id: new.id,
            name: new.name.clone(),
            stock: new.stock,
            added_stock: 0,
            starts_at_ms: new.starts_at_ms,
            ends_at_ms: new.ends_at_ms,
            per_user_limit: new.per_user_limit,
            ended_at_ms: None,
            payment_window_ms: new.payment_window_ms,
        };
        let mut transaction = self.pool.begin().await?;
        if !activities::insert(&mut *transaction, &activity).await? {
            return Err(AdminError::Exists(new.id));
        }
        if !self.redis.create_activity(&activity.live()).await? {
            return Err(AdminError::LiveStateExists(new.id));
        }
        transaction
            .commit()
            .await
            .map_err(|error| AdminError::Diverged {
                activity_id: new.id,
                what: "the sale is live".into(),
                source: error.into(),
            })?;
        self.show(new.id).await
    }

    /// Every sale with its live figures, by id.
    pub async fn list(&self) -> Result<Vec<ActivityView>, AdminError> {
        let mut views = Vec::new();
        for activity in activities::list(&self.pool).await? {
            let live = self.redis.snapshot(activity.id).await?;
            let rows = self.rows(activity.id).await?;
            views.push(ActivityView {
                activity,
                live,
                rows,
            });
        }
        Ok(views)
    }

    /// One sale: its definition and live figures.
    pub async fn show(&self, activity_id: u64) -> Result<ActivityView, AdminError> {
        let activity = activities::get(&self.pool, activity_id)
            .await?
            .ok_or(AdminError::Unknown(activity_id))?;
        let live = self.redis.snapshot(activity_id).await?;
        let rows = self.rows(activity_id).await?;
        Ok(ActivityView {
            activity,
            live,
            rows,
        })
    }

    /// Adds stock mid-sale: at once in Redis (a sold-out sale re-opens), recorded in
    /// PostgreSQL in the same transaction.
    pub async fn add_stock(
        &self,
        activity_id: u64,
        units: u64,
    ) -> Result<ActivityView, AdminError> {
        if units == 0 || i64::try_from(units).is_err() {
            return Err(AdminError::Invalid(format!(
                "COUNT must be from 1 to {}, not {units}",
                i64::MAX
            )));
        }
        let mut transaction = self.pool.begin().await?;
        if !activities::add_stock(&mut *transaction, activity_id, units).await? {
            return Err(AdminError::Unknown(activity_id));
        }
        if self.redis.add_stock(activity_id, units).await?.is_none() {
            return Err(AdminError::NoLiveState(activity_id));
        }
        transaction
            .commit()
            .await
            .map_err(|error| AdminError::Diverged {
                activity_id,
                what: format!("{units} units added"),
                source: error.into(),
            })?;
        self.show(activity_id).await
    }

    /// Ends a sale now (by Redis's clock), then records its end.
    pub async fn end(&self, activity_id: u64) -> Result<ActivityView, AdminError> {
        if activities::get(&self.pool, activity_id).await?.is_none() {
            return Err(AdminError::Unknown(activity_id));
        }
        let ends_at = self
            .redis
            .end_activity(activity_id)
            .await?
            .ok_or(AdminError::NoLiveState(activity_id))?;
        activities::set_ended(&self.pool, activity_id, ends_at)
            .await
            .map_err(|source| AdminError::Diverged {
                activity_id,
                what: format!("the sale ended at {}", format_ms(ends_at)),
                source,
            })?;
        self.show(activity_id).await
    }

    /// Rebuilds a sale whose live state was lost, from its definition and stored rows.
    pub async fn restore(&self, activity_id: u64) -> Result<ActivityView, AdminError> {
        let activity = activities::get(&self.pool, activity_id)
            .await?
            .ok_or(AdminError::Unknown(activity_id))?;
        if activity.payment_window_ms > 0 {
            return Err(AdminError::RestoreWindowed(activity_id));
        }
        let purchases = activities::purchases(&self.pool, activity_id).await?;
        match self
            .redis
            .restore_activity(&activity.live(), activity.added_stock, &purchases)
            .await?
        {
            RestoreOutcome::Restored { .. } => self.show(activity_id).await,
            RestoreOutcome::StateExists => Err(AdminError::RestoreRefused(activity_id)),
            RestoreOutcome::RecordsQueued => Err(AdminError::RecordsQueued(activity_id)),
        }
    }

    async fn rows(&self, activity_id: u64) -> Result<Stored, AdminError> {
        let activity = i64::try_from(activity_id).unwrap_or(i64::MAX);
        let records =
            sqlx::query_scalar("SELECT count(*) FROM seckill_records WHERE activity_id = $1")
                .bind(activity)
                .fetch_one(&self.pool)
                .await?;
        let orders =
            crate::seckill::orders::store::orders_by_state(&self.pool, activity_id).await?;
        Ok(Stored { records, orders })
    }
}

/// What PostgreSQL holds of a sale's purchases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    /// Purchase rows (`seckill_records`).
    pub records: i64,
    /// Order rows by state: reserved, paid, expired.
    pub orders: [i64; 3],
}

/// A sale's definition with its live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityView {
    pub activity: Activity,
    pub live: ActivitySnapshot,
    pub rows: Stored,
}

impl ActivityView {
    /// The header of `activity list`, aligned with [`ActivityView::line`].
    pub fn header() -> String {
        format!(
            "{:<12} {:<11} {:>9} {:>9} {:>9} {:>5}  name",
            "id", "state", "remaining", "sold", "stock", "limit"
        )
    }

    /// One line of `activity list` (stock: initial plus added).
    pub fn line(&self) -> String {
        let (a, live) = (&self.activity, &self.live);
        format!(
            "{:<12} {:<11} {:>9} {:>9} {:>9} {:>5}  {}",
            a.id,
            live.state().as_str(),
            live.stock
                .map_or("-".to_string(), |stock| stock.to_string()),
            live.held_units(),
            a.stock + a.added_stock,
            a.per_user_limit,
            a.name
        )
    }
}

impl fmt::Display for ActivityView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, live) = (&self.activity, &self.live);
        writeln!(
            f,
            "activity {}{}",
            a.id,
            if a.name.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.name)
            }
        )?;
        writeln!(f, "  state            {}", live.state())?;
        writeln!(
            f,
            "  window           {} to {}",
            a.starts_at_ms.map_or("open".to_string(), format_ms),
            a.ends_at_ms.map_or("no end".to_string(), format_ms)
        )?;
        if let Some(ended) = a.ended_at_ms {
            writeln!(f, "  ended by admin   {}", format_ms(ended))?;
        }
        writeln!(f, "  per-user limit   {}", a.per_user_limit)?;
        if a.payment_window_ms > 0 {
            writeln!(f, "  payment window   {} ms", a.payment_window_ms)?;
        }
        writeln!(
            f,
            "  stock            {} + {} added (PostgreSQL); Redis: {} + {}",
            a.stock,
            a.added_stock,
            live.initial_stock.map_or("-".into(), |v| v.to_string()),
            live.added_stock
        )?;
        writeln!(
            f,
            "  remaining        {}",
            live.stock
                .map_or("- (no live state)".into(), |v| v.to_string())
        )?;
        if a.payment_window_ms > 0 {
            writeln!(
                f,
                "  sold             {} (paid) + {} reserved; {} reservations made in all",
                live.paid, live.reserved, live.success
            )?;
        } else {
            writeln!(f, "  sold             {}", live.success)?;
        }
        if a.payment_window_ms > 0 {
            let total = live.total_stock();
            let stock = live.stock.unwrap_or(0);
            writeln!(
                f,
                "  orders           {} reserved, {} paid, {} expired (Redis); {} + {} added = {} remaining + {} reserved + {} paid: {}",
                live.reserved,
                live.paid,
                live.expired,
                live.initial_stock.unwrap_or(0),
                live.added_stock,
                stock,
                live.reserved,
                live.paid,
                if total == stock + live.reserved + live.paid { "holds" } else { "DOES NOT HOLD" }
            )?;
            writeln!(
                f,
                "  stored orders    {} reserved, {} paid, {} expired (PostgreSQL)",
                self.rows.orders[0], self.rows.orders[1], self.rows.orders[2]
            )?;
            writeln!(
                f,
                "  payments         {} paid, {} late, {} unknown, {} already paid",
                live.payments[0], live.payments[1], live.payments[2], live.payments[3]
            )?;
        }
        writeln!(f, "  buyers           {}", live.buyers)?;
        writeln!(
            f,
            "  requests         {} decided: {} sold out, {} already bought, {} not started, {} ended",
            live.requests_seen, live.sold_out, live.already_bought, live.not_started, live.ended
        )?;
        writeln!(
            f,
            "  queued records   {} (waiting for log_worker)",
            live.queued_records + live.processing_records
        )?;
        write!(f, "  stored rows      {}", self.rows.records)
    }
}

/// RFC 3339 (`2026-12-01T20:00:00+08:00`, `...Z`) to ms since the epoch.
pub fn parse_time(flag: &str, text: &str) -> Result<i64, AdminError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|error| {
            AdminError::Invalid(format!(
                "{flag} `{text}` is not an RFC 3339 time such as 2026-12-01T20:00:00+08:00: {error}"
            ))
        })
}

/// ms since the epoch as RFC 3339, UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new() -> NewActivity {
        NewActivity {
            id: 7,
            name: String::new(),
            stock: 10,
            starts_at_ms: None,
            ends_at_ms: None,
            per_user_limit: 1,
            payment_window_ms: 0,
        }
    }

    #[test]
    fn bad_definitions_are_refused_with_a_reason() {
        assert!(new().validate().is_ok());
        let too_long = NewActivity {
            payment_window_ms: MAX_PAYMENT_WINDOW_MS + 1,
            ..new()
        };
        assert!(too_long
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--payment-window-ms"));
        let backwards = NewActivity {
            starts_at_ms: Some(2_000),
            ends_at_ms: Some(1_000),
            ..new()
        };
        let error = backwards.validate().unwrap_err().to_string();
        assert!(error.contains("is not after --starts-at"), "{error}");
        let zero = NewActivity {
            per_user_limit: 0,
            ..new()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        let huge = NewActivity {
            id: u64::MAX,
            ..new()
        };
        assert!(huge.validate().is_err());
    }

    #[test]
    fn times_are_rfc3339_with_offsets() {
        assert_eq!(
            parse_time("--starts-at", "2026-12-01T20:00:00+08:00").unwrap(),
            parse_time("--starts-at", "2026-12-01T12:00:00Z").unwrap()
        );
        let error = parse_time("--starts-at", "tomorrow")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--starts-at `tomorrow` is not an RFC 3339 time"),
            "{error}"
        );
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
