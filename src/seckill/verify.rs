//! The invariant check behind `log_worker --verify`: for one activity (or every one,
//! `--all`), compares Redis and PostgreSQL and reports each guarantee of the pipeline with
//! its figures; and `log_worker --verify --user ID`: what the system knows of one user
//! ([`user_report`]).

use crate::common::SeckillOutcome;
use crate::config::{PostgresConfig, RedisConfig};
use crate::postgres::{self, PostgresError};
use crate::redis_state::{ActivitySnapshot, RedisState, RedisStateError};
use crate::seckill::orders::store as orders;
use sqlx::PgPool;
use std::fmt;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
    #[error("cannot list the activities")]
    Activities(#[from] crate::seckill::activities::KnownError),
}

impl From<sqlx::Error> for VerifyError {
    fn from(error: sqlx::Error) -> Self {
        Self::Postgres(error.into())
    }
}

/// The figures of one activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub activity_id: u64,
    pub redis: ActivitySnapshot,
    pub rows: i64,
    /// Order rows by state (reserved, paid, expired): sales with a payment window.
    pub orders: [i64; 3],
    /// Users holding more rows (with a payment window: live or paid orders) than the sale's
    /// per-user limit.
    pub users_over_limit: i64,
    /// Distinct users who asked, when the caller knows it (`--expect-buyers`; a sale of
    /// one purchase per user).
    pub expected_buyers: Option<u64>,
}

/// One checked invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub holds: bool,
    pub figures: String,
}

impl VerifyReport {
    pub fn checks(&self) -> Vec<Check> {
        let r = &self.redis;
        let total = r.total_stock();
        let stock = r.stock.unwrap_or(0);
        let decided = u64::try_from(r.success).unwrap_or(0)
            + r.sold_out
            + r.already_bought
            + r.not_started
            + r.ended;
        let mut checks = vec![
            Check {
                name: "activity initialised",
                holds: r.initial_stock.is_some() && r.stock.is_some(),
                figures: format!(
                    "initial stock {:?}, remaining {:?}",
                    r.initial_stock, r.stock
                ),
            },
            Check {
                name: "stock >= 0",
                holds: stock >= 0,
                figures: format!("remaining {stock}"),
            },
            if r.payment_window_ms > 0 {
                Check {
                    name: "initial + added = remaining + reserved + paid",
                    holds: total == stock + r.reserved + r.paid,
                    figures: format!(
                        "{} + {} = {total} vs {stock} + {} + {} = {}",
                        r.initial_stock.unwrap_or(0),
                        r.added_stock,
                        r.reserved,
                        r.paid,
                        stock + r.reserved + r.paid
                    ),
                }
            } else {
                Check {
                    name: "initial + added - remaining = success",
                    holds: total - stock == r.success,
                    figures: format!(
                        "{} + {} - {stock} = {} vs {}",
                        r.initial_stock.unwrap_or(0),
                        r.added_stock,
                        total - stock,
                        r.success
                    ),
                }
            },
            Check {
                name: "each request decided once, counted once",
                holds: r.requests_seen == decided,
                figures: format!(
                    "{} decided = {} success + {} sold out + {} already bought + {} not started + {} ended",
                    r.requests_seen, r.success, r.sold_out, r.already_bought, r.not_started, r.ended
                ),
            },
            Check {
                name: "log queue drained",
                holds: r.queued_records == 0 && r.processing_records == 0,
                figures: format!(
                    "{} queued, {} processing",
                    r.queued_records, r.processing_records
                ),
            },
            Check {
                name: "success counter = rows in PostgreSQL",
                holds: r.success == self.rows,
                figures: format!("{} vs {}", r.success, self.rows),
            },
            Check {
                name: "no user above the per-user limit",
                holds: self.users_over_limit == 0,
                figures: format!(
                    "{} users with more than {} {}",
                    self.users_over_limit,
                    r.per_user_limit,
                    if r.payment_window_ms > 0 {
                        "live or paid orders"
                    } else {
                        "rows"
                    }
                ),
            },
        ];
        if r.payment_window_ms > 0 {
            checks.push(Check {
                name: "success = reserved + paid + expired",
                holds: r.success == r.reserved + r.paid + r.expired,
                figures: format!(
                    "{} vs {} + {} + {}",
                    r.success, r.reserved, r.paid, r.expired
                ),
            });
            checks.push(Check {
                name: "every reservation has its deadline",
                holds: i64::try_from(r.deadlines).unwrap_or(-1) == r.reserved,
                figures: format!("{} deadlines, {} reserved", r.deadlines, r.reserved),
            });
            checks.push(Check {
                name: "orders in PostgreSQL = Redis, by state",
                holds: self.orders == [r.reserved, r.paid, r.expired],
                figures: format!(
                    "reserved {} / {}, paid {} / {}, expired {} / {}",
                    self.orders[0], r.reserved, self.orders[1], r.paid, self.orders[2], r.expired
                ),
            });
        }
        if let Some(buyers) = self.expected_buyers.filter(|_| r.payment_window_ms == 0) {
            let sold = total - stock;
            let expected = total.min(i64::try_from(buyers).unwrap_or(i64::MAX));
            checks.push(Check {
                name: "sold = min(stock, distinct buyers)",
                holds: sold == expected,
                figures: format!("sold {sold}, min({total}, {buyers}) = {expected}"),
            });
        }
        checks
    }

