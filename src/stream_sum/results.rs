//! [`Results`]: one batch's results as output messages, handed to the sink in one call
//! (`rd_kafka_produce_batch`: librdkafka reads the clock and locks the topic once a batch,
//! not once a message). The messages and their key buffers are reused from batch to batch.
//!
//! Where a result goes: under its record's key, to the key's partition, as the spec says;
//! a keyless result to its record's own partition (when the output has it), so results keep
//! their records' order and librdkafka runs no partitioner (its sticky partitioner reads the
//! clock for every keyless message). Both were measured: docs/BENCHMARKS.md.

use super::StreamOutput;
use crate::kafka::sink::KafkaMessage;

pub(crate) struct Results {
    messages: Vec<KafkaMessage<StreamOutput>>,
    len: usize,
    /// A key buffer set aside by a keyless result, for the next keyed one.
    spare_key: Vec<u8>,
    output_partitions: i32,
}

impl Results {
    /// Results for an output topic of `output_partitions` partitions (0 when unknown: every
    /// result then goes to the partitioner).
    pub(crate) fn new(output_partitions: i32) -> Self {
        Self {
            messages: Vec::new(),
            len: 0,
            spare_key: Vec::new(),
            output_partitions,
        }
    }

    /// Adds the sum of the record at `partition` with `key`.
    pub(crate) fn push(&mut self, partition: i32, key: Option<&[u8]>, sum: i64) {
        if self.len == self.messages.len() {
            self.messages.push(KafkaMessage::new(StreamOutput::Sum(0)));
        }
        let Some(message) = self.messages.get_mut(self.len) else {
            return;
        };
        message.value = StreamOutput::Sum(sum);
        set_key(&mut message.key, &mut self.spare_key, key);
        message.partition =
            (key.is_none() && partition < self.output_partitions).then_some(partition);
        self.len += 1;
    }

    /// The results added since the last [`clear`](Self::clear).
    pub(crate) fn as_slice(&self) -> &[KafkaMessage<StreamOutput>] {
        &self.messages[..self.len]
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

/// Reuses the message's key buffer: no allocation per record.
fn set_key(key: &mut Option<Vec<u8>>, spare: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) => {
            let buffer = key.get_or_insert_with(|| std::mem::take(spare));
            buffer.clear();
            buffer.extend_from_slice(value);
        }
        None => {
            if let Some(buffer) = key.take() {
                *spare = buffer;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyless_results_keep_their_partition_keyed_ones_go_to_the_partitioner() {
        let mut results = Results::new(4);
        results.push(2, None, 10);
        results.push(3, Some(b"user-7"), 20);
        results.push(5, None, 30);
        let placed: Vec<_> = results
            .as_slice()
            .iter()
            .map(|m| (m.partition, m.key.clone(), m.value.clone()))
            .collect();
        assert_eq!(
            placed,
            vec![
                (Some(2), None, StreamOutput::Sum(10)),
                (None, Some(b"user-7".to_vec()), StreamOutput::Sum(20)),
                // The output has no partition 5: the partitioner picks.
                (None, None, StreamOutput::Sum(30)),
            ]
        );
    }

    #[test]
    fn messages_are_reused_after_clear() {
        let mut results = Results::new(1);
        results.push(0, Some(b"a"), 1);
        results.clear();
        assert!(results.as_slice().is_empty());
        results.push(0, None, 2);
        assert_eq!(results.len(), 1);
        let message = &results.as_slice()[0];
        assert_eq!((message.key.as_deref(), message.partition), (None, Some(0)));
        // The key buffer set aside comes back for the next keyed result.
        results.push(0, Some(b"bc"), 3);
        assert_eq!(results.as_slice()[1].key.as_deref(), Some(&b"bc"[..]));
        assert_eq!(results.messages.len(), 2);
    }
}
