//! The text of the converted file: TOML lines, each with the coturn options it came from.

use std::fmt::Display;

/// The converted file as it is written.
#[derive(Default)]
pub(super) struct TomlWriter {
    text: String,
}

impl TomlWriter {
    /// `key = value  # coturn: from`; `value` is TOML already.
    pub(super) fn key(&mut self, key: &str, value: impl Display, from: &str) {
        self.text.push_str(&format!(
            "{key} = {value}  # coturn: {}\n",
            comment_safe(from)
        ));
    }

    /// `[name]` or `[[name]]`, after a blank line.
    pub(super) fn table(&mut self, header: &str) {
        self.blank();
        self.text.push_str(header);
        self.text.push('\n');
    }

    pub(super) fn comment(&mut self, text: &str) {
        for line in text.lines() {
            let line = comment_safe(line);
            if line.is_empty() {
                self.text.push_str("#\n");
            } else {
                self.text.push_str(&format!("# {line}\n"));
            }
        }
    }

    /// One blank line however often asked, and none at the top.
    pub(super) fn blank(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with("\n\n") {
            self.text.push('\n');
        }
    }

    pub(super) fn finish(self) -> String {
        self.text
    }
}

/// A TOML basic string.
pub(super) fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A TOML array of strings.
pub(super) fn array<T: Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|i| quoted(&i.to_string())).collect();
    format!("[{}]", items.join(", "))
}

/// TOML comments may hold no control character but tab: a file line quoted in one could
/// otherwise make the output unreadable.
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_coturn_option() {
        let mut w = TomlWriter::default();
        w.key("realm", quoted("a\"b"), "realm");
        w.table("[relay]");
        w.key(
            "alternate-servers",
            array(&["1.2.3.4:3478"]),
            "alternate-server",
        );
        w.comment("two\n\nlines\u{7}");
        assert_eq!(
            w.finish(),
            "realm = 'a\"b'  # coturn: realm\n\n[relay]\n\
             alternate-servers = [\"1.2.3.4:3478\"]  # coturn: alternate-server\n\
             # two\n#\n# lines\u{FFFD}\n"
        );
    }
}
