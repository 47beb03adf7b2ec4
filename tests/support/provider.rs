//! A real mail provider for integration tests: Dovecot (IMAP, submission, LMTP)
//! on random loopback ports, all state in its own directory under /tmp.
//!
//! [`Provider::start`] runs `provider/start-provider.sh` next to this file;
//! dropping the [`Provider`] stops every process and removes the directory.
//! Instances share nothing, so tests may run in parallel, also from several
//! test binaries at once. Needs the Debian packages dovecot-imapd,
//! dovecot-lmtpd and dovecot-submissiond (plus python3 and openssl).
//!
//! Set `COI_TEST_KEEP_PROVIDER=1` to keep the state directory (logs, rawlogs,
//! Maildirs) for a look after the test; `COI_TEST_PROVIDER_DIR` overrides
//! where the scripts are found.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long `deliver`/`submit` wait for any one server reply.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Variants of the provider. The default is Dovecot's own behaviour: IDLE, no
/// METADATA, users alice, bob and carol @example.org with password "secret".
#[derive(Debug, Clone, Default)]
pub struct ProviderOptions {
    /// Remove IDLE from CAPABILITY, like a legacy provider (Dovecot still
    /// accepts the command; it cannot be switched off).
    pub no_idle: bool,
    /// Enable RFC 5464 METADATA (off by default in Dovecot 2.3).
    pub metadata: bool,
    /// Offer COMPRESS=DEFLATE (RFC 4978, Dovecot's imap_zlib plugin).
    pub compress: bool,
    /// "/" as the hierarchy separator instead of Dovecot's default ".".
    pub slash_separator: bool,
    /// More tokens to remove from the post-login CAPABILITY.
    pub remove_caps: Vec<String>,
    /// A private Postfix as the submission service, which issues DSNs.
    /// Root only; needs the postfix package (see start-provider.sh).
    pub postfix: bool,
    /// Dovecot rawlogs of all IMAP/submission traffic, see `Provider::rawlog_dir`.
    pub rawlog: bool,
    /// Local parts of the users (the domain is example.org).
    pub users: Option<Vec<String>>,
    /// Password of every user.
    pub password: Option<String>,
    /// Dovecot's `mail_max_userip_connections` (default 100), for many sessions per user.
    pub max_conns: Option<u32>,
    /// OAuth2 bearer tokens (XOAUTH2, OAUTHBEARER) for IMAP and submission, checked against this
    /// RFC 7662 introspection URL (e.g. `support::idp::Idp::introspection_url`); passwords keep
    /// working.
    pub oauth2_introspection_url: Option<String>,
    /// The bearer mechanisms offered with `oauth2_introspection_url` (default both), e.g.
    /// `"oauthbearer"`.
    pub oauth2_mechanisms: Option<String>,
    /// Trust 127.0.0.1 as a proxy (`login_trusted_networks`): the client address it passes
    /// on (IMAP `ID x-originating-ip`, submission `XCLIENT`) is what Dovecot's auth penalty
    /// counts.
    pub trusted_proxy: bool,
    /// Case-sensitive user names: `Bob@example.org` and `bob@example.org` are two users.
    pub case_sensitive: bool,
    /// Sessions one Dovecot imap process serves (default 1), so that 10,000 sessions need
    /// hundreds of processes rather than 10,000.
    pub imap_client_limit: Option<u32>,
}

/// A running provider; everything listens on 127.0.0.1.
#[derive(Debug)]
pub struct Provider {
    pub state_dir: PathBuf,
    /// IMAP, plain with STARTTLS.
    pub imap_port: u16,
    /// IMAP, implicit TLS.
    pub imaps_port: u16,
    /// Submission, plain with STARTTLS; AUTH is allowed without TLS.
    pub smtp_port: u16,
    /// Submission, implicit TLS.
    pub smtps_port: u16,
    /// LMTP, to inject incoming mail (see `deliver`).
    pub lmtp_port: u16,
    /// The self-signed certificate of all TLS ports (SANs localhost, 127.0.0.1,
    /// mail.example.org); trust it as a CA.
    pub ca_cert: PathBuf,
    /// Full addresses, e.g. `alice@example.org`; also the login names.
    pub users: Vec<String>,
    pub password: String,
    /// Dovecot's log (logins, deliveries, errors).
    pub log: PathBuf,
    /// With `ProviderOptions::rawlog`: per-user subdirectories (post-login
    /// traffic) and `login/` (pre-login traffic).
    pub rawlog_dir: Option<PathBuf>,
    /// Every `PROVIDER_*` line printed by start-provider.sh, for the rarely
    /// needed ones (pids, `PROVIDER_POSTFIX_LOG`, ...).
    pub env: BTreeMap<String, String>,
    guard: Guard,
}

