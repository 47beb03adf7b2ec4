//! `coi-proxy queue list|retry ID|drop ID`: showing and steering the queue.
//!
//! redb lets one process at a time open the store, and the running daemon holds it. So the
//! daemon serves these commands on a Unix socket in the state directory (`control.sock`, mode
//! 0600, inside the 0700 state directory; served by `app::control`, which hands `queue …` lines
//! to [`answer`]), and the command line asks it there; only when no daemon answers does the
//! command line open the store itself.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use super::queue::now;
use crate::config::Config;
use crate::context::Context;
use crate::mail::rfc5322_date;
use crate::store::{QueuedMessage, RecipientState, Store, StoreError};

/// One queue command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    List,
    Retry(u64),
    Drop(u64),
}

impl Command {
    fn to_line(self) -> String {
        match self {
            Command::List => "queue list".into(),
            Command::Retry(id) => format!("queue retry {id}"),
            Command::Drop(id) => format!("queue drop {id}"),
        }
    }

    fn parse(line: &str) -> Option<Command> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["queue", "list"] => Some(Command::List),
            ["queue", "retry", id] => id.parse().ok().map(Command::Retry),
            ["queue", "drop", id] => id.parse().ok().map(Command::Drop),
            _ => None,
        }
    }
}

/// Why a queue command failed; the text is shown to the user (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no message {0} in the queue")]
    NoSuchMessage(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{source}\n(is a coi-proxy daemon running with this state directory? It holds the store; its control socket {} did not answer)",
        socket.display()
    )]
    Locked { source: StoreError, socket: PathBuf },
    #[error("the running coi-proxy did not answer on {}: {source}", socket.display())]
    NoAnswer { socket: PathBuf, source: std::io::Error },
    /// The running daemon's answer to a command it refused, as it sent it.
    #[error("{0}")]
    Daemon(String),
    #[error("the store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Runs `cmd` for the command line: through the running daemon if there is one, else on the
/// store directly. `Ok` is the text to print; `Err` the error to show (exit status 1).
pub fn cli(config: &Config, cmd: Command) -> Result<String, ControlError> {
    let socket = socket_path(&config.state_dir);
    if let Ok(stream) = UnixStream::connect(&socket) {
        return ask(stream, cmd).unwrap_or_else(|source| Err(ControlError::NoAnswer { socket, source }));
    }
    if !config.state_dir.join("coi-proxy.redb").exists() {
        return match cmd {
            Command::List => Ok("The queue is empty.\n".into()),
            Command::Retry(id) | Command::Drop(id) => Err(ControlError::NoSuchMessage(id)),
        };
    }
    let store = Store::open(&config.state_dir).map_err(|source| ControlError::Locked { source, socket })?;
    execute(&store, cmd).map(|done| done.text)
}

fn ask(stream: UnixStream, cmd: Command) -> std::io::Result<Result<String, ControlError>> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(format!("{}\n", cmd.to_line()).as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut text = String::new();
    for line in reader.lines() {
        text.push_str(&line?);
        text.push('\n');
    }
    Ok(if status.trim_end() == "ok" { Ok(text) } else { Err(ControlError::Daemon(text.trim_end().to_string())) })
}

/// A command carried out: the text for the user, and for `retry` the login whose relay to wake.
#[derive(Debug)]
struct Done {
    text: String,
    wake: Option<String>,
}

/// Carries out `cmd` on the store. For `retry`, also returns the message's login so that a
/// daemon can wake its relay. Waits for the store's writer: never call it on the runtime (the
/// daemon runs it with `spawn_blocking`).
fn execute(store: &Store, cmd: Command) -> Result<Done, ControlError> {
    match cmd {
        Command::List => {
            let list = store.queue_list()?;
            Ok(Done { text: describe(&list, now()) + &crate::receipts::sent::describe(store), wake: None })
        }
        Command::Retry(id) => {
            let mut msg = store.queue_get(id)?.ok_or(ControlError::NoSuchMessage(id))?;
            msg.next_attempt_at = now();
            store.queue_save(id, &msg).wait()?;
            Ok(Done { text: format!("message {id} will be tried again now\n"), wake: Some(msg.login) })
        }
        Command::Drop(id) => match store.queue_remove(id).wait()? {
            true => {
                Ok(Done { text: format!("message {id} removed from the queue; it will not be sent\n"), wake: None })
            }
            false => Err(ControlError::NoSuchMessage(id)),
        },
    }
}

