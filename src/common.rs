//! The flash-sale data model shared by client_kafka, server_kafka and log_worker:
//! the request on the wire, the record of a successful purchase, the outcome of a request
//! (and whether it is a repeat), and the result every buyer is answered with.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One purchase attempt, as client_kafka sends it (JSON, keyed by user id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeckillRequest {
    /// Unique per attempt; a redelivered or duplicated message carries the same id.
    pub request_id: String,
    pub user_id: u64,
    pub activity_id: u64,
    /// When the client created the request, in milliseconds since the Unix epoch.
    pub request_initiation_time: i64,
}

/// Why a payload is not a valid request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestDecodeError {
    #[error("request is not valid JSON for a SeckillRequest")]
    Json(#[from] serde_json::Error),
    #[error("request has an empty request_id")]
    EmptyRequestId,
    #[error("request_id is {0} bytes long; the limit is {MAX_REQUEST_ID_LEN}")]
    RequestIdTooLong(usize),
    /// Ids are stored as PostgreSQL BIGINT.
    #[error("{field} {value} is above the largest supported id {}", i64::MAX)]
    IdOutOfRange { field: &'static str, value: u64 },
}

/// Longest accepted `request_id`; it is stored in Redis for deduplication.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request decoded without copying its request id out of the payload (unless the JSON
/// escapes characters in it): what server_kafka reads per message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestView<'a> {
    #[serde(borrow)]
    pub request_id: std::borrow::Cow<'a, str>,
    pub user_id: u64,
    pub activity_id: u64,
    pub request_initiation_time: i64,
}

impl<'a> RequestView<'a> {
    /// Decodes and checks a request payload, as [`SeckillRequest::from_json`] does.
    pub fn from_json(payload: &'a [u8]) -> Result<Self, RequestDecodeError> {
        let request: Self = serde_json::from_slice(payload)?;
        if request.request_id.is_empty() {
            return Err(RequestDecodeError::EmptyRequestId);
        }
        if request.request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(RequestDecodeError::RequestIdTooLong(
                request.request_id.len(),
            ));
        }
        for (field, value) in [
            ("user_id", request.user_id),
            ("activity_id", request.activity_id),
        ] {
            if i64::try_from(value).is_err() {
                return Err(RequestDecodeError::IdOutOfRange { field, value });
            }
        }
        Ok(request)
    }
}

impl SeckillRequest {
    /// Decodes and checks a request payload.
    pub fn from_json(payload: &[u8]) -> Result<Self, RequestDecodeError> {
        let view = RequestView::from_json(payload)?;
        Ok(Self {
            request_id: view.request_id.into_owned(),
            user_id: view.user_id,
            activity_id: view.activity_id,
            request_initiation_time: view.request_initiation_time,
        })
    }

    /// Encodes the request into `buffer` (cleared first), so callers can reuse one buffer.
    pub fn write_json(&self, buffer: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        buffer.clear();
        serde_json::to_writer(buffer, self)
    }

    /// Milliseconds from the request's creation to `now_ms`; negative clock skew counts as 0.
    pub fn cost_ms(&self, now_ms: i64) -> u64 {
        u64::try_from(now_ms.saturating_sub(self.request_initiation_time)).unwrap_or(0)
    }
}

/// A successful purchase: pushed to the Redis log list by the Lua script and written to
/// PostgreSQL by log_worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeckillRecord {
    pub request_id: String,
    pub user_id: u64,
    pub activity_id: u64,
    pub request_initiation_time: i64,
    /// When server_kafka processed the request, in milliseconds since the Unix epoch.
    pub processed_time: i64,
    pub cost_ms: u64,
    /// In a sale with a payment window: the purchase is a reservation, to be paid by then
    /// (ms since the epoch, Redis's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<i64>,
}

