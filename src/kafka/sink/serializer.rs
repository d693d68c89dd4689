//! How a value becomes a payload: the [`MessageSerializer`] trait and the JSON (default),
//! bincode, Avro and protobuf implementations. Serializers write into a buffer the sink
//! reuses, and name their format in the `content-type` header.

use serde::Serialize;
use std::marker::PhantomData;

/// The header every message carries with its serializer's content type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

#[derive(Debug, thiserror::Error)]
#[error("cannot serialize the message as {format}")]
pub struct SerializeError {
    pub format: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SerializeError {
    pub fn new(
        format: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            format,
            source: source.into(),
        }
    }
}

/// Turns a `T` into payload bytes. Implement it for a format of your own.
pub trait MessageSerializer<T>: Send + Sync {
    /// Appends the encoding of `value` to `buffer` (which the caller has cleared).
    fn serialize(&self, value: &T, buffer: &mut Vec<u8>) -> Result<(), SerializeError>;

    /// MIME type written to the `content-type` header.
    fn content_type(&self) -> &str;

    /// Whether `value` is sent with a null payload (a tombstone) rather than serialized.
    fn is_null(&self, _value: &T) -> bool {
        false
    }
}

/// Bytes as they are, `None` as a null payload: `application/octet-stream`. For forwarding
/// messages unchanged (dead-letter topics) and tombstones.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerializer;

impl MessageSerializer<Option<Vec<u8>>> for BytesSerializer {
    fn serialize(
        &self,
        value: &Option<Vec<u8>>,
        buffer: &mut Vec<u8>,
    ) -> Result<(), SerializeError> {
        if let Some(bytes) = value {
            buffer.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn content_type(&self) -> &str {
        "application/octet-stream"
    }

    fn is_null(&self, value: &Option<Vec<u8>>) -> bool {
        value.is_none()
    }
}

/// JSON via serde_json: `application/json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSerializer;

impl<T: Serialize> MessageSerializer<T> for JsonSerializer {
    fn serialize(&self, value: &T, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        serde_json::to_writer(buffer, value).map_err(|e| SerializeError::new("JSON", e))
    }

    fn content_type(&self) -> &str {
        "application/json"
    }
}

/// bincode 2 (standard configuration, varint integers) via serde: `application/x-bincode`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeSerializer;

impl<T: Serialize> MessageSerializer<T> for BincodeSerializer {
    fn serialize(&self, value: &T, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        bincode::serde::encode_into_std_write(value, buffer, bincode::config::standard())
            .map(drop)
            .map_err(|e| SerializeError::new("bincode", e))
    }

    fn content_type(&self) -> &str {
        "application/x-bincode"
    }
}

/// Binary Avro datum (no container, no schema registry framing) for a fixed schema:
/// `avro/binary`. `T`'s serde shape must match the schema.
#[derive(Debug, Clone)]
pub struct AvroSerializer {
    schema: apache_avro::Schema,
}

impl AvroSerializer {
    pub fn new(schema: apache_avro::Schema) -> Self {
        Self { schema }
    }

    /// Parses a schema in Avro's JSON notation (the contents of an `.avsc` file).
    pub fn from_schema_json(json: &str) -> Result<Self, SerializeError> {
        apache_avro::Schema::parse_str(json)
            .map(Self::new)
            .map_err(|e| SerializeError::new("Avro", e))
    }
}

impl<T: Serialize> MessageSerializer<T> for AvroSerializer {
    fn serialize(&self, value: &T, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        let value = apache_avro::to_value(value).map_err(|e| SerializeError::new("Avro", e))?;
        let datum = apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|e| SerializeError::new("Avro", e))?;
        buffer.extend_from_slice(&datum);
        Ok(())
    }

    fn content_type(&self) -> &str {
        "avro/binary"
    }
}

/// Protocol Buffers via prost: `application/x-protobuf`.
#[derive(Debug, Clone, Copy)]
pub struct ProtobufSerializer<T>(PhantomData<fn(&T)>);

impl<T> Default for ProtobufSerializer<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: prost::Message> MessageSerializer<T> for ProtobufSerializer<T> {
    fn serialize(&self, value: &T, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        value
            .encode(buffer)
            .map_err(|e| SerializeError::new("protobuf", e))
    }

