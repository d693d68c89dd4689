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
///
/// A flag whose clap id is a configuration key (`section.key`) is that key's command-line
/// layer ([`parse`] reads them all): each flag is declared once, with its name, help, type
/// and key in one attribute, and its help names the key.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// YAML config file; without it ./config.yaml is read when present
    #[arg(long, env = "SECKILL_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers
    #[arg(
        long = "brokers",
        id = "kafka.brokers",
        value_name = "HOST:PORT,...",
        global = true
    )]
    pub brokers: Option<String>,
    /// Log format; RUST_LOG sets the level
    #[arg(
        long = "log-format",
        id = "telemetry.log_format",
        value_enum,
        global = true
    )]
    pub log_format: Option<LogFormat>,
    /// Print the effective configuration, secrets redacted, and exit
    #[arg(long, global = true)]
    pub print_config: bool,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9100
    #[arg(
        long = "metrics-addr",
        id = "telemetry.metrics_addr",
        value_name = "HOST:PORT",
        global = true
    )]
    pub metrics_addr: Option<String>,
}

impl CommonArgs {
    /// Loads the configuration: defaults < file < environment < `flags`.
    pub fn load_config(&self, flags: FlagOverrides) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &flags)
    }
}

/// The flag the flash-sale programs share.
#[derive(Debug, Clone, clap::Args)]
pub struct SaleArgs {
    /// Activity (sale) id: serve, send to or check only this one
    #[arg(long = "activity-id", id = "seckill.activity_id")]
    pub activity_id: Option<u64>,
}

/// The flags of the programs on the requests topic (client_kafka, server_kafka).
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsArgs {
    #[command(flatten)]
    pub sale: SaleArgs,
    /// Requests topic
    #[arg(long = "topic", id = "seckill.requests_topic")]
    pub topic: Option<String>,
}

/// Parses the command line of program `A`: the parsed flags, and the configuration layer
/// of every flag given whose id is a configuration key (see [`CommonArgs`]). A bad command
/// line exits 1 with one line saying why.
pub fn parse<A: clap::Parser>() -> (A, FlagOverrides) {
    parse_from::<A, _, _>(std::env::args_os())
}

/// [`parse`] of the given arguments (the first is the program's name).
pub fn parse_from<A, I, T>(arguments: I) -> (A, FlagOverrides)
where
    A: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let arguments: Vec<std::ffi::OsString> = arguments.into_iter().map(Into::into).collect();
    let command = name_config_keys(A::command());
    let long_names = long_names(&command);
    // The binary's name (clap's command name is the package's).
    let program = arguments
        .first()
        .and_then(|path| std::path::Path::new(path).file_name())
        .map_or_else(
            || command.get_name().to_string(),
            |name| name.to_string_lossy().to_string(),
        );
    let matches = command
        .try_get_matches_from(arguments)
        .unwrap_or_else(|error| exit_on(&program, error));
    let parsed = A::from_arg_matches(&matches).unwrap_or_else(|error| exit_on(&program, error));
    let mut flags = FlagOverrides::new();
    collect_overrides(&matches, &long_names, &mut flags);
    (parsed, flags)
}

/// Help and version are printed as clap prints them; a bad command line is one line,
/// `program: error: ...`, and exit status 1, like every other error of the suite.
fn exit_on(program: &str, error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("{program}: error: {message} (see --help)");
    std::process::exit(1);
}

/// Whether a clap id is a configuration key.
fn is_config_key(id: &str) -> bool {
    id.contains('.')
}

/// Appends `(key)` to the help of each flag that sets a configuration key.
fn name_config_keys(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let id = arg.get_id().as_str().to_string();
            if !is_config_key(&id) {
                return arg;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} ({id})"))
        })
        .mut_subcommands(name_config_keys)
}

/// Configuration key -> its flag's long name, over every subcommand.
fn long_names(command: &clap::Command) -> std::collections::HashMap<String, String> {
    let mut names = std::collections::HashMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if is_config_key(id) {
            names.insert(id.to_string(), arg.get_long().unwrap_or(id).to_string());
        }
    }
    for subcommand in command.get_subcommands() {
        names.extend(long_names(subcommand));
    }
    names
}

fn collect_overrides(
    matches: &clap::ArgMatches,
    long_names: &std::collections::HashMap<String, String>,
    flags: &mut FlagOverrides,
) {
    for id in matches.ids() {
        let key = id.as_str();
        if !is_config_key(key)
            || matches.value_source(key) != Some(clap::parser::ValueSource::CommandLine)
        {
            continue;
        }
        let Ok(Some(mut raw)) = matches.try_get_raw(key) else {
            continue;
        };
        if let Some(value) = raw.next_back() {
            let flag = long_names.get(key).map_or(key, String::as_str);
            flags.set_raw(key, flag, &value.to_string_lossy());
        }
    }
    if let Some((_, subcommand)) = matches.subcommand() {
        collect_overrides(subcommand, long_names, flags);
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
    // Only the suite's own variables: KAFKA_BROKERS, REDIS_URL and DATABASE_URL are the
    // usual names a whole environment sets for every program, used or not.
    let ours = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(crate::config::ENV_PREFIX));
    for name in ours {
        if let Some(key) = crate::config::key_of_env_var(&name) {
            if !crate::config::program_reads(program, &key) {
                tracing::warn!(variable = %name, %key, program, "environment variable is not used by this program");
            }
        }
    }
    Ok(Some(config))
}
