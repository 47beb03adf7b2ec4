//! What `coi-proxy key export|import`, `invite` and `join` do, on an account's [`Identity`]:
//! the same code whether the running daemon carries them out (its control socket) or the
//! command line does on the store when no daemon runs. Blocking (keys, commits): the daemon
//! runs them with `spawn_blocking`.
//!
//! Commands travel to the daemon as one line ([`GatewayCommand::to_line`]); an imported key
//! is base64 on it. Lines and errors never carry a secret into a log: [`GatewayCommand::shown`]
//! is what may be logged.

use base64::Engine;

use super::identity::{Identity, IdentityError};
use super::securejoin::invite::{Invite, InviteError};
use super::securejoin::inviter::{Inviter, Issued};
use super::securejoin::joiner;
use super::securejoin::message::Outgoing;
use crate::config::Config;
use crate::store::{MailParams, QueuedMessage, Recipient, RecipientState, StoreError};

/// Longest control line a gateway command may take (an armored key, base64 again).
pub const MAX_LINE: usize = super::key::MAX_ARMORED_KEY / 3 * 4 + 1024;

#[derive(Clone, PartialEq, Eq)]
pub enum GatewayCommand {
    KeyExport { login: String, secret: bool },
    KeyImport { login: String, armored: Vec<u8> },
    Invite { login: String },
    Join { login: String, link: String },
}

impl GatewayCommand {
    /// The command with its login as the store keys it (`Config::account_key`: exact, or
    /// lower-cased where the account's provider ignores case).
    pub fn keyed(mut self, config: &Config) -> GatewayCommand {
        let (GatewayCommand::KeyExport { login, .. }
        | GatewayCommand::KeyImport { login, .. }
        | GatewayCommand::Invite { login }
        | GatewayCommand::Join { login, .. }) = &mut self;
        *login = config.account_key(login);
        self
    }
}

impl std::fmt::Debug for GatewayCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the invite link is not one coi-proxy can join: {0}")]
    Link(#[from] InviteError),
    #[error("cannot start the handshake: {0}")]
    Handshake(#[from] super::securejoin::Rejected),
    #[error("the key export failed: {0}")]
    Export(#[from] super::key::KeyError),
    #[error("that invite link is {0}'s own")]
    OwnLink(String),
}

impl GatewayCommand {
    pub fn to_line(&self) -> String {
        match self {
            GatewayCommand::KeyExport { login, secret: false } => format!("key export {login}"),
            GatewayCommand::KeyExport { login, secret: true } => format!("key export {login} --secret"),
            GatewayCommand::KeyImport { login, armored } => {
                format!("key import {login} {}", base64::engine::general_purpose::STANDARD.encode(armored))
            }
            GatewayCommand::Invite { login } => format!("invite {login}"),
            GatewayCommand::Join { login, link } => format!("join {login} {link}"),
        }
    }

    /// The command for logs: without the imported key or the link's tokens.
    pub fn shown(&self) -> String {
        match self {
            GatewayCommand::KeyImport { login, .. } => format!("key import {login}"),
            GatewayCommand::Join { login, .. } => format!("join {login}"),
            other => other.to_line(),
        }
    }

    pub fn parse(line: &str) -> Option<GatewayCommand> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let login = |w: &str| w.to_string();
        match words.as_slice() {
            ["key", "export", l] => Some(GatewayCommand::KeyExport { login: login(l), secret: false }),
            ["key", "export", l, "--secret"] => Some(GatewayCommand::KeyExport { login: login(l), secret: true }),
            ["key", "import", l, data] => base64::engine::general_purpose::STANDARD
                .decode(data)
                .ok()
                .map(|armored| GatewayCommand::KeyImport { login: login(l), armored }),
            ["invite", l] => Some(GatewayCommand::Invite { login: login(l) }),
            ["join", l, link] => Some(GatewayCommand::Join { login: login(l), link: link.to_string() }),
            _ => None,
        }
    }
}

/// A command carried out: the text for the user and the queue ids of mail it queued (the
/// daemon wakes the account's relay for them).
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub queued: Vec<(u64, String)>,
    /// The account whose key the command used (its worker should run).
    pub login: Option<String>,
}

/// The display name our invites and handshake mails carry: the address's local part (the
/// proxy does not know the user's name; Delta Chat shows the address next to it anyway).
fn display_name(login: &str) -> String {
    login.split('@').next().unwrap_or(login).to_string()
}

