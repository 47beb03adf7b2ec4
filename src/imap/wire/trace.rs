//! The protocol trace (`coi-proxy run --trace-protocol`): every IMAP line a session exchanges,
//! both directions, before login (the proxy's own greeting and answers too) and after it,
//! logged with credentials, AUTHENTICATE payloads and literal data (message bodies) replaced by
//! markers, and long lines cut. A client line that is not a command (one word, e.g. SASL data
//! sent without waiting for the `+`, which the proxy then reads as a command) is never shown.
//!
//! Sans-I/O: the functions here turn bytes into the redacted text; the session and relay call
//! them behind [`on`], one relaxed load, so the hot path pays nothing while tracing is off.

use std::sync::atomic::{AtomicBool, Ordering};

use super::framing::Fragment;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Longest line kept in the trace, in characters.
pub const MAX_LINE: usize = 200;
/// What stands in for a password, a SASL payload or a continuation of a login command.
pub const REDACTED: &str = "[redacted]";

/// Turns the trace on for the whole process (from the command line, before any session).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether the trace is on (the hooks below check it first).
#[inline]
pub fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A whole pre-login client command as read (literals inline), e.g. `a LOGIN alice secret`.
#[inline]
pub fn client_message(msg: &[u8]) {
    if on() {
        tracing::info!(target: "coi_proxy::protocol", "C: {}", redact_message(msg));
    }
}

/// The proxy's own words to the client before login (greeting, CAPABILITY, `+`, the LOGIN
/// answer), one trace line per line.
#[inline]
pub fn server_message(msg: &[u8]) {
    if on() {
        for line in msg.split_inclusive(|&b| b == b'\n') {
            tracing::info!(target: "coi_proxy::protocol", "S: {}", cap(line));
        }
    }
}

/// The client's answer to an AUTHENTICATE challenge (never shown).
#[inline]
pub fn client_sasl() {
    if on() {
        tracing::info!(target: "coi_proxy::protocol", "C: {REDACTED} (AUTHENTICATE data)");
    }
}

/// One framed piece of the client's stream after login.
#[inline]
pub fn client_fragment(fragment: &Fragment, bytes: &[u8]) {
    if on() {
        log_fragment(fragment, bytes, true);
    }
}

/// One framed piece of the provider's stream after login.
#[inline]
pub fn provider_fragment(fragment: &Fragment, bytes: &[u8]) {
    if on() {
        log_fragment(fragment, bytes, false);
    }
}

#[cold]
fn log_fragment(fragment: &Fragment, bytes: &[u8], from_client: bool) {
    if let Some(text) = redact_fragment(fragment, bytes, from_client) {
        let who = if from_client { "C" } else { "S" };
        tracing::info!(target: "coi_proxy::protocol", "{who}: {text}");
    }
}

/// The trace text for a fragment, `None` for pieces that add nothing (literal chunks before the
/// last one, middle pieces of an overlong line).
pub fn redact_fragment(fragment: &Fragment, bytes: &[u8], from_client: bool) -> Option<String> {
    match *fragment {
        Fragment::Line { first: true, .. } if from_client => Some(redact_command_line(bytes)),
        Fragment::Line { first: true, .. } => Some(cap(bytes)),
        // A line after a literal could hold the password of `LOGIN {n}` + user; its start is not
        // known here, so it is not shown.
        Fragment::Line { first: false, len, .. } if from_client => {
            Some(format!("{REDACTED} (continuation, {len} bytes)"))
        }
        Fragment::Line { first: false, .. } => Some(cap(bytes)),
        Fragment::LiteralData { last: true, .. } => Some("[literal data omitted]".into()),
        Fragment::LiteralData { .. } => None,
        Fragment::Overlong { start: true, len, .. } => Some(format!("[overlong line, first {len} bytes omitted]")),
        Fragment::Overlong { .. } => None,
    }
}

/// A client command with its literals inline: literal data becomes a marker, and everything
/// after the command name of LOGIN and AUTHENTICATE (but the mechanism) is redacted.
pub fn redact_message(msg: &[u8]) -> String {
    let first_line_end = msg.iter().position(|&b| b == b'\n').map_or(msg.len(), |i| i + 1);
    let first = redact_command_line(&msg[..first_line_end]);
    if first_line_end >= msg.len() || first.contains(REDACTED) {
        return first;
    }
    // Literals: show the lines between them, never their data.
    let mut out = first;
    let mut rest = &msg[first_line_end..];
    let mut pending = announced_literal(&msg[..first_line_end]);
    while let Some(len) = pending {
        let len = len.min(rest.len());
        out.push_str(&format!(" [literal, {len} bytes]"));
        rest = &rest[len..];
        let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        let text = cap(line.trim_ascii_start());
        if !text.is_empty() {
            out.push(' ');
            out.push_str(&text);
        }
        pending = announced_literal(line);
        rest = &rest[end..];
    }
    out
}

