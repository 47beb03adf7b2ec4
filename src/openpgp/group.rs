//! Delta Chat groups the plain user is in, so that what they write in reply lands in the group.
//!
//! Delta Chat sends every group message encrypted to all members, with the group's id and name
//! as protected headers (`Chat-Group-ID`, `Chat-Group-Name`) and the members in `To`
//! (chatmail/core `mimefactory.rs`). On receipt (`receive_imf.rs`) an encrypted message with a
//! `Chat-Group-ID` of a known group goes into that group, whoever it is addressed to; members
//! named in `To` of a message without `Chat-Version` (a mail program's) are added, none is
//! removed. So a plain user's reply lands in the group when it is encrypted, carries the group's
//! id and name inside, and goes to every member (Delta Chat users expect group messages to reach
//! everyone; a mail program's "Reply" addresses only the sender).
//!
//! [`learn`] keeps, from each group message the account worker decrypts, the group's name,
//! members (sender and recipients of the newest message, less removed members and the account
//! itself) and the Message-IDs of its recent messages; [`of_reply`] finds the group an outgoing
//! message answers by its `In-Reply-To`/`References`; [`address`] writes the group into it.
//! Only signed messages teach anything (an unsigned one could come from anyone who has the
//! account's public key), and every value from a peer is checked before it is written into our
//! own header fields.

use super::decrypt::{Decrypted, SignatureStatus};
use super::mime::{self, canonical_addr};

/// Message-IDs kept per group: a reply usually answers one of the last few.
pub const MAX_MESSAGE_IDS: usize = 200;
/// Members kept per group (Delta Chat's groups are far smaller).
pub const MAX_MEMBERS: usize = 1_000;
/// Longest group id taken (Delta Chat's are 11 to 24 characters).
const MAX_ID: usize = 64;

/// A group as the account knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// Canonical addresses, without the account's own.
    pub members: Vec<String>,
    /// Bare Message-IDs (no angle brackets) of the group's recent messages, oldest first.
    pub message_ids: Vec<String>,
    /// The Date of the message the members and name come from.
    pub updated_at: i64,
}

/// The group state after the decrypted message `d` (received at `received_at`) for account
/// `own`, given what was known (`old`); `None` when it is no group message to learn from.
pub fn learn(d: &Decrypted, own: &str, old: Option<&Group>, received_at: i64) -> Option<Group> {
    let p = &d.protected;
    let id = p.chat_group_id.as_deref().filter(|id| valid_id(id))?;
    if !matches!(d.signature, SignatureStatus::Valid(_)) || old.is_some_and(|g| g.id != id) {
        return None;
    }
    let own = canonical_addr(own);
    let at = p.date.unwrap_or(received_at);
    let mut group = old.cloned().unwrap_or_else(|| Group {
        id: id.to_string(),
        name: String::new(),
        members: Vec::new(),
        message_ids: Vec::new(),
        updated_at: i64::MIN,
    });
    if at >= group.updated_at {
        let removed = p.chat_group_member_removed.as_deref().map(canonical_addr);
        let past: Vec<String> = p.chat_group_past_members.iter().map(|m| canonical_addr(&m.addr)).collect();
        let mut members = Vec::new();
        let sender = d.from.iter().map(|m| canonical_addr(&m.addr));
        for addr in sender.chain(p.recipients()) {
            if !addr.contains('@')
                || addr == own
                || removed.as_deref() == Some(addr.as_str())
                || past.contains(&addr)
                || members.contains(&addr)
            {
                continue;
            }
            members.push(addr);
        }
        members.truncate(MAX_MEMBERS);
        group.members = members;
        if let Some(name) = p.chat_group_name.as_deref().filter(|n| !n.trim().is_empty()) {
            group.name = name.chars().filter(|c| !c.is_control()).take(200).collect();
        }
        group.updated_at = at;
    }
    if let Some(mid) = p.message_id.as_deref() {
        remember(&mut group, mid);
    }
    Some(group)
}

/// Adds the Message-ID in `value` (`<id>`) to the group's recent ones; whether it was new.
/// Also for what the account itself sends to the group: a reply to that (the plain user's
/// follow-up to their own message, a member's program that answers without Chat-Group-ID)
/// then finds the group too.
pub fn remember(group: &mut Group, value: &str) -> bool {
    let Some(mid) = crate::mail::msg_ids(value).into_iter().next() else { return false };
    if group.message_ids.contains(&mid) {
        return false;
    }
    group.message_ids.push(mid);
    let excess = group.message_ids.len().saturating_sub(MAX_MESSAGE_IDS);
    group.message_ids.drain(..excess);
    true
}

