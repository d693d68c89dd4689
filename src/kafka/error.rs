//! The error taxonomy of the suite's Kafka clients.
//!
//! librdkafka reports failures as error codes (and, for the transactional API, as error
//! objects that carry librdkafka's own `is_retriable` / `is_fatal` / `txn_requires_abort`
//! verdicts). Callers need one question answered: what do I do now? [`ErrorClass`] is that
//! answer, and [`KafkaError`] carries it with the original error. Codes are classified the
//! way librdkafka treats them itself (its producer and consumer retry the transient broker
//! errors internally, raise the idempotence/fencing ones as fatal, and fail a request for
//! good on permanent ones); see `classify_code` for the lists.

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode as Code};

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Transient (network, leader change, timeout): the same operation may succeed later.
    Retriable,
    /// The local producer queue is full: wait for deliveries, then enqueue again.
    /// Not a failure, and never a reason to drop the message.
    QueueFull,
    /// The current transaction cannot commit and must be aborted; the client stays usable.
    AbortTransaction,
    /// This operation (message, request) will never succeed, but the client stays usable.
    Permanent,
    /// The client instance is unusable (fenced, idempotence broken, bad credentials, bad
    /// configuration): stop and recreate it or exit.
    Fatal,
}

/// A Kafka client error with its class.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    #[error("retriable Kafka error")]
    Retriable(#[source] RdKafkaError),
    #[error("Kafka producer queue is full")]
    QueueFull(#[source] RdKafkaError),
    #[error("Kafka transaction must be aborted")]
    AbortTransaction(#[source] RdKafkaError),
    #[error("permanent Kafka error")]
    Permanent(#[source] RdKafkaError),
    #[error("fatal Kafka error")]
    Fatal(#[source] RdKafkaError),
    #[error("invalid Kafka client configuration")]
    Config(#[from] super::client_config::PropertyClash),
}

impl KafkaError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Retriable(_) => ErrorClass::Retriable,
            Self::QueueFull(_) => ErrorClass::QueueFull,
            Self::AbortTransaction(_) => ErrorClass::AbortTransaction,
            Self::Permanent(_) => ErrorClass::Permanent,
            Self::Fatal(_) | Self::Config(_) => ErrorClass::Fatal,
        }
    }

    /// Whether retrying the same operation can succeed (queue-full included: it clears as
    /// deliveries complete).
    pub fn is_retriable(&self) -> bool {
        matches!(self.class(), ErrorClass::Retriable | ErrorClass::QueueFull)
    }

    pub fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::Fatal
    }

    /// The librdkafka error this one wraps, if any.
    pub fn rdkafka(&self) -> Option<&RdKafkaError> {
        match self {
            Self::Retriable(e)
            | Self::QueueFull(e)
            | Self::AbortTransaction(e)
            | Self::Permanent(e)
            | Self::Fatal(e) => Some(e),
            Self::Config(_) => None,
        }
    }
}

impl From<RdKafkaError> for KafkaError {
    fn from(error: RdKafkaError) -> Self {
        match classify(&error) {
            ErrorClass::Retriable => Self::Retriable(error),
            ErrorClass::QueueFull => Self::QueueFull(error),
            ErrorClass::AbortTransaction => Self::AbortTransaction(error),
            ErrorClass::Permanent => Self::Permanent(error),
            ErrorClass::Fatal => Self::Fatal(error),
        }
    }
}

/// Classifies an rdkafka error.
pub fn classify(error: &RdKafkaError) -> ErrorClass {
    match error {
        // Error objects carry librdkafka's own verdict; fatal wins over the others.
        RdKafkaError::Transaction(object) => {
            if object.is_fatal() {
                ErrorClass::Fatal
            } else if object.txn_requires_abort() {
                ErrorClass::AbortTransaction
            } else if object.is_retriable() {
                ErrorClass::Retriable
            } else {
                classify_code(object.code())
            }
        }
        RdKafkaError::MessageConsumptionFatal(_)
        | RdKafkaError::ClientConfig(..)
        | RdKafkaError::ClientCreation(_)
        | RdKafkaError::Nul(_) => ErrorClass::Fatal,
        RdKafkaError::Canceled
        | RdKafkaError::NoMessageReceived
        | RdKafkaError::PartitionEOF(_) => ErrorClass::Retriable,
        other => other
            .rdkafka_error_code()
            .map(classify_code)
            .unwrap_or(ErrorClass::Permanent),
    }
}

/// Classifies a librdkafka error code.
pub fn classify_code(code: Code) -> ErrorClass {
    match code {
        Code::QueueFull => ErrorClass::QueueFull,

        // Transient: the client or the cluster recovers by itself (reconnect, metadata
        // refresh, leader election, coordinator move, quota); librdkafka retries these.
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::OperationTimedOut
        | Code::TimedOutQueue
        | Code::MessageTimedOut
        | Code::WaitingForCoordinator
        | Code::InProgress
        | Code::PreviousInProgress
        | Code::Retry
        | Code::NodeUpdate
        | Code::WaitCache
        | Code::Interrupted
        | Code::PurgeQueue
        | Code::PurgeInflight
        | Code::Partial
        | Code::RequestTimedOut
        | Code::NetworkException
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::BrokerNotAvailable
        | Code::ReplicaNotAvailable
        | Code::UnknownTopicOrPartition
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::CoordinatorLoadInProgress
        | Code::CoordinatorNotAvailable
        | Code::NotCoordinator
        | Code::RebalanceInProgress
        | Code::ConcurrentTransactions
        | Code::KafkaStorageError
        | Code::FetchSessionIdNotFound
        | Code::InvalidFetchSessionEpoch
        | Code::FencedLeaderEpoch
        | Code::UnknownLeaderEpoch
        | Code::OffsetNotAvailable
        | Code::PreferredLeaderNotAvailable
        | Code::EligibleLeadersNotAvailable
        | Code::ListenerNotFound
        | Code::UnstableOffsetCommit
        | Code::ThrottlingQuotaExceeded
        | Code::InvalidMessage
        | Code::StaleMemberEpoch
        | Code::RebootstrapRequired => ErrorClass::Retriable,

        // Idempotence or transaction state broken, fencing, credentials, configuration:
        // librdkafka raises these as fatal or the client cannot work without a fix.
        Code::Fatal
        | Code::Fenced
        | Code::ProducerFenced
        | Code::InvalidProducerEpoch
        | Code::OutOfOrderSequenceNumber
        | Code::TransactionCoordinatorFenced
        | Code::TransactionalIdAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::InvalidTransactionTimeout
        | Code::FencedInstanceId
        | Code::UnsupportedForMessageFormat
        | Code::Authentication
        | Code::SaslAuthenticationFailed
        | Code::UnsupportedSASLMechanism
        | Code::IllegalSASLState
        | Code::SSL
        | Code::InvalidArgument
        | Code::InvalidType
        | Code::NotConfigured
        | Code::UnsupportedFeature
        | Code::NotImplemented
        | Code::CriticalSystemResource
        | Code::GaplessGuarantee
        | Code::InconsistentGroupProtocol
        | Code::InvalidGroupId
        | Code::GroupAuthorizationFailed
        | Code::UnsupportedVersion
        | Code::SecurityDisabled => ErrorClass::Fatal,

        // The transaction is poisoned but a new one may start after an abort.
        Code::InvalidProducerIdMapping
        | Code::UnknownProducerId
        | Code::InvalidTransactionalState => ErrorClass::AbortTransaction,

        // Everything else fails this message or request for good: too large, invalid
        // record, unknown topic or partition in the client, topic authorization, ...
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_librdkafka() {
        let cases = [
            (Code::QueueFull, ErrorClass::QueueFull),
            (Code::BrokerTransportFailure, ErrorClass::Retriable),
            (Code::AllBrokersDown, ErrorClass::Retriable),
            (Code::MessageTimedOut, ErrorClass::Retriable),
            (Code::NotLeaderForPartition, ErrorClass::Retriable),
            (Code::RequestTimedOut, ErrorClass::Retriable),
            (Code::NotEnoughReplicas, ErrorClass::Retriable),
            (Code::CoordinatorLoadInProgress, ErrorClass::Retriable),
            (Code::ProducerFenced, ErrorClass::Fatal),
            (Code::OutOfOrderSequenceNumber, ErrorClass::Fatal),
            (Code::SaslAuthenticationFailed, ErrorClass::Fatal),
            (Code::Fatal, ErrorClass::Fatal),
            (Code::MessageSizeTooLarge, ErrorClass::Permanent),
            (Code::TopicAuthorizationFailed, ErrorClass::Permanent),
            (Code::InvalidRecord, ErrorClass::Permanent),
            (Code::UnknownProducerId, ErrorClass::AbortTransaction),
        ];
        for (code, class) in cases {
            assert_eq!(classify_code(code), class, "{code:?}");
        }
    }

    #[test]
    fn wrapped_errors_keep_their_class() {
        let error = KafkaError::from(RdKafkaError::MessageProduction(Code::QueueFull));
        assert!(matches!(error, KafkaError::QueueFull(_)));
        assert!(error.is_retriable());
        let error = KafkaError::from(RdKafkaError::MessageProduction(Code::MessageSizeTooLarge));
        assert_eq!(error.class(), ErrorClass::Permanent);
        assert!(!error.is_retriable() && !error.is_fatal());
        let error = KafkaError::from(RdKafkaError::Global(Code::Fatal));
        assert!(error.is_fatal());
        let error = KafkaError::from(RdKafkaError::ClientCreation("bad".into()));
        assert!(error.is_fatal());
        assert!(error.to_string().starts_with("fatal Kafka error"));
    }
}
