//! The orders' data model: a payment as payers send it (JSON on `seckill.payments_topic`,
//! keyed by user id) and the events on `seckill.order_events_topic` (JSON, keyed by user id):
//! `kind: "order"` when an order is PAID or EXPIRED, `kind: "payment"` with the answer to a
//! payment. The Redis scripts write the events; log_worker publishes them byte for byte, so an
//! event read twice (a publish repeated after a crash) is the same both times.

use crate::common::MAX_REQUEST_ID_LEN;
use crate::redis_state::PaymentAnswer;
use serde::{Deserialize, Serialize};

/// A payment confirmation for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// The payment's own id: a payment applied twice gets its first answer.
    pub payment_id: String,
    /// The order it pays: the purchase's request id.
    pub order_id: String,
    pub user_id: u64,
    pub activity_id: u64,
}

/// Why a payload is not a valid payment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentDecodeError {
    #[error("payment is not valid JSON for a PaymentRequest")]
    Json(#[from] serde_json::Error),
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{field} is {len} bytes long; the limit is {MAX_REQUEST_ID_LEN}")]
    TooLong { field: &'static str, len: usize },
    #[error("{field} {value} is above the largest supported id {}", i64::MAX)]
    IdOutOfRange { field: &'static str, value: u64 },
}

impl PaymentRequest {
    /// Decodes and checks a payment payload.
    pub fn from_json(payload: &[u8]) -> Result<Self, PaymentDecodeError> {
        let payment: Self = serde_json::from_slice(payload)?;
        for (field, value) in [
            ("payment_id", &payment.payment_id),
            ("order_id", &payment.order_id),
        ] {
            if value.is_empty() {
                return Err(PaymentDecodeError::Empty(field));
            }
            if value.len() > MAX_REQUEST_ID_LEN {
                return Err(PaymentDecodeError::TooLong {
                    field,
                    len: value.len(),
                });
            }
        }
        for (field, value) in [
            ("user_id", payment.user_id),
            ("activity_id", payment.activity_id),
        ] {
            if i64::try_from(value).is_err() {
                return Err(PaymentDecodeError::IdOutOfRange { field, value });
            }
        }
        Ok(payment)
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An order changed state (`id` is the order id).
    Order,
    /// A payment was answered (`id` is the payment id).
    Payment,
}

/// An order's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    Reserved,
    Paid,
    Expired,
}

impl OrderState {
    /// As the `orders` table spells it.
    pub fn as_sql(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Paid => "paid",
            Self::Expired => "expired",
        }
    }
}

/// An order event or a payment event, as the scripts queue it and log_worker publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderEvent {
    pub kind: EventKind,
    /// The order id (`kind: order`) or the payment id (`kind: payment`).
    pub id: String,
    pub activity_id: u64,
    pub user_id: u64,
    /// `kind: order`: PAID or EXPIRED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<OrderState>,
    /// `kind: payment`: the order it paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// `kind: payment`: its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<PaymentAnswer>,
    /// When it happened (ms since the epoch, Redis's clock).
    pub at: i64,
    /// `kind: order`: the reservation's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<i64>,
    /// `kind: order`, PAID: the payment that paid it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
}

impl OrderEvent {
    /// Whether an entry of the log list is an event (the scripts write them starting so)
    /// rather than a purchase record.
    pub fn is_event(raw: &[u8]) -> bool {
        raw.starts_with(b"{\"kind\":")
    }

    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_are_checked() {
        let ok = br#"{"payment_id":"p-1","order_id":"o-1","user_id":7,"activity_id":3}"#;
        assert_eq!(PaymentRequest::from_json(ok).unwrap().order_id, "o-1");
        let empty = br#"{"payment_id":"","order_id":"o-1","user_id":7,"activity_id":3}"#;
        assert!(matches!(
            PaymentRequest::from_json(empty),
            Err(PaymentDecodeError::Empty("payment_id"))
        ));
        let extra = br#"{"payment_id":"p","order_id":"o","user_id":7,"activity_id":3,"x":1}"#;
        assert!(matches!(
            PaymentRequest::from_json(extra),
            Err(PaymentDecodeError::Json(_))
        ));
        let huge = format!(
            r#"{{"payment_id":"p","order_id":"o","user_id":{},"activity_id":3}}"#,
            u64::MAX
        );
        assert!(matches!(
            PaymentRequest::from_json(huge.as_bytes()),
            Err(PaymentDecodeError::IdOutOfRange { .. })
        ));
    }

    #[test]
    fn events_as_the_scripts_write_them_decode() {
        let paid = br#"{"kind":"order","id":"o-1","activity_id":3,"user_id":7,"state":"PAID","at":10,"pay_by":20,"payment_id":"p-1"}"#;
        assert!(OrderEvent::is_event(paid));
        let event = OrderEvent::from_json(paid).unwrap();
        assert_eq!(event.state, Some(OrderState::Paid));
        assert_eq!(event.payment_id.as_deref(), Some("p-1"));
        let answer = br#"{"kind":"payment","id":"p-1","activity_id":3,"user_id":7,"order_id":"o-1","answer":"PAYMENT_LATE","at":10}"#;
        let event = OrderEvent::from_json(answer).unwrap();
        assert_eq!(event.answer, Some(PaymentAnswer::Late));
        assert!(!OrderEvent::is_event(br#"{"request_id":"r"}"#));
    }
}