impl SeckillRecord {
    pub fn new(request: &SeckillRequest, processed_time: i64) -> Self {
        Self {
            request_id: request.request_id.clone(),
            user_id: request.user_id,
            activity_id: request.activity_id,
            request_initiation_time: request.request_initiation_time,
            processed_time,
            cost_ms: request.cost_ms(processed_time),
            pay_by: None,
        }
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// What processing one request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SeckillOutcome {
    /// Stock was taken and the record queued.
    Success,
    /// No stock left.
    SoldOut,
    /// The user already holds the sale's per-user limit of purchases.
    AlreadyBought,
    /// The request was older than `timeout_ms` when processed; stock untouched.
    Timeout,
    /// The sale had not started yet (by Redis's clock).
    NotStarted,
    /// The sale had ended (its end passed, or `seckill_admin activity end`).
    Ended,
    /// No such sale was ever created. Not a decision: not remembered (there is no sale to
    /// remember it in), so the same request id may be decided once the sale exists.
    UnknownActivity,
}

impl SeckillOutcome {
    pub const ALL: [SeckillOutcome; 7] = [
        Self::Success,
        Self::SoldOut,
        Self::AlreadyBought,
        Self::Timeout,
        Self::NotStarted,
        Self::Ended,
        Self::UnknownActivity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::SoldOut => "SOLD_OUT",
            Self::AlreadyBought => "ALREADY_BOUGHT",
            Self::Timeout => "TIMEOUT",
            Self::NotStarted => "NOT_STARTED",
            Self::Ended => "ENDED",
            Self::UnknownActivity => "UNKNOWN_ACTIVITY",
        }
    }
}

impl fmt::Display for SeckillOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to one request: its outcome, and whether the request id had been decided
/// before (a redelivery or a duplicated send gets its first outcome again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    pub outcome: SeckillOutcome,
    pub repeat: bool,
}

impl Decision {
    pub fn first(outcome: SeckillOutcome) -> Self {
        Self {
            outcome,
            repeat: false,
        }
    }

    pub fn repeat(outcome: SeckillOutcome) -> Self {
        Self {
            outcome,
            repeat: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown seckill outcome `{0}`")]
pub struct UnknownOutcome(pub String);

impl FromStr for SeckillOutcome {
    type Err = UnknownOutcome;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
            .ok_or_else(|| UnknownOutcome(text.to_string()))
    }
}

/// The answer for one request, as server_kafka publishes it to the results topic (JSON,
/// keyed by user id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeckillResult {
    pub request_id: String,
    pub user_id: u64,
    pub activity_id: u64,
    pub outcome: SeckillOutcome,
    /// The request id had been decided before; `outcome` is that first decision.
    pub repeat: bool,
    /// When the client created the request (ms since the epoch), from the request.
    pub request_initiation_time: i64,
    /// When server_kafka decided, in ms since the epoch.
    pub decided_at: i64,
    /// `decided_at - request_initiation_time`.
    pub cost_ms: u64,
    /// A SUCCESS in a sale with a payment window is a reservation: the order (its id is the
    /// request id) must be paid by then (ms since the epoch, Redis's clock), or it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<i64>,
}

impl SeckillResult {
    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// Appends the JSON of the result to `buffer`, as serde would write it, without serde's
    /// per-field machinery: server_kafka writes one per request (the generic serializer was
    /// 5% of its CPU with results on).
    pub fn write_json(&self, buffer: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        use std::io::Write as _;
        buffer.extend_from_slice(b"{\"request_id\":");
        let plain = self
            .request_id
            .bytes()
            .all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        if plain {
            buffer.push(b'"');
            buffer.extend_from_slice(self.request_id.as_bytes());
            buffer.push(b'"');
        } else {
            serde_json::to_writer(&mut *buffer, &self.request_id)?;
        }
        // Writing to a Vec cannot fail.
        let _ = write!(
            buffer,
            ",\"user_id\":{},\"activity_id\":{},\"outcome\":\"{}\",\"repeat\":{},\"request_initiation_time\":{},\"decided_at\":{},\"cost_ms\":{}}}",
            self.user_id,
            self.activity_id,
            self.outcome.as_str(),
            self.repeat,
            self.request_initiation_time,
            self.decided_at,
            self.cost_ms
        );
        if let Some(pay_by) = self.pay_by {
            buffer.pop();
            let _ = write!(buffer, ",\"pay_by\":{pay_by}}}");
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, by the wall clock (requests carry wall-clock times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SeckillRequest {
        SeckillRequest {
            request_id: "r-1".into(),
            user_id: 42,
            activity_id: 7,
            request_initiation_time: 1_700_000_000_000,
        }
    }

    #[test]
    fn request_round_trips() {
        let mut buffer = b"stale".to_vec();
        request().write_json(&mut buffer).unwrap();
        assert_eq!(
            std::str::from_utf8(&buffer).unwrap(),
            r#"{"request_id":"r-1","user_id":42,"activity_id":7,"request_initiation_time":1700000000000}"#
        );
        assert_eq!(SeckillRequest::from_json(&buffer).unwrap(), request());
    }

    #[test]
    fn record_and_result_round_trip() {
        let record = SeckillRecord::new(&request(), 1_700_000_000_250);
        assert_eq!(record.cost_ms, 250);
        let json = record.to_json().unwrap();
        assert_eq!(SeckillRecord::from_json(json.as_bytes()).unwrap(), record);

        let result = SeckillResult {
            request_id: "r-1".into(),
            user_id: 42,
            activity_id: 7,
            outcome: SeckillOutcome::AlreadyBought,
            repeat: true,
            request_initiation_time: 1_700_000_000_000,
            decided_at: 1_700_000_000_003,
            cost_ms: 3,
            pay_by: None,
        };
        let json = serde_json::to_string(&result).unwrap();
        assert!(json.contains(r#""outcome":"ALREADY_BOUGHT""#), "{json}");
        // The hand-written JSON is serde's, byte for byte, also for ids that need escapes.
        for (request_id, pay_by) in [
            ("r-1", None),
            ("r\"1", None),
            ("r\\1", Some(1_700_000_300_003)),
            ("r\n1", None),
            ("ü", Some(5)),
        ] {
            let result = SeckillResult {
                request_id: request_id.into(),
                pay_by,
                ..result.clone()
            };
            let mut written = Vec::new();
            result.write_json(&mut written).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&result).unwrap()
            );
        }
        assert_eq!(
            serde_json::from_str::<SeckillResult>(&json).unwrap(),
            result
        );
        for outcome in SeckillOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<SeckillOutcome>().unwrap(), outcome);
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{outcome}\"")
            );
        }
        assert!("NOPE".parse::<SeckillOutcome>().is_err());
    }

