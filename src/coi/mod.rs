//! Chat over IMAP server emulation: METADATA configuration, chat folders, chat detection.

pub mod metadata;
