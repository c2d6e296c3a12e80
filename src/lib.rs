//! icegate: a STUN responder, TURN relay and WebRTC signaling server in one daemon.
//!
//! Data flow: a listener (`transport`) receives a batch of datagrams or a
//! stream frame and hands it to the [`server`] shell, which tells STUN
//! messages from ChannelData (`wire`). Binding requests are answered by
//! `stun`; TURN requests go through the sans-IO core in `turn`, a state
//! machine that takes time as an argument and owns no socket: it
//! authenticates against the credential store (`auth`), refuses banned
//! users (`bans`, kept in the state directory), checks peers against
//! the policy (`policy`), keeps its shard of the allocation table
//! (`turn::table`) and binds relay sockets through a trait the shell
//! implements. The shell owns those sockets (`server::relay_sockets`) and
//! their receive tasks (`transport::relay`), all read and written in batches
//! (`datagrams`). Every refusal is a `reject::Reject`, which picks the STUN
//! error code, the log event and the counter (`metrics`; the admin
//! listener's scrape reads them). `http` serves `/ice-servers`, the demo
//! page and `/ws`, where `signal` keeps the signaling rooms; with
//! `[cluster]` they span nodes through Redis (`cluster`), and a peer's
//! leaving is one `presence::LeaveReason` to clients and nodes alike.
//! A listener with an `other-address` answers RFC 5780 NAT discovery in
//! `stun`. `config` reads
//! the TOML file, one module per table; `certificate` loads a TLS listener's
//! certificate and key from PEM files, for `config` (which checks them) and
//! `transport` (which serves them) alike. `cli` and `daemon` run it all.
//! Imports point down these layers only (`.ci/check-layers.py`).

pub mod cli;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;

mod admin;
mod auth;
mod bans;
mod certificate;
mod cluster;
mod config;
mod ctl;
mod daemon;
mod datagrams;
mod drain;
mod http;
mod ice;
mod logging;
mod metrics;
mod policy;
mod presence;
mod reject;
mod reloadable;
mod server;
mod signal;
mod socket_options;
mod source;
mod sparse;
mod stun;
mod transport;
mod turn;
mod wire;