/// Carries out `cmd`. `give_up_secs`: how long queued handshake mail is tried (`[queue]`).
pub fn execute(identity: &Identity, cmd: &GatewayCommand, now: i64, give_up_secs: u64) -> Result<Answer, CommandError> {
    let login = match cmd {
        GatewayCommand::KeyExport { login, .. }
        | GatewayCommand::KeyImport { login, .. }
        | GatewayCommand::Invite { login }
        | GatewayCommand::Join { login, .. } => Some(login.clone()),
    };
    let text = |text: String| Ok(Answer { text, queued: Vec::new(), login: login.clone() });
    match cmd {
        GatewayCommand::KeyExport { login, secret } => {
            let key = identity.account_key_blocking(login)?;
            match secret {
                false => text(key.public_armored()?),
                true => text(String::from_utf8_lossy(key.secret_armored()?.expose()).into_owned()),
            }
        }
        GatewayCommand::KeyImport { login, armored } => {
            let fingerprint = identity.import(login, armored, None)?;
            text(format!(
                "imported; {login}'s OpenPGP key is now {} (mail encrypted to the previous key no longer opens here)\n",
                fingerprint.hex()
            ))
        }
        GatewayCommand::Invite { login } => {
            let key = identity.account_key_blocking(login)?;
            let name = display_name(login);
            let invite = Invite::new_contact(key.fingerprint().clone(), key.addr(), &name);
            let issued = Issued::from_invite(&invite, now);
            identity.add_invite(login, &issued)?;
            let link = Inviter { key: &key, name: &name, invites: std::slice::from_ref(&issued) }.link(&issued);
            text(format!(
                "Open this link in Delta Chat (or scan it as a QR code) to become a verified contact of {}; coi-proxy \
                 answers the handshake for {login}, with or without a mail client connected. The link stays valid \
                 until the state directory is reset.\n{link}\n",
                key.addr()
            ))
        }
        GatewayCommand::Join { login, link } => {
            let invite = Invite::parse(link)?;
            let key = identity.account_key_blocking(login)?;
            if &invite.fingerprint == key.fingerprint() {
                return Err(CommandError::OwnLink(login.clone()));
            }
            let (joining, send) = joiner::start(&key, &invite, now)?;
            let id = super::securejoin::message::message_id();
            identity.set_join(login, id.trim_matches(['<', '>']), Some(&joining))?;
            let queued = queue(identity, login, &send, now, give_up_secs)?;
            Ok(Answer {
                text: format!(
                    "asked {} for a verified contact (SecureJoin); coi-proxy completes the handshake for {login} as \
                     their answers arrive\n",
                    invite.addr()
                ),
                queued: vec![(queued, login.clone())],
                login: Some(login.to_ascii_lowercase()),
            })
        }
    }
}

