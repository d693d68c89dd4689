//! seckill_gateway's engine: buyers over HTTP (axum on the programs' tokio runtime).
//!
//! | module       | what lives there                                                    |
//! |--------------|---------------------------------------------------------------------|
//! | [`auth`]     | bearer tokens: JWT HS256, the secret from the environment or a file |
//! | [`routes`]   | the HTTP API and its status codes                                   |
//! | [`outcomes`] | the bounded table of pending requests and recent outcomes           |
//! | [`results`]  | the reader of the results topic that completes them                 |
//! | [`limits`]   | per-user and per-address token buckets                              |
//! | [`sales`]    | a sale's live state, cached briefly; the door answers               |
//! | [`serve`]    | connections: header-read timeout, a cap, a graceful drain           |
//! | [`tls`]      | TLS through rustls when a certificate and key are configured        |
//!
//! A purchase becomes a request on the requests topic (through KafkaSink, keyed by user id,
//! its time stamped here), answered by server_kafka like any other; the gateway waits for the
//! answer on the results topic up to `wait_ms`.

pub mod auth;
pub mod limits;
pub mod outcomes;
pub mod results;
pub mod routes;
pub mod sales;
pub mod serve;
pub mod tls;

use crate::common::SeckillRequest;
use crate::config::{Config, GatewayConfig, KafkaConfig, RedisConfig, SeckillConfig};
use crate::kafka::sink::{KafkaSink, SinkConfig, SinkError};
use crate::redis_state::{RedisState, RedisStateError};
use crate::report::Report;
use auth::{SecretError, TokenSecret, Verifier};
use limits::Limits;
use outcomes::Outcomes;
use sales::Sales;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What seckill_gateway reads of the configuration.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub seckill: SeckillConfig,
    pub gateway: GatewayConfig,
}

impl From<&Config> for GatewaySettings {
    fn from(config: &Config) -> Self {
        Self {
            kafka: config.kafka.clone(),
            redis: config.redis.clone(),
            seckill: config.seckill.clone(),
            gateway: config.gateway.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("gateway.listen: cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
    #[error("reading the results topic")]
    Results(#[from] crate::seckill::results::ResultsError),
}

/// What every handler shares.
pub struct Gateway {
    settings: GatewayConfig,
    verifier: Verifier,
    limits: Limits,
    outcomes: Arc<Outcomes>,
    /// Answers per sale, for the live page.
    answered: Arc<results::Answered>,
    sales: Sales,
    requests: KafkaSink<SeckillRequest>,
    /// Positioned on the results topic: requests may be accepted.
    ready: Arc<AtomicBool>,
}

/// Serves until `shutdown` fires, then stops accepting, lets the requests in hand finish
/// (each waits at most `max_wait_ms`) and returns.
pub async fn run_gateway(
    settings: GatewaySettings,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let config = settings.gateway.clone();
    let secret = TokenSecret::load(&config)?;
    let tls = tls::acceptor(&config)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| GatewayError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let mut sink = SinkConfig::new(
        settings.kafka.clone(),
        settings.seckill.requests_topic.clone(),
    );
    sink.client_id = "seckill_gateway".into();
    sink.linger = Duration::from_millis(config.linger_ms);
    sink.content_type_header = false;
    let requests = KafkaSink::new(sink)?;
    let outcomes = Arc::new(Outcomes::new(config.max_pending, config.recent_outcomes));
    let ready = Arc::new(AtomicBool::new(false));
    let reader_stop = shutdown.child_token();
    let broker =
        crate::kafka::broker::BrokerKind::detect_for(&settings.kafka, "seckill_gateway").await;
    let answered = Arc::new(results::Answered::default());
    let reader = results::start(
        broker,
        settings.kafka.clone(),
        settings.seckill.results_topic.clone(),
        outcomes.clone(),
        answered.clone(),
        ready.clone(),
        reader_stop.clone(),
    )
    .await?;
    let gateway = Arc::new(Gateway {
        verifier: Verifier::new(&secret),
        limits: Limits::new(
            config.user_rate_per_sec,
            config.user_burst,
            config.ip_rate_per_sec,
            config.ip_burst,
        ),
        outcomes,
        answered,
        sales: Sales::new(
            RedisState::connect(&settings.redis)?,
            Duration::from_millis(config.activity_cache_ms),
        ),
        requests,
        ready,
        settings: config.clone(),
    });
    let sweeper = {
        let (gateway, stop) = (gateway.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = every.tick() => gateway.limits.forget_idle(),
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    let app = routes::router(gateway.clone())
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes));
    tracing::info!(listen = %config.listen, tls = config.tls_cert_file.is_some(), requests = %settings.seckill.requests_topic, results = %settings.seckill.results_topic, "seckill_gateway serving");
    serve::serve(
        listener,
        app,
        tls,
        serve::ConnectionLimits {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            drain: Duration::from_millis(config.max_wait_ms) + Duration::from_secs(5),
        },
        shutdown.clone(),
    )
    .await;
    reader_stop.cancel();
    sweeper.abort();
    if let Ok(Err(error)) = reader.await {
        tracing::warn!(error = %Report(&error), "results reader stopped with an error");
    }
    if let Err(error) = gateway.requests.close(Duration::from_secs(10)).await {
        tracing::warn!(error = %Report(&error), "closing the requests sink");
    }
    Ok(())
}
