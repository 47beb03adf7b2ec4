//! SecureJoin invite links as Delta Chat 2.65 writes and reads them (chatmail/core `securejoin.rs`
//! `get_securejoin_qr`, `qr.rs` `decode_openpgp`):
//!
//! `https://i.delta.chat/#<FPR>&v=3&i=<invitenumber>&s=<auth>&a=<addr>&n=<name>` for a contact,
//! with `&x=<group id>` before `i` and `&g=<group name>` at the end for a group. `OPENPGP4FPR:`
//! links (`OPENPGP4FPR:<FPR>#a=…`) are read too. Parsing is strict, because a link comes from
//! anyone: the fingerprint is 40 or 64 hex digits, tokens are URL-safe base64 of 11 to 32
//! characters, the address must be one, names are percent-encoded UTF-8, and a parameter may
//! appear once. Unknown parameters are ignored, as Delta Chat ignores them.

use std::fmt::Write as _;

use base64::Engine;
use rand_core_06::{OsRng, RngCore};

use crate::openpgp::fingerprint::{Fingerprint, FingerprintError};
use crate::openpgp::mime::canonical_addr;

const HTTPS: &str = "https://i.delta.chat/#";
const HTTPS_NO_SLASH: &str = "https://i.delta.chat#";
const OPENPGP4FPR: &str = "OPENPGP4FPR:";
/// Longest link we parse (Delta Chat's are under 300 characters).
pub const MAX_LINK: usize = 2048;
/// Delta Chat shortens names in links to this many characters (a trailing `_` marks the cut).
const NAME_CHARS: usize = 25;
const GROUP_SELF_NAME_CHARS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("the link is {0} characters, more than {MAX_LINK}")]
    TooLong(usize),
    #[error("not a Delta Chat invite link (expected https://i.delta.chat/#… or OPENPGP4FPR:…)")]
    NotAnInvite,
    #[error("bad fingerprint in the link: {0}")]
    Fingerprint(#[from] FingerprintError),
    #[error("parameter {0:?} appears twice")]
    Duplicate(String),
    #[error("parameter {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("the link has no address (a=)")]
    MissingAddr,
    #[error("the address in the link is not an e-mail address")]
    BadAddr,
    #[error("the link has no auth token (s=): it only names a key, it is no invite")]
    MissingAuth,
    #[error("parameter {0} is not a valid token (URL-safe base64, 11 to 32 characters)")]
    BadToken(&'static str),
    #[error("parameter {0} is not percent-encoded UTF-8")]
    BadEncoding(&'static str),
    #[error("the link is SecureJoin version {0}; version 3 is supported")]
    Version(String),
    #[error("a group link needs both a group id (x=) and a name (g=)")]
    IncompleteGroup,
    #[error("broadcast channel links (b=, j=) are not supported")]
    Broadcast,
}

/// What an invite is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Become a verified contact of the inviter.
    Contact,
    /// Join the inviter's group.
    Group { id: String, name: String },
}

/// A parsed or issued invite.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    pub fingerprint: Fingerprint,
    /// The inviter's address (canonical), then further relay addresses (`r=`).
    pub addrs: Vec<String>,
    /// The inviter's display name (may be empty).
    pub name: String,
    /// Delta Chat's `i` (may be empty in v3 links).
    pub invitenumber: String,
    /// `s`: the secret the handshake proves.
    pub auth: String,
    pub target: Target,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens are secrets of the handshake: not in logs.
        f.debug_struct("Invite")
            .field("fingerprint", &self.fingerprint)
            .field("addrs", &self.addrs)
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Invite {
    /// A fresh setup-contact invite for our key.
    pub fn new_contact(fingerprint: Fingerprint, addr: &str, name: &str) -> Invite {
        Invite {
            fingerprint,
            addrs: vec![canonical_addr(addr)],
            name: name.to_string(),
            invitenumber: new_token(),
            auth: new_token(),
            target: Target::Contact,
        }
    }

    /// The inviter's primary address.
    pub fn addr(&self) -> &str {
        self.addrs.first().map(String::as_str).unwrap_or("")
    }

    /// The password SecureJoin v3 encrypts its first two steps with.
    pub fn password(&self) -> String {
        password(&self.fingerprint, &self.auth)
    }

    /// The link in Delta Chat's form.
    pub fn to_link(&self) -> String {
        let mut out = format!("{HTTPS}{}&v=3", self.fingerprint.hex());
        let self_name_len = match self.target {
            Target::Contact => NAME_CHARS,
            Target::Group { .. } => GROUP_SELF_NAME_CHARS,
        };
        if let Target::Group { id, .. } = &self.target {
            let _ = write!(out, "&x={id}");
        }
        // v3 links may come without an invitenumber; then none is written either.
        if !self.invitenumber.is_empty() {
            let _ = write!(out, "&i={}", self.invitenumber);
        }
        let _ = write!(out, "&s={}&a={}", self.auth, encode(self.addr()));
        if self.addrs.len() > 1 {
            let rest: Vec<String> = self.addrs[1..].iter().map(|a| encode(a)).collect();
            let _ = write!(out, "&r={}", rest.join(","));
        }
        let _ = write!(out, "&n={}", encode_name(&shorten(&self.name, self_name_len)));
        if let Target::Group { name, .. } = &self.target {
            let _ = write!(out, "&g={}", encode_name(&shorten(name, NAME_CHARS)));
        }
        out
    }

    /// Parses a link strictly.
    pub fn parse(link: &str) -> Result<Invite, InviteError> {
        let link = link.trim();
        if link.len() > MAX_LINK {
            return Err(InviteError::TooLong(link.len()));
        }
        let starts = |p: &str| link.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        let (fpr, fragment) = if starts(HTTPS) || starts(HTTPS_NO_SLASH) {
            let rest = &link[link.find('#').map_or(link.len(), |i| i + 1)..];
            rest.split_once('&').unwrap_or((rest, ""))
        } else if starts(OPENPGP4FPR) {
            let rest = &link[OPENPGP4FPR.len()..];
            // iOS and macOS sometimes percent-encode the '#'.
            rest.split_once('#').or_else(|| rest.split_once("%23")).unwrap_or((rest, ""))
        } else {
            return Err(InviteError::NotAnInvite);
        };
        let fingerprint = Fingerprint::parse_strict(fpr)?;
        let mut params: Vec<(&str, &str)> = Vec::new();
        for part in fragment.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| InviteError::NotKeyValue(clip(part)))?;
            if params.iter().any(|(seen, _)| *seen == k) {
                return Err(InviteError::Duplicate(clip(k)));
            }
            params.push((k, v));
        }
        let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if let Some(v) = get("v")
            && v != "3"
        {
            return Err(InviteError::Version(clip(v)));
        }
        if get("b").is_some() || get("j").is_some() {
            return Err(InviteError::Broadcast);
        }
        let mut addrs = vec![decode_addr(get("a").ok_or(InviteError::MissingAddr)?)?];
        if let Some(r) = get("r") {
            for a in r.split(',') {
                addrs.push(decode_addr(a)?);
            }
        }
        let auth = token(get("s").ok_or(InviteError::MissingAuth)?, "s")?;
        let invitenumber = match get("i") {
            Some(i) => token(i, "i")?,
            None => String::new(),
        };
        let name = get("n").map(|n| decode_name(n, "n")).transpose()?.unwrap_or_default();
        let target = match (get("x"), get("g")) {
            (None, None) => Target::Contact,
            (Some(id), Some(name)) => Target::Group { id: token(id, "x")?, name: decode_name(name, "g")? },
            _ => return Err(InviteError::IncompleteGroup),
        };
        Ok(Invite { fingerprint, addrs, name, invitenumber, auth, target })
    }
}

