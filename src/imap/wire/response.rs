//! Reading the few untagged responses the proxy's own commands need (SEARCH results, a FETCH's
//! UID and literal, response codes) and writing UID sets. Pure functions over whole responses
//! as a provider connection returns them (literals inline).

use super::command;

/// The number in a `* OK [NAME n]` response code.
pub fn response_code_number(resp: &[u8], name: &str) -> Option<u32> {
    let text = String::from_utf8_lossy(resp);
    let rest = text.split(&format!("[{name} ")).nth(1)?;
    rest.split(']').next()?.trim().parse().ok()
}

/// The mailbox of a `* LIST (… attribute …) "." "Name"` response that carries `attribute`
/// (e.g. `\\Junk`, RFC 6154).
pub fn list_mailbox_with(line: &[u8], attribute: &str) -> Option<String> {
    let body = line.strip_prefix(b"* ")?;
    let parsed = command::parse(&[b"x ", body].concat()).ok()?;
    if !parsed.name.eq_ignore_ascii_case("LIST") {
        return None;
    }
    let command::Arg::List(attributes) = parsed.args.first()? else { return None };
    let has = attributes.iter().any(|a| a.astring().is_some_and(|a| a.eq_ignore_ascii_case(attribute.as_bytes())));
    if !has {
        return None;
    }
    parsed.args.get(2)?.astring().map(|n| String::from_utf8_lossy(n).into_owned())
}

/// A number from a `* STATUS name (UIDNEXT n …)` response.
pub fn status_number(resp: &[u8], item: &str) -> Option<u32> {
    let text = String::from_utf8_lossy(resp);
    if !text.get(..9).is_some_and(|h| h.eq_ignore_ascii_case("* STATUS ")) {
        return None;
    }
    let items = &text[text.rfind('(')? + 1..];
    let mut words = items.split(|c: char| c.is_whitespace() || c == ')');
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case(item) {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The UIDs of a `* SEARCH` response (none for any other response).
pub fn search_uids(resp: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(resp);
    let Some(rest) = text.strip_prefix("* SEARCH") else { return Vec::new() };
    rest.split_whitespace().filter_map(|n| n.parse().ok()).collect()
}

/// A compact UID set: `1:3,7`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start { start.to_string() } else { format!("{start}:{}", sorted[i]) });
        i += 1;
    }
    parts.join(",")
}

