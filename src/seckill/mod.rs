//! The flash-sale programs' logic, testable without a command line: `server` (what
//! server_kafka runs), `client` (client_kafka), `log_worker`, `verify` (the invariant check)
//! `offsets` (at-least-once offset tracking) and `results` (reading the answers on the results
//! topic).

pub mod client;
pub mod log_worker;
pub mod offsets;
pub mod results;
pub mod server;
pub mod verify;
