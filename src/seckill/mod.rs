//! The flash-sale programs' logic, testable without a command line: `server` (what
//! server_kafka runs), `client` (client_kafka), `log_worker`, `admin` (seckill_admin) over
//! `activities` (the sales' definitions in PostgreSQL), `verify` (the invariant check),
//! `offsets` (at-least-once offset tracking), `results` (reading the answers on the results
//! topic) and `orders` (payments, expiry, order events and their rows, in sales with a payment
//! window).

pub mod activities;
pub mod admin;
pub mod client;
pub mod log_worker;
pub mod offsets;
pub mod orders;
pub mod results;
pub mod server;
pub mod verify;
