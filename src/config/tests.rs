//! Tests of the layered loader, validation and redaction.

use super::*;

fn load(yaml: &str, env: &[(&str, &str)], flags: &FlagOverrides) -> Result<Config, ConfigError> {
    let mut loader = ConfigLoader::new();
    loader.yaml(yaml, Origin::File("test.yaml".into()))?;
    loader.env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
    loader.flags(flags)?;
    loader.build()
}

#[test]
fn defaults_are_valid() {
    let config = load("", &[], &FlagOverrides::new()).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn layers_apply_in_order() {
    let yaml = "server_kafka:\n  consumers: 3\n  concurrency: 10\nkafka:\n  brokers: file:9092\n";
    let env = [
        ("SECKILL_SERVER_KAFKA_CONCURRENCY", "20"),
        ("KAFKA_BROKERS", "alias:9092"),
    ];
    let mut flags = FlagOverrides::new();
    flags.set("server_kafka.concurrency", "concurrency", Some(30));
    let config = load(yaml, &env, &flags).unwrap();
    assert_eq!(config.server_kafka.consumers, 3, "file beats default");
    assert_eq!(config.server_kafka.concurrency, 30, "flag beats env");
    assert_eq!(config.kafka.brokers, "alias:9092", "env beats file");

    let env = [
        ("SECKILL_KAFKA_BROKERS", "prefixed:9092"),
        ("KAFKA_BROKERS", "alias:9092"),
    ];
    let config = load(yaml, &env, &FlagOverrides::new()).unwrap();
    assert_eq!(
        config.kafka.brokers, "prefixed:9092",
        "SECKILL_ spelling beats alias"
    );
}

#[test]
fn unknown_file_key_names_key_and_file() {
    let error = load(
        "server_kafka:\n  consumerz: 3\n",
        &[],
        &FlagOverrides::new(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "config file test.yaml: unknown key `server_kafka.consumerz`"
    );
    let error = load("serverkafka: {}\n", &[], &FlagOverrides::new()).unwrap_err();
    assert!(
        error.to_string().contains("unknown key `serverkafka`"),
        "{error}"
    );
}

#[test]
fn bad_value_names_key_origin_and_reason() {
    let error = load(
        "server_kafka:\n  consumers: lots\n",
        &[],
        &FlagOverrides::new(),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("config file test.yaml: key `server_kafka.consumers`: "),
        "{text}"
    );
    assert!(text.contains("invalid type"), "{text}");

    let env = [("SECKILL_LOG_WORKER_BATCH_SIZE", "-5")];
    let text = load("", &env, &FlagOverrides::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(
            "environment variable SECKILL_LOG_WORKER_BATCH_SIZE: key `log_worker.batch_size`"
        ),
        "{text}"
    );

    let text = load(
        "server_kafka:\n  offset_reset: middle\n",
        &[],
        &FlagOverrides::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("`server_kafka.offset_reset`") && text.contains("unknown variant"),
        "{text}"
    );
}

#[test]
fn range_checks_name_the_key() {
    let mut flags = FlagOverrides::new();
    flags.set("server_kafka.consumers", "consumers", Some(0));
    let text = load("", &[], &flags).unwrap_err().to_string();
    assert_eq!(
        text,
        "command-line flag --consumers: key `server_kafka.consumers`: must be at least 1"
    );
    let text = load("redis:\n  url: http://x\n", &[], &FlagOverrides::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("`redis.url`") && text.contains("not a redis://"),
        "{text}"
    );
}

#[test]
fn unknown_env_var_is_rejected() {
    let env = [("SECKILL_SERVER_KAFKA_CONSUMER", "3")];
    let text = load("", &env, &FlagOverrides::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("SECKILL_SERVER_KAFKA_CONSUMER") && text.contains("unknown key"),
        "{text}"
    );
    // SECKILL_CONFIG names the file and is not a key.
    load("", &[("SECKILL_CONFIG", "x.yaml")], &FlagOverrides::new()).unwrap();
}

#[test]
fn env_text_for_string_keys_stays_text() {
    let env = [
        ("SECKILL_KAFKA_SASL_PASSWORD", "12345"),
        ("SECKILL_CLIENT_KAFKA_SEED", "7"),
    ];
    let config = load("", &env, &FlagOverrides::new()).unwrap();
    assert_eq!(config.kafka.sasl_password.unwrap().expose(), "12345");
    // seed defaults to null, so its text is read as a number when the type needs one.
    assert_eq!(config.client_kafka.seed, Some(7));
    let env = [("SECKILL_CLIENT_KAFKA_SEED", "seven")];
    let text = load("", &env, &FlagOverrides::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("environment variable SECKILL_CLIENT_KAFKA_SEED: key `client_kafka.seed`"),
        "{text}"
    );
}

#[test]
fn raw_properties_pass_through_and_clashes_are_rejected() {
    let yaml = "kafka:\n  properties:\n    linger.ms: '5'\n    socket.nagle.disable: 'true'\n";
    let config = load(yaml, &[], &FlagOverrides::new()).unwrap();
    assert_eq!(config.kafka.properties.0["linger.ms"], "5");

    let yaml = "kafka:\n  properties:\n    bootstrap.servers: other:9092\n";
    let text = load(yaml, &[], &FlagOverrides::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("config file test.yaml: key `kafka.properties.bootstrap.servers`"),
        "{text}"
    );
    assert!(text.contains("kafka.brokers"), "{text}");
}

#[test]
fn empty_sections_are_accepted() {
    let config = load("server_kafka:\nkafka:\n", &[], &FlagOverrides::new()).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn secrets_stay_out_of_debug_and_redacted_yaml() {
    let yaml = "kafka:\n  properties:\n    ssl.keystore.password: s3cret-store\npostgres:\n  url: postgres://u:s3cret-pg@h/db\nredis:\n  url: redis://:s3cret-redis@h:6379/0\n";
    let env = [("SECKILL_KAFKA_SASL_PASSWORD", "s3cret-kafka")];
    let config = load(yaml, &env, &FlagOverrides::new()).unwrap();
    for rendering in [
        format!("{config:?}"),
        format!("{config:#?}"),
        config.to_redacted_yaml(),
    ] {
        assert!(
            !rendering.contains("s3cret"),
            "secret leaked in:\n{rendering}"
        );
    }
    assert!(config.to_redacted_yaml().contains("postgres://u:***@h/db"));
}

#[test]
fn passwords_come_from_the_environment_or_a_file_never_the_config_file() {
    let in_file = load(
        "kafka:\n  sasl_password: hunter2\n",
        &[],
        &FlagOverrides::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        in_file.starts_with("config file test.yaml: key `kafka.sasl_password`")
            && in_file.contains("SECKILL_KAFKA_SASL_PASSWORD")
            && !in_file.contains("hunter2"),
        "{in_file}"
    );
    // `null` in the file (as the shipped config.yaml has it) is fine.
    load(
        "kafka:\n  ssl_key_password: null\n",
        &[],
        &FlagOverrides::new(),
    )
    .unwrap();

    let dir = std::env::temp_dir().join(format!("seckill-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sasl");
    std::fs::write(&path, "from-a-file\n").unwrap();
    let yaml = format!("kafka:\n  sasl_password_file: {}\n", path.display());
    let config = load(&yaml, &[], &FlagOverrides::new()).unwrap();
    assert_eq!(config.kafka.sasl_password.unwrap().expose(), "from-a-file");

    let both = load(
        &yaml,
        &[("SECKILL_KAFKA_SASL_PASSWORD", "x")],
        &FlagOverrides::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        both.contains("kafka.sasl_password_file") && both.contains("not both"),
        "{both}"
    );
    let missing = load(
        "kafka:\n  ssl_key_password_file: /nonexistent/key-password\n",
        &[],
        &FlagOverrides::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("kafka.ssl_key_password_file")
            && missing.contains("cannot read /nonexistent/key-password"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_key_has_an_env_name() {
    let names = ConfigLoader::new().env_names();
    assert!(names.contains(&(
        "server_kafka.consumers".into(),
        "SECKILL_SERVER_KAFKA_CONSUMERS".into()
    )));
    assert!(!names
        .iter()
        .any(|(key, _)| key.starts_with("kafka.properties")));
}
