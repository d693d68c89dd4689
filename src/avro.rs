//! A fast binary-Avro codec for the two records of the streaming-sum benchmark,
//! `IntegerList {numbers: array<int>}` and `SumResult {sum: long}` (schemas in
//! `schemas/avro/`), without a schema registry and without allocating per message.
//!
//! Avro's binary encoding of these records is small: ints and longs are zigzag varints; an
//! array is a series of blocks, each a count followed by that many items, ended by a zero
//! count, where a negative count `-n` means `n` items preceded by the block's byte size. The
//! codec is proven equal to `apache-avro` by property tests (see `tests` below).

/// The `IntegerList` schema, as shipped in `schemas/avro/integer_list.avsc`.
pub const INTEGER_LIST_SCHEMA: &str = include_str!("../schemas/avro/integer_list.avsc");
/// The `SumResult` schema, as shipped in `schemas/avro/sum_result.avsc`.
pub const SUM_RESULT_SCHEMA: &str = include_str!("../schemas/avro/sum_result.avsc");

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AvroDecodeError {
    #[error("input ends inside {0}")]
    Truncated(&'static str),
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("int value {0} out of the 32-bit range")]
    IntOutOfRange(i64),
    #[error("array block of {0} items cannot fit in the remaining {1} bytes")]
    BlockTooLarge(u64, usize),
    #[error("negative block byte size {0}")]
    NegativeBlockSize(i64),
    #[error("{0} bytes after the end of the record")]
    TrailingBytes(usize),
    #[error("the sum overflows a long")]
    SumOverflow,
}

