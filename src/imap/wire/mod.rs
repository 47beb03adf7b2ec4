//! The IMAP wire: framing (lines and literals, bounded), the few commands the proxy parses,
//! capability lists, the protocol trace's redaction, and the contract by which the feature wings
//! talk to a provider without knowing which connection carries their commands. Sans-I/O; imports
//! only the floor.

pub mod capability;
pub mod command;
pub mod fetch;
pub mod framing;
pub mod mailbox;
pub mod message;
pub mod metadata;
pub mod provider;
pub mod response;
pub mod trace;
