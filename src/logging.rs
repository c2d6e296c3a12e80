//! Logging: native journald entries with structured fields when running
//! under systemd, `level message key=value ...` lines on stderr otherwise.
//!
//! Events are logged with [`event!`]: the message is the event's name and
//! each field goes both onto the text line (`user=alice`, underscores shown
//! as dashes) and into the journal as its own upper-case field (`USER=alice`),
//! so `journalctl -u icegate EVENT=auth-failed` finds them.

use std::fmt::Write as _;
use std::io::Write as _;

use log::kv::{self, Key, Value, VisitSource};
use systemd_journal_logger::JournalLog;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogTarget {
    /// The journal when stderr is connected to it (as under systemd), else stderr.
    Auto,
    Stderr,
    Journal,
}

/// Logs an event: `event!(info, "allocation-created", user = name, relay = address)`.
macro_rules! event {
    ($level:ident, $name:expr $(, $key:ident = $value:expr)* $(,)?) => {
        log::$level!(event:% = $name $(, $key:% = $value)*; "{}", $name)
    };
}
pub(crate) use event;

struct Logger {
    journal: Option<JournalLog>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && metadata.target().starts_with("icegate")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut text = record.args().to_string();
        let _ = record.key_values().visit(&mut Fields(&mut text));
        match &self.journal {
            Some(journal) => {
                // The journal gets the same readable message, and the fields.
                let _ = journal.journal_send(
                    &log::Record::builder()
                        .args(format_args!("{text}"))
                        .level(record.level())
                        .target(record.target())
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .key_values(record.key_values())
                        .build(),
                );
            }
            None => {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{} {text}", record.level().as_str().to_lowercase());
            }
        }
    }

    fn flush(&self) {}
}

/// Appends ` key=value` for every field but the event's name.
struct Fields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if key.as_str() != "event" {
            let _ = write!(self.0, " {}=", key.as_str().replace('_', "-"));
            push_value(self.0, &value.to_string());
        }
        Ok(())
    }
}

/// Writes `value` bare when it is one plain word, else quoted with escapes:
/// clients choose user names, origins and peer ids, and a space or quote in
/// one must not add a field of its own to the line.
fn push_value(line: &mut String, value: &str) {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:/@[]%+,*~#()&?!".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        line.push_str(value);
    } else {
        let _ = write!(line, "{value:?}");
    }
}

/// Installs the logger once; later calls only change the level.
pub(crate) fn init(target: LogTarget, level: log::LevelFilter) -> Result<(), String> {
    let use_journal = match target {
        LogTarget::Stderr => false,
        LogTarget::Journal => true,
        LogTarget::Auto => systemd_journal_logger::connected_to_journal(),
    };
    let journal = if use_journal {
        let journal = JournalLog::new()
            .map_err(|e| format!("cannot log to the journal: {e}"))?
            .with_syslog_identifier("icegate".to_owned())
            .with_extra_fields(vec![("ICEGATE_VERSION", env!("CARGO_PKG_VERSION"))]);
        Some(journal)
    } else {
        None
    };
    let logger = Box::new(Logger { journal });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    } else {
        set_level(level);
    }
    Ok(())
}

/// Applies a new level (on reload).
pub(crate) fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(value: &str) -> String {
        let mut line = String::new();
        push_value(&mut line, value);
        line
    }

    #[test]
    fn a_value_with_spaces_or_quotes_cannot_forge_a_field() {
        assert_eq!(field("alice"), "alice");
        assert_eq!(field("1800000000:alice"), "1800000000:alice");
        assert_eq!(field("https://app.example"), "https://app.example");
        assert_eq!(field("[::1]:3478"), "[::1]:3478");
        assert_eq!(field(""), r#""""#);
        assert_eq!(
            field("https://a.example reason=ok"),
            r#""https://a.example reason=ok""#
        );
        assert_eq!(field("x\" user=\"root"), r#""x\" user=\"root""#);
        assert_eq!(field("line\nbreak"), r#""line\nbreak""#);
    }
}