/// Puts a handshake message into the queue for `login`'s relay; its id.
pub fn queue(
    identity: &Identity,
    login: &str,
    send: &Outgoing,
    now: i64,
    give_up_secs: u64,
) -> Result<u64, StoreError> {
    let msg = QueuedMessage {
        login: login.to_string(),
        from: send.from.clone(),
        params: MailParams { eight_bit: false, smtputf8: false, ret: None, envid: None },
        recipients: send
            .to
            .iter()
            .map(|to| Recipient { address: to.clone(), notify: None, orcpt: None, state: RecipientState::Pending })
            .collect(),
        size: send.message.len() as u64,
        received_at: now,
        next_attempt_at: now,
        give_up_at: now.saturating_add(give_up_secs as i64),
        attempts: Vec::new(),
        report_pending: false,
        chat_followup: false,
    };
    identity.store().queue_insert(&msg, send.message.clone(), None).wait()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::key::AccountKey;
    use crate::seal::SealKey;
    use crate::store::Store;

    #[test]
    fn a_commands_login_is_keyed_as_the_store_keys_it() {
        let config: Config = toml::from_str(
            "[[account]]\ndomain = \"folded.example\"\nlogin_case_sensitive = false\nimap = \"imap://127.0.0.1:1\"\n",
        )
        .unwrap();
        let login = |cmd: GatewayCommand| match cmd {
            GatewayCommand::Invite { login } => login,
            _ => unreachable!(),
        };
        let invite = |l: &str| GatewayCommand::Invite { login: l.into() };
        assert_eq!(login(invite("Bob@Folded.example").keyed(&config)), "bob@folded.example");
        assert_eq!(login(invite("Bob@Exact.example").keyed(&config)), "Bob@Exact.example", "case matters by default");
    }

    #[test]
    fn lines_round_trip_and_logs_hold_no_key_or_token() {
        let cmds = [
            GatewayCommand::KeyExport { login: "a@x".into(), secret: false },
            GatewayCommand::KeyExport { login: "a@x".into(), secret: true },
            GatewayCommand::KeyImport {
                login: "a@x".into(),
                armored: b"-----BEGIN PGP PRIVATE KEY BLOCK-----".to_vec(),
            },
            GatewayCommand::Invite { login: "a@x".into() },
            GatewayCommand::Join { login: "a@x".into(), link: "https://i.delta.chat/#AB&s=secret".into() },
        ];
        for cmd in &cmds {
            assert_eq!(GatewayCommand::parse(&cmd.to_line()).as_ref(), Some(cmd));
        }
        assert!(!cmds[2].shown().contains("LS0t") && !format!("{:?}", cmds[4]).contains("secret"));
        assert_eq!(GatewayCommand::parse("key import a@x not*base64"), None);
        assert_eq!(GatewayCommand::parse("key export"), None);
        assert_eq!(GatewayCommand::parse("queue list"), None);
    }

    #[test]
    fn export_import_invite_and_join_on_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::with_seal(Store::open(dir.path()).unwrap(), SealKey::generate());
        let run = |cmd: GatewayCommand| execute(&identity, &cmd, 1_700_000_000, 3600);
        let public = run(GatewayCommand::KeyExport { login: "alice@example.org".into(), secret: false }).unwrap().text;
        assert!(public.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"), "{public}");
        let secret = run(GatewayCommand::KeyExport { login: "alice@example.org".into(), secret: true }).unwrap().text;
        let exported = AccountKey::import_armored(secret.as_bytes(), "alice@example.org", None).unwrap();
        assert_eq!(exported.fingerprint(), identity.account_key_blocking("alice@example.org").unwrap().fingerprint());

        // Import into another account's store: the same identity there.
        let dir2 = tempfile::tempdir().unwrap();
        let other = Identity::with_seal(Store::open(dir2.path()).unwrap(), SealKey::generate());
        let cmd = GatewayCommand::KeyImport { login: "alice@example.org".into(), armored: secret.into_bytes() };
        let text = execute(&other, &cmd, 0, 0).unwrap().text;
        assert!(text.contains(&exported.fingerprint().hex()), "{text}");
        let bad = GatewayCommand::KeyImport { login: "alice@example.org".into(), armored: public.into_bytes() };
        assert!(execute(&other, &bad, 0, 0).unwrap_err().to_string().contains("public"), "a public key is refused");

        let text = run(GatewayCommand::Invite { login: "alice@example.org".into() }).unwrap().text;
        let link = text.lines().last().unwrap();
        let invite = Invite::parse(link).unwrap();
        assert_eq!(&invite.fingerprint, exported.fingerprint());
        assert_eq!(identity.invites("alice@example.org").unwrap(), [Issued::from_invite(&invite, 1_700_000_000)]);

        // Alice's own link is refused; Bob (another store) joins it: one message queued.
        let err = run(GatewayCommand::Join { login: "alice@example.org".into(), link: link.into() }).unwrap_err();
        assert!(matches!(err, CommandError::OwnLink(_)), "{err}");
        let join = GatewayCommand::Join { login: "bob@example.net".into(), link: link.into() };
        let answer = execute(&other, &join, 5, 3600).unwrap();
        assert_eq!(answer.queued.len(), 1);
        let (id, login) = &answer.queued[0];
        assert_eq!(login, "bob@example.net");
        let queued = other.store().queue_get(*id).unwrap().unwrap();
        assert_eq!(queued.recipients[0].address, "alice@example.org");
        assert_eq!((queued.give_up_at, queued.from.as_str()), (3605, "bob@example.net"));
        let body = other.store().queue_body(*id).unwrap().unwrap();
        let header =
            String::from_utf8_lossy(&body[..body.windows(4).position(|w| w == b"\r\n\r\n").unwrap()]).into_owned();
        assert!(header.contains("multipart/encrypted"), "{header}");
        assert_eq!(other.joins("bob@example.net").unwrap().len(), 1);
        let bad = GatewayCommand::Join { login: "bob@example.net".into(), link: "https://example.org/".into() };
        assert!(matches!(execute(&other, &bad, 5, 3600), Err(CommandError::Link(_))));
    }
}