    /// One line: the activity, its state and figures, and what fails.
    pub fn line(&self) -> String {
        let r = &self.redis;
        let failing: Vec<&str> = self
            .checks()
            .into_iter()
            .filter(|check| !check.holds)
            .map(|check| check.name)
            .collect();
        let verdict = if failing.is_empty() {
            "ok".to_string()
        } else {
            format!("FAIL: {}", failing.join("; "))
        };
        let orders = if r.payment_window_ms > 0 {
            format!(" orders {}r/{}p/{}e", r.reserved, r.paid, r.expired)
        } else {
            String::new()
        };
        format!(
            "activity {:<10} {:<11} sold {}/{} rows {} requests {} limit {}{orders}  {verdict}",
            self.activity_id,
            r.state().as_str(),
            r.held_units(),
            r.total_stock(),
            self.rows,
            r.requests_seen,
            r.per_user_limit
        )
    }

    pub fn holds(&self) -> bool {
        self.checks().iter().all(|check| check.holds)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verify activity {}", self.activity_id)?;
        for check in self.checks() {
            let mark = if check.holds { "ok  " } else { "FAIL" };
            writeln!(f, "  [{mark}] {:<40} {}", check.name, check.figures)?;
        }
        let verdict = if self.holds() {
            "all invariants hold"
        } else {
            "INVARIANTS VIOLATED"
        };
        write!(f, "  result: {verdict}")
    }
}

/// Reads the figures of `activity_id` from Redis and PostgreSQL.
pub async fn verify(
    redis: &RedisConfig,
    postgres: &PostgresConfig,
    activity_id: u64,
    expected_buyers: Option<u64>,
) -> Result<VerifyReport, VerifyError> {
    let redis = RedisState::connect(redis)?;
    let pool = postgres::connect(postgres).await?;
    postgres::migrate(&pool).await?;
    report_of(&redis, &pool, activity_id, expected_buyers).await
}

/// The figures of every activity (PostgreSQL's `activities` and the Redis registry), by id.
pub async fn verify_all(
    redis: &RedisConfig,
    postgres: &PostgresConfig,
) -> Result<Vec<VerifyReport>, VerifyError> {
    let redis = RedisState::connect(redis)?;
    let pool = postgres::connect(postgres).await?;
    postgres::migrate(&pool).await?;
    let mut ids = crate::seckill::activities::known_activities(&pool, &redis).await?;
    ids.sort_unstable();
    let mut reports = Vec::with_capacity(ids.len());
    for activity_id in ids {
        reports.push(report_of(&redis, &pool, activity_id, None).await?);
    }
    Ok(reports)
}

/// The figures of the given activities, in that order.
pub async fn verify_some(
    redis: &RedisConfig,
    postgres: &PostgresConfig,
    ids: &[u64],
) -> Result<Vec<VerifyReport>, VerifyError> {
    let redis = RedisState::connect(redis)?;
    let pool = postgres::connect(postgres).await?;
    postgres::migrate(&pool).await?;
    let mut reports = Vec::with_capacity(ids.len());
    for &activity_id in ids {
        reports.push(report_of(&redis, &pool, activity_id, None).await?);
    }
    Ok(reports)
}

async fn report_of(
    redis: &RedisState,
    pool: &PgPool,
    activity_id: u64,
    expected_buyers: Option<u64>,
) -> Result<VerifyReport, VerifyError> {
    let snapshot = redis.snapshot(activity_id).await?;
    let activity = i64::try_from(activity_id).unwrap_or(i64::MAX);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM seckill_records WHERE activity_id = $1")
            .bind(activity)
            .fetch_one(pool)
            .await?;
    let (users_over_limit, orders) = if snapshot.payment_window_ms > 0 {
        (
            orders::users_over_limit(pool, activity_id, snapshot.per_user_limit).await?,
            orders::orders_by_state(pool, activity_id).await?,
        )
    } else {
        let over: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT user_id FROM seckill_records WHERE activity_id = $1
                 GROUP BY user_id HAVING count(*) > $2) AS over_limit",
        )
        .bind(activity)
        .bind(i64::from(snapshot.per_user_limit))
        .fetch_one(pool)
        .await?;
        (over, [0; 3])
    };
    Ok(VerifyReport {
        activity_id,
        redis: snapshot,
        rows,
        orders,
        users_over_limit,
        expected_buyers,
    })
}

