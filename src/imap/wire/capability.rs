//! What the proxy advertises: before login its own small set, after login the provider's set
//! minus what cannot pass through the proxy, plus what the proxy adds.

/// Capabilities we must not pass on, and why:
/// - `STARTTLS`, `LOGINDISABLED`, `AUTH=*`: the client's TLS and login are with us, not the provider.
/// - `COMPRESS=*`: compression is per connection; the proxy's connection to the provider has
///   its own, and the proxy offers the client its own (`COMPRESS=DEFLATE`, served by the relay).
/// - `XCHATMAIL`: a chatmail relay's flag; Delta Chat then deletes the mail it downloaded, which
///   an ordinary mailbox behind the proxy must never see.
const STRIPPED_PREFIXES: &[&str] = &["STARTTLS", "LOGINDISABLED", "AUTH=", "COMPRESS=", "XCHATMAIL"];

/// What the client may do before logging in, given the connection's state.
pub fn pre_login(tls_active: bool, plaintext_auth_allowed: bool) -> String {
    let mut caps = String::from("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID LITERAL+");
    if !tls_active {
        caps.push_str(" STARTTLS");
    }
    if tls_active || plaintext_auth_allowed {
        caps.push_str(" AUTH=PLAIN AUTH=LOGIN");
    } else {
        caps.push_str(" LOGINDISABLED");
    }
    caps
}

/// The post-login list: the provider's, filtered, plus `extra` (what the proxy emulates). An
/// `extra` entry `-NAME` removes `NAME` and every `NAME=…` instead (what a session cannot
/// offer, e.g. `SORT` on a plain session with decrypted views).
pub fn post_login(provider: &[String], extra: &[&str]) -> Vec<String> {
    let removed = |cap: &str| {
        extra.iter().filter_map(|e| e.strip_prefix('-')).any(|r| {
            cap.eq_ignore_ascii_case(r)
                || (cap.len() > r.len()
                    && cap.as_bytes()[..r.len()].eq_ignore_ascii_case(r.as_bytes())
                    && cap.as_bytes()[r.len()] == b'=')
        })
    };
    let mut out: Vec<String> = provider.iter().filter(|c| passes(c) && !removed(c)).cloned().collect();
    for cap in extra.iter().filter(|e| !e.starts_with('-')) {
        if !out.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
            out.push((*cap).to_string());
        }
    }
    out
}

/// The provider capabilities the proxy strips (for `check`).
pub fn stripped(provider: &[String]) -> Vec<String> {
    provider.iter().filter(|c| !passes(c)).cloned().collect()
}

fn passes(cap: &str) -> bool {
    // Compared as bytes: a provider may send anything, and slicing a str off a char boundary
    // would panic (found by the `responses` fuzz target).
    let cap = cap.as_bytes();
    !STRIPPED_PREFIXES.iter().any(|p| {
        cap.len() >= p.len()
            && cap[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            && (p.ends_with('=') || cap.len() == p.len())
    })
}

/// Splits a capability list (`IMAP4rev1 IDLE ...`) into atoms.
pub fn parse_list(text: &[u8]) -> Vec<String> {
    text.split(|&b| b == b' ').filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect()
}

/// Finds the capability list in a response line: an untagged `* CAPABILITY ...` response or a
/// `[CAPABILITY ...]` response code. Returns the byte range of the list within `line`.
pub fn find_in_response(line: &[u8]) -> Option<std::ops::Range<usize>> {
    // The tag and the status word are short: plain scans.
    let body_start = line.iter().position(|&b| b == b' ')? + 1;
    let body = &line[body_start..];
    let end_of_line = |from: usize| {
        let rest = &line[from..];
        from + rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len())
    };
    if line.starts_with(b"* ") && starts_with_ci(body, b"CAPABILITY ") {
        let start = body_start + b"CAPABILITY ".len();
        return Some(start..end_of_line(start));
    }
    // A status response: `<tag> OK [CAPABILITY ...] text`, also NO/BAD/PREAUTH/BYE.
    let sp = body.iter().position(|&b| b == b' ')?;
    let code = &body[sp + 1..];
    // Most lines have no response code: they are told apart here, before the status word.
    if !starts_with_ci(code, b"[CAPABILITY ") {
        return None;
    }
    let status = &body[..sp];
    let is_status = [&b"OK"[..], b"NO", b"BAD", b"PREAUTH", b"BYE"].iter().any(|s| status.eq_ignore_ascii_case(s));
    if is_status {
        let start = body_start + sp + 1 + b"[CAPABILITY ".len();
        let end = start + memchr::memchr(b']', &line[start..])?;
        return Some(start..end);
    }
    None
}

