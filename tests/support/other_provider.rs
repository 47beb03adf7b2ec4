//! More real providers for integration tests: Cyrus IMAP 3.6, Courier-IMAP 5.0 and GNU
//! Mailutils imap4d 3.15 on random loopback ports, beside the Dovecot of `provider.rs`, so the
//! proxy's promise of "any IMAP4rev1 provider" is tested against servers that differ.
//!
//! [`OtherProvider::start`] runs `provider/start-<kind>.sh`; dropping it stops every process
//! (`provider/stop-other.sh`) and removes the state directory. Same users as Dovecot's
//! (alice, bob, carol @example.org, password "secret"), plus `imaptest@example.org` for
//! imaptest. [`AnyProvider`] puts Dovecot and these under one face, and [`start_all`] starts
//! several at once (in parallel: a test over five providers waits for the slowest, not the sum).
//!
//! Needs root (Courier runs in a private mount namespace, Cyrus and Courier drop to their own
//! users) and the packages tests/setup-debian.sh installs. How each server is set up, and its
//! measured quirks, are in the scripts' header comments.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::provider::{self, Guard, Provider, ProviderOptions};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dovecot,
    /// Dovecot with IDLE removed from CAPABILITY (a legacy provider the proxy must poll).
    DovecotNoIdle,
    Cyrus,
    /// Cyrus with METADATA hidden from CAPABILITY, so the proxy keeps the COI entries itself
    /// (what the provider profile decides for Cyrus, applied by hand until it is wired in).
    CyrusNoMetadata,
    Courier,
    Imap4d,
}

impl Kind {
    /// Every provider the issue-16 table covers, in its order.
    pub const ALL: [Kind; 5] = [Kind::Dovecot, Kind::DovecotNoIdle, Kind::Cyrus, Kind::Courier, Kind::Imap4d];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Dovecot => "dovecot",
            Kind::DovecotNoIdle => "dovecot-no-idle",
            Kind::Cyrus => "cyrus",
            Kind::CyrusNoMetadata => "cyrus-no-metadata",
            Kind::Courier => "courier",
            Kind::Imap4d => "imap4d",
        }
    }
}

/// Variants of the three servers (all off by default: each server's own defaults).
#[derive(Debug, Clone, Default)]
pub struct OtherOptions {
    /// Cyrus: `imapidlepoll: 0` (no IDLE at all). Courier: IDLE left out of CAPABILITY.
    pub no_idle: bool,
    /// Cyrus as Debian's /etc/imapd.conf sets it: separator `.`, personal folders under `INBOX.`.
    pub cyrus_debian_defaults: bool,
    /// imap4d: log whole sessions into its log (for a look after a failure).
    pub transcript: bool,
    /// Cyrus: capabilities to hide (`suppress_capabilities`), e.g. METADATA.
    pub remove_caps: Vec<String>,
}

/// A running Cyrus, Courier or imap4d; everything listens on 127.0.0.1.
#[derive(Debug)]
pub struct OtherProvider {
    pub kind: Kind,
    pub state_dir: PathBuf,
    /// IMAP, plain with STARTTLS.
    pub imap_port: u16,
    /// Cyrus only: LMTP without AUTH (what `deliver` uses there).
    pub lmtp_port: Option<u16>,
    /// The self-signed certificate of STARTTLS (SANs localhost, 127.0.0.1, mail.example.org).
    pub ca_cert: PathBuf,
    /// Full addresses; also the login names.
    pub users: Vec<String>,
    pub password: String,
    /// The hierarchy separator the server uses for personal folders.
    pub separator: String,
    /// `deliver RCPT < message`: the server's own local delivery (Cyrus's `deliver`, Courier's
    /// `deliverquota`, an IMAP APPEND as the user for imap4d).
    pub deliver_script: PathBuf,
    pub log: PathBuf,
    /// Every `PROVIDER_*` line the start script printed.
    pub env: BTreeMap<String, String>,
    guard: Guard,
}

impl OtherProvider {
    pub fn start(kind: Kind) -> OtherProvider {
        Self::start_with(kind, OtherOptions::default())
    }

