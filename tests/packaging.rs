//! The packages as an operator meets them. The binary these tests were built
//! with is packaged by `cargo deb` and `cargo generate-rpm` from the metadata
//! in Cargo.toml (nothing is compiled again), and tests/packaging/run.sh
//! lints both packages, installs the .deb into a clean Debian root with and
//! without systemd running, boots systemd as PID 1 in systemd-nspawn to drive
//! the service with coturn's client tools through reloads, an upgrade and a
//! purge, and installs the .rpm. tests/packaging/*.sh say what each part
//! checks.
//!
//! It needs root and the tools run.sh lists (`.ci/run` installs them); where
//! one is missing it fails and says how to get it, it never passes silently.
//! The clean root is built once with mmdebstrap and kept in
//! ~/.cache/icegate-packaging.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A cold run builds the Debian root (about a minute); a warm one takes
/// about two minutes. Beyond this something hangs.
const DEADLINE: Duration = Duration::from_secs(20 * 60);

#[test]
fn packages_install_and_run_as_a_hardened_service() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create the packages' directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let run = common::run_bounded_in_group(
        Command::new("bash")
            .arg(manifest_dir.join("tests/packaging/run.sh"))
            .arg(env!("CARGO_BIN_EXE_icegate"))
            .arg(&out)
            .env("CARGO", cargo)
            .current_dir(manifest_dir),
        DEADLINE,
    );
    let report = format!("{}{}", run.stdout, run.stderr);
    assert!(
        run.status.success(),
        "the packaging suite failed ({}); packages left in {}:\n{report}",
        run.status,
        out.display()
    );
    // Passing output is shown with --no-capture: per-step timings and figures.
    println!("{report}");
}
