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
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect { target: String, source: sqlx::Error },
    #[error("applying the PostgreSQL migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("PostgreSQL query failed")]
    Query(#[from] sqlx::Error),
}

/// Opens a pool from the `postgres:` section.
pub async fn connect(config: &PostgresConfig) -> Result<PgPool, PostgresError> {
    let options = PgConnectOptions::from_str(config.url.expose()).map_err(|error| {
        PostgresError::Url(format!(
            "{error}{}",
            crate::secret::url_parse_hint(config.url.expose())
        ))
    })?;
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

/// Whether a failed statement may succeed later: the connection broke, the pool timed out,
/// the server is starting or shutting down, or it ran out of connections. Such errors are
/// retried with backoff; anything else (bad SQL, constraint violations) is not.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: shutdown/crash/cannot connect now;
            // 53300: too many connections; 40001/40P01: serialization failure/deadlock.
            code.starts_with("08")
                || code.starts_with("57P0")
                || code == "53300"
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

impl PostgresError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Query(source) => is_transient(source),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(source)) => is_transient(source),
            _ => false,
        }
    }
}
