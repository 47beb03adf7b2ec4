//! `coi-proxy queue list|retry ID|drop ID`: showing and steering the queue; and the OpenPGP
//! gateway's `key export|import`, `invite`, `join` (carried out by `openpgp::commands`).
//!
//! redb lets one process at a time open the store, and the running daemon holds it. So the
//! daemon serves these commands on a Unix socket in the state directory (`control.sock`, mode
//! 0600, inside the 0700 state directory; served by `app::control`, which hands `queue …` lines
//! to [`answer`] and the gateway's to [`answer_gateway`]), and the command line asks it there;
//! only when no daemon answers does the command line open the store itself.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use super::Waits;
use super::queue::now;
use crate::config::Config;
use crate::context::Context;
use crate::mail::rfc5322_date;
use crate::openpgp::commands::{self, GatewayCommand};
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
            ["queue", "retry", id] => parse_id(id).map(Command::Retry),
            ["queue", "drop", id] => parse_id(id).map(Command::Drop),
            _ => None,
        }
    }
}

/// A queue id as `queue list` prints it (`#3`) or bare (`3`).
pub fn parse_id(text: &str) -> Option<u64> {
    let digits = text.trim().strip_prefix('#').unwrap_or(text.trim());
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// How long the command line waits for the running daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a queue command failed; the text is shown to the user (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no message #{0} in the queue")]
    NoSuchMessage(u64),
    /// Nothing is stored where the command looked (see `state::no_state_here`).
    #[error("{0}")]
    NoState(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{source}\n(is a coi-proxy daemon running with this state directory? It holds the store; its control socket {} did not answer)",
        socket.display()
    )]
    Locked { source: StoreError, socket: PathBuf },
    #[error("the running coi-proxy did not answer on {}: {source}", socket.display())]
    NoAnswer { socket: PathBuf, source: std::io::Error },
    #[error(
        "the coi-proxy daemon did not answer on {} within {} s; is it stopped or hung? (systemctl status coi-proxy)",
        socket.display(), ANSWER_TIMEOUT.as_secs()
    )]
    Timeout { socket: PathBuf },
    /// The running daemon's answer to a command it refused, as it sent it.
    #[error("{0}")]
    Daemon(String),
    #[error("the store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Gateway(#[from] commands::CommandError),
    #[error(transparent)]
    Identity(#[from] crate::openpgp::identity::IdentityError),
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Runs `cmd` for the command line: through the running daemon if there is one, else on the
/// store directly. `Ok` is the text to print; `Err` the error to show (exit status 1).
///
/// It never creates the state directory or the store: where there is none, the error says "no
/// state here" with the directory it looked in. `list` starts with that directory and whether
/// a daemon answered.
pub fn cli(config: &Config, cmd: Command) -> Result<String, ControlError> {
    let dir = &config.state_dir;
    if crate::state::existing(dir)?.is_none() {
        return Err(ControlError::NoState(crate::state::no_state_here(dir, "does not exist")));
    }
    let socket = socket_path(dir);
    // A socket nobody accepts on was left by a daemon that is gone: read the store instead.
    if let Ok(stream) = UnixStream::connect(&socket) {
        let text = ask(stream, cmd, &socket)?;
        return Ok(match cmd {
            Command::List => format!("state directory: {} (answered by the running daemon)\n{text}", dir.display()),
            _ => text,
        });
    }
    if !dir.join("coi-proxy.redb").exists() {
        return Err(ControlError::NoState(crate::state::no_state_here(dir, "has no store (coi-proxy.redb)")));
    }
    let store = Store::open(dir).map_err(|source| ControlError::Locked { source, socket })?;
    let text = execute(&store, cmd, None)?.text;
    Ok(match cmd {
        Command::List => format!(
            "state directory: {} (no daemon is running: read from the store; nothing is sent until coi-proxy runs)\n{text}",
            dir.display()
        ),
        _ => text,
    })
}

/// Runs an OpenPGP gateway command for the command line: through the running daemon if there
/// is one, else on the store directly (a queued handshake mail then goes out when the daemon
/// runs). `Ok` is the text to print.
pub fn cli_gateway(config: &Config, cmd: &GatewayCommand) -> Result<String, ControlError> {
    let dir = &config.state_dir;
    if crate::state::existing(dir)?.is_none() {
        return Err(ControlError::NoState(crate::state::no_state_here(dir, "does not exist")));
    }
    let socket = socket_path(dir);
    if let Ok(stream) = UnixStream::connect(&socket) {
        return ask_line(stream, &cmd.to_line(), &socket);
    }
    if !config.autocrypt.enabled {
        return Err(crate::openpgp::identity::IdentityError::Disabled.into());
    }
    let store = Store::open(dir).map_err(|source| ControlError::Locked { source, socket })?;
    let identity = crate::openpgp::identity::Identity::open(config, store)?;
    let cmd = cmd.clone().keyed(config);
    Ok(commands::execute(&identity, &cmd, now(), config.queue.give_up_after_secs)?.text)
}

/// The queue in one line, for `check`: its size, or why it cannot be read.
pub fn summary(config: &Config) -> String {
    match cli(config, Command::List) {
        Ok(text) => {
            let first = text.lines().nth(1).unwrap_or("");
            match first.starts_with("The queue is empty") {
                true => "empty".into(),
                false => first.trim_end_matches(':').to_string(),
            }
        }
        Err(ControlError::NoState(why)) => why,
        Err(e) => format!("unknown ({e})"),
    }
}

/// Sends `cmd` to the daemon and reads its answer, all within [`ANSWER_TIMEOUT`].
fn ask(stream: UnixStream, cmd: Command, socket: &Path) -> Result<String, ControlError> {
    ask_line(stream, &cmd.to_line(), socket)
}

/// Sends one command line to the daemon and reads its answer, within [`ANSWER_TIMEOUT`].
fn ask_line(stream: UnixStream, line: &str, socket: &Path) -> Result<String, ControlError> {
    let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ControlError::Timeout { socket: socket.to_owned() }
        }
        _ => ControlError::NoAnswer { socket: socket.to_owned(), source },
    };
    let left = || deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    writer.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    loop {
        reader.get_ref().set_read_timeout(Some(left())).map_err(io)?;
        let mut line = String::new();
        match reader.read_line(&mut line).map_err(io)? {
            0 => break,
            _ => answer.push_str(&line),
        }
    }
    let (status, text) = answer.split_once('\n').unwrap_or((answer.as_str(), ""));
    match status {
        "ok" => Ok(text.to_string()),
        "" => Err(ControlError::NoAnswer {
            socket: socket.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "it closed the connection"),
        }),
        _ => Err(ControlError::Daemon(text.trim_end().to_string())),
    }
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
/// `waits`: why each account's mail waits, from the running daemon's relay; `None` when no
/// daemon runs (then nothing is sent at all).
fn execute(store: &Store, cmd: Command, waits: Option<&HashMap<String, String>>) -> Result<Done, ControlError> {
    match cmd {
        Command::List => {
            let list = store.queue_list()?;
            let text = describe(&list, now(), waits) + &deliveries(&store.deliveries()?);
            Ok(Done { text: text + &crate::receipts::sent::describe(store), wake: None })
        }
        Command::Retry(id) => {
            let mut msg = store.queue_get(id)?.ok_or(ControlError::NoSuchMessage(id))?;
            msg.next_attempt_at = now();
            store.queue_save(id, &msg).wait()?;
            let text = match waits {
                Some(_) => format!("message #{id} will be tried again now\n"),
                None => format!("message #{id} will be tried as soon as coi-proxy runs\n"),
            };
            Ok(Done { text, wake: Some(msg.login) })
        }
        Command::Drop(id) => match store.queue_remove(id).wait()? {
            true => {
                Ok(Done { text: format!("message #{id} removed from the queue; it will not be sent\n"), wake: None })
            }
            false => Err(ControlError::NoSuchMessage(id)),
        },
    }
}

