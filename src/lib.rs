//! coi-proxy: makes any IMAP4rev1 provider look like a Chat over IMAP (COI) server.
//!
//! The daemon sits between mail clients and the provider. Mail traffic is relayed byte-exactly;
//! the COI server side is emulated locally. `main.rs` is only the command line; everything else
//! lives here, one module per concern.

pub mod account;
pub mod app;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod coi;
pub mod config;
pub mod context;
pub mod deflate;
pub mod deltachat;
pub mod imap;
pub mod limits;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod oauth;
pub mod openpgp;
pub mod provider_profile;
pub mod push;
pub mod receipts;
pub mod sd_notify;
pub mod seal;
pub mod secret;
pub mod smtp;
pub mod state;
pub mod store;
pub mod tls;
pub mod trust;
pub mod worker;