impl Provider {
    /// Starts a provider with the default options.
    pub fn start() -> Provider {
        Self::start_with(ProviderOptions::default())
    }

    /// Starts a provider; panics with the scripts' output if that fails.
    pub fn start_with(opts: ProviderOptions) -> Provider {
        // start-provider.sh finds free ports by binding port 0 and closing the
        // sockets, so a parallel test can take one before Dovecot binds it.
        // Rare, and a fresh set of ports fixes it.
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match Self::try_start(&opts) {
                Ok(provider) => return provider,
                Err(e) if attempt < ATTEMPTS && e.to_lowercase().contains("address already in use") => {
                    attempt += 1;
                }
                Err(e) => panic!("cannot start the test mail provider: {e}"),
            }
        }
    }

    fn try_start(opts: &ProviderOptions) -> Result<Provider, String> {
        let scripts = script_dir();
        let mut cmd = Command::new(scripts.join("start-provider.sh"));
        for (on, flag) in [
            (opts.no_idle, "--no-idle"),
            (opts.metadata, "--metadata"),
            (opts.compress, "--compress"),
            (opts.slash_separator, "--slash-separator"),
            (opts.postfix, "--postfix"),
            (opts.rawlog, "--rawlog"),
            (opts.trusted_proxy, "--trusted-proxy"),
            (opts.case_sensitive, "--case-sensitive"),
        ] {
            if on {
                cmd.arg(flag);
            }
        }
        if !opts.remove_caps.is_empty() {
            cmd.arg("--remove-cap").arg(opts.remove_caps.join(" "));
        }
        if let Some(users) = &opts.users {
            cmd.arg("--users").arg(users.join(" "));
        }
        if let Some(password) = &opts.password {
            cmd.arg("--password").arg(password);
        }
        if let Some(max_conns) = opts.max_conns {
            cmd.arg("--max-conns").arg(max_conns.to_string());
        }
        if let Some(url) = &opts.oauth2_introspection_url {
            cmd.arg("--oauth2-introspection-url").arg(url);
        }
        if let Some(mechanisms) = &opts.oauth2_mechanisms {
            cmd.arg("--oauth2-mechanisms").arg(mechanisms);
        }
        if let Some(limit) = opts.imap_client_limit {
            cmd.arg("--imap-client-limit").arg(limit.to_string());
        }
        let state_dir = make_state_dir();
        cmd.arg(&state_dir);
        // From here on an early return drops the guard, which cleans up.
        let (guard, exit, output) = Guard::start(&scripts.join("stop-provider.sh"), &state_dir, &cmd);
        let env = script_env("start-provider.sh", exit, &output, &state_dir)?;
        let var = |key: &str| env.get(key).cloned().ok_or_else(|| format!("start-provider.sh printed no {key}"));
        let port = |key: &str| var(key)?.parse::<u16>().map_err(|e| format!("{key}: {e}"));
        Ok(Provider {
            imap_port: port("PROVIDER_IMAP_PORT")?,
            imaps_port: port("PROVIDER_IMAPS_PORT")?,
            smtp_port: port("PROVIDER_SMTP_PORT")?,
            smtps_port: port("PROVIDER_SMTPS_PORT")?,
            lmtp_port: port("PROVIDER_LMTP_PORT")?,
            ca_cert: var("PROVIDER_CA_CERT")?.into(),
            users: var("PROVIDER_USERS")?.split_whitespace().map(str::to_owned).collect(),
            password: var("PROVIDER_PASSWORD")?,
            log: var("PROVIDER_LOG")?.into(),
            rawlog_dir: var("PROVIDER_RAWLOG_DIR").ok().filter(|d| !d.is_empty()).map(PathBuf::from),
            state_dir: var("PROVIDER_STATE_DIR")?.into(),
            env,
            guard,
        })
    }

    /// Delivers `message` to `to` as incoming mail over LMTP (no submission,
    /// no auth). Use CRLF line endings; dot-stuffing is done here. Panics on
    /// any non-2xx reply, e.g. for an unknown recipient.
    pub fn deliver(&self, from: &str, to: &str, message: &[u8]) {
        lmtp_deliver(self.lmtp_port, from, to, message);
    }

    /// Sends `message` like a mail client: to the submission port, as `user`
    /// with AUTH PLAIN, no TLS. Use CRLF line endings; dot-stuffing is done
    /// here. Panics on any unexpected reply.
    pub fn submit(&self, user: &str, from: &str, to: &[&str], message: &[u8]) {
        let mut c = SmtpClient::connect("submission", self.smtp_port);
        c.expect(220);
        c.command("EHLO localhost", 250);
        let credentials = format!("\0{user}\0{}", self.password);
        c.command(&format!("AUTH PLAIN {}", base64(credentials.as_bytes())), 235);
        c.command(&format!("MAIL FROM:<{from}>"), 250);
        for rcpt in to {
            c.command(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        c.command("DATA", 354);
        c.data(message, 250);
        c.command("QUIT", 221);
    }

    /// Stops all processes and removes the state directory (unless
    /// `COI_TEST_KEEP_PROVIDER` is set). Idempotent; dropping does the same.
    pub fn stop(&mut self) {
        self.guard.stop();
    }
}

/// Delivers `message` to `to` over LMTP on 127.0.0.1:`port` (no auth; Dovecot's and Cyrus's
/// LMTP both take it so). Dot-stuffing is done here; panics on any non-2xx reply.
pub(super) fn lmtp_deliver(port: u16, from: &str, to: &str, message: &[u8]) {
    let mut c = SmtpClient::connect("LMTP", port);
    c.expect(220);
    c.command("LHLO localhost", 250);
    c.command(&format!("MAIL FROM:<{from}>"), 250);
    c.command(&format!("RCPT TO:<{to}>"), 250);
    c.command("DATA", 354);
    // LMTP answers once per accepted recipient; there is one
    c.data(message, 250);
    c.command("QUIT", 221);
}

/// The shell that owns a provider from start to stop: it runs
/// start-provider.sh (output and exit code come back on its stdout), then
/// waits for EOF on its stdin and runs stop-provider.sh. We close that pipe in
/// `stop`/drop; the kernel closes it when the test process dies without
/// unwinding (panic=abort, SIGKILL, Ctrl-C), so the daemonised Dovecot never
/// outlives the tests, even when that happens mid-start (a separate stopper
/// could then clean up before the start is done). It ignores SIGPIPE so as to
/// reach the stop when nobody reads its output any more, and has its own
/// process group so that a terminal's Ctrl-C does not kill it first.
const GUARD_SCRIPT: &str = r#"
trap '' PIPE
stop=$0 state=$1 clean=$2; shift 2
"$@" </dev/null 2>&1
echo "START_EXIT=$?"
exec >/dev/null
read -r _ignored
exec "$stop" "$state" $clean
"#;

#[derive(Debug)]
pub(super) struct Guard {
    child: Option<Child>,
    /// Set if `COI_TEST_KEEP_PROVIDER` asked to keep this state dir.
    kept_dir: Option<PathBuf>,
}

impl Guard {
    /// Runs `start` (start-provider.sh with its arguments) under a new guard
    /// and returns the guard, the exit code and the script's output.
    pub(super) fn start(stop_script: &Path, state_dir: &Path, start: &Command) -> (Guard, Option<i32>, String) {
        let keep = std::env::var_os("COI_TEST_KEEP_PROVIDER").is_some_and(|v| !v.is_empty());
        let child = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg(stop_script)
            .arg(state_dir)
            .arg(if keep { "" } else { "--clean" })
            .arg(start.get_program())
            .args(start.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = fs::remove_dir(state_dir);
                panic!("cannot spawn sh to run the test mail provider: {e}")
            });
        let mut guard = Guard { child: Some(child), kept_dir: keep.then(|| state_dir.to_owned()) };

        // EOF once the start is over: nothing it leaves running keeps stdout
        let mut raw = Vec::new();
        let stdout = guard.child.as_mut().and_then(|c| c.stdout.take());
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut raw);
        }
        let mut output = String::from_utf8_lossy(&raw).into_owned();
        let mut exit = None;
        if let Some(pos) = output.rfind("START_EXIT=") {
            exit = output[pos + "START_EXIT=".len()..].trim().parse().ok();
            output.truncate(pos);
        }
        (guard, exit, output)
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            // errors are not actionable here (and this runs in Drop)
            let _ = child.wait();
            if let Some(dir) = &self.kept_dir {
                eprintln!("COI_TEST_KEEP_PROVIDER: kept {}", dir.display());
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where start-provider.sh and friends live: `provider/` next to this file.
/// `file!()` is relative to the workspace root (or absolute when the module
/// is included with `#[path]`), so try it against the manifest dir and its
/// ancestors; that also works from another crate that includes this module.
pub(super) fn script_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COI_TEST_PROVIDER_DIR") {
        return dir.into();
    }
    let rel = Path::new(file!()).with_file_name("provider");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().map(|base| base.join(&rel)).find(|dir| dir.join("start-provider.sh").is_file()).unwrap_or_else(
        || panic!("provider scripts not found (looked for {}; set COI_TEST_PROVIDER_DIR)", rel.display()),
    )
}