/// What the system knows of one user in the configured activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserReport {
    pub activity_id: u64,
    pub user_id: u64,
    /// The user's requests Redis has decided, with their outcomes (request id order).
    pub decisions: Vec<(String, SeckillOutcome)>,
    /// Purchases the user holds, by Redis.
    pub held_in_redis: u64,
    /// Their purchase rows in PostgreSQL: request id, processed time (ms), cost_ms.
    pub rows: Vec<(String, i64, i64)>,
}

impl fmt::Display for UserReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "user {} in activity {}", self.user_id, self.activity_id)?;
        writeln!(f, "  requests decided in Redis: {}", self.decisions.len())?;
        for (request_id, outcome) in &self.decisions {
            writeln!(f, "    {request_id}  {outcome}")?;
        }
        writeln!(f, "  purchases held in Redis: {}", self.held_in_redis)?;
        write!(f, "  rows in PostgreSQL: {}", self.rows.len())?;
        for (request_id, processed_ms, cost_ms) in &self.rows {
            write!(
                f,
                "\n    request_id={request_id} processed_time_ms={processed_ms} cost_ms={cost_ms}"
            )?;
        }
        Ok(())
    }
}

/// Looks one user up: their decided requests in Redis (a scan of the activity's decided
/// requests: O(requests), for diagnosis), whether they are a buyer, and their row.
pub async fn user_report(
    redis: &RedisConfig,
    postgres: &PostgresConfig,
    activity_id: u64,
    user_id: u64,
) -> Result<UserReport, VerifyError> {
    let redis = RedisState::connect(redis)?;
    let (decisions, held_in_redis) = redis.user_decisions(activity_id, user_id).await?;
    let pool = postgres::connect(postgres).await?;
    postgres::migrate(&pool).await?;
    let rows: Vec<(String, f64, i64)> = sqlx::query_as(
        "SELECT request_id, EXTRACT(EPOCH FROM processed_time)::float8 * 1000, cost_ms
         FROM seckill_records WHERE activity_id = $1 AND user_id = $2 ORDER BY request_id",
    )
    .bind(i64::try_from(activity_id).unwrap_or(i64::MAX))
    .bind(i64::try_from(user_id).unwrap_or(i64::MAX))
    .fetch_all(&pool)
    .await?;
    Ok(UserReport {
        activity_id,
        user_id,
        decisions,
        held_in_redis,
        rows: rows
            .into_iter()
            .map(|(request_id, processed_ms, cost_ms)| {
                (request_id, processed_ms.round() as i64, cost_ms)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stock: i64, success: i64, rows: i64) -> VerifyReport {
        VerifyReport {
            activity_id: 1,
            redis: ActivitySnapshot {
                initial_stock: Some(10),
                stock: Some(stock),
                success,
                over: stock == 0,
                buyers: success as u64,
                requests_seen: 40,
                sold_out: 40 - success as u64,
                per_user_limit: 1,
                ..ActivitySnapshot::default()
            },
            rows,
            orders: [0; 3],
            users_over_limit: 0,
            expected_buyers: Some(25),
        }
    }

    #[test]
    fn consistent_figures_hold() {
        let report = report(0, 10, 10);
        assert!(report.holds(), "{report}");
        assert!(report.to_string().ends_with("all invariants hold"));
    }

    #[test]
    fn each_violation_is_named() {
        let lost_row = report(0, 10, 9);
        assert!(!lost_row.holds());
        let failing: Vec<_> = lost_row
            .checks()
            .into_iter()
            .filter(|c| !c.holds)
            .map(|c| c.name)
            .collect();
        assert_eq!(failing, vec!["success counter = rows in PostgreSQL"]);

        let oversold = report(-1, 11, 11);
        let failing: Vec<_> = oversold
            .checks()
            .into_iter()
            .filter(|c| !c.holds)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            failing,
            vec!["stock >= 0", "sold = min(stock, distinct buyers)"]
        );
        assert!(oversold.to_string().contains("[FAIL] stock >= 0"));
    }
}
