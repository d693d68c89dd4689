//! The sink's serializers on the same record: JSON vs bincode vs Avro vs protobuf.
//! `cargo bench --bench serializers`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill_kafka::kafka::sink::{
    AvroSerializer, BincodeSerializer, JsonSerializer, MessageSerializer, ProtobufSerializer,
};
use serde::Serialize;
use std::hint::black_box;

/// A flash-sale request, the suite's most common record.
#[derive(Serialize)]
struct Request {
    request_id: String,
    user_id: i64,
    activity_id: i64,
    request_initiation_time: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RequestProto {
    #[prost(string, tag = "1")]
    request_id: String,
    #[prost(int64, tag = "2")]
    user_id: i64,
    #[prost(int64, tag = "3")]
    activity_id: i64,
    #[prost(int64, tag = "4")]
    request_initiation_time: i64,
}

const SCHEMA: &str = r#"{"type":"record","name":"Request","fields":[
    {"name":"request_id","type":"string"},{"name":"user_id","type":"long"},
    {"name":"activity_id","type":"long"},{"name":"request_initiation_time","type":"long"}]}"#;

fn serializers(c: &mut Criterion) {
    let request = Request {
        request_id: "18c2f3a9b7e-12345-2".into(),
        user_id: 12_345,
        activity_id: 7,
        request_initiation_time: 1_763_845_000_123,
    };
    let proto = RequestProto {
        request_id: request.request_id.clone(),
        user_id: request.user_id,
        activity_id: request.activity_id,
        request_initiation_time: request.request_initiation_time,
    };
    let avro = AvroSerializer::from_schema_json(SCHEMA).expect("schema");
    let mut group = c.benchmark_group("serialize_request");
    group.throughput(Throughput::Elements(1));
    let mut buffer = Vec::with_capacity(256);
    group.bench_function("json", |b| {
        b.iter(|| {
            buffer.clear();
            JsonSerializer
                .serialize(black_box(&request), &mut buffer)
                .expect("json");
        })
    });
    group.bench_function("bincode", |b| {
        b.iter(|| {
            buffer.clear();
            BincodeSerializer
                .serialize(black_box(&request), &mut buffer)
                .expect("bincode");
        })
    });
    group.bench_function("avro", |b| {
        b.iter(|| {
            buffer.clear();
            avro.serialize(black_box(&request), &mut buffer)
                .expect("avro");
        })
    });
    let protobuf = ProtobufSerializer::<RequestProto>::default();
    group.bench_function("protobuf", |b| {
        b.iter(|| {
            buffer.clear();
            protobuf
                .serialize(black_box(&proto), &mut buffer)
                .expect("protobuf");
        })
    });
    group.finish();
    for (name, size) in [
        ("json", {
            buffer.clear();
            JsonSerializer.serialize(&request, &mut buffer).ok();
            buffer.len()
        }),
        ("bincode", {
            buffer.clear();
            BincodeSerializer.serialize(&request, &mut buffer).ok();
            buffer.len()
        }),
        ("avro", {
            buffer.clear();
            avro.serialize(&request, &mut buffer).ok();
            buffer.len()
        }),
        ("protobuf", {
            buffer.clear();
            protobuf.serialize(&proto, &mut buffer).ok();
            buffer.len()
        }),
    ] {
        // stderr: stdout is the test list when a test runner asks for one (--list).
        eprintln!("serialized size {name}: {size} bytes");
    }
}

criterion_group!(benches, serializers);
criterion_main!(benches);
