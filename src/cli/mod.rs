//! Subcommands other than `run` and `check`: first-run setup, client profiles, and the man pages
//! and completions the package ships; the password prompt they share. Each starts nothing long-lived.

pub mod client_settings;
pub mod generate;
pub mod password;
pub mod profile;
pub mod qr;
pub mod setup;
