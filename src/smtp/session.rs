//! The submission session as a sans-I/O state machine: bytes from the client go in
//! ([`Session::feed`]), replies come out ([`Session::take_output`]), and whatever needs the
//! outside world (checking a login at the provider, committing a message to the queue, a TLS
//! handshake) is returned as an [`Event`] whose result is handed back. `server.rs` does the I/O.
//!
//! Commands are framed here (CRLF lines, bounded) and parsed by `smtp-proto`; message data is
//! un-dot-stuffed by its `DataReceiver`. smtp-proto's own `RequestReceiver` is not used for
//! framing because it accepts bare LF line ends and, after an overlong line, goes on parsing in
//! the middle of it.

use std::borrow::Cow;

use base64::Engine;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8, MailFrom, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER,
    RCPT_NOTIFY_SUCCESS, RcptTo, Request,
};

use crate::secret::Secret;
use crate::store::{MailParams, Recipient, RecipientState};

/// Longest command line, CRLF included. RFC 5321 asks for 512 at least; extensions add
/// parameters, and base64 SASL responses can be long.
pub const MAX_LINE: usize = 4096;
/// Most recipients per message (RFC 5321 4.5.3.1.8 requires at least 100).
pub const MAX_RECIPIENTS: usize = 100;
/// Largest header section accepted. Nothing legitimate comes near it; it bounds what a client
/// can make the proxy parse as header.
pub const MAX_HEADER: usize = 1024 * 1024;
/// Protocol errors after which the connection is closed.
const MAX_ERRORS: u32 = 20;
/// Failed logins after which the connection is closed (as for IMAP): password guessing.
const MAX_AUTH_FAILURES: u32 = 3;

/// What the proxy advertises and enforces; from the provider's EHLO where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `SIZE`: largest message accepted, in bytes.
    pub max_size: u64,
    pub smtputf8: bool,
    pub dsn: bool,
}

/// Where the session stands.
#[derive(Debug)]
enum State {
    Command,
    /// Discarding the rest of an overlong line up to its LF.
    SkipLine,
    /// `AUTH PLAIN` without initial response: waiting for the client's base64 line.
    AuthPlain,
    /// `AUTH LOGIN`: waiting for the user name, then the password.
    AuthLoginUser,
    AuthLoginPass {
        user: String,
    },
    /// An [`Event::Authenticate`] is out.
    AwaitAuth,
    Data(Box<Data>),
    /// An [`Event::CheckRoom`] is out for this MAIL's transaction.
    AwaitRoom(Box<Transaction>),
    /// An [`Event::Enqueue`] is out.
    AwaitQueue,
    /// `STARTTLS` was accepted; an [`Event::StartTls`] is out.
    AwaitTls,
    Closed,
}

enum DataSink {
    Keep(DataReceiver),
    /// The message is refused already; its bytes are read and dropped up to the final dot.
    Discard(DummyDataReceiver, Refusal),
}

impl std::fmt::Debug for DataSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSink::Keep(_) => f.write_str("Keep"),
            DataSink::Discard(_, why) => write!(f, "Discard({why:?})"),
        }
    }
}

/// A message being received. Its bytes are not kept here: they wait in `Session::data_out` until
/// the caller takes them ([`Session::take_data`], to a spool file), so the session holds at most
/// the header section (bounded by [`MAX_HEADER`]) and one input's worth of data, however large
/// the message.
#[derive(Debug)]
struct Data {
    sink: DataSink,
    /// The header section so far (and perhaps the start of the body), for the `From:` check.
    header: Vec<u8>,
    /// Set once the blank line that ends the header section has been seen.
    header_done: bool,
    /// Message bytes so far.
    size: u64,
    /// The last message byte handed out: an LF after it is bare unless it is CR.
    last: Option<u8>,
    /// A CR at the end of the last input, not handed out yet: the receiver takes it back if it
    /// is the CR of the final `CRLF.CRLF`.
    held_cr: bool,
}

/// Why a message was refused after its data.
#[derive(Debug, Clone)]
enum Refusal {
    TooBig,
    HeaderTooBig,
    BareLf,
    BareCr,
    /// The caller could not keep the data ([`Session::spool_failed`]).
    Store(QueueRefusal),
}

/// The envelope of the transaction in progress.
#[derive(Debug, Default)]
struct Transaction {
    from: String,
    params: MailParams,
    recipients: Vec<Recipient>,
}

/// A message the client finished; to be committed to the queue. Its bytes went out through
/// [`Session::take_data`].
#[derive(Debug)]
pub struct Submission {
    pub login: String,
    pub from: String,
    pub params: MailParams,
    pub recipients: Vec<Recipient>,
    /// The header section (and perhaps the start of the body): what the queue reads of it.
    pub header: Vec<u8>,
    /// Bytes of the whole message.
    pub size: u64,
}

/// What the session needs from the outside before it can go on.
#[derive(Debug)]
pub enum Event {
    /// Write the output, then read more input and [`Session::feed`] it.
    NeedInput,
    /// Check these credentials at the provider, then call [`Session::auth_result`].
    Authenticate { login: String, password: Secret },
    /// Check that the account's queue has room for a message of about `size` bytes (0 when
    /// the client declared none), then call [`Session::room`].
    CheckRoom { login: String, size: u64 },
    /// Commit the message durably, then call [`Session::queued`].
    Enqueue(Submission),
    /// Write the output, then do the TLS handshake and call [`Session::tls_started`]. Input
    /// already buffered (sent before the handshake) must make the caller close instead.
    StartTls,
    /// Write the output and close the connection.
    Close,
}

/// Why a message cannot go into the queue now; the client keeps it and tries again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueRefusal {
    /// The account's share of the queue is used up (`452 4.3.1`).
    #[error("queue full: {0}")]
    Full(String),
    /// The disk under the store is full (`452 4.3.1`).
    #[error("the proxy's disk is full")]
    NoSpace,
    /// The memory budget has no room for the work the message needs now (`452 4.3.1`).
    #[error("{0}")]
    Memory(crate::limits::budget::Exceeded),
    /// The store cannot take it (`451 4.3.0`).
    #[error("{0}")]
    Unavailable(String),
    /// Not to be sent as it is (`554 5.7.1`): the OpenPGP gateway would have to send clear text
    /// to a verified contact. The text says whom and what to do.
    #[error("{0}")]
    NotEncryptable(String),
}