/// How many deliveries `queue list` shows at most (the newest).
const DELIVERIES_SHOWN: usize = 50;

/// The recent deliveries as text: one line per recipient, newest last.
fn deliveries(list: &[crate::store::Delivery]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let days = crate::store::DELIVERIES_KEPT_SECS / 86_400;
    let mut out = format!("\nRecent deliveries (kept {days} days), newest last:\n");
    if list.len() > DELIVERIES_SHOWN {
        out.push_str(&format!("    … {} earlier ones not shown\n", list.len() - DELIVERIES_SHOWN));
    }
    for d in &list[list.len().saturating_sub(DELIVERIES_SHOWN)..] {
        let what = if d.delivered { "delivered" } else { "FAILED" };
        out.push_str(&format!(
            "    #{}  {} to {}: {what} {} ({})\n",
            d.id,
            d.login,
            d.recipient,
            rfc5322_date(d.at),
            d.reply
        ));
    }
    out
}

/// The key of a reason in `waits` that holds for every account (no login is `*`).
const EVERY_ACCOUNT: &str = "*";
/// Why queued mail waits in a daemon that runs without the SMTP side.
const NO_RELAY: &str = "the running coi-proxy does not relay (no [upstream] smtp, or no [listen] smtp/smtps); nothing is sent until it does";

