//! Command-line pieces every program shares: the common flags, loading the layered
//! configuration with them, and turning a failure into one clear line and a non-zero exit.

use crate::config::{Config, ConfigError, FlagOverrides, LogFormat};
use std::path::PathBuf;

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

/// Prints `program: error` (with its causes on the same line) and exits with status 1.
/// Programs use it instead of returning the error from `main`, which would print a
/// multi-line `Debug` rendering.
pub fn exit_with_error(program: &str, error: &anyhow::Error) -> ! {
    eprintln!(
        "{program}: error: {}",
        crate::report::Report(error.as_ref())
    );
    std::process::exit(1)
}

/// The common start of every program: loads the configuration (exiting with one line on a
/// bad one), sets up logging, and handles `--print-config`. Returns `None` when the program
/// has nothing more to do.
pub fn start(program: &str, common: &CommonArgs, flags: FlagOverrides) -> Option<Config> {
    let mut config = match common.load_config(flags) {
        Ok(config) => config,
        Err(error) => exit_with_error(program, &error.into()),
    };
    if common.print_config {
        print!("{}", config.to_redacted_yaml());
        return None;
    }
    crate::telemetry::init(config.telemetry.log_format);
    if let Some(addr) = config.telemetry.metrics_addr() {
        if let Err(error) = crate::telemetry::serve_metrics(addr) {
            exit_with_error(program, &error.into());
        }
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
    Some(config)
}
