//! PostgreSQL access: the connection pool and the schema migrations in `migrations/`,
//! embedded in the binaries at build time and applied at start.

use crate::config::PostgresConfig;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The message comes from the URL parser; the URL itself is not repeated (it may hold a
    /// password).
    #[error("invalid PostgreSQL URL (postgres.url): {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// Opens a pool from the `postgres:` section.
pub async fn connect(config: &PostgresConfig) -> Result<PgPool, PostgresError> {
    let options = PgConnectOptions::from_str(config.url.expose())
        .map_err(|error| PostgresError::Url(error.to_string()))?;
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.connect_timeout_ms))
        .connect_with(options)
        .await
        .map_err(|source| PostgresError::Connect {
            target: config.url.redacted(),
            source,
        })
}

/// Applies the embedded migrations (idempotent; sqlx records what ran in `_sqlx_migrations`).
pub async fn migrate(pool: &PgPool) -> Result<(), PostgresError> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}