/// How a login check ended.
#[derive(Debug)]
pub enum AuthResult {
    /// Accepted; the policy of the account's provider (its SIZE etc.) where known.
    Ok(Option<Policy>),
    /// The provider refused these credentials.
    Refused,
    /// The credentials could not be checked now (the reason is for the client).
    Unavailable(String),
    /// The credentials are right, but the proxy cannot sign in to the provider until the user
    /// acts; the reason says how (e.g. run `coi-proxy oauth authorize`).
    Reauthorize(String),
}

pub struct Session {
    hostname: String,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    tls: bool,
    /// Whether AUTH is allowed without TLS on this listener.
    plaintext_auth: bool,
    /// `Some(esmtp)` after HELO/EHLO.
    greeted: Option<bool>,
    login: Option<String>,
    /// The addresses the login may send as (lower case; `MAIL FROM` and `From:`); `None`:
    /// any. The login itself once logged in, unless [`Session::set_senders`] says otherwise.
    senders: Option<Vec<String>>,
    /// The login being checked while [`State::AwaitAuth`].
    pending_login: Option<String>,
    policy: Policy,
    tx: Option<Transaction>,
    /// Un-dot-stuffed message bytes for the caller ([`Session::take_data`]).
    data_out: Vec<u8>,
    errors: u32,
    auth_failures: u32,
}

