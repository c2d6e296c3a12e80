//! Helpers shared by the configuration tests.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Config;
use super::walk::ConfigErrors;

/// A fresh scratch directory under the system temp dir (no tempfile crate needed).
pub(super) fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("icegate-config-test-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub(super) fn parse_ok(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn parse_err(text: &str) -> ConfigErrors {
    match Config::parse(text, "test.toml") {
        Ok(config) => panic!("expected errors, parsed {config:?}"),
        Err(e) => e,
    }
}

pub(super) const MINIMAL: &str =
    "[[listen]]\naddress = \"0.0.0.0:3478\"\n[auth]\nsecrets = [\"0123456789abcdef\"]\n";