/// The UID in a FETCH response.
pub fn fetch_uid(resp: &[u8]) -> Option<u32> {
    let head = &resp[..memchr::memmem::find(resp, b"}\r\n").unwrap_or(resp.len())];
    let text = String::from_utf8_lossy(head).to_ascii_uppercase();
    let at = text.find("UID ")? + 4;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The first literal in a response.
pub fn first_literal(resp: &[u8]) -> Option<&[u8]> {
    let end = memchr::memmem::find(resp, b"}\r\n")?;
    let open = resp[..end].iter().rposition(|&b| b == b'{')?;
    let len: usize = std::str::from_utf8(&resp[open + 1..end]).ok()?.trim_end_matches('+').parse().ok()?;
    resp.get(end + 3..end + 3 + len)
}

/// Most UIDs expanded from one COPYUID set (a client cannot make the worker move more at once
/// than a FETCH batch; this only bounds a provider's nonsense).
const MAX_COPYUID: usize = 10_000;

/// The destination UIDVALIDITY and (source, destination) UID pairs of a `[COPYUID …]` code in
/// any of `responses` (MOVE sends it untagged, COPY in the tagged OK).
pub fn copyuid(responses: &[&[u8]]) -> Option<(u32, Vec<(u32, u32)>)> {
    responses.iter().find_map(|resp| {
        let text = String::from_utf8_lossy(resp);
        let at = text.to_ascii_uppercase().find("[COPYUID ")?;
        let inner = text[at + 9..].split(']').next()?;
        let mut words = inner.split_whitespace();
        let uidvalidity = words.next()?.parse().ok()?;
        let source = expand(words.next()?)?;
        let dest = expand(words.next()?)?;
        (source.len() == dest.len()).then(|| (uidvalidity, source.into_iter().zip(dest).collect()))
    })
}

/// The destination UIDVALIDITY and UIDs of an `OK [APPENDUID …]` code (RFC 4315), in the
/// order of the appended messages (one for APPEND, a set for MULTIAPPEND).
pub fn appenduid(status: &[u8]) -> Option<(u32, Vec<u32>)> {
    let text = String::from_utf8_lossy(status);
    let at = text.to_ascii_uppercase().find("[APPENDUID ")?;
    let mut words = text[at + 11..].split(']').next()?.split_whitespace();
    let uidvalidity = words.next()?.parse().ok()?;
    let uids = expand(words.next()?)?;
    words.next().is_none().then_some((uidvalidity, uids))
}

/// `1:3,7` → `[1, 2, 3, 7]`, bounded.
fn expand(set: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        let (lo, hi) = (a.min(b), a.max(b));
        if out.len() + (hi - lo) as usize >= MAX_COPYUID {
            return None;
        }
        out.extend(lo..=hi);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        assert_eq!(uid_set(&[7, 1, 2, 3, 9, 10]), "1:3,7,9:10");
        assert_eq!(response_code_number(b"* OK [UIDNEXT 42] Predicted next UID\r\n", "UIDNEXT"), Some(42));
        assert_eq!(search_uids(b"* SEARCH 3 5 8\r\n"), vec![3, 5, 8]);
        let resp = b"* 2 FETCH (UID 9 BODY[]<0> {5}\r\nhello)\r\n";
        assert_eq!((fetch_uid(resp), first_literal(resp)), (Some(9), Some(&b"hello"[..])));
        assert_eq!(fetch_uid(b"* 2 FETCH (FLAGS () UID 12)\r\n"), Some(12));
    }

    #[test]
    fn list_attributes_and_status_numbers() {
        assert_eq!(
            list_mailbox_with(b"* LIST (\\HasNoChildren \\Junk) \".\" Junk\r\n", "\\Junk").as_deref(),
            Some("Junk")
        );
        assert_eq!(
            list_mailbox_with(b"* LIST (\\Junk) \"/\" \"[Gmail]/Spam\"\r\n", "\\junk").as_deref(),
            Some("[Gmail]/Spam")
        );
        assert_eq!(list_mailbox_with(b"* LIST (\\HasNoChildren \\Trash) \".\" Trash\r\n", "\\Junk"), None);
        assert_eq!(list_mailbox_with(b"* LSUB (\\Junk) \".\" Junk\r\n", "\\Junk"), None);
        assert_eq!(list_mailbox_with(b"garbage", "\\Junk"), None);
        let status = b"* STATUS Junk (UIDNEXT 17 UIDVALIDITY 1700000000)\r\n";
        assert_eq!(status_number(status, "UIDNEXT"), Some(17));
        assert_eq!(status_number(status, "uidvalidity"), Some(1_700_000_000));
        assert_eq!(status_number(b"* STATUS \"a (b\" (MESSAGES 2)\r\n", "MESSAGES"), Some(2));
        assert_eq!(status_number(b"* 3 EXISTS\r\n", "UIDNEXT"), None);
        assert_eq!(status_number(b"* STATUS Junk (UIDNEXT x)\r\n", "UIDNEXT"), None);
        assert_eq!(status_number("* STATUS ä (UIDNEXT 1)".as_bytes(), "UIDNEXT"), Some(1));
    }

    #[test]
    fn copyuid_codes() {
        let untagged: &[u8] = b"* OK [COPYUID 1700000000 4:6,9 11:14] Moved UIDs.\r\n";
        assert_eq!(
            copyuid(&[b"* 4 EXPUNGE\r\n", untagged]),
            Some((1700000000, vec![(4, 11), (5, 12), (6, 13), (9, 14)]))
        );
        assert_eq!(copyuid(&[b"OK [COPYUID 7 3 1] Done\r\n"]), Some((7, vec![(3, 1)])));
        assert_eq!(copyuid(&[b"OK Done\r\n"]), None);
        assert_eq!(copyuid(&[b"OK [COPYUID 7 1:2 1] Done\r\n"]), None, "sizes differ");
        assert_eq!(copyuid(&[b"OK [COPYUID 7 1:4000000000 1:4000000000] x\r\n"]), None, "bounded");
        assert_eq!(appenduid(b"OK [APPENDUID 1700000000 12] Append completed.\r\n"), Some((1700000000, vec![12])));
        assert_eq!(appenduid(b"OK [appenduid 7 3] done\r\n"), Some((7, vec![3])));
        assert_eq!(appenduid(b"OK [APPENDUID 7 3:4,9] three messages\r\n"), Some((7, vec![3, 4, 9])));
        assert_eq!(appenduid(b"OK [APPENDUID 7 3:x] odd\r\n"), None);
        assert_eq!(appenduid(b"OK Append completed.\r\n"), None);
    }
}
