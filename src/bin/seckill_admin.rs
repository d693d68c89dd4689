//! seckill_admin: the flash sales as data (definition in PostgreSQL, live state in Redis).

use clap::{Parser, Subcommand};
use seckill_kafka::cli::{self, CommonArgs};
use seckill_kafka::gateway::auth::{issue, TokenSecret};
use seckill_kafka::seckill::admin::{parse_time, ActivityView, Admin, NewActivity};
use seckill_kafka::secret::SecretUrl;
use std::io::Write as _;
use std::process::ExitCode;

/// Manages the sales: create, list, show, add stock, end, restore; issues gateway tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Redis URL. Prefer REDIS_URL: other local users can read flags with ps
    #[arg(
        long = "redis-url",
        id = "redis.url",
        value_name = "URL",
        global = true
    )]
    redis_url: Option<SecretUrl>,
    /// PostgreSQL URL. Prefer DATABASE_URL, for the same reason
    #[arg(
        long = "database-url",
        id = "postgres.url",
        value_name = "URL",
        global = true
    )]
    database_url: Option<SecretUrl>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The sales
    #[command(subcommand)]
    Activity(ActivityCommand),
    /// Print a bearer token for seckill_gateway (JWT HS256, signed with the secret in
    /// GATEWAY_JWT_SECRET or gateway.jwt_secret_file), for tests and demos
    Token {
        /// The user the token names
        #[arg(long)]
        user: u64,
        /// Valid for this long, seconds
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Tokens for this many users from --user on, one a line (benchmarks)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        count: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ActivityCommand {
    /// Define a sale and pre-warm its live state in Redis
    Create {
        /// The sale's id
        #[arg(long)]
        id: u64,
        /// Units on sale
        #[arg(long, allow_hyphen_values = true)]
        stock: u64,
        /// A name to show
        #[arg(long, default_value = "")]
        name: String,
        /// Opens then (RFC 3339, e.g. 2026-12-01T20:00:00+08:00); default: now
        #[arg(long, value_name = "TIME")]
        starts_at: Option<String>,
        /// Ends then (RFC 3339); default: no end
        #[arg(long, value_name = "TIME")]
        ends_at: Option<String>,
        /// Purchases one user may hold
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        per_user_limit: u32,
        /// Time to pay for a purchase, ms; unpaid, it expires and its unit goes back on
        /// sale. 0: a purchase is final
        #[arg(long, default_value_t = 0, value_name = "MS")]
        payment_window_ms: u64,
    },
    /// Every sale, one line each
    List,
    /// A sale's definition and live figures
    Show { id: u64 },
    /// Add units mid-sale (takes effect at once; re-opens a sold-out sale)
    AddStock {
        id: u64,
        #[arg(allow_hyphen_values = true)]
        count: u64,
    },
    /// End a sale now
    End { id: u64 },
    /// Rebuild a sale's lost live state from PostgreSQL (refuses while it exists)
    Restore { id: u64 },
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, flags) = cli::parse::<Args>();
    cli::run(
        "seckill_admin",
        &args.common,
        flags,
        |config, _shutdown| async move {
            let command = match args.command {
                Command::Activity(command) => command,
                Command::Token {
                    user,
                    ttl_secs,
                    count,
                } => {
                    let last = user.saturating_add(count - 1);
                    anyhow::ensure!(
                        i64::try_from(last).is_ok(),
                        "--user {user} --count {count} goes above the largest id {}",
                        i64::MAX
                    );
                    let secret = TokenSecret::load(&config.gateway)?;
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    for user in user..=last {
                        writeln!(out, "{}", issue(&secret, user, ttl_secs)?)?;
                    }
                    out.flush()?;
                    return anyhow::Ok(());
                }
            };
            // Input is checked before any store is contacted: bad input changes nothing.
            let create = match &command {
                ActivityCommand::Create {
                    id,
                    stock,
                    name,
                    starts_at,
                    ends_at,
                    per_user_limit,
                    payment_window_ms,
                } => {
                    let new = NewActivity {
                        id: *id,
                        name: name.clone(),
                        stock: *stock,
                        starts_at_ms: starts_at
                            .as_deref()
                            .map(|text| parse_time("--starts-at", text))
                            .transpose()?,
                        ends_at_ms: ends_at
                            .as_deref()
                            .map(|text| parse_time("--ends-at", text))
                            .transpose()?,
                        per_user_limit: *per_user_limit,
                        payment_window_ms: *payment_window_ms,
                    };
                    new.validate()?;
                    Some(new)
                }
                _ => None,
            };
            let admin = Admin::connect(&config.redis, &config.postgres).await?;
            match command {
                ActivityCommand::Create { .. } => {
                    if let Some(new) = create {
                        println!("created\n{}", admin.create(&new).await?);
                    }
                }
                ActivityCommand::List => {
                    let views = admin.list().await?;
                    println!("{}", ActivityView::header());
                    for view in &views {
                        println!("{}", view.line());
                    }
                }
                ActivityCommand::Show { id } => println!("{}", admin.show(id).await?),
                ActivityCommand::AddStock { id, count } => {
                    println!("added {count}\n{}", admin.add_stock(id, count).await?)
                }
                ActivityCommand::End { id } => println!("ended\n{}", admin.end(id).await?),
                ActivityCommand::Restore { id } => {
                    println!("restored\n{}", admin.restore(id).await?)
                }
            }
            anyhow::Ok(())
        },
    )
    .await
}
