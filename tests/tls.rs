//! TLS to the stores, for real: the dev stack's PostgreSQL accepts TLS and its Redis serves
//! TLS on a second port, both with a certificate for 127.0.0.1 that is its own CA
//! (`DEV_TLS_CA`). `sslmode` in `postgres.url` and `rediss://` in `redis.url` are all it
//! takes.

mod support;

use seckill_kafka::config::{PostgresConfig, RedisConfig};
use seckill_kafka::redis_state::RedisState;
use seckill_kafka::secret::SecretUrl;

async fn connection_is_tls(url: String) -> bool {
    let pool = seckill_kafka::postgres::connect(&PostgresConfig {
        url: SecretUrl::new(url),
        ..PostgresConfig::default()
    })
    .await
    .unwrap();
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_sslmode_verify_full_checks_the_server_and_encrypts() {
    let url = support::stack_var("DATABASE_URL");
    let ca = support::stack_var("DEV_TLS_CA");
    assert!(
        connection_is_tls(format!("{url}?sslmode=verify-full&sslrootcert={ca}")).await,
        "verify-full: TLS"
    );
    assert!(
        !connection_is_tls(format!("{url}?sslmode=disable")).await,
        "the check tells plain connections apart"
    );
    // Verification is real: without the CA the self-signed server is refused.
    let refused = seckill_kafka::postgres::connect(&PostgresConfig {
        url: SecretUrl::new(format!("{url}?sslmode=verify-full")),
        ..PostgresConfig::default()
    })
    .await;
    assert!(refused.is_err(), "an unknown CA must be refused");
}

#[tokio::test]
async fn redis_rediss_url_runs_the_suite_over_tls() {
    let port = support::stack_var("DEV_REDIS_TLS_PORT");
    let activity = support::unique_id();
    // `#insecure`: the dev certificate is self-signed (verification is against the
    // system's roots otherwise).
    let over_tls = RedisState::connect(&RedisConfig {
        url: SecretUrl::new(format!("rediss://127.0.0.1:{port}/0#insecure")),
        ..RedisConfig::default()
    })
    .unwrap();
    over_tls.init_state(activity, 42).await.unwrap();
    assert_eq!(over_tls.get_stock(activity).await.unwrap(), Some(42));

    // The same port without TLS gets nowhere: it really is a TLS port.
    let plain = RedisState::connect(&RedisConfig {
        url: SecretUrl::new(format!("redis://127.0.0.1:{port}/0")),
        connect_timeout_ms: 1_000,
        response_timeout_ms: 1_000,
        ..RedisConfig::default()
    })
    .unwrap();
    assert!(plain.get_stock(activity).await.is_err());
}

/// librdkafka was built with TLS (the system's OpenSSL): a client with
/// `security.protocol=ssl` is created, and against the broker's plaintext port it fails in
/// the TLS handshake, instead of being refused at creation as unsupported.
#[tokio::test]
async fn kafka_ssl_clients_are_built_with_tls_and_handshake_for_real() {
    use rdkafka::client::ClientContext;
    use rdkafka::producer::{BaseProducer, Producer};
    use seckill_kafka::config::SecurityProtocol;
    use seckill_kafka::kafka::{client_config, ClientRole};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    #[derive(Clone, Default)]
    struct Errors(Arc<Mutex<Vec<String>>>);
    impl ClientContext for Errors {
        fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
            self.0.lock().unwrap().push(format!("{error}: {reason}"));
        }
    }
    impl rdkafka::producer::ProducerContext for Errors {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
    }

    let mut kafka = support::kafka_config();
    kafka.security_protocol = SecurityProtocol::Ssl;
    kafka.ssl_ca_location = Some(support::stack_var("DEV_TLS_CA"));
    let errors = Errors::default();
    let producer: BaseProducer<Errors> = client_config(&kafka, ClientRole::Producer, "tls-test")
        .unwrap()
        .create_with_context(errors.clone())
        .unwrap_or_else(|e| panic!("librdkafka refused security.protocol=ssl: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let handshake_failed = || {
        errors
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("SSL handshake failed"))
    };
    while !handshake_failed() && Instant::now() < deadline {
        producer.poll(Duration::from_millis(100));
    }
    assert!(
        handshake_failed(),
        "no TLS handshake error against a plaintext port: {:?}",
        errors.0.lock().unwrap()
    );
    drop(producer.flush(Duration::from_millis(10)));
}
