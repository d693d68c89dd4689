//! Where a message goes: [`PartitionStrategy`] and the Java client's murmur2 hash.
//!
//! The strategies run inside librdkafka's partitioner callback, which knows the topic's
//! current partition count, so no metadata lookups are needed on the send path.

use rdkafka::producer::Partitioner;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A user-supplied partitioner: `(key, partition_count) -> partition`.
pub type PartitionFn = Arc<dyn Fn(Option<&[u8]>, i32) -> i32 + Send + Sync>;

#[derive(Clone, Default)]
pub enum PartitionStrategy {
    /// `toPositive(murmur2(key)) % partitions`, the Java client's default partitioner for
    /// keyed messages, so keys land where Java producers put them. Messages without a key
    /// are spread round robin.
    #[default]
    KeyHash,
    /// Every message to the next partition in turn, keys ignored.
    RoundRobin,
    /// A function of the key and the partition count.
    Custom(PartitionFn),
    /// Every message to one partition.
    Single(i32),
}

impl fmt::Debug for PartitionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyHash => f.write_str("KeyHash"),
            Self::RoundRobin => f.write_str("RoundRobin"),
            Self::Custom(_) => f.write_str("Custom(..)"),
            Self::Single(partition) => write!(f, "Single({partition})"),
        }
    }
}

/// The Java client's `Utils.murmur2` (seed 0x9747b28c), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for `key`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    // toPositive(): clear the sign bit rather than take an absolute value.
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The strategy as a librdkafka partitioner.
pub struct StrategyPartitioner {
    strategy: PartitionStrategy,
    next: AtomicUsize,
}

impl StrategyPartitioner {
    pub fn new(strategy: PartitionStrategy) -> Self {
        Self {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    fn round_robin(&self, partitions: i32) -> i32 {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        (turn % partitions.max(1) as usize) as i32
    }

    /// The partition for a message, given the topic's partition count.
    pub fn choose(&self, key: Option<&[u8]>, partitions: i32) -> i32 {
        if partitions <= 0 {
            return rdkafka::producer::PARTITION_UA;
        }
        let chosen = match &self.strategy {
            PartitionStrategy::KeyHash => match key {
                Some(key) => java_partition(key, partitions),
                None => self.round_robin(partitions),
            },
            PartitionStrategy::RoundRobin => self.round_robin(partitions),
            PartitionStrategy::Custom(choose) => choose(key, partitions),
            PartitionStrategy::Single(partition) => *partition,
        };
        // An out-of-range answer (a custom function's bug, a Single partition the topic does
        // not have) is left to librdkafka, which fails the message with UnknownPartition.
        if (0..partitions).contains(&chosen) {
            chosen
        } else {
            rdkafka::producer::PARTITION_UA
        }
    }
}

impl Partitioner for StrategyPartitioner {
    fn partition(
        &self,
        _topic_name: &str,
        key: Option<&[u8]>,
        partition_cnt: i32,
        _is_partition_available: impl Fn(i32) -> bool,
    ) -> i32 {
        self.choose(key, partition_cnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka's own vectors (UtilsTest.testMurmur2 in the Java client).
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(
            java_partition(b"21", 12),
            (-973_932_308i32 & 0x7fff_ffff) % 12
        );
    }

    #[test]
    fn strategies_choose_in_range() {
        let key_hash = StrategyPartitioner::new(PartitionStrategy::KeyHash);
        assert_eq!(
            key_hash.choose(Some(b"foobar"), 7),
            java_partition(b"foobar", 7)
        );
        let unkeyed: Vec<i32> = (0..6).map(|_| key_hash.choose(None, 3)).collect();
        assert_eq!(unkeyed, vec![0, 1, 2, 0, 1, 2]);

        let round_robin = StrategyPartitioner::new(PartitionStrategy::RoundRobin);
        let turns: Vec<i32> = (0..4)
            .map(|_| round_robin.choose(Some(b"same"), 2))
            .collect();
        assert_eq!(turns, vec![0, 1, 0, 1]);

        let custom = StrategyPartitioner::new(PartitionStrategy::Custom(Arc::new(|key, n| {
            key.map_or(0, |k| k.len() as i32 % n)
        })));
        assert_eq!(custom.choose(Some(b"abcde"), 3), 2);

        let single = StrategyPartitioner::new(PartitionStrategy::Single(2));
        assert_eq!(single.choose(Some(b"x"), 4), 2);
        assert_eq!(
            single.choose(Some(b"x"), 2),
            rdkafka::producer::PARTITION_UA,
            "partition 2 of 2 does not exist"
        );
    }
}