/// Reads one zigzag varint long from the front of `input`.
fn read_long(input: &mut &[u8], what: &'static str) -> Result<i64, AvroDecodeError> {
    let mut value: u64 = 0;
    for (index, &byte) in input.iter().enumerate() {
        if index == 10 {
            return Err(AvroDecodeError::VarintTooLong);
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    if input.len() >= 10 {
        return Err(AvroDecodeError::VarintTooLong);
    }
    Err(AvroDecodeError::Truncated(what))
}

fn read_int(input: &mut &[u8]) -> Result<i32, AvroDecodeError> {
    let value = read_long(input, "an int")?;
    i32::try_from(value).map_err(|_| AvroDecodeError::IntOutOfRange(value))
}

/// Appends a zigzag varint long.
pub fn write_long(value: i64, out: &mut Vec<u8>) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// Calls `each` for every number of an encoded `IntegerList`, rejecting truncated or
/// corrupt input and trailing bytes.
pub fn for_each_number(mut input: &[u8], mut each: impl FnMut(i32)) -> Result<(), AvroDecodeError> {
    loop {
        let count = read_long(&mut input, "an array block count")?;
        if count == 0 {
            break;
        }
        let items = if count < 0 {
            // A negative count is followed by the block's size in bytes (for skipping).
            let size = read_long(&mut input, "an array block size")?;
            if size < 0 {
                return Err(AvroDecodeError::NegativeBlockSize(size));
            }
            count.unsigned_abs()
        } else {
            count as u64
        };
        // Every int takes at least one byte: a larger count is corrupt, not a huge array.
        if items > input.len() as u64 {
            return Err(AvroDecodeError::BlockTooLarge(items, input.len()));
        }
        for _ in 0..items {
            each(read_int(&mut input)?);
        }
    }
    if input.is_empty() {
        Ok(())
    } else {
        Err(AvroDecodeError::TrailingBytes(input.len()))
    }
}

/// The sum of an encoded `IntegerList`, without materializing the list.
pub fn sum_integer_list(input: &[u8]) -> Result<i64, AvroDecodeError> {
    let mut sum: i64 = 0;
    let mut overflow = false;
    for_each_number(input, |number| match sum.checked_add(i64::from(number)) {
        Some(next) => sum = next,
        None => overflow = true,
    })?;
    if overflow {
        Err(AvroDecodeError::SumOverflow)
    } else {
        Ok(sum)
    }
}

/// Decodes an `IntegerList` into `numbers` (cleared first, so callers can reuse it).
pub fn decode_integer_list(input: &[u8], numbers: &mut Vec<i32>) -> Result<(), AvroDecodeError> {
    numbers.clear();
    for_each_number(input, |number| numbers.push(number))
}

/// Appends the encoding of an `IntegerList` (one block, as apache-avro writes it).
pub fn encode_integer_list(numbers: &[i32], out: &mut Vec<u8>) {
    if !numbers.is_empty() {
        write_long(numbers.len() as i64, out);
        for &number in numbers {
            write_long(i64::from(number), out);
        }
    }
    write_long(0, out);
}

/// Appends the encoding of a `SumResult`.
pub fn encode_sum_result(sum: i64, out: &mut Vec<u8>) {
    write_long(sum, out);
}

/// Decodes a `SumResult`, rejecting trailing bytes.
pub fn decode_sum_result(mut input: &[u8]) -> Result<i64, AvroDecodeError> {
    let sum = read_long(&mut input, "the sum")?;
    if input.is_empty() {
        Ok(sum)
    } else {
        Err(AvroDecodeError::TrailingBytes(input.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use apache_avro::Schema;
    use proptest::prelude::*;

    fn list_schema() -> Schema {
        Schema::parse_str(INTEGER_LIST_SCHEMA).unwrap()
    }

    fn apache_encode_list(numbers: &[i32]) -> Vec<u8> {
        let value = Value::Record(vec![(
            "numbers".into(),
            Value::Array(numbers.iter().map(|&n| Value::Int(n)).collect()),
        )]);
        apache_avro::to_avro_datum(&list_schema(), value).unwrap()
    }

    fn apache_decode_list(bytes: &[u8]) -> Option<Vec<i32>> {
        let mut reader = bytes;
        match apache_avro::from_avro_datum(&list_schema(), &mut reader, None).ok()? {
            Value::Record(fields) => match &fields[0].1 {
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::Int(n) => Some(*n),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Encodes `numbers` in blocks of the given sizes, some with negative counts and byte
    /// sizes, as other writers may.
    fn encode_in_blocks(numbers: &[i32], block_sizes: &[usize], negative: &[bool]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = numbers;
        let mut index = 0;
        while !rest.is_empty() {
            let size = block_sizes
                .get(index)
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            let (block, tail) = rest.split_at(size);
            let mut items = Vec::new();
            for &n in block {
                write_long(i64::from(n), &mut items);
            }
            if negative.get(index).copied().unwrap_or(false) {
                write_long(-(block.len() as i64), &mut out);
                write_long(items.len() as i64, &mut out);
            } else {
                write_long(block.len() as i64, &mut out);
            }
            out.extend_from_slice(&items);
            rest = tail;
            index += 1;
        }
        write_long(0, &mut out);
        out
    }

    proptest! {
        #[test]
        fn encoding_matches_apache_avro(numbers in proptest::collection::vec(any::<i32>(), 0..200)) {
            let mut ours = Vec::new();
            encode_integer_list(&numbers, &mut ours);
            prop_assert_eq!(&ours, &apache_encode_list(&numbers));
            let mut decoded = vec![7];
            decode_integer_list(&ours, &mut decoded).unwrap();
            prop_assert_eq!(&decoded, &numbers);
            let expected: i64 = numbers.iter().map(|&n| i64::from(n)).sum();
            prop_assert_eq!(sum_integer_list(&ours).unwrap(), expected);
        }

        #[test]
        fn multi_block_arrays_decode_like_apache_avro(
            numbers in proptest::collection::vec(-1000i32..1000, 1..100),
            block_sizes in proptest::collection::vec(1usize..20, 0..20),
            negative in proptest::collection::vec(any::<bool>(), 0..20),
        ) {
            let bytes = encode_in_blocks(&numbers, &block_sizes, &negative);
            prop_assert_eq!(apache_decode_list(&bytes), Some(numbers.clone()));
            let mut decoded = Vec::new();
            decode_integer_list(&bytes, &mut decoded).unwrap();
            prop_assert_eq!(decoded, numbers);
        }

        #[test]
        fn every_truncation_is_an_error(numbers in proptest::collection::vec(any::<i32>(), 0..50)) {
            let mut bytes = Vec::new();
            encode_integer_list(&numbers, &mut bytes);
            for cut in 0..bytes.len() {
                prop_assert!(sum_integer_list(&bytes[..cut]).is_err(), "prefix of {} bytes accepted", cut);
            }
        }

        #[test]
        fn whatever_we_accept_apache_avro_reads_the_same(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut ours = Vec::new();
            if decode_integer_list(&bytes, &mut ours).is_ok() {
                prop_assert_eq!(apache_decode_list(&bytes), Some(ours));
            }
        }

        #[test]
        fn sums_round_trip_like_apache_avro(sum in any::<i64>()) {
            let mut ours = Vec::new();
            encode_sum_result(sum, &mut ours);
            let schema = Schema::parse_str(SUM_RESULT_SCHEMA).unwrap();
            let value = Value::Record(vec![("sum".into(), Value::Long(sum))]);
            prop_assert_eq!(&ours, &apache_avro::to_avro_datum(&schema, value).unwrap());
            prop_assert_eq!(decode_sum_result(&ours).unwrap(), sum);
        }
    }

    #[test]
    fn corrupt_input_is_rejected_with_a_reason() {
        assert_eq!(
            sum_integer_list(&[]),
            Err(AvroDecodeError::Truncated("an array block count"))
        );
        assert_eq!(
            sum_integer_list(&[0x02]),
            Err(AvroDecodeError::BlockTooLarge(1, 0))
        );
        assert_eq!(
            sum_integer_list(&[0x00, 0x00]),
            Err(AvroDecodeError::TrailingBytes(1))
        );
        assert_eq!(
            sum_integer_list(&[0xff; 11]),
            Err(AvroDecodeError::VarintTooLong)
        );
        assert_eq!(
            sum_integer_list(&[0x01, 0x01, 0x00]),
            Err(AvroDecodeError::NegativeBlockSize(-1))
        );
        // 2^31 does not fit an int.
        let mut too_big = vec![0x02];
        write_long(1 << 31, &mut too_big);
        too_big.push(0);
        assert_eq!(
            sum_integer_list(&too_big),
            Err(AvroDecodeError::IntOutOfRange(1 << 31))
        );
        assert_eq!(
            decode_sum_result(&[0x02, 0x00]),
            Err(AvroDecodeError::TrailingBytes(1))
        );
        assert!(decode_sum_result(&[0x80]).is_err());
    }

    #[test]
    fn schemas_parse_with_the_right_names() {
        let list = list_schema();
        let sum = Schema::parse_str(SUM_RESULT_SCHEMA).unwrap();
        for (schema, name) in [
            (&list, "com.example.kafka.IntegerList"),
            (&sum, "com.example.kafka.SumResult"),
        ] {
            match schema {
                Schema::Record(record) => assert_eq!(record.name.fullname(None), name),
                other => panic!("not a record: {other:?}"),
            }
        }
    }
}
