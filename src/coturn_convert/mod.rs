//! `icegate convert-coturn`: a coturn `turnserver.conf` as an `icegate.toml` that does what
//! it did, each line naming the coturn options it came from, and a closing list of what had no
//! equivalent. Which option becomes which key is `config::COTURN_OPTIONS`, the table the
//! unknown-key hints of `check-config` read too.

use std::path::Path;

mod auth;
mod lines;
mod listeners;
mod ranges;
mod relay;
mod settings;
mod writer;

use self::settings::{COTURN_PROMETHEUS_PORT, SetAside, Settings};
use self::writer::{TomlWriter, quoted};

/// What the conversion needs besides the file's text.
pub(crate) struct Environment<'a> {
    /// Where the coturn file was read from, named in the output's first line.
    pub(crate) source: &'a str,
    /// The coturn file's directory: relative `cert` and `pkey` paths are taken from it.
    pub(crate) config_dir: &'a Path,
    /// A REST secret for a file without credentials, as icegate needs some.
    pub(crate) fresh_secret: &'a str,
    /// Whether a certificate and private key load, and why not.
    pub(crate) check_tls: &'a dyn Fn(&Path, &Path) -> Result<(), String>,
}

/// The `icegate.toml` for the coturn configuration `text`.
pub(crate) fn convert(text: &str, env: &Environment<'_>) -> String {
    let settings = Settings::read(text);
    let mut w = TomlWriter::default();
    w.comment(&format!(
        "icegate.toml made by `icegate convert-coturn` from {}.\n\
         Each line names the coturn options it came from; what icegate has no equivalent for\n\
         is listed at the end. Check it with: icegate check-config --config FILE\n\
         It holds the coturn file's secrets and passwords: keep it as private (the package's\n\
         /etc/icegate/icegate.toml is root:icegate 0640).",
        env.source
    ));
    w.blank();
    if let Some(realm) = &settings.realm {
        w.key("realm", quoted(realm), "realm");
    }
    if let Some(level) = settings.log_level {
        w.table("[log]");
        let from = if level == "trace" {
            "Verbose"
        } else {
            "verbose"
        };
        w.key("level", quoted(level), from);
    }
    w.blank();
    listeners::write_listeners(&mut w, &settings, env);
    relay::write_relay(&mut w, &settings);
    auth::write_auth(&mut w, &settings, env.fresh_secret);
    write_admin(&mut w, &settings);
    write_leftovers(&mut w, &settings);
    w.finish()
}

/// coturn's Prometheus exporter becomes the admin listener, which serves GET /metrics.
fn write_admin(w: &mut TomlWriter, s: &Settings) {
    if !s.prometheus {
        return;
    }
    let port = s.prometheus_port.unwrap_or(COTURN_PROMETHEUS_PORT);
    w.table("[admin]");
    w.comment(
        "coturn served /metrics on every address. icegate's admin listener can also end\n\
         allocations, so it stays on loopback: set a token before moving it.",
    );
    let from = if s.prometheus_port.is_some() {
        "prometheus, prometheus-port"
    } else {
        "prometheus"
    };
    w.key("address", quoted(&format!("127.0.0.1:{port}")), from);
}

/// The closing comment block: options icegate needs no line for, options without an
/// equivalent, values it could not take and lines that are no coturn option.
fn write_leftovers(w: &mut TomlWriter, s: &Settings) {
    let mut text = String::new();
    if !s.builtin.is_empty() {
        text.push_str("Not needed in icegate:\n");
        for (name, why) in &s.builtin {
            text.push_str(&format!("  {name}: {why}\n"));
        }
    }
    let sections: [(&str, &[SetAside]); 3] = [
        ("No equivalent", &s.missing),
        ("Not converted (icegate cannot take the value)", &s.rejected),
        ("Unknown lines", &s.unknown),
    ];
    for (title, lines) in sections {
        if lines.is_empty() {
            continue;
        }
        text.push_str(&format!("{title}:\n"));
        for line in lines {
            text.push_str(&format!(
                "  line {}: {}: {}\n",
                line.line, line.text, line.why
            ));
        }
    }
    if !text.is_empty() {
        w.blank();
        w.comment(&text);
    }
}

#[cfg(test)]
mod tests;