    #[test]
    fn malformed_requests_give_typed_errors() {
        let cases: [&[u8]; 6] = [
            b"",
            b"not json",
            b"{\"request_id\":\"r\"}",
            b"{\"request_id\":\"r\",\"user_id\":-1,\"activity_id\":1,\"request_initiation_time\":0}",
            b"{\"request_id\":\"r\",\"user_id\":1,\"activity_id\":1,\"request_initiation_time\":0,\"x\":1}",
            b"\xff\xfe",
        ];
        for payload in cases {
            let error = SeckillRequest::from_json(payload).unwrap_err();
            assert!(matches!(error, RequestDecodeError::Json(_)), "{error}");
        }
        let empty_id =
            br#"{"request_id":"","user_id":1,"activity_id":1,"request_initiation_time":0}"#;
        assert!(matches!(
            SeckillRequest::from_json(empty_id),
            Err(RequestDecodeError::EmptyRequestId)
        ));
        let long_id = format!(
            r#"{{"request_id":"{}","user_id":1,"activity_id":1,"request_initiation_time":0}}"#,
            "x".repeat(MAX_REQUEST_ID_LEN + 1)
        );
        assert!(matches!(
            SeckillRequest::from_json(long_id.as_bytes()),
            Err(RequestDecodeError::RequestIdTooLong(_))
        ));
        let huge_user = format!(
            r#"{{"request_id":"r","user_id":{},"activity_id":1,"request_initiation_time":0}}"#,
            u64::MAX
        );
        assert!(matches!(
            SeckillRequest::from_json(huge_user.as_bytes()),
            Err(RequestDecodeError::IdOutOfRange {
                field: "user_id",
                ..
            })
        ));
    }

    #[test]
    fn cost_ignores_negative_skew() {
        assert_eq!(request().cost_ms(1_699_999_999_000), 0);
        assert_eq!(request().cost_ms(1_700_000_001_000), 1_000);
    }
}