    /// Starts `kind` (Cyrus, Courier or imap4d); panics with the script's output on failure.
    pub fn start_with(kind: Kind, opts: OtherOptions) -> OtherProvider {
        // Ports are found free by binding port 0 and closing; a parallel test may take one
        // before the server binds it. A fresh set fixes that.
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match Self::try_start(kind, &opts) {
                Ok(p) => return p,
                Err(e) if attempt < ATTEMPTS && e.to_lowercase().contains("in use") => attempt += 1,
                Err(e) => panic!("cannot start the {} test provider: {e}", kind.name()),
            }
        }
    }

    fn try_start(kind: Kind, opts: &OtherOptions) -> Result<OtherProvider, String> {
        let scripts = provider::script_dir();
        let script = match kind {
            Kind::Cyrus | Kind::CyrusNoMetadata => "start-cyrus.sh",
            Kind::Courier => "start-courier.sh",
            Kind::Imap4d => "start-imap4d.sh",
            Kind::Dovecot | Kind::DovecotNoIdle => panic!("Dovecot is support::provider::Provider"),
        };
        let mut cmd = Command::new(scripts.join(script));
        let cyrus = matches!(kind, Kind::Cyrus | Kind::CyrusNoMetadata);
        if opts.no_idle && (cyrus || kind == Kind::Courier) {
            cmd.arg("--no-idle");
        }
        if opts.cyrus_debian_defaults && cyrus {
            cmd.arg("--debian-defaults");
        }
        if !opts.remove_caps.is_empty() && cyrus {
            cmd.arg("--remove-cap").arg(opts.remove_caps.join(" "));
        }
        if kind == Kind::Imap4d {
            // LOGIN only: the AUTH= list is long and mostly unusable here, and its
            // AUTHENTICATE PLAIN answer ends with a bare LF
            cmd.arg("--no-sasl");
            if opts.transcript {
                cmd.arg("--transcript");
            }
        }
        let state_dir = provider::make_state_dir();
        cmd.arg(&state_dir);
        let (guard, exit, output) = Guard::start(&scripts.join("stop-other.sh"), &state_dir, &cmd);
        let env = provider::script_env(script, exit, &output, &state_dir)?;
        let var = |key: &str| env.get(key).cloned().ok_or_else(|| format!("{script} printed no {key}"));
        let port = |key: &str| var(key)?.parse::<u16>().map_err(|e| format!("{key}: {e}"));
        Ok(OtherProvider {
            kind,
            imap_port: port("PROVIDER_IMAP_PORT")?,
            lmtp_port: port("PROVIDER_LMTP_PORT").ok(),
            ca_cert: var("PROVIDER_CA_CERT")?.into(),
            users: var("PROVIDER_USERS")?.split_whitespace().map(str::to_owned).collect(),
            password: var("PROVIDER_PASSWORD")?,
            separator: var("PROVIDER_SEPARATOR")?,
            deliver_script: var("PROVIDER_DELIVER")?.into(),
            log: var("PROVIDER_LOG")?.into(),
            state_dir: var("PROVIDER_STATE_DIR")?.into(),
            env,
            guard,
        })
    }

    /// Delivers `message` to `to` as incoming mail: over LMTP where the server has it (Cyrus),
    /// else with its own delivery script. Use CRLF line endings. Panics on failure.
    pub fn deliver(&self, from: &str, to: &str, message: &[u8]) {
        if let Some(port) = self.lmtp_port {
            return provider::lmtp_deliver(port, from, to, message);
        }
        let mut child = Command::new(&self.deliver_script)
            .arg(to)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.deliver_script.display()));
        child.stdin.take().expect("stdin").write_all(message).expect("write the message to deliver");
        let out = child.wait_with_output().expect("wait for deliver");
        assert!(
            out.status.success(),
            "{} {to} failed ({}): {}{}",
            self.deliver_script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        self.guard.stop();
    }
}

/// Dovecot or one of the others, for tests that run over each.
#[derive(Debug)]
pub enum AnyProvider {
    Dovecot(Kind, Provider),
    Other(OtherProvider),
}

impl AnyProvider {
    /// Starts `kind` with its defaults (Dovecot: METADATA off, as Dovecot 2.3 ships).
    pub fn start(kind: Kind) -> AnyProvider {
        match kind {
            Kind::Dovecot => AnyProvider::Dovecot(kind, Provider::start()),
            Kind::DovecotNoIdle => AnyProvider::Dovecot(
                kind,
                Provider::start_with(ProviderOptions { no_idle: true, ..Default::default() }),
            ),
            Kind::CyrusNoMetadata => AnyProvider::Other(OtherProvider::start_with(
                kind,
                OtherOptions { remove_caps: vec!["METADATA".into()], ..Default::default() },
            )),
            other => AnyProvider::Other(OtherProvider::start(other)),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            AnyProvider::Dovecot(kind, _) => *kind,
            AnyProvider::Other(p) => p.kind,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn imap_port(&self) -> u16 {
        match self {
            AnyProvider::Dovecot(_, p) => p.imap_port,
            AnyProvider::Other(p) => p.imap_port,
        }
    }

    pub fn password(&self) -> &str {
        match self {
            AnyProvider::Dovecot(_, p) => &p.password,
            AnyProvider::Other(p) => &p.password,
        }
    }

    pub fn state_dir(&self) -> &std::path::Path {
        match self {
            AnyProvider::Dovecot(_, p) => &p.state_dir,
            AnyProvider::Other(p) => &p.state_dir,
        }
    }

    pub fn deliver(&self, from: &str, to: &str, message: &[u8]) {
        match self {
            AnyProvider::Dovecot(_, p) => p.deliver(from, to, message),
            AnyProvider::Other(p) => p.deliver(from, to, message),
        }
    }
}

/// Starts every kind in `kinds` at once, each on its own thread; returned in `kinds`' order.
pub fn start_all(kinds: &[Kind]) -> Vec<AnyProvider> {
    std::thread::scope(|s| {
        let handles: Vec<_> = kinds.iter().map(|&k| s.spawn(move || AnyProvider::start(k))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}
