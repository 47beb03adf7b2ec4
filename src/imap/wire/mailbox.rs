//! Mailbox names as IMAP carries them: modified UTF-7 (RFC 3501 §5.1.3), and the comparison
//! of two names as a provider resolves them: INBOX in any case, a trailing hierarchy separator
//! dropped, and the same characters whichever way they were encoded.

use base64::Engine;
use base64::alphabet::Alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Base64 with `,` for `/`, unpadded (RFC 3501 §5.1.3).
fn engine() -> GeneralPurpose {
    let alphabet = Alphabet::new("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").expect("alphabet");
    let config = GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false);
    GeneralPurpose::new(&alphabet, config)
}

/// `name` in modified UTF-7: printable ASCII stays (`&` becomes `&-`), the rest is UTF-16 in
/// modified base64 between `&` and `-`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&engine().encode(bytes));
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// The characters a modified UTF-7 name stands for; `None` if it is not valid modified UTF-7.
pub fn decode(name: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some((&b, tail)) = rest.split_first() {
        if !(0x20..=0x7e).contains(&b) {
            return None;
        }
        if b != b'&' {
            out.push(b as char);
            rest = tail;
            continue;
        }
        let end = tail.iter().position(|&c| c == b'-')?;
        let (encoded, after) = (&tail[..end], &tail[end + 1..]);
        rest = after;
        if encoded.is_empty() {
            out.push('&');
            continue;
        }
        let bytes = engine().decode(encoded).ok()?;
        if bytes.len() % 2 != 0 {
            return None;
        }
        let units: Vec<u16> = bytes.chunks(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
        let text = String::from_utf16(&units).ok()?;
        // Printable ASCII must stand for itself.
        if text.chars().any(|c| (' '..='~').contains(&c)) {
            return None;
        }
        out.push_str(&text);
    }
    Some(out)
}

/// `name` as a provider with hierarchy separator `separator` resolves it: decoded (names that
/// are not modified UTF-7 are taken as they are), without a trailing separator, and with INBOX,
/// as a whole name or the first level, in upper case.
pub fn canonical(name: &[u8], separator: Option<char>) -> String {
    let mut name = decode(name).unwrap_or_else(|| String::from_utf8_lossy(name).into_owned());
    if let Some(sep) = separator
        && name.len() > sep.len_utf8()
        && name.ends_with(sep)
    {
        name.pop();
    }
    let first_end = separator.and_then(|sep| name.find(sep)).unwrap_or(name.len());
    if name[..first_end].eq_ignore_ascii_case("INBOX") {
        name.replace_range(..first_end, "INBOX");
    }
    name
}

/// Whether `name` is `ancestor` or lies below it, compared as the provider resolves names.
pub fn at_or_below(name: &[u8], ancestor: &[u8], separator: Option<char>) -> bool {
    let (name, ancestor) = (canonical(name, separator), canonical(ancestor, separator));
    name == ancestor || separator.is_some_and(|sep| name.starts_with(&format!("{ancestor}{sep}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf7() {
        for (plain, wire) in [
            ("INBOX", "INBOX"),
            ("Ärger", "&AMQ-rger"),
            ("Entw&rfe", "Entw&-rfe"),
            ("日本語", "&ZeVnLIqe-"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("😀", "&2D3eAA-"),
        ] {
            assert_eq!(encode(plain), wire);
            assert_eq!(decode(wire.as_bytes()).as_deref(), Some(plain));
        }
        assert_eq!(decode(b"&AEE-"), None, "ASCII must not be encoded");
        assert_eq!(decode(b"&AMQ"), None, "unterminated");
        assert_eq!(decode(b"&A-"), None);
        assert_eq!(decode("Ä".as_bytes()), None, "8-bit is not modified UTF-7");
    }

    #[test]
    fn names_as_the_provider_resolves_them() {
        let dot = Some('.');
        assert_eq!(canonical(b"COI.Chats.", dot), "COI.Chats");
        assert_eq!(canonical(b"inbox.COI.Chats", dot), "INBOX.COI.Chats");
        assert_eq!(canonical(b"inboxes.x", dot), "inboxes.x");
        assert_eq!(canonical(b"&AMQ-rger.Chats", dot), "Ärger.Chats");
        assert_eq!(canonical(b".", dot), ".");
        assert!(at_or_below(b"COI.Chats", b"COI", dot));
        assert!(at_or_below(b"COI.", b"COI", dot));
        assert!(!at_or_below(b"COI2.Chats", b"COI", dot));
        assert!(at_or_below(b"INBOX/COI/Chats", b"inbox", Some('/')));
    }
}