/// The daemon's answer to a control line (`ok` or `error`, then text); `None` if it is not a
/// queue command. `waits`: the SMTP relay's reasons ([`super::Smtp::waits`]); `None` when the
/// daemon runs without SMTP (no relay: nothing queued is sent).
pub async fn answer(shared: &Context, waits: Option<&Waits>, line: &str) -> Option<String> {
    if line.split_whitespace().next() != Some("queue") {
        return None;
    }
    let Some(cmd) = Command::parse(line) else {
        return Some("error\nunknown command; use: queue list | queue retry ID | queue drop ID\n".into());
    };
    let store = shared.store.clone();
    let waits = match waits {
        Some(waits) => waits.snapshot(),
        None => HashMap::from([(EVERY_ACCOUNT.to_string(), NO_RELAY.to_string())]),
    };
    let result =
        tokio::task::spawn_blocking(move || execute(&store, cmd, Some(&waits))).await.unwrap_or_else(|e| Err(e.into()));
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

/// The daemon's answer to a gateway control line (`key …`, `invite`, `join`); `None` if it is
/// not one. Carries it out off the runtime and wakes the relay for the handshake mail it
/// queued. `identity`: the gateway's state, `None` when `[autocrypt] enabled = false`.
pub async fn answer_gateway(
    shared: &Context,
    identity: Option<&crate::openpgp::identity::Identity>,
    line: &str,
) -> Option<String> {
    let cmd = GatewayCommand::parse(line)?.keyed(&shared.config());
    let Some(identity) = identity.cloned() else {
        return Some(format!("error\n{}\n", crate::openpgp::identity::IdentityError::Disabled));
    };
    let give_up = shared.config().queue.give_up_after_secs;
    let shown = cmd.shown();
    let result = tokio::task::spawn_blocking(move || commands::execute(&identity, &cmd, now(), give_up)).await;
    match result {
        Ok(Ok(answer)) => {
            info!("control: {shown}");
            // The account has a key now: its worker answers handshakes from here on.
            if let Some(login) = answer.login.as_deref() {
                shared.workers.want(login);
            }
            for (id, login) in answer.queued {
                shared.queue.wake(id, login);
            }
            Some(format!("ok\n{}", answer.text))
        }
        Ok(Err(e)) => Some(format!("error\n{e}\n")),
        Err(e) => Some(format!("error\n{}\n", ControlError::Task(e))),
    }
}

/// The queue as text for people: one block per message, with why it waits (`waits` as in
/// [`execute`]).
pub fn describe(list: &[(u64, QueuedMessage)], now: i64, waits: Option<&HashMap<String, String>>) -> String {
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
        let why = match waits {
            Some(waits) => waits.get(&msg.login.to_ascii_lowercase()).or_else(|| waits.get(EVERY_ACCOUNT)).cloned(),
            None => Some("no coi-proxy runs with this state directory; nothing is sent until one does".into()),
        };
        if msg.pending().next().is_some() || msg.report_pending {
            let gives_up = rfc5322_date(msg.give_up_at);
            match &why {
                Some(why) => out.push_str(&format!("    waiting: {why}; gives up {gives_up}\n")),
                None => {
                    let wait = msg.next_attempt_at - now;
                    let next = if wait <= 0 { "now".to_string() } else { format!("in {wait} s") };
                    out.push_str(&format!("    next attempt {next}; gives up {gives_up}\n"));
                }
            }
        }
        match msg.attempts.last() {
            Some(last) => out.push_str(&format!(
                "    {} attempt(s); last {}: {}\n",
                msg.attempts.len(),
                rfc5322_date(last.at),
                last.result
            )),
            None if why.is_some() => out.push_str("    no attempt yet\n"),
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
        assert_eq!(Command::parse("queue drop #12"), Some(Command::Drop(12)));
        assert_eq!((parse_id("#3"), parse_id(" 3 "), parse_id("#"), parse_id("-3")), (Some(3), Some(3), None, None));
        assert_eq!(Command::parse("rm -rf"), None);
    }

    #[test]
    fn list_retry_drop_on_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let running = HashMap::new();
        let daemon = Some(&running);
        assert_eq!(execute(&store, Command::List, daemon).unwrap().text, "The queue is empty.\n");
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
        let list = execute(&store, Command::List, daemon).unwrap().text;
        assert!(list.contains(&format!("#{id}  from alice@example.org")), "{list}");
        assert!(list.contains("to bob@example.org: pending") && list.contains("not tried yet"), "{list}");
        let login = execute(&store, Command::Retry(id), daemon).unwrap().wake;
        assert_eq!(login.as_deref(), Some("alice@example.org"));
        assert!(execute(&store, Command::List, daemon).unwrap().text.contains("next attempt now"));
        // Why it waits, as the relay knows it; and with no daemon at all.
        let waits = HashMap::from([("alice@example.org".to_string(), "no password known".to_string())]);
        let list = execute(&store, Command::List, Some(&waits)).unwrap().text;
        assert!(list.contains("waiting: no password known;") && !list.contains("next attempt"), "{list}");
        let list = execute(&store, Command::List, None).unwrap().text;
        assert!(list.contains("waiting: no coi-proxy runs with this state directory"), "{list}");
        // A daemon without the SMTP side: every account's mail waits for that.
        let no_relay = HashMap::from([(EVERY_ACCOUNT.to_string(), NO_RELAY.to_string())]);
        let list = execute(&store, Command::List, Some(&no_relay)).unwrap().text;
        assert!(list.contains("waiting: the running coi-proxy does not relay"), "{list}");
        execute(&store, Command::Drop(id), daemon).unwrap();
        assert!(execute(&store, Command::Drop(id), daemon).unwrap_err().to_string().contains("no message #"));
    }
}
