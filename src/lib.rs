//! icegate: a STUN responder, TURN relay and WebRTC signaling server in one daemon.
//!
//! Data flow: a listener (`transport`) receives a datagram and hands it to
//! the shared [`server`] state, which tells STUN messages from ChannelData
//! (`wire`). Binding requests are answered by `stun`; TURN requests go
//! through the sans-IO core in `turn::core`, which authenticates them against
//! the credential store (`auth`), checks peers against the policy
//! (`policy`) and keeps the one allocation table (`turn::table`). Relay
//! sockets and their receive tasks live in `turn::relay`. Every refusal is a
//! `reject::Reject`, which picks the STUN error code, the log event and the
//! counter. `http` serves `/ice-servers`, the demo page and `/ws`, where
//! `signal` keeps the signaling rooms. `config` reads the TOML file, one
//! module per table; `certificate` loads a TLS listener's certificate and key
//! from PEM files, for `config` (which checks them) and `transport` (which
//! serves them) alike. `cli` and `daemon` run it all.

pub mod cli;

mod admin;
mod auth;
mod certificate;
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
mod reject;
mod reloadable;
mod server;
mod signal;
mod socket_options;
mod stun;
mod transport;
mod turn;
mod wire;
