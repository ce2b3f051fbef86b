//! W3C trace context: the `traceparent` a command arrives with is continued in the
//! command's span, sent on every Graph request, and put on the outcome event, so one trace
//! runs from the sending system through Graph and back.

use std::fmt;

/// A `traceparent` value: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` header; `None` for anything malformed, which then starts a
    /// new trace instead of propagating garbage.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if ![version, trace, span, flags].into_iter().all(lower_hex) {
            return None;
        }
        let context = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// A new, sampled trace for a command that arrived without one.
    pub fn new_root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            span_id: rand::random::<u64>().max(1),
            flags: 0x01,
        }
    }

    /// The continuation of `header`, or a new trace when there is none (or it is invalid).
    pub fn continue_from(header: Option<&str>) -> Self {
        header
            .and_then(Self::parse)
            .map_or_else(Self::new_root, |parent| parent.child())
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::random::<u64>().max(1),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> TraceId {
        let mut digits = [0; 32];
        hex(self.trace_id, &mut digits);
        TraceId(digits)
    }

    /// The `traceparent` header's text, `00-{trace id}-{span id}-{flags}`.
    fn header(&self) -> [u8; 55] {
        let mut text = *b"00-________________________________-________________-__";
        hex(self.trace_id, &mut text[3..35]);
        hex(u128::from(self.span_id), &mut text[36..52]);
        hex(u128::from(self.flags), &mut text[53..55]);
        text
    }
}

/// A trace id's hex digits, written without the formatting machinery: it is formatted for
/// every command (its log span and its event's `traceparent`).
#[derive(Clone, Copy)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The low `out.len()` hex digits of `value`, most significant first, into `out`.
fn hex(mut value: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = self.header();
        // Only ASCII is ever written into it.
        f.write_str(std::str::from_utf8(&header).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let context = TraceContext::parse(SAMPLE).expect("valid");
        assert_eq!(context.to_string(), SAMPLE);
        assert_eq!(
            context.trace_id().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(header), None, "{header:?}");
        }
        assert!(
            TraceContext::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .is_some()
        );
    }

    #[test]
    fn continuing_keeps_the_trace_and_changes_the_span() {
        let child = TraceContext::continue_from(Some(SAMPLE));
        assert_eq!(
            child.trace_id().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(child.to_string(), SAMPLE);
        let root = TraceContext::continue_from(Some("garbage"));
        assert_ne!(root.trace_id().as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn the_hex_digits_are_those_the_formatting_machinery_would_write() {
        for _ in 0..1000 {
            let context = TraceContext {
                trace_id: rand::random::<u128>() >> rand::random_range(0..128),
                span_id: rand::random::<u64>() >> rand::random_range(0..64),
                flags: rand::random(),
            };
            let (trace, span, flags) = (context.trace_id, context.span_id, context.flags);
            assert_eq!(context.trace_id().as_str(), format!("{trace:032x}"));
            assert_eq!(
                context.to_string(),
                format!("00-{trace:032x}-{span:016x}-{flags:02x}")
            );
        }
    }
}