    fn content_type(&self) -> &str {
        "application/x-protobuf"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: i64,
        item: String,
        quantity: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct OrderProto {
        #[prost(int64, tag = "1")]
        id: i64,
        #[prost(string, tag = "2")]
        item: String,
        #[prost(int32, tag = "3")]
        quantity: i32,
    }

    const ORDER_SCHEMA: &str = r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"long"},{"name":"item","type":"string"},{"name":"quantity","type":"int"}]}"#;

    fn order() -> Order {
        Order {
            id: 42,
            item: "book".into(),
            quantity: 3,
        }
    }

    #[test]
    fn every_format_round_trips() {
        let mut buffer = Vec::new();
        JsonSerializer.serialize(&order(), &mut buffer).unwrap();
        assert_eq!(serde_json::from_slice::<Order>(&buffer).unwrap(), order());
        assert_eq!(
            MessageSerializer::<Order>::content_type(&JsonSerializer),
            "application/json"
        );

        buffer.clear();
        BincodeSerializer.serialize(&order(), &mut buffer).unwrap();
        let (decoded, _): (Order, usize) =
            bincode::serde::decode_from_slice(&buffer, bincode::config::standard()).unwrap();
        assert_eq!(decoded, order());

        buffer.clear();
        let avro = AvroSerializer::from_schema_json(ORDER_SCHEMA).unwrap();
        avro.serialize(&order(), &mut buffer).unwrap();
        let schema = apache_avro::Schema::parse_str(ORDER_SCHEMA).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut buffer.as_slice(), None).unwrap();
        assert_eq!(apache_avro::from_value::<Order>(&value).unwrap(), order());
        assert_eq!(
            MessageSerializer::<Order>::content_type(&avro),
            "avro/binary"
        );

        buffer.clear();
        let proto = OrderProto {
            id: 42,
            item: "book".into(),
            quantity: 3,
        };
        ProtobufSerializer::default()
            .serialize(&proto, &mut buffer)
            .unwrap();
        assert_eq!(
            <OrderProto as prost::Message>::decode(buffer.as_slice()).unwrap(),
            proto
        );
    }

    #[test]
    fn avro_rejects_values_that_do_not_fit_the_schema() {
        #[derive(Serialize)]
        struct Wrong {
            id: String,
        }
        let avro = AvroSerializer::from_schema_json(ORDER_SCHEMA).unwrap();
        let error = avro
            .serialize(&Wrong { id: "x".into() }, &mut Vec::new())
            .unwrap_err();
        assert_eq!(error.format, "Avro");
        assert!(AvroSerializer::from_schema_json("{not a schema").is_err());
    }

    /// A user-defined serializer plugs in the same way.
    struct Upper;
    impl MessageSerializer<String> for Upper {
        fn serialize(&self, value: &String, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
            buffer.extend_from_slice(value.to_uppercase().as_bytes());
            Ok(())
        }
        fn content_type(&self) -> &str {
            "text/plain"
        }
    }

    #[test]
    fn bytes_pass_through_and_none_is_null() {
        let mut buffer = Vec::new();
        BytesSerializer
            .serialize(&Some(b"\xff raw".to_vec()), &mut buffer)
            .unwrap();
        assert_eq!(buffer, b"\xff raw");
        assert!(BytesSerializer.is_null(&None));
        assert!(!BytesSerializer.is_null(&Some(Vec::new())));
    }

    #[test]
    fn custom_serializers_work() {
        let mut buffer = Vec::new();
        Upper.serialize(&"abc".to_string(), &mut buffer).unwrap();
        assert_eq!(buffer, b"ABC");
    }
}
