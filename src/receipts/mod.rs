//! Receipts (a wing): read receipts (MDNs) the proxy sends on behalf of plain mail clients
//! (`read`), and for the user's sent chat messages their copies in Chats and the ticks that the
//! delivery reports (DSNs) and read receipts coming back put on them (`sent`). The message
//! formats are pure functions (`formats`); the rules talk to the provider only through
//! `ProviderCommands` (`mailbox`). Work that needs its own provider connections is done by the
//! receipts agent of the SMTP side (`smtp::receipts`), which sessions and the worker reach
//! through `Context::receipts`.

pub mod formats;
pub mod mailbox;
pub mod read;
pub mod sent;

pub use read::{ClearHeaders, Mdn, Outbox, SeenHook, read_receipts, read_receipts_for};
pub use sent::{before_relay, on_new_messages, prepare};
