//! Orders, in sales with a payment window: a purchase (SUCCESS) is a reservation until it is
//! paid, or it expires and its unit goes back on sale.
//!
//! | module       | what lives there                                                   |
//! |--------------|--------------------------------------------------------------------|
//! | [`model`]    | a payment on the payments topic, an order or payment event          |
//! | [`buyer`]    | client_kafka's simulated buyers who pay (`--pay-ratio`)             |
//! | [`store`]    | the `orders` table: one row per order, its state never moving back |
//! | [`payments`] | server_kafka's payments consumer: applies each payment atomically   |
//! | [`expirer`]  | server_kafka's expiry of unpaid reservations, in bounded slices     |
//! | [`publisher`]| log_worker's publishing of the events to the order events topic     |
//!
//! The Redis side (the scripts) is [`crate::redis_state::orders`]; log_worker publishes the
//! events the scripts queue and stores them with [`store`].

pub mod buyer;
pub mod expirer;
pub mod model;
pub mod payments;
pub mod publisher;
pub mod store;

pub use model::{EventKind, OrderEvent, OrderState, PaymentDecodeError, PaymentRequest};