/// `securejoin/<FPR>/<auth>`, the password of the first two SecureJoin v3 steps.
pub fn password(fingerprint: &Fingerprint, auth: &str) -> String {
    format!("securejoin/{}/{auth}", fingerprint.hex())
}

/// A token as Delta Chat makes them (`create_id`): 144 random bits, URL-safe base64.
pub fn new_token() -> String {
    let mut bytes = [0u8; 18];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

fn token(value: &str, name: &'static str) -> Result<String, InviteError> {
    let ok = (11..=32).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
    if ok { Ok(value.to_string()) } else { Err(InviteError::BadToken(name)) }
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

fn percent_decode(value: &str, name: &'static str) -> Result<String, InviteError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or(InviteError::BadEncoding(name))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| InviteError::BadEncoding(name))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| InviteError::BadEncoding(name))
}

fn decode_addr(value: &str) -> Result<String, InviteError> {
    let addr = canonical_addr(&percent_decode(value, "a")?);
    let valid = addr.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'))
        && !addr.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"<>,;\"()[]\\".contains(&b));
    if valid { Ok(addr) } else { Err(InviteError::BadAddr) }
}

/// Names: `+` is a space, a trailing `_` marks a shortened name (shown as `…`).
fn decode_name(value: &str, name: &'static str) -> Result<String, InviteError> {
    let mut decoded = percent_decode(&value.replace('+', "%20"), name)?;
    if decoded.chars().any(char::is_control) {
        return Err(InviteError::BadEncoding(name));
    }
    if let Some(stripped) = decoded.strip_suffix('_') {
        decoded = format!("{stripped}…");
    }
    Ok(decoded)
}

/// Delta Chat's encoding: everything but ASCII letters, digits, `.` and `_` as `%XX`.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn encode_name(value: &str) -> String {
    encode(value).replace("%20", "+")
}

