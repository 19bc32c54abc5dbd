//! [`BrokerError`]: why the core refused a command, and its mapping to the wire's stable
//! error codes. Storage failures are not here: the core never touches the disk.

use qd_protocol::{ErrorCode, JobId, WireError};

/// A command the core refused. Nothing was changed when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A queue name breaks the naming rules; the text says which name and what is allowed.
    #[error("{0}")]
    InvalidQueueName(String),
    /// A field is out of range; the text says which and what to use instead.
    #[error("{0}")]
    InvalidArgument(String),
    /// No job with this id is known.
    #[error("job {0} not found: it completed already, was never added, or the id is wrong")]
    NotFound(JobId),
    /// The token does not match the job's current delivery.
    #[error(
        "lease on job {0} is no longer valid (it expired, the worker was disconnected, or the \
         job was delivered again); drop this try, its result does not count"
    )]
    LeaseLost(JobId),
}

impl BrokerError {
    /// The stable wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::InvalidQueueName(_) => ErrorCode::InvalidQueueName,
            BrokerError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            BrokerError::NotFound(_) => ErrorCode::NotFound,
            BrokerError::LeaseLost(_) => ErrorCode::LeaseLost,
        }
    }

    /// Wraps a validation error from `qd_protocol`, keeping its message.
    pub(crate) fn from_validation(err: WireError) -> Self {
        match err.code {
            ErrorCode::InvalidQueueName => BrokerError::InvalidQueueName(err.message),
            _ => BrokerError::InvalidArgument(err.message),
        }
    }
}

impl From<BrokerError> for WireError {
    fn from(err: BrokerError) -> Self {
        WireError::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_wire_codes() {
        let cases = [
            (BrokerError::InvalidQueueName("bad".into()), ErrorCode::InvalidQueueName),
            (BrokerError::InvalidArgument("bad".into()), ErrorCode::InvalidArgument),
            (BrokerError::NotFound(4), ErrorCode::NotFound),
            (BrokerError::LeaseLost(4), ErrorCode::LeaseLost),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let wire = WireError::from(err);
            assert_eq!(wire.code, code);
            assert_eq!(wire.message, text);
        }
        assert!(BrokerError::LeaseLost(9).to_string().contains("job 9"));
    }
}
