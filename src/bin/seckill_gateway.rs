//! seckill_gateway: buyers over HTTP in front of the flash sale (bearer tokens, limits,
//! outcomes from the results topic).

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs};
use seckill_kafka::gateway::{run_gateway, GatewaySettings};
use seckill_kafka::secret::SecretUrl;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Accepts purchases over HTTP and answers them with their outcome.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on
    #[arg(long = "listen", id = "gateway.listen", value_name = "ADDR")]
    listen: Option<String>,
    /// A file holding the token secret (else GATEWAY_JWT_SECRET)
    #[arg(
        long = "jwt-secret-file",
        id = "gateway.jwt_secret_file",
        value_name = "PATH"
    )]
    jwt_secret_file: Option<std::path::PathBuf>,
    /// Redis URL. Prefer REDIS_URL: other local users can read flags with ps
    #[arg(long = "redis-url", id = "redis.url", value_name = "URL")]
    redis_url: Option<SecretUrl>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, flags) = cli::parse::<Args>();
    cli::run(
        "seckill_gateway",
        &args.common,
        flags,
        |config, shutdown| async move {
            run_gateway(GatewaySettings::from(&config), shutdown).await?;
            anyhow::Ok(())
        },
    )
    .await
}