impl Session {
    /// A new session; the greeting is already in the output.
    pub fn new(hostname: &str, tls: bool, plaintext_auth: bool, policy: Policy) -> Session {
        let mut s = Session {
            hostname: hostname.to_string(),
            state: State::Command,
            input: Vec::new(),
            output: Vec::new(),
            tls,
            plaintext_auth,
            greeted: None,
            login: None,
            senders: Some(Vec::new()),
            pending_login: None,
            policy,
            tx: None,
            data_out: Vec::new(),
            errors: 0,
            auth_failures: 0,
        };
        s.reply(&format!("220 {hostname} ESMTP coi-proxy ready"));
        s
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Replies to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Bytes received but not yet processed (STARTTLS must see none).
    pub fn has_buffered_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// True while the client is sending message data: a shutdown then must not cut it short
    /// silently.
    /// Whether the client has logged in (the login timeout no longer applies).
    pub fn logged_in(&self) -> bool {
        self.login.is_some()
    }

    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_))
    }

    /// Whether message data is being received and kept (not yet refused): while it is not, the
    /// caller's spool file of the message can go.
    pub fn data_kept(&self) -> bool {
        matches!(&self.state, State::Data(data) if matches!(data.sink, DataSink::Keep(_)))
    }

    /// Message bytes received since the last call, for the caller to write to its spool file.
    /// Call it after every [`Session::next_event`]: the session does not keep them.
    pub fn take_data(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data_out)
    }

    /// The caller could not write the message data (e.g. a full disk): the rest is read and
    /// dropped, and the final dot answered with `why`.
    pub fn spool_failed(&mut self, why: QueueRefusal) {
        if let State::Data(data) = &mut self.state
            && let DataSink::Keep(receiver) = &data.sink
        {
            data.sink = DataSink::Discard(DummyDataReceiver::new_data(receiver), Refusal::Store(why));
            self.data_out = Vec::new();
            data.header = Vec::new();
        }
    }

    /// Bytes the session holds of the message being received (its header section, for the
    /// `From:` check), for the caller to charge to the memory budget.
    pub fn header_held(&self) -> usize {
        match &self.state {
            State::Data(data) => data.header.capacity(),
            _ => 0,
        }
    }

    /// Processes buffered input until the session needs something.
    pub fn next_event(&mut self) -> Event {
        loop {
            if self.errors >= MAX_ERRORS && !matches!(self.state, State::Closed) {
                self.reply("421 4.7.0 Too many errors; closing the connection");
                self.state = State::Closed;
            }
            match &mut self.state {
                State::Closed => return Event::Close,
                State::AwaitAuth | State::AwaitRoom(_) | State::AwaitQueue | State::AwaitTls => {
                    unreachable!("the caller must hand back the result of the last event first")
                }
                State::Data(_) => match self.data_step() {
                    Some(event) => return event,
                    None if self.in_data() => return Event::NeedInput,
                    None => {}
                },
                State::SkipLine => match memchr::memchr(b'\n', &self.input) {
                    Some(pos) => {
                        self.input.drain(..=pos);
                        self.state = State::Command;
                        self.error("500 5.5.2 Line too long");
                    }
                    None => {
                        self.input.clear();
                        return Event::NeedInput;
                    }
                },
                _ => {
                    let Some(pos) = memchr::memchr(b'\n', &self.input) else {
                        if self.input.len() >= MAX_LINE {
                            self.input.clear();
                            self.state = State::SkipLine;
                            continue;
                        }
                        return Event::NeedInput;
                    };
                    let line: Vec<u8> = self.input.drain(..=pos).collect();
                    let line = Secret::new(line); // may be an AUTH payload
                    if line.len() > MAX_LINE {
                        self.error("500 5.5.2 Line too long");
                        continue;
                    }
                    if !line.expose().ends_with(b"\r\n") {
                        self.error("500 5.5.2 Bare LF received; SMTP lines end with CRLF");
                        continue;
                    }
                    if let Some(event) = self.line(line.expose()) {
                        return event;
                    }
                }
            }
        }
    }

    /// The account a successful login is kept under (its key, `Config::account_key`), when it
    /// differs from the login as the client typed it.
    pub fn set_login(&mut self, login: String) {
        if self.login.is_some() {
            self.login = Some(login);
        }
    }

    /// The addresses the logged-in account may send as (its login and aliases), or `None` for
    /// any (`[[account]] allow_any_sender`).
    pub fn set_senders(&mut self, senders: Option<Vec<String>>) {
        self.senders = senders.map(|list| list.iter().map(|a| a.to_ascii_lowercase()).collect());
    }

    /// Whether the account may send as `address`.
    fn may_send_as(&self, address: &str) -> bool {
        self.senders.as_ref().is_none_or(|list| list.iter().any(|a| a.eq_ignore_ascii_case(address)))
    }

    /// The first `From:` address of `message` the account may not send as.
    fn foreign_from(&self, message: &[u8]) -> Option<String> {
        self.senders.as_ref()?;
        let (header, _) = crate::mail::split_header(message);
        crate::mail::fields(header)
            .into_iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("from"))
            .flat_map(|(_, value)| value.split(',').filter_map(crate::mail::address).collect::<Vec<_>>())
            .find(|address| !self.may_send_as(address))
    }

    /// The result of [`Event::Authenticate`].
    pub fn auth_result(&mut self, result: AuthResult) {
        debug_assert!(matches!(self.state, State::AwaitAuth));
        self.state = State::Command;
        let login = self.pending_login.take().unwrap_or_default();
        match result {
            AuthResult::Ok(policy) => {
                if let Some(policy) = policy {
                    self.policy = policy;
                }
                self.senders = Some(vec![login.to_ascii_lowercase()]);
                self.login = Some(login);
                self.reply("235 2.7.0 Authentication successful");
            }
            AuthResult::Refused => {
                self.auth_failures += 1;
                self.error("535 5.7.8 Authentication credentials invalid");
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.close_with("421 4.7.0 Too many failed logins; closing the connection");
                }
            }
            AuthResult::Unavailable(why) => {
                self.reply(&format!("454 4.7.0 Temporary authentication failure: {}", one_line(&why)))
            }
            AuthResult::Reauthorize(why) => self.error(&format!("535 5.7.8 {}", one_line(&why))),
        }
    }

    /// The result of [`Event::CheckRoom`]: the MAIL command is accepted or refused.
    pub fn room(&mut self, result: Result<(), QueueRefusal>) {
        let State::AwaitRoom(tx) = std::mem::replace(&mut self.state, State::Command) else {
            unreachable!("room() answers CheckRoom only")
        };
        match result {
            Ok(()) => {
                self.tx = Some(*tx);
                self.reply("250 2.1.0 Sender OK");
            }
            Err(why) => self.refuse(why),
        }
    }

    /// The result of [`Event::Enqueue`]: the queue id, or why the message could not be stored.
    pub fn queued(&mut self, result: Result<u64, QueueRefusal>) {
        debug_assert!(matches!(self.state, State::AwaitQueue));
        self.state = State::Command;
        match result {
            Ok(id) => self.reply(&format!("250 2.0.0 Ok: queued as {id}")),
            Err(why) => self.refuse(why),
        }
    }

    fn refuse(&mut self, why: QueueRefusal) {
        match why {
            QueueRefusal::Full(why) => {
                self.reply(&format!("452 4.3.1 Queue full: {}; try again later", one_line(&why)))
            }
            QueueRefusal::NoSpace => {
                self.reply("452 4.3.1 Insufficient system storage: the proxy's disk is full; try again later")
            }
            QueueRefusal::Memory(why) => {
                self.reply(&format!("452 4.3.1 Insufficient system resources: {why}; try again later"))
            }
            QueueRefusal::Unavailable(why) => {
                self.reply(&format!("451 4.3.0 Cannot store the message now ({}); try again later", one_line(&why)))
            }
            QueueRefusal::NotEncryptable(why) => self.reply(&format!("554 5.7.1 {}", one_line(&why))),
        }
    }

    /// The TLS handshake after STARTTLS is done: everything known before is forgotten
    /// (RFC 3207 4.2), the client must say EHLO again.
    pub fn tls_started(&mut self) {
        debug_assert!(matches!(self.state, State::AwaitTls));
        self.state = State::Command;
        self.tls = true;
        self.greeted = None;
        self.login = None;
        self.tx = None;
    }

    /// Ends the session with a `421` (shutdown or timeout).
    pub fn close_with(&mut self, reply: &str) {
        self.reply(reply);
        self.state = State::Closed;
    }

    fn reply(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    fn error(&mut self, line: &str) {
        self.errors += 1;
        self.reply(line);
    }

    /// One complete CRLF line in a line-reading state.
    fn line(&mut self, line: &[u8]) -> Option<Event> {
        match std::mem::replace(&mut self.state, State::Command) {
            State::AuthPlain => {
                let payload = self.sasl_response(line)?;
                self.plain(payload.expose())
            }
            State::AuthLoginUser => {
                let user = self.sasl_response(line)?;
                let user = String::from_utf8_lossy(user.expose()).into_owned();
                self.state = State::AuthLoginPass { user };
                self.reply("334 UGFzc3dvcmQ6");
                None
            }
            State::AuthLoginPass { user } => {
                let password = self.sasl_response(line)?;
                self.authenticate(user, password)
            }
            _ => self.command(line),
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        if size_beyond(line, self.policy.max_size) {
            // smtp-proto reads SIZE into a usize that overflows; what does not fit is too big.
            self.error(&MailRefused::TooLarge(self.policy.max_size).to_string());
            return None;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => {
                let reply = match e {
                    ParseError::UnknownCommand => "500 5.5.1 Unknown command".to_string(),
                    ParseError::InvalidSenderAddress => "501 5.1.7 Invalid sender address".into(),
                    ParseError::InvalidRecipientAddress => "501 5.1.3 Invalid recipient address".into(),
                    ParseError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
                    ParseError::InvalidParameter { param } => format!("501 5.5.4 Invalid {param} parameter"),
                    ParseError::UnsupportedParameter { param } => {
                        format!("555 5.5.4 Unsupported parameter {}", one_line(&param))
                    }
                    _ => "501 5.5.2 Syntax error".into(),
                };
                self.error(&reply);
                return None;
            }
        };
        match request {
            Request::Ehlo { host: _ } => {
                self.greeted = Some(true);
                self.tx = None;
                self.ehlo();
            }
            Request::Helo { host: _ } => {
                self.greeted = Some(false);
                self.tx = None;
                self.reply(&format!("250 {}", self.hostname));
            }
            Request::StartTls => {
                if self.tls {
                    self.error("503 5.5.1 TLS is already active");
                } else {
                    self.reply("220 2.0.0 Ready to start TLS");
                    self.state = State::AwaitTls;
                    return Some(Event::StartTls);
                }
            }
            Request::Auth { mechanism, initial_response } => return self.auth(mechanism, initial_response),
            Request::Mail { from } => return self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Rset => {
                self.tx = None;
                self.reply("250 2.0.0 Ok");
            }
            Request::Noop { .. } => self.reply("250 2.0.0 Ok"),
            Request::Quit => {
                self.reply("221 2.0.0 Bye");
                self.state = State::Closed;
                return Some(Event::Close);
            }
            Request::Vrfy { .. } => self.reply("252 2.5.0 Cannot VRFY; send the message and it will be tried"),
            Request::Help { .. } => self.reply("214 2.0.0 See RFC 5321 and RFC 6409"),
            Request::Bdat { .. } => self.error("502 5.5.1 BDAT is not offered here (no CHUNKING); use DATA"),
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error("502 5.5.1 Command not implemented"),
        }
        None
    }

    fn auth_offered(&self) -> bool {
        self.tls || self.plaintext_auth
    }

    fn ehlo(&mut self) {
        let mut lines = vec![
            format!("{} greets you", self.hostname),
            "PIPELINING".into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            format!("SIZE {}", self.policy.max_size),
        ];
        if self.policy.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if self.policy.dsn {
            lines.push("DSN".into());
        }
        if !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.output.extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
    }

    fn auth(&mut self, mechanism: u64, initial: Cow<'_, str>) -> Option<Event> {
        let initial = Secret::new(initial.as_bytes().to_vec());
        if self.greeted.is_none() {
            self.error("503 5.5.1 Send EHLO first");
        } else if self.login.is_some() {
            self.error("503 5.5.1 Already authenticated");
        } else if self.tx.is_some() {
            self.error("503 5.5.1 AUTH is not allowed during a mail transaction");
        } else if !self.auth_offered() {
            self.error("538 5.7.11 Encryption required: issue STARTTLS first");
        } else if mechanism == AUTH_PLAIN {
            if initial.is_empty() {
                self.state = State::AuthPlain;
                self.reply("334 ");
            } else {
                let payload = self.decode(initial.expose())?;
                return self.plain(payload.expose());
            }
        } else if mechanism == AUTH_LOGIN {
            if initial.is_empty() {
                self.state = State::AuthLoginUser;
                self.reply("334 VXNlcm5hbWU6");
            } else {
                let user = self.decode(initial.expose())?;
                self.state = State::AuthLoginPass { user: String::from_utf8_lossy(user.expose()).into_owned() };
                self.reply("334 UGFzc3dvcmQ6");
            }
        } else {
            self.error("504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN");
        }
        None
    }

    /// A SASL response line (CRLF included): `*` cancels, else base64.
    fn sasl_response(&mut self, line: &[u8]) -> Option<Secret> {
        let text = &line[..line.len() - 2];
        if text.trim_ascii() == b"*" {
            self.error("501 5.0.0 Authentication cancelled");
            return None;
        }
        self.decode(text)
    }

    fn decode(&mut self, b64: &[u8]) -> Option<Secret> {
        let b64 = b64.trim_ascii();
        if b64 == b"=" {
            return Some(Secret::default());
        }
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => Some(Secret::new(bytes)),
            Err(_) => {
                self.error("501 5.5.2 Cannot decode the base64 response");
                None
            }
        }
    }

    /// `authzid NUL authcid NUL password` (RFC 4616).
    fn plain(&mut self, payload: &[u8]) -> Option<Event> {
        let mut parts = payload.splitn(3, |&b| b == 0);
        let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
            self.error("501 5.5.2 Malformed AUTH PLAIN response");
            return None;
        };
        if !authzid.is_empty() && authzid != user {
            self.error("535 5.7.8 Acting as another user is not supported");
            return None;
        }
        let user = String::from_utf8_lossy(user).into_owned();
        self.authenticate(user, Secret::new(password.to_vec()))
    }

    fn authenticate(&mut self, login: String, password: Secret) -> Option<Event> {
        if login.is_empty() || login.len() > 256 || login.chars().any(char::is_control) || password.is_empty() {
            self.error("535 5.7.8 Authentication credentials invalid");
            return None;
        }
        self.pending_login = Some(login.clone());
        self.state = State::AwaitAuth;
        Some(Event::Authenticate { login, password })
    }

    /// A valid MAIL opens a transaction once the account's queue has room ([`Event::CheckRoom`]).
    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Option<Event> {
        let size = from.size as u64;
        match self.check_mail(from) {
            Ok(tx) => {
                let login = self.login.clone().unwrap_or_default();
                self.state = State::AwaitRoom(Box::new(tx));
                Some(Event::CheckRoom { login, size })
            }
            Err(refused) => {
                self.error(&refused.to_string());
                None
            }
        }
    }

    fn check_mail(&self, from: MailFrom<Cow<'_, str>>) -> Result<Transaction, MailRefused> {
        if self.greeted.is_none() {
            return Err(MailRefused::NoEhlo);
        }
        if self.login.is_none() {
            return Err(if self.auth_offered() { MailRefused::AuthRequired } else { MailRefused::StartTlsFirst });
        }
        if self.tx.is_some() {
            return Err(MailRefused::Nested);
        }
        if !from.address.is_empty() && !self.may_send_as(&from.address) {
            return Err(MailRefused::NotYours);
        }
        if from.size as u64 > self.policy.max_size {
            return Err(MailRefused::TooLarge(self.policy.max_size));
        }
        if from.flags & MAIL_SMTPUTF8 != 0 && !self.policy.smtputf8 {
            return Err(MailRefused::NoSmtpUtf8);
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Err(MailRefused::NoBinaryMime);
        }
        let ret = if from.flags & MAIL_RET_FULL != 0 {
            Some("FULL".to_string())
        } else if from.flags & MAIL_RET_HDRS != 0 {
            Some("HDRS".to_string())
        } else {
            None
        };
        if (ret.is_some() || from.env_id.is_some()) && !self.policy.dsn {
            return Err(MailRefused::NoDsn);
        }
        let params = MailParams {
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            ret,
            envid: from.env_id.map(Cow::into_owned),
        };
        Ok(Transaction { from: from.address.into_owned(), params, recipients: Vec::new() })
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) {
        let dsn = self.policy.dsn;
        let Some(tx) = self.tx.as_mut() else {
            return self.error("503 5.5.1 Need MAIL command first");
        };
        if to.address.is_empty() {
            return self.error("501 5.1.3 Empty recipient address");
        }
        if tx.recipients.len() >= MAX_RECIPIENTS {
            return self.reply("452 4.5.3 Too many recipients");
        }
        let notify_flags =
            to.flags & (RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY | RCPT_NOTIFY_NEVER);
        if (notify_flags != 0 || to.orcpt.is_some()) && !dsn {
            return self.error("555 5.5.4 DSN parameters are not offered (the provider does not support DSN)");
        }
        let notify = (notify_flags != 0).then(|| {
            if notify_flags & RCPT_NOTIFY_NEVER != 0 {
                return "NEVER".to_string();
            }
            [(RCPT_NOTIFY_SUCCESS, "SUCCESS"), (RCPT_NOTIFY_FAILURE, "FAILURE"), (RCPT_NOTIFY_DELAY, "DELAY")]
                .iter()
                .filter(|(f, _)| notify_flags & f != 0)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(",")
        });
        tx.recipients.push(Recipient {
            address: to.address.into_owned(),
            notify,
            orcpt: to.orcpt.map(Cow::into_owned),
            state: RecipientState::Pending,
        });
        self.reply("250 2.1.5 Recipient OK");
    }

    fn data(&mut self) {
        match &self.tx {
            None => self.error("503 5.5.1 Need MAIL command first"),
            // RFC 2920 3.1: with pipelining, DATA after failed RCPTs gets 554.
            Some(tx) if tx.recipients.is_empty() => self.error("554 5.5.1 No valid recipients"),
            Some(_) => {
                let mut receiver = DataReceiver::new();
                // The receiver looks for the final dot only after a CRLF; the data starts right
                // after one (the DATA line), which it has not seen.
                receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                self.state = State::Data(Box::new(Data {
                    sink: DataSink::Keep(receiver),
                    header: Vec::new(),
                    header_done: false,
                    size: 0,
                    last: None,
                    held_cr: false,
                }));
                self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
            }
        }
    }

    /// Feeds buffered input to the message; returns an event once the final dot is in.
    fn data_step(&mut self) -> Option<Event> {
        let max_size = self.policy.max_size;
        let State::Data(data) = &mut self.state else { unreachable!() };
        let mut bytes = self.input.iter();
        let mut chunk = Vec::new();
        if std::mem::take(&mut data.held_cr) {
            chunk.push(b'\r');
        }
        let done = match &mut data.sink {
            DataSink::Keep(receiver) => receiver.ingest(&mut bytes, &mut chunk),
            DataSink::Discard(receiver, _) => receiver.ingest(&mut bytes),
        };
        let used = self.input.len() - bytes.len();
        self.input.drain(..used);
        if !done && chunk.last() == Some(&b'\r') {
            chunk.pop();
            data.held_cr = true;
        }
        if let DataSink::Keep(receiver) = &data.sink {
            let bad = line_ends(data.last, &chunk, done);
            if let Some(&b) = chunk.last() {
                data.last = Some(b);
            }
            data.size += chunk.len() as u64;
            if !data.header_done {
                let from = data.header.len().saturating_sub(3);
                data.header.extend_from_slice(&chunk);
                data.header_done = data.header.starts_with(b"\r\n")
                    || memchr::memmem::find(&data.header[from..], b"\r\n\r\n").is_some();
            }
            let refusal = if data.size > max_size {
                Some(Refusal::TooBig)
            } else if !data.header_done && data.header.len() > MAX_HEADER {
                Some(Refusal::HeaderTooBig)
            } else {
                bad
            };
            match refusal {
                Some(refusal) => {
                    data.sink = DataSink::Discard(DummyDataReceiver::new_data(receiver), refusal);
                    self.data_out = Vec::new();
                    data.header = Vec::new();
                }
                None if self.data_out.is_empty() => self.data_out = chunk,
                None => self.data_out.extend_from_slice(&chunk),
            }
        }
        if !done {
            return None;
        }
        let State::Data(data) = std::mem::replace(&mut self.state, State::Command) else { unreachable!() };
        let tx = self.tx.take().expect("DATA only within a transaction");
        match data.sink {
            DataSink::Discard(_, Refusal::TooBig) => {
                self.error(&format!("552 5.3.4 Message size exceeds the limit of {} bytes", max_size));
                None
            }
            DataSink::Discard(_, Refusal::HeaderTooBig) => {
                self.error(&format!("552 5.3.4 Message header exceeds {} bytes", MAX_HEADER));
                None
            }
            DataSink::Discard(_, Refusal::BareLf) => {
                self.error("550 5.6.0 Message refused: it contains a bare LF; SMTP requires CRLF line ends");
                None
            }
            DataSink::Discard(_, Refusal::BareCr) => {
                self.error("550 5.6.0 Message refused: it contains a bare CR; SMTP requires CRLF line ends");
                None
            }
            DataSink::Discard(_, Refusal::Store(why)) => {
                self.refuse(why);
                None
            }
            DataSink::Keep(_) if let Some(foreign) = self.foreign_from(&data.header) => {
                let foreign = one_line(&foreign);
                self.error(&format!("550 5.7.1 From: {foreign} is not an address of this account"));
                None
            }
            DataSink::Keep(_) => {
                self.state = State::AwaitQueue;
                Some(Event::Enqueue(Submission {
                    login: self.login.clone().expect("MAIL only after AUTH"),
                    from: tx.from,
                    params: tx.params,
                    recipients: tx.recipients,
                    header: data.header,
                    size: data.size,
                }))
            }
        }
    }
}

