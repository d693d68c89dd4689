//! [`KafkaMessage`]: a value plus everything about where and how it is sent.

/// A message for [`KafkaSink`](super::KafkaSink): the value and optional key, topic and
/// partition overrides, headers and timestamp. Fields are public so a hot loop can reuse one
/// message and overwrite its value and key instead of building a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaMessage<T> {
    pub value: T,
    pub key: Option<Vec<u8>>,
    /// Overrides the sink's topic.
    pub topic: Option<String>,
    /// Bypasses the partition strategy.
    pub partition: Option<i32>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the Unix epoch; unset lets librdkafka stamp the send time.
    pub timestamp: Option<i64>,
}

impl<T> KafkaMessage<T> {
    pub fn new(value: T) -> Self {
        Self {
            value,
            key: None,
            topic: None,
            partition: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_every_field() {
        let message = KafkaMessage::new(7u32)
            .key("user-1")
            .topic("orders")
            .partition(2)
            .header("trace", "abc")
            .timestamp(1_700_000_000_000);
        assert_eq!(message.value, 7);
        assert_eq!(message.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(message.topic.as_deref(), Some("orders"));
        assert_eq!(message.partition, Some(2));
        assert_eq!(
            message.headers,
            vec![("trace".to_string(), b"abc".to_vec())]
        );
        assert_eq!(message.timestamp, Some(1_700_000_000_000));
    }
}
