//! The few IMAP responses the push side reads: a FETCH of header fields, INTERNALDATE and the
//! start of the body; and the COPYUID code (RFC 4315) that says where moved messages went
//! (read in `imap::wire::response`, shared with the decrypted view).

pub use crate::imap::wire::response::copyuid;

/// One message of a `UID FETCH … (UID INTERNALDATE BODY.PEEK[HEADER.FIELDS (…)]
/// BODY.PEEK[TEXT]<0.n>)` answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub uid: u32,
    /// Seconds since the epoch.
    pub internal_date: Option<i64>,
    pub header: Vec<u8>,
    pub text: Option<Vec<u8>>,
}

/// Reads a `* n FETCH (…)` response. Literal contents are skipped as a whole, so header text
/// that looks like `UID 5` is never mistaken for an attribute.
pub fn parse_fetch(resp: &[u8]) -> Option<Fetched> {
    let head = String::from_utf8_lossy(&resp[..resp.len().min(40)]).to_ascii_uppercase();
    if !head.starts_with("* ") || !head.contains(" FETCH (") {
        return None;
    }
    let mut out = Fetched::default();
    let mut uid = None;
    let mut i = resp.iter().position(|&b| b == b'(')? + 1;
    while i < resp.len() {
        let rest = &resp[i..];
        if starts_with_ci(rest, b"UID ") {
            let digits: Vec<u8> = rest[4..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
            uid = std::str::from_utf8(&digits).ok()?.parse().ok();
            i += 4 + digits.len();
        } else if starts_with_ci(rest, b"INTERNALDATE ") {
            let (value, used) = string_value(&rest[13..])?;
            out.internal_date = value.as_deref().and_then(|v| internal_date(&String::from_utf8_lossy(v)));
            i += 13 + used;
        } else if starts_with_ci(rest, b"BODY[") {
            let close = rest.iter().position(|&b| b == b']')?;
            let section = String::from_utf8_lossy(&rest[5..close]).to_ascii_uppercase();
            let mut j = close + 1;
            if rest.get(j) == Some(&b'<') {
                j += rest[j..].iter().position(|&b| b == b'>')? + 1;
            }
            if rest.get(j) != Some(&b' ') {
                return None;
            }
            let (value, used) = string_value(&rest[j + 1..])?;
            if section.starts_with("HEADER") {
                out.header = value.unwrap_or_default();
            } else if section == "TEXT" {
                out.text = value;
            }
            i += j + 1 + used;
        } else {
            i += 1;
        }
    }
    out.uid = uid?;
    Some(out)
}

/// An nstring at the start of `s`: a literal, a quoted string or NIL; the value and the bytes
/// it took.
fn string_value(s: &[u8]) -> Option<(Option<Vec<u8>>, usize)> {
    match s.first()? {
        b'{' => {
            let close = s.iter().position(|&b| b == b'}')?;
            let len: usize = std::str::from_utf8(&s[1..close]).ok()?.trim_end_matches('+').parse().ok()?;
            let start = close + 3; // "}\r\n"
            Some((Some(s.get(start..start + len)?.to_vec()), start + len))
        }
        b'"' => {
            let mut value = Vec::new();
            let mut i = 1;
            while i < s.len() {
                match s[i] {
                    b'\\' => {
                        value.push(*s.get(i + 1)?);
                        i += 2;
                    }
                    b'"' => return Some((Some(value), i + 1)),
                    b => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
            None
        }
        _ if starts_with_ci(s, b"NIL") => Some((None, 3)),
        _ => None,
    }
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `17-Jul-1996 02:44:25 -0700` (RFC 3501 date-time) as seconds since the epoch.
pub fn internal_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let mut parts = text.split_whitespace();
    let (date, time, zone) = (parts.next()?, parts.next()?, parts.next()?);
    let mut d = date.split('-');
    let day: u8 = d.next()?.parse().ok()?;
    let month_name = d.next()?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month_name))? as u8 + 1;
    let year: u16 = d.next()?.parse().ok()?;
    let mut t = time.split(':').map(|n| n.parse::<u8>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    let (sign, hhmm) = zone.split_at_checked(1)?;
    // Digits only: a provider's bytes must not make the slicing below cut a character.
    if hhmm.len() != 4 || !hhmm.bytes().all(|b| b.is_ascii_digit()) || !matches!(sign, "+" | "-") {
        return None;
    }
    let dt = mail_parser::DateTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        tz_before_gmt: sign == "-",
        tz_hour: hhmm[..2].parse().ok()?,
        tz_minute: hhmm[2..].parse().ok()?,
    };
    dt.is_valid().then(|| dt.to_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_with_two_literals() {
        let resp = b"* 4 FETCH (UID 17 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[HEADER.FIELDS (FROM SUBJECT)] {28}\r\nSubject: UID 99 BODY[TEXT]\r\n BODY[TEXT]<0> {5}\r\nhello)\r\n";
        let f = parse_fetch(resp).unwrap();
        assert_eq!(f.uid, 17);
        assert_eq!(f.header, b"Subject: UID 99 BODY[TEXT]\r\n");
        assert_eq!(f.text.as_deref(), Some(&b"hello"[..]));
        assert_eq!(f.internal_date, Some(837596665));
        let f = parse_fetch(b"* 1 FETCH (BODY[TEXT]<0> NIL UID 3 BODY[HEADER.FIELDS (FROM)] \"\")\r\n").unwrap();
        assert_eq!((f.uid, f.text, f.header.len()), (3, None, 0));
        assert!(parse_fetch(b"* 1 EXISTS\r\n").is_none());
        assert!(parse_fetch(b"* 1 FETCH (FLAGS ())\r\n").is_none(), "no UID");
    }

    #[test]
    fn internal_dates() {
        assert_eq!(internal_date("17-Jul-1996 02:44:25 -0700"), Some(837596665));
        assert_eq!(internal_date(" 1-Jan-1970 00:00:00 +0000"), Some(0));
        assert_eq!(internal_date("1-Foo-1970 00:00:00 +0000"), None);
        assert_eq!(internal_date("1-Jan-1970 00:00:00"), None);
        // Found by fuzzing: a non-ASCII zone used to panic on a char boundary.
        assert_eq!(internal_date("22-Nov-2026 08:01:00 +\u{fffd}3"), None);
        assert_eq!(internal_date("22-Nov-2026 08:01:00 +0\u{e9}"), None);
    }
}