/// Delta Chat's group ids are URL-safe base64 (`create_id`); anything else is not written back.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The group whose message `message` (an outgoing one, as the client wrote it) answers: by
/// `In-Reply-To` first, then the newest of `References`.
pub fn of_reply<'a>(message: &[u8], groups: &'a [Group]) -> Option<&'a Group> {
    let header = mime::split(message).0;
    let mut ids: Vec<String> =
        mime::first_value(header, "In-Reply-To").map(|v| crate::mail::msg_ids(&v)).unwrap_or_default();
    let mut references = mime::first_value(header, "References").map(|v| crate::mail::msg_ids(&v)).unwrap_or_default();
    references.reverse();
    ids.extend(references);
    ids.iter().find_map(|id| groups.iter().find(|g| g.message_ids.contains(id)))
}

/// `message` made a message to `group`: `Chat-Group-ID` and `Chat-Group-Name` (replacing any the
/// client wrote) and every member not yet among its recipients added to `To`. Returns the
/// message and the members to add to the envelope (`envelope`: the RCPT TO addresses).
pub fn address(message: &[u8], group: &Group, own: &str, envelope: &[String]) -> (Vec<u8>, Vec<String>) {
    let (header, body) = mime::split(message);
    let fields = mime::fields(header);
    let named: Vec<String> = ["To", "Cc"]
        .iter()
        .flat_map(|name| mime::all_values(header, name))
        .flat_map(|v| mime::mailboxes(&v))
        .map(|m| canonical_addr(&m.addr))
        .collect();
    let own = canonical_addr(own);
    let envelope: Vec<String> = envelope.iter().map(|a| canonical_addr(a)).collect();
    let missing_in_to: Vec<&String> = group.members.iter().filter(|m| **m != own && !named.contains(m)).collect();
    let mut out = Vec::with_capacity(message.len() + 256);
    let mut wrote_to = false;
    for field in &fields {
        if field.is("Chat-Group-ID") || field.is("Chat-Group-Name") {
            continue;
        }
        if field.is("To") && !wrote_to && !missing_in_to.is_empty() {
            let mut value = field.value();
            for m in &missing_in_to {
                value.push_str(", ");
                value.push_str(&mime::format_mailbox("", m));
            }
            out.extend_from_slice(mime::fold("To", &value).as_bytes());
            wrote_to = true;
            continue;
        }
        out.extend_from_slice(&field.crlf());
    }
    if !wrote_to && !missing_in_to.is_empty() {
        let value: Vec<String> = missing_in_to.iter().map(|m| mime::format_mailbox("", m)).collect();
        out.extend_from_slice(mime::fold("To", &value.join(", ")).as_bytes());
    }
    out.extend_from_slice(mime::fold("Chat-Group-ID", &group.id).as_bytes());
    if !group.name.is_empty() {
        out.extend_from_slice(mime::fold("Chat-Group-Name", &mime::encode_text(&group.name)).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&mime::normalize_crlf(body));
    let add = group.members.iter().filter(|m| **m != own && !envelope.contains(m)).cloned().collect();
    (out, add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, fixture};
    use crate::openpgp::decrypt::{NoKeys, decrypt};

    fn team() -> Group {
        let bob = account("bob");
        let d = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        learn(&d, "bob@example.org", None, 0).expect("a group message")
    }

    #[test]
    fn delta_chats_group_message_teaches_the_group() {
        let g = team();
        assert_eq!(g.id, "dFXyuQ_eDDe3dsumrIOm9BSG");
        assert_eq!(g.name, "Team");
        assert_eq!(g.members, ["alice@example.org", "carol@example.org"], "sender and the others, not us");
        assert_eq!(g.message_ids.len(), 1);
        // The same message again changes nothing; ordinary mail teaches nothing.
        let bob = account("bob");
        let d = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        assert_eq!(learn(&d, "bob@example.org", Some(&g), 0), Some(g.clone()));
        let one = decrypt(&fixture("one-to-one.eml"), &bob, &NoKeys).unwrap();
        assert_eq!(learn(&one, "bob@example.org", None, 0), None);
        // Unsigned (or not verifiable): not taken.
        let mut unsigned = d.clone();
        unsigned.signature = SignatureStatus::Unsigned;
        assert_eq!(learn(&unsigned, "bob@example.org", None, 0), None);
        // An odd group id is never written back into our mail.
        let mut odd = d;
        odd.protected.chat_group_id = Some("x\r\nBcc: eve@example.org".into());
        assert_eq!(learn(&odd, "bob@example.org", None, 0), None);
    }

    #[test]
    fn older_messages_do_not_change_members_and_removals_count() {
        let bob = account("bob");
        let d = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        let g = team();
        let mut old = d.clone();
        old.protected.date = Some(g.updated_at - 10);
        old.protected.message_id = Some("<older@localhost>".into());
        old.protected.cc = vec![mime::Mailbox { name: None, addr: "dave@example.org".into() }];
        let after = learn(&old, "bob@example.org", Some(&g), 0).unwrap();
        assert_eq!(after.members, g.members, "an older message does not set the members");
        assert_eq!(after.message_ids.len(), 2, "but its id is the group's");
        let mut removal = d;
        removal.protected.date = Some(g.updated_at + 10);
        removal.protected.chat_group_member_removed = Some("Carol@example.org".into());
        assert_eq!(learn(&removal, "bob@example.org", Some(&g), 0).unwrap().members, ["alice@example.org"]);
    }

    /// Found by the `decrypted_view` fuzz target: a `Message-ID` with only its closing bracket
    /// was kept as `…@localhost>`, which the `<id>` of a reply (cut at its first `>`) never
    /// matched. Such an id is not kept; every id kept is found again through a reply.
    #[test]
    fn a_half_bracketed_message_id_is_not_kept() {
        let bob = account("bob");
        let d = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        let mut broken = d.clone();
        broken.protected.message_id = Some("\u{fffd}\u{0}3e91d1ee@\u{1}localhost>".into());
        assert_eq!(learn(&broken, "bob@example.org", None, 0).unwrap().message_ids, Vec::<String>::new());
        let mut bare = d;
        bare.protected.message_id = Some("bare\u{1}@localhost".into());
        let g = learn(&bare, "bob@example.org", None, 0).unwrap();
        assert_eq!(g.message_ids, ["bare\u{1}@localhost"]);
        let reply = format!("From: <bob@example.org>\r\nIn-Reply-To: <{}>\r\n\r\nhi\r\n", g.message_ids[0]);
        assert_eq!(of_reply(reply.as_bytes(), std::slice::from_ref(&g)), Some(&g));
    }

    #[test]
    fn a_reply_finds_its_group_and_is_addressed_to_every_member() {
        let g = team();
        let mid = &g.message_ids[0];
        let reply = format!(
            "From: Bob <bob@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: Re: hi\r\n\
             In-Reply-To: <{mid}>\r\nReferences: <other@x> <{mid}>\r\nChat-Group-ID: forged\r\n\r\nyes\n"
        );
        assert_eq!(of_reply(reply.as_bytes(), std::slice::from_ref(&g)), Some(&g));
        let by_references = reply.replace(&format!("In-Reply-To: <{mid}>"), "In-Reply-To: <unknown@x>");
        assert_eq!(of_reply(by_references.as_bytes(), std::slice::from_ref(&g)), Some(&g));
        assert_eq!(of_reply(b"From: a@b\r\nIn-Reply-To: <nope@x>\r\n\r\nx", std::slice::from_ref(&g)), None);

        let (out, add) = address(reply.as_bytes(), &g, "bob@example.org", &["alice@example.org".into()]);
        assert_eq!(add, ["carol@example.org"]);
        let text = String::from_utf8(out).unwrap();
        let (header, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(header.contains("To: Alice <alice@example.org>, <carol@example.org>\r\n"), "{header}");
        assert!(header.ends_with("Chat-Group-ID: dFXyuQ_eDDe3dsumrIOm9BSG\r\nChat-Group-Name: Team"), "{header}");
        assert!(!header.contains("forged"), "{header}");
        assert_eq!(body, "yes\r\n");
        // Everyone already addressed: nothing added.
        let all = reply.replace("To: Alice <alice@example.org>", "To: alice@example.org, carol@example.org");
        let envelope = ["alice@example.org".to_string(), "carol@example.org".to_string()];
        let (out, add) = address(all.as_bytes(), &g, "bob@example.org", &envelope);
        assert!(add.is_empty());
        assert!(String::from_utf8(out).unwrap().contains("To: alice@example.org, carol@example.org\r\n"));
    }

    #[test]
    fn our_own_group_messages_are_remembered_within_the_bound() {
        let mut g = team();
        let follow_up = "From: bob@example.org\r\nIn-Reply-To: <bob-1@example.org>\r\n\r\nmore\r\n";
        assert_eq!(of_reply(follow_up.as_bytes(), std::slice::from_ref(&g)), None);
        assert!(remember(&mut g, "<bob-1@example.org>") && !remember(&mut g, " <bob-1@example.org> "));
        assert!(!remember(&mut g, "no id here"));
        assert_eq!(of_reply(follow_up.as_bytes(), std::slice::from_ref(&g)), Some(&g));
        for i in 0..MAX_MESSAGE_IDS {
            remember(&mut g, &format!("<n{i}@example.org>"));
        }
        assert_eq!(g.message_ids.len(), MAX_MESSAGE_IDS);
        assert_eq!(g.message_ids.last().map(String::as_str), Some("n199@example.org"), "oldest go first");
    }
}
