//! Reading and writing AMQP message headers and properties.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Header naming the error kind of a dead-lettered command.
pub const ABORT_ERROR: &str = "x-abort-error";
/// Header carrying the human-readable reason a command was dead-lettered.
pub const ABORT_ERROR_MESSAGE: &str = "x-abort-error-message";
/// Header naming the command id of a dead-lettered command.
pub const ABORT_COMMAND_ID: &str = "x-abort-command-id";
/// Header naming the queue a dead-lettered command came from.
pub const ABORT_SOURCE_QUEUE: &str = "x-abort-source-queue";
/// Header with the RFC 3339 time the command was dead-lettered.
pub const ABORT_DEAD_LETTERED_AT: &str = "x-abort-dead-lettered-at";
/// Header counting how often the command was dead-lettered by this worker (replays add up).
pub const ABORT_DEATHS: &str = "x-abort-deaths";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// A header as text, whatever string-like type the publisher used.
pub fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(value) => String::from_utf8(value.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        AMQPValue::ByteArray(value) => String::from_utf8(value.as_slice().to_vec()).ok(),
        _ => None,
    }
}

/// A string property that may be absent or empty.
pub fn property(value: &Option<ShortString>) -> Option<&str> {
    value
        .as_ref()
        .map(ShortString::as_str)
        .filter(|s| !s.is_empty())
}

pub fn insert_text(table: &mut FieldTable, name: &str, value: &str) {
    table.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value)),
    );
}

/// Header counting the broker-side delayed retries a command went through.
pub const ABORT_REDELIVERIES: &str = "x-abort-redeliveries";
/// Header carrying the Graph attempts made before a delayed retry.
pub const ABORT_ATTEMPTS: &str = "x-abort-attempts";
/// Header carrying when the worker first received the command (RFC 3339).
pub const ABORT_FIRST_RECEIVED_AT: &str = "x-abort-first-received-at";

/// A header as a non-negative integer, whatever integer type the publisher used.
pub fn count(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value: i64 = match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(value).ok()
}