/// The daemon's answer to a control line (`ok` or `error`, then text); `None` if it is not a
/// queue command.
pub async fn answer(shared: &Context, line: &str) -> Option<String> {
    if line.split_whitespace().next() != Some("queue") {
        return None;
    }
    let Some(cmd) = Command::parse(line) else {
        return Some("error\nunknown command; use: queue list | queue retry ID | queue drop ID\n".into());
    };
    let store = shared.store.clone();
    let result = tokio::task::spawn_blocking(move || execute(&store, cmd)).await.unwrap_or_else(|e| Err(e.into()));
    if let Ok(Done { wake: Some(login), .. }) = &result
        && let Command::Retry(id) = cmd
    {
        shared.queue.wake(id, login.clone());
    }
    if result.is_ok() && cmd != Command::List {
        info!("control: {}", cmd.to_line());
    }
    Some(match result {
        Ok(done) => format!("ok\n{}", done.text),
        Err(e) => format!("error\n{e}\n"),
    })
}

/// The queue as text for people: one block per message.
pub fn describe(list: &[(u64, QueuedMessage)], now: i64) -> String {
    if list.is_empty() {
        return "The queue is empty.\n".into();
    }
    let mut out = format!("{} message(s) in the queue:\n", list.len());
    for (id, msg) in list {
        let from = if msg.from.is_empty() { "<>" } else { msg.from.as_str() };
        out.push_str(&format!(
            "\n#{id}  from {from} (account {}), {} bytes, accepted {}\n",
            msg.login,
            msg.size,
            rfc5322_date(msg.received_at)
        ));
        for r in &msg.recipients {
            let state = match &r.state {
                RecipientState::Pending => "pending".to_string(),
                RecipientState::Delivered { reply, .. } => format!("delivered ({reply})"),
                RecipientState::Failed { reply, .. } => format!("failed ({reply})"),
            };
            out.push_str(&format!("    to {}: {state}\n", r.address));
        }
        if msg.report_pending {
            out.push_str("    a failure report for the sender is waiting to be put into the INBOX\n");
        }
        if msg.pending().next().is_some() || msg.report_pending {
            let wait = msg.next_attempt_at - now;
            let next = if wait <= 0 { "now".to_string() } else { format!("in {wait} s") };
            out.push_str(&format!("    next attempt {next}; gives up {}\n", rfc5322_date(msg.give_up_at)));
        }
        match msg.attempts.last() {
            Some(last) => out.push_str(&format!(
                "    {} attempt(s); last {}: {}\n",
                msg.attempts.len(),
                rfc5322_date(last.at),
                last.result
            )),
            None => out.push_str("    not tried yet\n"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MailParams, Recipient};

    #[test]
    fn commands_round_trip() {
        for cmd in [Command::List, Command::Retry(7), Command::Drop(12)] {
            assert_eq!(Command::parse(&cmd.to_line()), Some(cmd));
        }
        assert_eq!(Command::parse("queue drop x"), None);
        assert_eq!(Command::parse("rm -rf"), None);
    }

    #[test]
    fn list_retry_drop_on_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(execute(&store, Command::List).unwrap().text, "The queue is empty.\n");
        let msg = QueuedMessage {
            login: "alice@example.org".into(),
            from: "alice@example.org".into(),
            params: MailParams::default(),
            recipients: vec![Recipient {
                address: "bob@example.org".into(),
                notify: None,
                orcpt: None,
                state: RecipientState::Pending,
            }],
            size: 42,
            received_at: 0,
            next_attempt_at: now() + 100,
            give_up_at: now() + 1000,
            attempts: Vec::new(),
            report_pending: false,
            chat_followup: false,
        };
        let id = store.queue_insert(&msg, b"x".to_vec(), None).wait().unwrap();
        let list = execute(&store, Command::List).unwrap().text;
        assert!(list.contains(&format!("#{id}  from alice@example.org")), "{list}");
        assert!(list.contains("to bob@example.org: pending") && list.contains("not tried yet"), "{list}");
        let login = execute(&store, Command::Retry(id)).unwrap().wake;
        assert_eq!(login.as_deref(), Some("alice@example.org"));
        assert!(execute(&store, Command::List).unwrap().text.contains("next attempt now"));
        execute(&store, Command::Drop(id)).unwrap();
        assert!(execute(&store, Command::Drop(id)).unwrap_err().to_string().contains("no message"));
    }
}
