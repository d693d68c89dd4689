//! Command-line pieces every program shares: the common flags, loading the layered
//! configuration with them, shutdown on SIGINT/SIGTERM, and turning the outcome into one
//! clear line and an exit status ([`run`]), so that each binary only parses its arguments.

use crate::config::{Config, ConfigError, FlagOverrides, LogFormat};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Flags accepted by every program (after a subcommand too).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// YAML config file; without it ./config.yaml is read when present
    #[arg(long, env = "SECKILL_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (kafka.brokers)
    #[arg(long, value_name = "HOST:PORT,...", global = true)]
    pub brokers: Option<String>,
    /// Log format (telemetry.log_format); RUST_LOG sets the level
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// Print the effective configuration, secrets redacted, and exit
    #[arg(long, global = true)]
    pub print_config: bool,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9100 (telemetry.metrics_addr)
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub metrics_addr: Option<String>,
}

impl CommonArgs {
    /// Loads the configuration: defaults < file < environment < the common flags and
    /// the program's own `flags`.
    pub fn load_config(&self, mut flags: FlagOverrides) -> Result<Config, ConfigError> {
        flags
            .set("kafka.brokers", "brokers", self.brokers.clone())
            .set("telemetry.log_format", "log-format", self.log_format)
            .set(
                "telemetry.metrics_addr",
                "metrics-addr",
                self.metrics_addr.clone(),
            );
        Config::load(self.config.as_deref(), &flags)
    }
}

/// The flag the flash-sale programs (client_kafka, server_kafka, log_worker) share.
#[derive(Debug, Clone, clap::Args)]
pub struct SaleArgs {
    /// Activity (sale) id (seckill.activity_id)
    #[arg(long)]
    pub activity_id: Option<u64>,
}

impl SaleArgs {
    /// The program's flag overrides, starting with this one.
    pub fn overrides(&self) -> FlagOverrides {
        let mut flags = FlagOverrides::new();
        flags.set("seckill.activity_id", "activity-id", self.activity_id);
        flags
    }
}

/// The flags of the programs on the requests topic (client_kafka, server_kafka).
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsArgs {
    #[command(flatten)]
    pub sale: SaleArgs,
    /// Requests topic (seckill.requests_topic)
    #[arg(long)]
    pub topic: Option<String>,
}

impl RequestsArgs {
    /// The program's flag overrides, starting with these.
    pub fn overrides(&self) -> FlagOverrides {
        let mut flags = self.sale.overrides();
        flags.set("seckill.requests_topic", "topic", self.topic.clone());
        flags
    }
}

/// Runs a program: loads its configuration (one line and exit status 1 on a bad one), sets
/// up logging and metrics, handles `--print-config`, then runs `body` with a token that
/// SIGINT or SIGTERM cancels (tasks then finish their in-flight work). A second signal
/// stops waiting for that. A failure is printed as `program: error: ...` with each cause
/// once, and is exit status 1.
pub async fn run<F, Fut, E>(
    program: &str,
    common: &CommonArgs,
    flags: FlagOverrides,
    body: F,
) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = match start(program, common, flags) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(error) => return report_failure(program, error, ExitCode::FAILURE),
    };
    let shutdown = CancellationToken::new();
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => return report_failure(program, error, ExitCode::FAILURE),
    };
    let outcome = {
        let body = body(config, shutdown.clone());
        tokio::pin!(body);
        loop {
            tokio::select! {
                result = &mut body => break result.map_err(Into::into),
                name = signals.next() => {
                    if shutdown.is_cancelled() {
                        break Err(format!("{name} again: stopped without draining").into());
                    }
                    tracing::info!(signal = name, "shutdown requested; draining");
                    shutdown.cancel();
                }
            }
        }
    };
    finish(program, outcome)
}

/// The exit status of a finished program: success, or its error printed on one line and 1.
/// For programs that do not load the suite's configuration (`dev_broker`, `schema_tool`).
pub fn finish<E>(program: &str, outcome: Result<(), E>) -> ExitCode
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_failure(program, error, ExitCode::FAILURE),
    }
}

/// A token that SIGINT or SIGTERM cancels, for programs that run without [`run`].
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    let mut signals = Signals::new()?;
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!(signal = name, "shutdown requested; draining");
        cancel.cancel();
    });
    Ok(shutdown)
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Prints `program: error: ...` (its causes on the same line, each once) and returns `code`.
/// Programs use it instead of returning the error from `main`, which would print a
/// multi-line `Debug` rendering.
fn report_failure<E>(program: &str, error: E, code: ExitCode) -> ExitCode
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let error = error.into();
    eprintln!("{program}: error: {}", crate::report::Report(&*error));
    code
}

/// The common start of every program: loads the configuration, sets up logging and
/// metrics, and handles `--print-config`. `None`: the program has nothing more to do.
fn start(
    program: &str,
    common: &CommonArgs,
    flags: FlagOverrides,
) -> Result<Option<Config>, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = common.load_config(flags)?;
    if common.print_config {
        print!("{}", config.to_redacted_yaml());
        return Ok(None);
    }
    crate::telemetry::init(config.telemetry.log_format);
    if let Some(addr) = config.telemetry.metrics_addr() {
        crate::telemetry::serve_metrics(addr)?;
        if config.kafka.statistics_interval_ms == 0 {
            // librdkafka's statistics (lag, queue depth, round trips) become gauges.
            config.kafka.statistics_interval_ms = 5_000;
        }
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    for (name, _) in std::env::vars_os().filter_map(|(n, v)| Some((n.into_string().ok()?, v))) {
        if let Some(key) = crate::config::key_of_env_var(&name) {
            if !crate::config::program_reads(program, &key) {
                tracing::warn!(variable = %name, %key, program, "environment variable is not used by this program");
            }
        }
    }
    Ok(Some(config))
}