/// A fresh state directory, mode 0755, directly in /tmp rather than $TMPDIR:
/// as root, Dovecot's mail processes run as `dovecot` and must be able to
/// traverse every parent (a tempdir is 0700), and the unix sockets inside
/// must stay within the ~108-byte path limit (start-provider.sh allows 70).
pub(super) fn make_state_dir() -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("coi-provider.")
        .tempdir_in("/tmp")
        .expect("cannot create a state dir in /tmp")
        .keep();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("cannot chmod the state dir");
    dir
}

/// The `PROVIDER_*` lines a start script printed, or why it failed (with its output and the
/// tails of its logs).
pub(super) fn script_env(
    script: &str,
    exit: Option<i32>,
    output: &str,
    state_dir: &Path,
) -> Result<BTreeMap<String, String>, String> {
    if exit != Some(0) {
        return Err(format!(
            "{script} failed (exit {}):\n{output}{}",
            exit.map_or_else(|| "status unknown".to_owned(), |code| code.to_string()),
            log_tails(state_dir)
        ));
    }
    Ok(output
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| key.starts_with("PROVIDER_"))
        .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
        .collect())
}

/// The end of the logs that usually explain a failed start.
fn log_tails(state_dir: &Path) -> String {
    let mut out = String::new();
    for name in ["startup.log", "dovecot.log", "relay.log", "master.log", "imapd.log", "imap4d.log"] {
        if let Ok(text) = fs::read_to_string(state_dir.join("log").join(name)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            if !tail.is_empty() {
                out += &format!("--- log/{name} (tail) ---\n{}\n", tail.join("\n"));
            }
        }
    }
    out
}