/// A bare LF or CR (SMTP lines end with CRLF; relayed, either is the stuff of SMTP smuggling: a
/// receiver that ends lines at CR or LF sees lines, and an end of data, that are not there) in
/// `chunk`, the message bytes that follow `last`; `end`: the message ends
/// with `chunk` (a CR at its end is bare then; otherwise the next chunk decides). Bare LF is
/// reported before bare CR.
fn line_ends(last: Option<u8>, chunk: &[u8], end: bool) -> Option<Refusal> {
    let bare_lf = memchr::memchr_iter(b'\n', chunk).any(|i| {
        let before = if i == 0 { last } else { Some(chunk[i - 1]) };
        before != Some(b'\r')
    });
    if bare_lf {
        return Some(Refusal::BareLf);
    }
    let bare_cr = (last == Some(b'\r') && chunk.first().is_some_and(|&b| b != b'\n'))
        || memchr::memchr_iter(b'\r', chunk).any(|i| chunk.get(i + 1).is_some_and(|&b| b != b'\n'))
        || (end && chunk.last().copied().or(last) == Some(b'\r'));
    bare_cr.then_some(Refusal::BareCr)
}

/// Whether `line` is a MAIL command with a `SIZE=` beyond `max` (also one too large for 64
/// bits, which smtp-proto would wrap around).
fn size_beyond(line: &[u8], max: u64) -> bool {
    if !line.get(..4).is_some_and(|verb| verb.eq_ignore_ascii_case(b"MAIL")) {
        return false;
    }
    line.split(|b| b.is_ascii_whitespace()).any(|word| {
        word.get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"SIZE="))
            && word[5..].iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(&word[5..]).ok().and_then(|n| n.parse::<u64>().ok()).is_none_or(|n| n > max)
    })
}