/// The first line of a client command, with LOGIN's and AUTHENTICATE's credentials redacted;
/// a line of one word (no command: SASL data, e.g. an XOAUTH2 token sent without waiting for
/// the `+`) is not shown at all. `DONE` (the end of IDLE) is the one-word line clients send.
pub fn redact_command_line(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_ascii_whitespace();
    let (tag, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if name.is_empty() && !tag.eq_ignore_ascii_case("DONE") {
        let len = text.trim_end_matches(['\r', '\n']).len();
        return format!("{REDACTED} (not a command, {len} bytes: never shown, it may be AUTHENTICATE data)");
    }
    if name.eq_ignore_ascii_case("LOGIN") {
        return format!("{tag} {name} {REDACTED}");
    }
    if name.eq_ignore_ascii_case("AUTHENTICATE") {
        let mechanism = words.next().unwrap_or("");
        let initial = if words.next().is_some() { format!(" {REDACTED}") } else { String::new() };
        return format!("{tag} {name} {mechanism}{initial}");
    }
    cap(line)
}

/// The length of the literal a line announces at its end (`{n}`, `{n+}`, `~{n}`).
fn announced_literal(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The line as text without its line end, control characters escaped, cut at [`MAX_LINE`].
fn cap(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\r', '\n']);
    let mut out = String::new();
    for c in text.chars().take(MAX_LINE) {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    let total = text.chars().count();
    if total > MAX_LINE {
        out.push_str(&format!("… [{} more characters]", total - MAX_LINE));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_and_authenticate_are_redacted() {
        assert_eq!(redact_message(b"a1 LOGIN alice \"s3cret pw\"\r\n"), "a1 LOGIN [redacted]");
        assert_eq!(redact_message(b"a2 login {5}\r\nalice {6}\r\ns3cret\r\n"), "a2 login [redacted]");
        assert_eq!(
            redact_message(b"a3 AUTHENTICATE PLAIN AGFsaWNlAHMzY3JldA==\r\n"),
            "a3 AUTHENTICATE PLAIN [redacted]"
        );
        assert_eq!(redact_message(b"a4 AUTHENTICATE PLAIN\r\n"), "a4 AUTHENTICATE PLAIN");
        assert_eq!(redact_command_line(b"x LOGIN u p\r\n"), "x LOGIN [redacted]");
        // SASL data the client sent without waiting for `+` reaches the command reader.
        let token = b"dXNlcj1hbGljZQFhdXRoPUJlYXJlciB5YTI5LlNlY3JldAEB\r\n";
        let shown = redact_message(token);
        assert!(shown.starts_with("[redacted] (not a command, 48 bytes") && !shown.contains("dXNl"), "{shown}");
        assert_eq!(redact_command_line(b"DONE\r\n"), "DONE");
    }

    #[test]
    fn literals_become_markers() {
        let msg = b"a5 ID (\"name\" {5}\r\nhello \"version\" \"1\")\r\n";
        assert_eq!(redact_message(msg), "a5 ID (\"name\" {5} [literal, 5 bytes] \"version\" \"1\")");
        let body = Fragment::LiteralData { len: 10, last: true };
        assert_eq!(redact_fragment(&body, b"Secret body", false).unwrap(), "[literal data omitted]");
        assert_eq!(redact_fragment(&Fragment::LiteralData { len: 3, last: false }, b"abc", true), None);
        let cont = Fragment::Line { len: 9, first: false, literal: None };
        assert_eq!(redact_fragment(&cont, b" \"pass\"\r\n", true).unwrap(), "[redacted] (continuation, 9 bytes)");
    }

    #[test]
    fn lines_are_capped_and_escaped() {
        let long = format!("* OK {}\r\n", "x".repeat(500));
        let text =
            redact_fragment(&Fragment::Line { len: long.len(), first: true, literal: None }, long.as_bytes(), false)
                .unwrap();
        assert!(text.starts_with("* OK xxx") && text.ends_with("… [305 more characters]"), "{text}");
        assert_eq!(cap(b"a\x1bb\r\n"), "a\\u{1b}b");
    }
}
