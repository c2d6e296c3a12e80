//! The lines of a `turnserver.conf`: `option=value`, `option value` or a bare `option`, each
//! maybe written `--option` as on coturn's command line; `#` starts a comment line.

/// One option line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OptionLine<'t> {
    /// 1-based.
    pub(super) number: usize,
    /// Without the leading `--`.
    pub(super) name: &'t str,
    /// `None` for a bare flag.
    pub(super) value: Option<&'t str>,
    /// The whole line, trimmed, for the list of lines nothing was made of.
    pub(super) text: &'t str,
}

/// The option lines of `text`, in order.
pub(super) fn option_lines(text: &str) -> impl Iterator<Item = OptionLine<'_>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            return None;
        }
        let bare = text.strip_prefix("--").unwrap_or(text);
        let split = bare.find(|c: char| c == '=' || c.is_whitespace());
        let (name, value) = match split {
            Some(at) => {
                let (name, rest) = bare.split_at(at);
                // `option = value` has both a space and the `=`.
                let rest = rest.trim_start();
                let rest = rest.strip_prefix('=').unwrap_or(rest);
                (name, unquote(rest.trim()))
            }
            None => (bare, ""),
        };
        Some(OptionLine {
            number: i + 1,
            name,
            value: (!value.is_empty()).then_some(value),
            text,
        })
    })
}

/// `"value"` as `value`: coturn takes both spellings.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(usize, &str, Option<&str>)> {
        option_lines(text)
            .map(|l| (l.number, l.name, l.value))
            .collect()
    }

    #[test]
    fn every_spelling_of_an_option_is_read() {
        let text = "# comment\n\nlistening-port=3478\n  realm example.org\n\
                    --max-bps = 1000\nlt-cred-mech\n--no-tcp\nrealm=\"quoted\"\nuser=a:b=c\n";
        assert_eq!(
            parsed(text),
            [
                (3, "listening-port", Some("3478")),
                (4, "realm", Some("example.org")),
                (5, "max-bps", Some("1000")),
                (6, "lt-cred-mech", None),
                (7, "no-tcp", None),
                (8, "realm", Some("quoted")),
                (9, "user", Some("a:b=c")),
            ]
        );
    }

    #[test]
    fn odd_lines_do_not_panic() {
        for text in ["=", "--", "-- =", "\"", "é=ü", "a\tb", "=value"] {
            let _ = parsed(text);
        }
        assert_eq!(parsed("--"), [(1, "", None)]);
    }
}
