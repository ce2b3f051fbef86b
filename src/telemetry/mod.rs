//! Logging through `tracing`: readable text by default, JSON lines for log pipelines.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Text => builder.fmt_fields(PlainFields).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // A subscriber already installed (by a test harness, say) is fine.
    drop(result);
}

/// Fields as `name=value`, the value as `Debug` shows it (strings quoted and escaped), and
/// the message bare: what tracing-subscriber's default writes, without its styling of every
/// field name, and with strings that need no escaping written as they are. The command's
/// span formats its fields on every command (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
struct PlainFields;

impl<'writer> MakeVisitor<Writer<'writer>> for PlainFields {
    type Visitor = PlainVisitor<'writer>;

    fn make_visitor(&self, writer: Writer<'writer>) -> Self::Visitor {
        PlainVisitor {
            writer: Staged {
                writer,
                bytes: [0; STAGED_BYTES],
                len: 0,
            },
            result: Ok(()),
            delimit: false,
        }
    }
}

/// Writes one span's or event's fields, a space between each two.
struct PlainVisitor<'writer> {
    writer: Staged<'writer>,
    result: fmt::Result,
    delimit: bool,
}

impl PlainVisitor<'_> {
    /// Writes a field (a space first unless it is the first one), named unless it is the
    /// message; the first error stops all further writing.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Staged<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let writer = &mut self.writer;
        let delimit = std::mem::replace(&mut self.delimit, true);
        self.result = (|| {
            if delimit {
                writer.write_char(' ')?;
            }
            if field.name() != "message" {
                writer.write_str(field.name())?;
                writer.write_char('=')?;
            }
            value(writer)
        })();
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |writer| {
            // What `Debug` writes for text of printable ASCII without `"` or `\`.
            let plain = value
                .bytes()
                .all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\');
            if plain && field.name() != "message" {
                writer.write_char('"')?;
                writer.write_str(value)?;
                writer.write_char('"')
            } else {
                write!(writer, "{value:?}")
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |writer| write!(writer, "{value:?}"));
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        self.result?;
        self.writer.flush()
    }
}

/// Bytes of fields gathered before they go to the subscriber's writer: a span's fields
/// are a string that grows, and written piece by piece it was reallocated four or five
/// times per command.
const STAGED_BYTES: usize = 256;

/// A writer that gathers text in place and hands it on in one piece when full or done.
struct Staged<'writer> {
    writer: Writer<'writer>,
    bytes: [u8; STAGED_BYTES],
    len: usize,
}

impl Staged<'_> {
    fn flush(&mut self) -> fmt::Result {
        if self.len > 0 {
            // Only whole `str`s are gathered, so this is text.
            let text = std::str::from_utf8(&self.bytes[..self.len]).map_err(|_| fmt::Error)?;
            self.writer.write_str(text)?;
            self.len = 0;
        }
        Ok(())
    }
}

impl fmt::Write for Staged<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.len + text.len() > STAGED_BYTES {
            self.flush()?;
            if text.len() > STAGED_BYTES {
                return self.writer.write_str(text);
            }
        }
        self.bytes[self.len..self.len + text.len()].copy_from_slice(text.as_bytes());
        self.len += text.len();
        Ok(())
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

pub mod metrics;
pub mod trace;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Everything the subscriber writes, kept.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Kept {
        type Writer = Kept;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// What `log` writes through a text subscriber with these fields (level, span and
    /// fields; no time, no target, no colour), trimmed.
    fn logged(log: impl FnOnce()) -> String {
        let kept = Kept::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(kept.clone())
            .fmt_fields(PlainFields)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = kept.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("UTF-8").trim().to_owned()
    }

    #[test]
    fn fields_longer_than_the_staging_buffer_are_written_whole_and_in_order() {
        let long = "x".repeat(STAGED_BYTES + 7);
        let longer = "y".repeat(STAGED_BYTES * 2);
        let text = logged(|| {
            tracing::info!(a = long.as_str(), b = "-", c = longer.as_str(), "m");
        });
        assert_eq!(text, format!("INFO m a=\"{long}\" b=\"-\" c=\"{longer}\""));
    }

    #[test]
    fn fields_are_written_as_debug_shows_them_and_the_message_bare() {
        let text = logged(|| {
            let span = tracing::info_span!(
                "command",
                command_id = %"c-1",
                printer_id = "p 1",
                attempt = tracing::field::Empty,
            );
            span.record("attempt", 2);
            let _entered = span.enter();
            tracing::warn!(
                problem = "say \"no\"\nthen \\ stop",
                unicode = "käse\u{7}",
                count = 3_u64,
                "a \"quoted\" message"
            );
        });
        assert_eq!(
            text,
            format!(
                "WARN command{{command_id=c-1 printer_id=\"p 1\" attempt=2}}: a \"quoted\" message \
                 problem={:?} unicode={:?} count=3",
                "say \"no\"\nthen \\ stop", "käse\u{7}"
            )
        );
    }
}
