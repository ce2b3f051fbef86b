//! Reading and writing AMQP message headers and properties.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::retry::RetryHistory;
use crate::telemetry::trace::TraceContext;

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

/// Header the broker adds when it dead-letters a message itself: one table per queue and
/// reason, each with a `count`.
pub const BROKER_DEATHS: &str = "x-death";

/// Header a quorum queue sets on a message it delivers again; it counts the dead-letter
/// queue's deliveries, not the command's.
pub const BROKER_DELIVERY_COUNT: &str = "x-delivery-count";

/// The headers a replayed dead letter leaves behind: why it failed, the delayed-retry
/// history and the dead-letter queue's delivery count, so the command starts afresh.
/// [`ABORT_DEATHS`] stays, so repeat failures show.
pub const STRIPPED_ON_REPLAY: &[&str] = &[
    ABORT_ERROR,
    ABORT_ERROR_MESSAGE,
    ABORT_COMMAND_ID,
    ABORT_SOURCE_QUEUE,
    ABORT_DEAD_LETTERED_AT,
    ABORT_REDELIVERIES,
    ABORT_ATTEMPTS,
    ABORT_FIRST_RECEIVED_AT,
    BROKER_DELIVERY_COUNT,
];

/// How often the broker dead-lettered the message: the sum of the `count`s in `x-death`.
pub fn broker_deaths(headers: Option<&FieldTable>) -> Option<u32> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get(BROKER_DEATHS)? else {
        return None;
    };
    let total = deaths
        .as_slice()
        .iter()
        .filter_map(|death| match death {
            AMQPValue::FieldTable(death) => count(Some(death), "count"),
            _ => None,
        })
        .fold(0u32, u32::saturating_add);
    Some(total)
}

/// `table` without the headers named in `names`.
pub fn without(table: &FieldTable, names: &[&str]) -> FieldTable {
    table
        .inner()
        .iter()
        .filter(|(name, _)| !names.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into()
}

/// What a command's delivery carries besides its body, read once at the edge: the worker's
/// own retry history, the broker's delivery count, and the properties and trace context
/// the outcome event answers with.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub history: RetryHistory,
    /// The quorum queue's `x-delivery-count`; `None` on a first delivery or a classic queue.
    pub deliveries: Option<u32>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Continued from the `traceparent` header, or a new root.
    pub trace: TraceContext,
}

impl Envelope {
    pub fn read(properties: &lapin::BasicProperties) -> Self {
        let headers = properties.headers().as_ref();
        Self {
            history: retry_history(properties),
            deliveries: count(headers, BROKER_DELIVERY_COUNT),
            message_id: property(properties.message_id()).map(str::to_owned),
            correlation_id: property(properties.correlation_id()).map(str::to_owned),
            reply_to: property(properties.reply_to()).map(str::to_owned),
            trace: TraceContext::continue_from(text(headers, TRACEPARENT).as_deref()),
        }
    }
}

/// The retry history a delivery carries in its headers; a first delivery has none and
/// starts now.
pub fn retry_history(properties: &lapin::BasicProperties) -> RetryHistory {
    let table = properties.headers().as_ref();
    let first_received_at = text(table, ABORT_FIRST_RECEIVED_AT)
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(&text).ok())
        .map_or_else(chrono::Utc::now, |time| time.with_timezone(&chrono::Utc));
    RetryHistory {
        redeliveries: count(table, ABORT_REDELIVERIES).unwrap_or(0),
        attempts: count(table, ABORT_ATTEMPTS).unwrap_or(0),
        first_received_at,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldArray;

    use super::*;

    fn death(count: i64) -> AMQPValue {
        let mut table = FieldTable::default();
        table.insert("count".into(), AMQPValue::LongLongInt(count));
        insert_text(&mut table, "queue", "q");
        AMQPValue::FieldTable(table)
    }

    #[test]
    fn broker_deaths_add_up_every_queue_and_reason() {
        let mut table = FieldTable::default();
        assert_eq!(broker_deaths(Some(&table)), None);
        table.insert(
            BROKER_DEATHS.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death(2), death(3)])),
        );
        assert_eq!(broker_deaths(Some(&table)), Some(5));
    }

    #[test]
    fn without_drops_only_the_named_headers() {
        let mut table = FieldTable::default();
        insert_text(&mut table, ABORT_ERROR, "permanent");
        insert_text(&mut table, TRACEPARENT, "00-abc");
        table.insert(ABORT_DEATHS.into(), AMQPValue::LongLongInt(2));
        let kept = without(&table, STRIPPED_ON_REPLAY);
        assert!(!kept.contains_key(ABORT_ERROR));
        assert_eq!(text(Some(&kept), TRACEPARENT).as_deref(), Some("00-abc"));
        assert_eq!(count(Some(&kept), ABORT_DEATHS), Some(2));
    }
}
