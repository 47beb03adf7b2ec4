//! Shared helpers of the integration tests: `mod support;` in a test file.
// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod data_block;
pub mod fake_provider;
pub mod idp;
pub mod imap_client;
pub mod net_services;
pub mod other_provider;
pub mod provider;
pub mod proxy;
pub mod smtp_client;