/// Text safe to put into one reply line.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect()
}

/// Why a MAIL command is refused; `Display` is the reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum MailRefused {
    #[error("503 5.5.1 Send EHLO first")]
    NoEhlo,
    #[error("530 5.7.0 Authentication required")]
    AuthRequired,
    #[error("530 5.7.0 Must issue a STARTTLS command first")]
    StartTlsFirst,
    #[error("503 5.5.1 Nested MAIL command")]
    Nested,
    #[error("552 5.3.4 Message size exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("555 5.5.4 SMTPUTF8 is not offered (the provider does not support it)")]
    NoSmtpUtf8,
    #[error("555 5.5.4 BODY=BINARYMIME is not offered")]
    NoBinaryMime,
    #[error("550 5.7.1 Sender address is not an address of this account")]
    NotYours,
    #[error("555 5.5.4 DSN parameters are not offered (the provider does not support DSN)")]
    NoDsn,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { max_size: 1000, smtputf8: false, dsn: false }
    }

    /// Feeds `input` and runs the session until it needs more or has an event; returns the
    /// output as text and the event.
    /// Feeds `input` and runs to the next event, answering queue-room checks with "room".
    fn run(s: &mut Session, input: &[u8]) -> (String, Event) {
        let (out, event, _) = run_data(s, input);
        (out, event)
    }

    /// As `run`, with the message data the session handed out meanwhile.
    fn run_data(s: &mut Session, input: &[u8]) -> (String, Event, Vec<u8>) {
        s.feed(input);
        let mut event = s.next_event();
        let mut data = s.take_data();
        while let Event::CheckRoom { .. } = event {
            s.room(Ok(()));
            event = s.next_event();
            data.extend(s.take_data());
        }
        (String::from_utf8(s.take_output()).unwrap(), event, data)
    }

    fn authed() -> Session {
        let mut s = Session::new("proxy.test", false, true, policy());
        s.take_output();
        let (_, event) = run(&mut s, b"EHLO c\r\nAUTH PLAIN AGFAYgBwdw==\r\n");
        assert!(
            matches!(event, Event::Authenticate { ref login, ref password } if login == "a@b" && password.expose() == b"pw")
        );
        s.auth_result(AuthResult::Ok(None));
        assert_eq!(String::from_utf8(s.take_output()).unwrap(), "235 2.7.0 Authentication successful\r\n");
        s
    }

    #[test]
    fn greeting_and_ehlo_follow_the_policy_and_tls_state() {
        let mut s = Session::new("proxy.test", false, false, Policy { smtputf8: true, ..policy() });
        let (out, event) = run(&mut s, b"EHLO client\r\n");
        assert!(matches!(event, Event::NeedInput));
        assert!(out.starts_with("220 proxy.test ESMTP"), "{out}");
        assert!(out.contains("250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 1000\r\n"));
        assert!(out.contains("250-SMTPUTF8\r\n250 STARTTLS\r\n") && !out.contains("AUTH"), "{out}");
        let (out, _) = run(&mut s, b"AUTH PLAIN AGFAYgBwdw==\r\nMAIL FROM:<a@b>\r\n");
        assert_eq!(
            out,
            "538 5.7.11 Encryption required: issue STARTTLS first\r\n530 5.7.0 Must issue a STARTTLS command first\r\n"
        );
        let (out, event) = run(&mut s, b"STARTTLS\r\n");
        assert!(matches!(event, Event::StartTls) && out == "220 2.0.0 Ready to start TLS\r\n");
        s.tls_started();
        let (out, _) = run(&mut s, b"MAIL FROM:<a@b>\r\nEHLO client\r\n");
        assert!(out.starts_with("503 5.5.1 Send EHLO first\r\n"), "{out}");
        assert!(out.ends_with("250 AUTH PLAIN LOGIN\r\n") && !out.contains("STARTTLS"), "{out}");
    }

    #[test]
    fn mail_before_auth_and_auth_outcomes() {
        let mut s = Session::new("p", false, true, policy());
        let (out, _) = run(&mut s, b"EHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN AGFAYgB4\r\n");
        assert!(out.contains("530 5.7.0 Authentication required\r\n"), "{out}");
        s.auth_result(AuthResult::Refused);
        let (out, event) = run(&mut s, b"AUTH LOGIN\r\n");
        assert!(out.ends_with("535 5.7.8 Authentication credentials invalid\r\n334 VXNlcm5hbWU6\r\n"), "{out}");
        assert!(matches!(event, Event::NeedInput));
        let (out, _) = run(&mut s, b"YUBi\r\n");
        assert_eq!(out, "334 UGFzc3dvcmQ6\r\n");
        let (_, event) = run(&mut s, b"cHc=\r\n");
        assert!(matches!(event, Event::Authenticate { ref login, .. } if login == "a@b"));
        s.auth_result(AuthResult::Reauthorize("run `coi-proxy oauth authorize a@b`\r\nx".into()));
        let (out, event) = run(&mut s, b"AUTH PLAIN AGFAYgB4\r\n");
        assert_eq!(out, "535 5.7.8 run `coi-proxy oauth authorize a@b`  x\r\n");
        assert!(matches!(event, Event::Authenticate { .. }));
        s.auth_result(AuthResult::Unavailable("provider down\r\n".into()));
        let (out, _) = run(&mut s, b"AUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!\r\n");
        assert_eq!(
            out,
            "454 4.7.0 Temporary authentication failure: provider down  \r\n334 \r\n501 5.0.0 Authentication cancelled\r\n\
             504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN\r\n501 5.5.2 Cannot decode the base64 response\r\n"
        );
    }

    #[test]
    fn pipelined_transaction_is_queued_with_its_envelope() {
        let mut s = authed();
        let (out, event, data) = run_data(
            &mut s,
            b"MAIL FROM:<a@b> BODY=8BITMIME SIZE=20\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
        );
        assert_eq!(
            out,
            "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
        );
        let Event::Enqueue(sub) = event else { panic!("{event:?}") };
        assert_eq!((sub.login.as_str(), sub.from.as_str()), ("a@b", "a@b"));
        assert!(sub.params.eight_bit && !sub.params.smtputf8);
        assert_eq!(sub.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(), ["c@d", "e@f"]);
        assert_eq!(data, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!((sub.size, sub.header.as_slice()), (data.len() as u64, data.as_slice()));
        s.queued(Ok(7));
        let (out, event) = run(&mut s, b"");
        assert_eq!(out, "250 2.0.0 Ok: queued as 7\r\n221 2.0.0 Bye\r\n");
        assert!(matches!(event, Event::Close));
    }

    #[test]
    fn data_split_anywhere_and_empty_message() {
        let mut s = authed();
        let input = b"MAIL FROM:<>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\n";
        let mut event = Event::NeedInput;
        for b in input.iter() {
            (_, event) = run(&mut s, &[*b]);
        }
        let Event::Enqueue(ref sub) = event else { panic!("{event:?}") };
        assert!(sub.size == 0 && sub.from.is_empty());
        s.queued(Ok(1));
        // A message split into single bytes comes out whole; a CR LF split between two inputs
        // is no bare CR, a lone CR is one however it is split.
        let message = b"Subject: x\r\n\r\nline\r\n..dot\r\nend\r\n";
        let (_, _, mut data) = run_data(&mut s, b"MAIL FROM:<>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        for b in message.iter().chain(b".\r\n") {
            let (_, e, more) = run_data(&mut s, &[*b]);
            data.extend(more);
            event = e;
        }
        let Event::Enqueue(ref sub) = event else { panic!("{event:?}") };
        assert_eq!(data, b"Subject: x\r\n\r\nline\r\n.dot\r\nend\r\n");
        assert_eq!(sub.size, data.len() as u64);
        s.queued(Ok(2));
        run(&mut s, b"MAIL FROM:<>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        let mut out = String::new();
        for b in b"a\r\nb\rc\r\n.\r\n" {
            let (o, e, _) = run_data(&mut s, &[*b]);
            out.push_str(&o);
            event = e;
        }
        assert!(matches!(event, Event::NeedInput) && out.contains("bare CR"), "{out}");
    }

    #[test]
    fn a_full_queue_refuses_at_mail_and_at_the_final_dot_with_452() {
        let mut s = authed();
        s.feed(b"MAIL FROM:<a@b> SIZE=300\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        let event = s.next_event();
        assert!(matches!(event, Event::CheckRoom { ref login, size: 300 } if login == "a@b"), "{event:?}");
        s.room(Err(QueueRefusal::Full("1000 messages are waiting".into())));
        let event = s.next_event();
        assert!(matches!(event, Event::NeedInput), "{event:?}");
        let out = String::from_utf8(s.take_output()).unwrap();
        assert_eq!(
            out,
            "452 4.3.1 Queue full: 1000 messages are waiting; try again later\r\n503 5.5.1 Need MAIL command first\r\n503 5.5.1 Need MAIL command first\r\n"
        );

        // Room at MAIL, but full by the time the message is committed (another session).
        let (_, event) = run(&mut s, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n");
        assert!(matches!(event, Event::Enqueue(_)), "{event:?}");
        s.queued(Err(QueueRefusal::Full("too many bytes".into())));
        let (out, _) = run(&mut s, b"NOOP\r\n");
        assert_eq!(out, "452 4.3.1 Queue full: too many bytes; try again later\r\n250 2.0.0 Ok\r\n");
        s.feed(b"MAIL FROM:<a@b>\r\n");
        let event = s.next_event();
        assert!(matches!(event, Event::CheckRoom { size: 0, .. }), "{event:?}");
        s.room(Err(QueueRefusal::Unavailable("the queue is not readable".into())));
        assert_eq!(
            String::from_utf8(s.take_output()).unwrap(),
            "451 4.3.0 Cannot store the message now (the queue is not readable); try again later\r\n"
        );
        let (_, event) = run(&mut s, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n");
        assert!(matches!(event, Event::Enqueue(_)), "{event:?}");
        s.queued(Err(QueueRefusal::NoSpace));
        assert_eq!(
            String::from_utf8(s.take_output()).unwrap(),
            "452 4.3.1 Insufficient system storage: the proxy's disk is full; try again later\r\n"
        );
    }

    #[test]
    fn sequence_errors() {
        let mut s = authed();
        let (out, _) =
            run(&mut s, b"RCPT TO:<c@d>\r\nDATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nRSET\r\nFOO\r\n");
        assert_eq!(
            out,
            "503 5.5.1 Need MAIL command first\r\n503 5.5.1 Need MAIL command first\r\n250 2.1.0 Sender OK\r\n\
             503 5.5.1 Nested MAIL command\r\n554 5.5.1 No valid recipients\r\n250 2.0.0 Ok\r\n500 5.5.1 Unknown command\r\n"
        );
    }

    #[test]
    fn size_limits() {
        let mut s = authed();
        let (out, _) = run(&mut s, b"MAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> SMTPUTF8\r\n");
        assert_eq!(
            out,
            "552 5.3.4 Message size exceeds the limit of 1000 bytes\r\n555 5.5.4 SMTPUTF8 is not offered (the provider does not support it)\r\n"
        );
        let mut big = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 2000));
        big.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (out, _) = run(&mut s, &big);
        assert!(out.ends_with("552 5.3.4 Message size exceeds the limit of 1000 bytes\r\n250 2.0.0 Ok\r\n"), "{out}");
    }

    #[test]
    fn huge_header_line_is_refused_without_buffering_it() {
        let mut s = Session::new("p", true, false, Policy { max_size: 50 << 20, ..policy() });
        s.take_output();
        run(&mut s, b"EHLO c\r\nAUTH PLAIN AGFAYgBwdw==\r\n");
        s.auth_result(AuthResult::Ok(None));
        run(&mut s, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nX-Long: ");
        let chunk = vec![b'y'; 64 * 1024];
        for _ in 0..160 {
            s.feed(&chunk);
            assert!(matches!(s.next_event(), Event::NeedInput));
            let State::Data(data) = &s.state else { panic!() };
            assert!(data.header.len() <= MAX_HEADER + chunk.len());
            assert!(s.take_data().len() <= chunk.len(), "message data is handed out, not kept");
        }
        let (out, _) = run(&mut s, b"\r\n\r\nbody\r\n.\r\nNOOP\r\n");
        assert!(out.ends_with("552 5.3.4 Message header exceeds 1048576 bytes\r\n250 2.0.0 Ok\r\n"), "{out}");
    }

    #[test]
    fn a_header_without_room_in_the_memory_budget_is_dropped_and_answered_452() {
        let mut s = authed();
        run(&mut s, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nX-Long: ");
        s.feed(&[b'y'; 500]);
        assert!(matches!(s.next_event(), Event::NeedInput));
        assert!(s.header_held() >= 500, "what the caller charges");
        // The caller's charge was refused.
        s.spool_failed(QueueRefusal::Memory(crate::limits::budget::Exceeded::Account));
        assert_eq!(s.header_held(), 0, "the header is not kept any more");
        s.feed(&[b'y'; 300]);
        assert!(matches!(s.next_event(), Event::NeedInput));
        assert_eq!(s.header_held(), 0, "nor what follows");
        let (out, event) = run(&mut s, b"\r\n\r\nbody\r\n.\r\n");
        assert!(matches!(event, Event::NeedInput), "not queued: {event:?}");
        assert!(
            out.ends_with(
                "452 4.3.1 Insufficient system resources: the memory coi-proxy gives one account \
                 (max_memory_per_account) is in use; try again later\r\n"
            ),
            "{out}"
        );
        assert_eq!(s.header_held(), 0);
    }

    #[test]
    fn the_sender_is_one_of_the_accounts_addresses() {
        let mut s = authed();
        let (out, _) = run(&mut s, b"MAIL FROM:<bob@x>\r\n");
        assert_eq!(out, "550 5.7.1 Sender address is not an address of this account\r\n");
        s.set_senders(Some(vec!["a@b".into(), "Alias@B".into()]));
        let (out, event) =
            run(&mut s, b"MAIL FROM:<alias@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nFrom: Bob <bob@x>\r\n\r\nhi\r\n.\r\n");
        assert!(out.ends_with("550 5.7.1 From: bob@x is not an address of this account\r\n"), "{out}");
        assert!(matches!(event, Event::NeedInput), "{event:?}");
        let (_, event) = run(&mut s, b"MAIL FROM:<>\r\nRCPT TO:<c@d>\r\nDATA\r\nFrom: <A@b>\r\n\r\nhi\r\n.\r\n");
        assert!(matches!(event, Event::Enqueue(_)), "{event:?}");
        let mut s = authed();
        s.set_senders(None);
        let (_, event) = run(&mut s, b"MAIL FROM:<list@y>\r\nRCPT TO:<c@d>\r\nDATA\r\nFrom: list@y\r\n\r\nhi\r\n.\r\n");
        assert!(matches!(event, Event::Enqueue(_)), "{event:?}");
    }

    #[test]
    fn bare_cr_and_sizes_beyond_64_bits() {
        let mut s = authed();
        let (out, _) = run(
            &mut s,
            b"MAIL FROM:<a@b> SIZE=99999999999999999999999\r\nMAIL FROM:<a@b> size=18446744073709551615\r\n",
        );
        assert_eq!(out.matches("552 5.3.4 Message size exceeds the limit of 1000 bytes\r\n").count(), 2, "{out}");
        let cr = |last, chunk: &[u8], end| matches!(line_ends(last, chunk, end), Some(Refusal::BareCr));
        assert!(cr(None, b"hi\r.\r\n", false) && cr(None, b"a\r", true) && !cr(None, b"a\r\nb\r\n", true));
        // Split anywhere: a CR at a chunk's end waits for the next chunk (or the end).
        assert!(!cr(None, b"a\r", false) && !cr(Some(b'\r'), b"\nb", false) && cr(Some(b'\r'), b"b", false));
        assert!(cr(Some(b'\r'), b"", true) && line_ends(Some(b'\r'), b"\n", true).is_none());
        assert!(matches!(line_ends(Some(b'x'), b"\n", false), Some(Refusal::BareLf)));
        assert!(!size_beyond(b"MAIL FROM:<a@b> SIZE=1000", 1000) && !size_beyond(b"RCPT TO:<SIZE=99999>", 1));
    }

    #[test]
    fn bare_lf_and_overlong_lines() {
        let mut s = authed();
        let mut input = b"NOOP\nNOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'A', MAX_LINE * 3));
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let (out, _) = run(&mut s, &input);
        assert_eq!(
            out,
            "500 5.5.2 Bare LF received; SMTP lines end with CRLF\r\n250 2.0.0 Ok\r\n500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"
        );
        let (out, _) =
            run(&mut s, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\n\nbody\n.\n\r\n.\r\nNOOP\r\n");
        assert!(
            out.ends_with(
                "550 5.6.0 Message refused: it contains a bare LF; SMTP requires CRLF line ends\r\n250 2.0.0 Ok\r\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn three_failed_logins_close_the_session() {
        let mut s = Session::new("p", false, true, policy());
        run(&mut s, b"EHLO c\r\n");
        for _ in 0..3 {
            let (_, event) = run(&mut s, b"AUTH PLAIN AGFAYgB4\r\n");
            assert!(matches!(event, Event::Authenticate { .. }));
            s.auth_result(AuthResult::Refused);
        }
        let (out, event) = run(&mut s, b"");
        assert!(out.ends_with("535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 Too many failed logins; closing the connection\r\n"), "{out}");
        assert!(matches!(event, Event::Close));
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let mut s = Session::new("p", false, true, policy());
        s.take_output();
        let (out, event) = run(&mut s, &b"FOO\r\n".repeat(MAX_ERRORS as usize + 5));
        assert!(out.ends_with("500 5.5.1 Unknown command\r\n421 4.7.0 Too many errors; closing the connection\r\n"));
        assert_eq!(out.matches("500 ").count(), MAX_ERRORS as usize);
        assert!(matches!(event, Event::Close));
    }

    #[test]
    fn dsn_parameters_only_when_offered() {
        let mut s = authed();
        let (out, _) = run(&mut s, b"MAIL FROM:<a@b> RET=HDRS\r\n");
        assert!(out.starts_with("555 5.5.4 DSN"), "{out}");
        s.policy.dsn = true;
        let (out, _) = run(&mut s, b"MAIL FROM:<a@b> RET=HDRS ENVID=x+2By\r\nRCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d\r\nDATA\r\n");
        assert!(out.ends_with("354 Start mail input; end with <CRLF>.<CRLF>\r\n"), "{out}");
        let (_, event) = run(&mut s, b"x\r\n.\r\n");
        let Event::Enqueue(sub) = event else { panic!() };
        assert_eq!((sub.params.ret.as_deref(), sub.params.envid.as_deref()), (Some("HDRS"), Some("x+y")));
        assert_eq!(sub.recipients[0].notify.as_deref(), Some("SUCCESS,FAILURE"));
        assert_eq!(sub.recipients[0].orcpt.as_deref(), Some("c@d"));
    }
}
