//! IMAP in three parts: `wire` (framing, the command and response syntax the proxy needs,
//! capabilities; sans-I/O, imports only the floor), `upstream` and `conn` (connections to a
//! provider and buffered reading, shared by sessions, account workers and `check`), and
//! `session` (one client connection: pre-login, then the relay with its policy).

pub mod conn;
pub mod session;
pub mod upstream;
pub mod wire;
