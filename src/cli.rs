//! The command line: run, check-config, convert-coturn, credentials, token, ctl, version.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::auth::CredentialStore;
use crate::certificate::{TlsFiles, load_certified_key};
use crate::config::{self, Config};
use crate::coturn_convert::{self, Environment};
use crate::daemon::{self, Origin};
use crate::ice;
use crate::logging::LogTarget;
use crate::server::unix_now;
use crate::signal::token;

/// sysexits.h: the configuration is wrong (systemd's RestartPreventExitStatus).
const EXIT_CONFIG: u8 = 78;
/// sysexits.h: an input file cannot be read.
const EXIT_NO_INPUT: u8 = 66;
/// sysexits.h: an internal failure, such as a port that cannot be bound.
const EXIT_SOFTWARE: u8 = 70;

#[derive(Parser, Debug)]
#[command(
    name = "icegate",
    version,
    about = "STUN responder, TURN relay and WebRTC signaling server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (without --config: loopback only, with a fresh REST secret).
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where to log: the journal when stderr is connected to it (auto), or one of them.
        #[arg(long, value_enum, default_value = "auto")]
        log: LogTarget,
    },
    /// Check a config file: print `ok` or every problem with its key and line.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print an icegate.toml that does what a coturn turnserver.conf did; each line names
    /// the coturn options it came from, and what has no equivalent is listed at the end.
    ConvertCoturn {
        /// coturn's configuration file, such as /etc/turnserver.conf.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Mint TURN REST credentials and print them with the iceServers JSON.
    Credentials {
        #[arg(long)]
        user: String,
        /// Lifetime such as 10m or 24h (default: auth.credential-ttl).
        #[arg(long, value_parser = config::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Talk to a running daemon's admin listener: status, allocations, kill USER,
    /// ban USER, unban USER, bans, drain, reload.
    Ctl(crate::ctl::Ctl),
    /// Mint a signaling token (JWT, HS256 with the first signal.jwt-secrets entry).
    Token {
        #[arg(long)]
        user: String,
        /// A room the token may join; repeat for several (default: any room).
        #[arg(long = "room", value_name = "ROOM")]
        rooms: Vec<String>,
        /// Lifetime such as 10m or 24h.
        #[arg(long, value_parser = config::parse_duration, default_value = "1h")]
        ttl: Duration,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, log } => run(config, log),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::ConvertCoturn { file } => convert_coturn(&file),
        Command::Credentials { user, ttl, config } => credentials(&user, ttl, config),
        Command::Token {
            user,
            rooms,
            ttl,
            config,
        } => token(&user, rooms, ttl, config),
        Command::Ctl(ctl) => crate::ctl::main(ctl),
    }
}

fn load_or_default(path: Option<PathBuf>) -> Result<(Config, Origin), ExitCode> {
    match path {
        Some(path) => match Config::load(&path) {
            Ok(config) => Ok((config, Origin::File(path.display().to_string()))),
            Err(errors) => {
                eprintln!("{errors}");
                Err(ExitCode::from(EXIT_CONFIG))
            }
        },
        None => {
            let secret = fresh_secret();
            Ok((
                Config::embedded_default(&secret),
                Origin::Embedded { secret },
            ))
        }
    }
}

fn run(path: Option<PathBuf>, log_target: LogTarget) -> ExitCode {
    let (config, origin) = match load_or_default(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match daemon::run(config, origin, log_target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            eprintln!("icegate: {error}");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

fn convert_coturn(path: &Path) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("icegate: cannot read {}: {e}", path.display());
            return ExitCode::from(EXIT_NO_INPUT);
        }
    };
    let check_tls = |certificate: &Path, private_key: &Path| {
        let files = TlsFiles {
            certificate: certificate.to_owned(),
            private_key: private_key.to_owned(),
        };
        load_certified_key(&files)
            .map(drop)
            .map_err(|problem| problem.message)
    };
    let env = Environment {
        source: &path.display().to_string(),
        config_dir: path.parent().unwrap_or(Path::new("/")),
        fresh_secret: &fresh_secret(),
        check_tls: &check_tls,
    };
    print!(
        "{}",
        coturn_convert::convert(&String::from_utf8_lossy(&bytes), &env)
    );
    ExitCode::SUCCESS
}

fn credentials(user: &str, ttl: Option<Duration>, path: Option<PathBuf>) -> ExitCode {
    let (config, _) = match load_or_default(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let store = CredentialStore::new(&config.realm, &config.auth, [0; 32]);
    let ttl = ttl.unwrap_or(config.auth.credential_ttl);
    let Some((username, password)) = store.mint(user, ttl, unix_now()) else {
        eprintln!("icegate: no REST secret configured (auth.secrets or auth.secrets-file)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let (stun, turn) = ice::urls(&config);
    let servers = ice::ice_servers(&config, &username, &password);
    println!("username: {username}");
    println!("password: {password}");
    println!("ttl: {}", ttl.as_secs());
    println!(
        "uris: {}",
        stun.iter()
            .chain(&turn)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&servers).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

fn token(user: &str, rooms: Vec<String>, ttl: Duration, path: PathBuf) -> ExitCode {
    let (config, _) = match load_or_default(Some(path)) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let Some(secret) = config.signal.jwt_secrets.first() else {
        eprintln!("icegate: no signal.jwt-secrets entry to sign with");
        return ExitCode::from(EXIT_CONFIG);
    };
    let rooms = (!rooms.is_empty()).then_some(rooms);
    println!("{}", token::mint(secret, user, rooms, ttl, unix_now()));
    ExitCode::SUCCESS
}

/// 32 random bytes, base64: a REST secret nobody else has.
fn fresh_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}