fn shorten(name: &str, chars: usize) -> String {
    if name.chars().count() > chars {
        format!("{}_", name.chars().take(chars.saturating_sub(1)).collect::<String>())
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{exported_fingerprint, fixture};

    fn link(name: &str) -> String {
        String::from_utf8(fixture(name)).unwrap().trim().to_string()
    }

    #[test]
    fn parses_delta_chats_contact_link() {
        let invite = Invite::parse(&link("invite-alice.txt")).unwrap();
        assert_eq!(invite.fingerprint, exported_fingerprint("alice"));
        assert_eq!(invite.addrs, ["alice@example.org"]);
        assert_eq!(invite.name, "Alice");
        assert_eq!(invite.target, Target::Contact);
        assert_eq!(invite.invitenumber.len(), 24);
        assert_eq!(invite.auth.len(), 24);
        // Written back, it is the same link, byte for byte.
        assert_eq!(invite.to_link(), link("invite-alice.txt"));
        assert!(!format!("{invite:?}").contains(&invite.auth), "tokens stay out of Debug");
    }

    #[test]
    fn parses_delta_chats_group_link() {
        let invite = Invite::parse(&link("invite-group.txt")).unwrap();
        assert_eq!(invite.target, Target::Group { id: "dFXyuQ_eDDe3dsumrIOm9BSG".into(), name: "Team".into() });
        assert_eq!(invite.to_link(), link("invite-group.txt"));
    }

    #[test]
    fn new_invites_round_trip_with_awkward_names() {
        let fp = exported_fingerprint("bob");
        let mut invite =
            Invite::new_contact(fp.clone(), "Bob.Smith+tag@Example.org", "Bob Smith & Söhne, a very long name indeed");
        invite.addrs.push("bob@relay.example".into());
        let link = invite.to_link();
        assert!(link.starts_with(&format!("https://i.delta.chat/#{}&v=3&i=", fp.hex())));
        assert!(
            link.contains(
                "&a=bob.smith%2Btag%40example.org&r=bob%40relay.example&n=Bob+Smith+%26+S%C3%B6hne%2C+a+ver_"
            )
        );
        let back = Invite::parse(&link).unwrap();
        assert_eq!(back.name, "Bob Smith & Söhne, a ver…");
        assert_eq!(
            (back.auth, back.invitenumber, back.addrs),
            (invite.auth.clone(), invite.invitenumber.clone(), invite.addrs.clone())
        );
        assert_eq!(invite.password(), format!("securejoin/{}/{}", fp.hex(), invite.auth));
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn other_spellings_delta_chat_accepts() {
        let fp = exported_fingerprint("alice").hex();
        let ok = [
            format!(
                "OPENPGP4FPR:{fp}#a=alice%40example.org&n=Alice&i=TEDHCFHusDGfjVGBPwsFUazJ&s=BEVrjme8guPrn2rAbBhv7hOV"
            ),
            format!("openpgp4fpr:{fp}%23a=alice%40example.org&s=BEVrjme8guPrn2rAbBhv7hOV"),
            format!("https://i.delta.chat#{fp}&v=3&s=BEVrjme8guPrn2rAbBhv7hOV&a=alice@example.org&future=1"),
        ];
        for l in ok {
            let invite = Invite::parse(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(invite.addr(), "alice@example.org");
            assert_eq!(invite.auth, "BEVrjme8guPrn2rAbBhv7hOV");
            // Written back (without an invitenumber if it had none), it parses to the same.
            assert_eq!(Invite::parse(&invite.to_link()).unwrap(), invite);
        }
    }

    #[test]
    fn strict_rejections() {
        let fp = exported_fingerprint("alice").hex();
        let base = |rest: &str| format!("https://i.delta.chat/#{fp}{rest}");
        let cases: Vec<(String, InviteError)> = vec![
            ("https://example.org/#x".into(), InviteError::NotAnInvite),
            (
                "https://i.delta.chat/#1234&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org".into(),
                InviteError::Fingerprint(FingerprintError::Length(4)),
            ),
            (base("&a=a%40b.org"), InviteError::MissingAuth),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV"), InviteError::MissingAddr),
            (base("&s=short&a=a%40b.org"), InviteError::BadToken("s")),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&i=bad token!!&a=a%40b.org"), InviteError::BadToken("i")),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=not-an-address"), InviteError::BadAddr),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org&a=c%40d.org"), InviteError::Duplicate("a".into())),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org&n=%FF"), InviteError::BadEncoding("n")),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org&n=%4"), InviteError::BadEncoding("n")),
            (base("&v=4&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org"), InviteError::Version("4".into())),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org&x=dFXyuQ_eDDe3dsumrIOm9BSG"), InviteError::IncompleteGroup),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org&j=dFXyuQ_eDDe3dsumrIOm9BSG"), InviteError::Broadcast),
            (base("&s=BEVrjme8guPrn2rAbBhv7hOV&a=a%40b.org&novalue"), InviteError::NotKeyValue("novalue".into())),
            (format!("https://i.delta.chat/#{}", "A".repeat(MAX_LINK)), InviteError::TooLong(MAX_LINK + 22)),
        ];
        for (l, e) in cases {
            assert_eq!(Invite::parse(&l), Err(e), "{l}");
        }
    }
}
