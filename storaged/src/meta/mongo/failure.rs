//! What a driver error means for an operation: retry it (a write conflict), report the store
//! unavailable (no connection), or give up.

use mongodb::error::{
    Error, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};

use super::StoreError;

/// MongoDB's "DuplicateKey": a unique index refused a write.
const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's "WriteConflict": another transaction changed the same document.
const WRITE_CONFLICT: i32 = 112;

/// The server's error code, where the error came from the server.
pub fn code(error: &Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        _ => None,
    }
}

/// How a failed attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Another writer got there first: run the whole operation again.
    Conflict,
    /// No connection to a usable server.
    Unavailable,
    /// The commit may or may not have happened: commit again (it is idempotent).
    CommitUnknown,
    /// Anything else: the server refused the work.
    Refused,
}

pub fn classify(error: &Error) -> Class {
    match error.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::Shutdown => return Class::Unavailable,
        _ => {}
    }
    if error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        Class::CommitUnknown
    } else if error.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || matches!(code(error), Some(DUPLICATE_KEY | WRITE_CONFLICT))
    {
        // A duplicate key inside a transaction is a race too: every operation checks that a
        // name or record is free before it writes, so another writer took it meanwhile.
        Class::Conflict
    } else {
        Class::Refused
    }
}

/// A one-line description (the driver's own `Display` adds the whole server reply).
pub fn describe(error: &Error) -> String {
    format!("mongodb: {}", error.kind)
}

/// The store error an attempt ends with when it is not retried (again).
pub fn store_error(error: &Error) -> StoreError {
    match (classify(error), error.kind.as_ref()) {
        (Class::Conflict, _) => StoreError::Conflict(describe(error)),
        (_, ErrorKind::BsonDeserialization(_)) => StoreError::Corrupt(describe(error)),
        _ => StoreError::Unavailable(describe(error)),
    }
}