/// Just enough of an SMTP/LMTP client for `deliver` and `submit`; keeps a
/// transcript for the panic message.
struct SmtpClient {
    what: &'static str,
    conn: BufReader<TcpStream>,
    transcript: String,
}

impl SmtpClient {
    fn connect(what: &'static str, port: u16) -> SmtpClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{what}: cannot connect to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(SMTP_TIMEOUT)).expect("set_read_timeout");
        SmtpClient { what, conn: BufReader::new(stream), transcript: String::new() }
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{}: {msg}\ntranscript:\n{}", self.what, self.transcript)
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.conn.get_mut().write_all(bytes) {
            self.fail(&format!("write failed: {e}"));
        }
    }

    /// Reads one reply (all its `NNN-` lines) and checks its code.
    fn expect(&mut self, code: u16) {
        loop {
            let mut line = String::new();
            match self.conn.read_line(&mut line) {
                Ok(0) => self.fail("connection closed"),
                Ok(_) => self.transcript += &format!("S: {line}"),
                Err(e) => self.fail(&format!("read failed: {e}")),
            }
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            if !line.starts_with(&code.to_string()) {
                self.fail(&format!("expected {code}"));
            }
            return;
        }
    }

    fn command(&mut self, line: &str, code: u16) {
        self.transcript += &format!("C: {line}\r\n");
        self.send(format!("{line}\r\n").as_bytes());
        self.expect(code);
    }

    /// Sends a DATA body (dot-stuffed, see `data_block`).
    fn data(&mut self, message: &[u8], code: u16) {
        let body = super::data_block::data_block(message);
        self.transcript += &format!("C: <{} bytes of message>\r\n", message.len());
        self.send(&body);
        self.expect(code);
    }
}

/// Standard base64 with padding (for AUTH PLAIN; std has none).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
