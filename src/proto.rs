//! Protobuf types generated at build time from `schemas/proto/` (see `build.rs`): the
//! `UserEvent` that zstd_producer writes to `user-events`.

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/com.example.kafka.rs"));
}

pub use generated::{EventType, UserEvent, UserEventData};
