//! IMAP: framing, the few commands the proxy parses, capabilities, provider connections, and
//! the client session with its relay.

pub mod capability;
pub mod command;
pub mod conn;
pub mod framing;
pub mod own;
pub mod quiet;
pub mod relay;
pub mod session;
pub mod trace;
pub mod upstream;