fn starts_with_ci(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Rewrites the capability list in a response line, if it has one.
pub fn rewrite_response(line: &[u8], extra: &[&str]) -> Option<Vec<u8>> {
    let range = find_in_response(line)?;
    let caps = post_login(&parse_list(&line[range.clone()]), extra);
    let mut out = Vec::with_capacity(line.len() + 32);
    out.extend_from_slice(&line[..range.start]);
    out.extend_from_slice(caps.join(" ").as_bytes());
    out.extend_from_slice(&line[range.end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_capabilities() {
        let provider: Vec<String> =
            ["IMAP4rev1", "SORT", "SORT=DISPLAY", "SORTX", "THREAD=REFERENCES", "BINARY"].map(String::from).to_vec();
        assert_eq!(post_login(&provider, &["-SORT", "-THREAD", "-BINARY", "COI"]), ["IMAP4rev1", "SORTX", "COI"]);
    }

    fn caps(s: &str) -> Vec<String> {
        parse_list(s.as_bytes())
    }

    #[test]
    fn strips_what_cannot_pass() {
        let got = post_login(&caps("IMAP4rev1 STARTTLS AUTH=PLAIN COMPRESS=DEFLATE IDLE STARTTLSX LITERAL+"), &["COI"]);
        assert_eq!(got.join(" "), "IMAP4rev1 IDLE STARTTLSX LITERAL+ COI");
        assert_eq!(
            stripped(&caps("IMAP4rev1 compress=deflate LOGINDISABLED XDELTAPUSH XCHATMAIL")).join(" "),
            "compress=deflate LOGINDISABLED XCHATMAIL"
        );
    }

    #[test]
    fn finds_lists_in_responses() {
        let l = b"* CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE\r\n";
        assert_eq!(rewrite_response(l, &[]).unwrap(), b"* CAPABILITY IMAP4rev1 IDLE\r\n");
        let l = b"a1 OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] Logged in\r\n";
        assert_eq!(rewrite_response(l, &["X"]).unwrap(), b"a1 OK [CAPABILITY IMAP4rev1 IDLE X] Logged in\r\n");
        let l = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n";
        assert_eq!(rewrite_response(l, &[]).unwrap(), b"* OK [CAPABILITY IMAP4rev1] ready\r\n");
        assert!(rewrite_response(b"* 3 EXISTS\r\n", &[]).is_none());
        assert!(rewrite_response(b"a1 OK done CAPABILITY x\r\n", &[]).is_none());
        assert!(rewrite_response(b"* OK [CAPABILITY unterminated\r\n", &[]).is_none());
    }

    #[test]
    fn non_utf8_capabilities_do_not_panic() {
        let line = b"* CAPABILITY IMAP4\x00\xc0v1 IDLE \xc3\xa4UTH=X COMPRESS=DEFLATE\r\n";
        let rewritten = rewrite_response(line, &["COI"]).unwrap();
        assert!(!String::from_utf8_lossy(&rewritten).contains("COMPRESS"));
    }

    #[test]
    fn pre_login_sets() {
        assert_eq!(
            pre_login(false, true),
            "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN"
        );
        assert!(pre_login(false, false).ends_with("STARTTLS LOGINDISABLED"));
        assert!(!pre_login(true, false).contains("STARTTLS"));
    }
}
