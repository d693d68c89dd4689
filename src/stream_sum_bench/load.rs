//! Phase 1 of `stream_sum bench`: N random `IntegerList`s (2-5 ints in 0..=99) into the
//! input topic, whole batches to one partition at a time.

use super::BenchError;
use crate::avro::encode_integer_list;
use crate::config::Config;
use crate::kafka::sink::{
    Compression, KafkaMessage, KafkaSink, MessageSerializer, SerializeError, SinkConfig,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use std::time::Duration;

/// Records the loader sends to one partition before moving to the next: whole batches.
const LOAD_CHUNK: u64 = 10_000;

/// `IntegerList` as binary Avro, from a reused list.
struct IntegerListSerializer;

impl MessageSerializer<Vec<i32>> for IntegerListSerializer {
    fn serialize(&self, numbers: &Vec<i32>, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        encode_integer_list(numbers, buffer);
        Ok(())
    }

    fn content_type(&self) -> &str {
        "avro/binary"
    }
}

/// Sends `records` random lists and returns the sum of all their numbers.
pub(super) fn load(config: &Config, records: u64, partitions: usize) -> Result<i64, BenchError> {
    let mut sink_config =
        SinkConfig::new(config.kafka.clone(), config.stream_sum.input_topic.clone());
    sink_config.client_id = "stream_sum-bench-loader".into();
    sink_config.linger = Duration::from_millis(20);
    sink_config.batch_size = 1_000_000;
    sink_config.batch_messages = 10_000;
    sink_config.compression = Compression::Lz4;
    sink_config.content_type_header = false;
    sink_config.breaker_threshold = 0;
    let sink = KafkaSink::with_serializer(sink_config, IntegerListSerializer)?;
    let bar = ProgressBar::with_draw_target(Some(records), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("phase 1 {bar:40} {pos}/{len} lists {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rng = rand::rng();
    let mut message = KafkaMessage::new(Vec::with_capacity(5));
    let mut total = 0_i64;
    for n in 0..records {
        message.value.clear();
        for _ in 0..rng.random_range(2..=5) {
            let number = rng.random_range(0..=99);
            total += i64::from(number);
            message.value.push(number);
        }
        // Whole batches to one partition, partitions in turn: an even, well-batched load.
        message.partition = Some(((n / LOAD_CHUNK) % partitions as u64) as i32);
        sink.enqueue(&message)?;
        if n % 10_000 == 0 {
            bar.set_position(n);
        }
    }
    let undelivered = sink.flush_blocking(Duration::from_secs(120))?;
    bar.finish_and_clear();
    let metrics = sink.metrics();
    if undelivered > 0 || metrics.messages_failed > 0 {
        return Err(BenchError::LoadFailed {
            undelivered,
            failed: metrics.messages_failed,
        });
    }
    tracing::info!(records, "phase 1: backlog loaded");
    Ok(total)
}
