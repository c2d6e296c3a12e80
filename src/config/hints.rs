//! What `check-config` says about a key its table does not have: the spelling meant, the
//! icegate key a coturn option became, or the keys the table takes.

use super::coturn_options::{Equivalent, coturn_option};

/// Edits (insertions, deletions, substitutions) a typo may be away from the key it meant;
/// more would match unrelated keys of short tables.
const MAX_TYPO_EDITS: usize = 2;

/// The message for the key `name` in a table whose keys are `known`.
pub(super) fn unknown_key(name: &str, known: &[&str]) -> String {
    let normalized = name.to_ascii_lowercase().replace('_', "-");
    if let Some(key) = known.iter().find(|k| **k == normalized) {
        return format!("unknown key; did you mean {key}?");
    }
    let coturn = coturn_option(name).or_else(|| coturn_option(&normalized));
    match coturn {
        Some(Equivalent::Key(key)) => format!("unknown key; coturn's option, in icegate: {key}"),
        Some(Equivalent::Builtin(why)) => {
            format!("unknown key; coturn's option, not needed in icegate: {why}")
        }
        Some(Equivalent::Missing(why)) => {
            format!("unknown key; coturn's option, icegate has no equivalent: {why}")
        }
        None => match nearest(&normalized, known) {
            Some(key) => format!("unknown key; did you mean {key}?"),
            None => format!("unknown key; expected one of: {}", known.join(", ")),
        },
    }
}

/// The known key fewest edits from `name`, if a typo could explain the difference.
fn nearest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|key| (edit_distance(name, key), *key))
        .filter(|(edits, key)| *edits <= MAX_TYPO_EDITS && *edits < key.len().min(name.len()))
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, key)| key)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &[&str] = &["ports", "max-allocations", "max-allocations-per-user"];

    #[test]
    fn typos_get_the_key_meant() {
        assert_eq!(
            unknown_key("max-alocations", RELAY),
            "unknown key; did you mean max-allocations?"
        );
        assert_eq!(
            unknown_key("MAX_ALLOCATIONS", RELAY),
            "unknown key; did you mean max-allocations?"
        );
        assert_eq!(
            unknown_key("port", RELAY),
            "unknown key; did you mean ports?"
        );
    }

    #[test]
    fn coturn_options_get_icegates_key() {
        assert_eq!(
            unknown_key("total-quota", RELAY),
            "unknown key; coturn's option, in icegate: [relay] max-allocations"
        );
        assert_eq!(
            unknown_key("no-cli", RELAY),
            "unknown key; coturn's option, icegate has no equivalent: \
             use the [admin] listener and `icegate ctl`"
        );
    }

    #[test]
    fn others_get_the_tables_keys() {
        assert_eq!(
            unknown_key("colour", RELAY),
            "unknown key; expected one of: ports, max-allocations, max-allocations-per-user"
        );
        assert_eq!(
            unknown_key("", RELAY).split(';').next(),
            Some("unknown key")
        );
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }
}
