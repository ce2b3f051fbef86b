//! Remote text is bounded: how much of a Graph or token-endpoint reply is read, and how much
//! of what it says travels on into outcome events, logs and dead-letter headers.
//!
//! A misbehaving proxy or service can answer with megabytes. Reading at most
//! [`MAX_REPLY_BYTES`] keeps memory flat whatever comes back, and cutting every message
//! built from a reply to [`MAX_MESSAGE_BYTES`] keeps an outcome event far below the 64 KiB
//! a consumer expects and a dead-letter header inside one AMQP frame.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

/// Bytes of a reply body read at most. Graph's error bodies and printJob objects are well
/// under 2 KiB and a token reply under 8 KiB (a JWT with many roles); 64 KiB leaves room for
/// everything well-formed and nothing that could hurt.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Bytes of a message built from remote text, in an event, a log line or a header.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Bytes of a remote error code kept: Graph's codes are short identifiers.
pub const MAX_CODE_BYTES: usize = 128;

/// The marker that says a text was cut.
const CUT: &str = "…";

/// Reads at most [`MAX_REPLY_BYTES`] of a reply's `body` (Graph's through hyper, the token
/// endpoint's through reqwest); the rest is left unread and the connection is dropped with
/// the reply.
pub async fn read_body<B>(mut body: B) -> Result<Bytes, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            // Trailers: nothing to read.
            continue;
        };
        let room = MAX_REPLY_BYTES - read.len();
        if chunk.len() >= room {
            read.extend_from_slice(&chunk[..room]);
            break;
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
}

/// `text` cut to at most [`MAX_MESSAGE_BYTES`] bytes on a character boundary.
pub fn message(text: impl Into<String>) -> String {
    cut(text.into(), MAX_MESSAGE_BYTES)
}

/// `text` cut to at most `limit` bytes on a character boundary, ending in `…` when cut.
pub fn cut(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit.saturating_sub(CUT.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(CUT);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_left_alone() {
        assert_eq!(message("HTTP 403 accessDenied"), "HTTP 403 accessDenied");
        let exact = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(message(exact.clone()), exact);
    }

    #[test]
    fn long_text_is_cut_to_the_limit_with_a_marker() {
        let cut = message("y".repeat(30_000_000));
        assert_eq!(cut.len(), MAX_MESSAGE_BYTES);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // 'é' is two bytes; an odd limit falls inside one.
        let text = "é".repeat(2_000);
        for limit in [1, 2, 3, 4, 5, 100, 1023] {
            let cut = cut(text.clone(), limit);
            assert!(cut.len() <= limit.max(CUT.len()), "{limit}: {}", cut.len());
            assert!(cut.ends_with('…'));
        }
    }
}
