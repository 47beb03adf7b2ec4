//! "Is this a chat message?", decided from header fields only (the worker fetches just these;
//! `mail::ChatHeaders` reads them).
//!
//! The COI server spec's rules: a `Chat-Version` header; a Message-ID starting with `chat$`; the
//! first References id starting with `chat$`. Beyond the spec: a reply (In-Reply-To or
//! References) to a Message-ID the proxy has classified as chat before, so a plain mail
//! client's reply to a chat stays in the chat (modern Delta Chat's ids carry no prefix); and
//! reports (`multipart/report`: read receipts, delivery reports) about chat messages; and
//! today's Delta Chat's encrypted messages, which carry no Chat-Version outside the encryption
//! (RFC 9788 header protection): `multipart/encrypted` with the obscured Subject `[...]` and
//! the recipients hidden as `To: "hidden-recipients": ;`, a shape ordinary encrypted email
//! does not have.

pub use crate::mail::ChatHeaders;

/// The header fields the worker fetches (`BODY.PEEK[HEADER.FIELDS (...)]`); `FROM` tells the
/// user's own mail apart (no Delta Chat push for it).
pub const FIELDS: &str = "CHAT-VERSION MESSAGE-ID REFERENCES IN-REPLY-TO CONTENT-TYPE SUBJECT TO FROM";

/// Whether the message with these header fields is chat; `known` says whether a Message-ID
/// was classified chat before.
pub fn is_chat(headers: &ChatHeaders, known: impl Fn(&str) -> bool) -> bool {
    let chat_prefix = |id: &str| id.starts_with("chat$");
    headers.chat_version
        || headers.protected_chat_shape
        || headers.message_id.as_deref().is_some_and(chat_prefix)
        || headers.references.first().is_some_and(|id| chat_prefix(id))
        || headers.in_reply_to.iter().chain(&headers.references).any(|id| known(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(raw: &str) -> bool {
        is_chat(&ChatHeaders::parse(raw.as_bytes()), |id| id == "known@x")
    }

    #[test]
    fn spec_rules() {
        assert!(chat("Chat-Version: 1.0\r\nMessage-ID: <a@b>\r\n\r\n"));
        assert!(chat("chat-version:1.0\r\n"));
        assert!(chat("Message-ID: <chat$group.abc@x>\r\n"));
        assert!(chat("References: <chat$1@x>\r\n <other@y>\r\n"));
        assert!(!chat("References: <other@y> <chat$1@x>\r\n"), "only the first References id counts");
        assert!(!chat("In-Reply-To: <chat$1@x>\r\n"), "In-Reply-To is not a spec rule");
        assert!(!chat("Subject: hello\r\nMessage-ID: <plain@x>\r\n\r\n"));
    }

    #[test]
    fn delta_chats_encrypted_shape() {
        let dc = "Message-ID: <bdfe52c5-073e@localhost>\r\nTo: \"hidden-recipients\": ;\r\nSubject: [...]\r\n\
                  Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=\"x\"\r\n\r\n";
        assert!(chat(dc));
        // Ordinary encrypted email, even with header protection, keeps its recipients.
        assert!(!chat(
            "To: bob@example.org\r\nSubject: [...]\r\nContent-Type: multipart/encrypted; protocol=\"x\"\r\n"
        ));
        assert!(!chat("To: \"hidden-recipients\": ;\r\nSubject: Hello\r\nContent-Type: multipart/encrypted\r\n"));
    }

    #[test]
    fn replies_to_known_chats() {
        assert!(chat("In-Reply-To: <known@x>\r\n"));
        assert!(chat("References: <first@x>\r\n\t<known@x>\r\n"));
        assert!(!chat("In-Reply-To: <unknown@x>\r\n"));
    }

    #[test]
    fn parsing() {
        let h = ChatHeaders::parse(b"Message-ID: <id@host>\r\nContent-Type: multipart/report;\r\n report-type=disposition-notification\r\nReferences: <a@b>\r\n  <c@d>\r\n");
        assert_eq!(h.message_id.as_deref(), Some("id@host"));
        assert_eq!(h.references, vec!["a@b", "c@d"]);
        assert!(h.is_report && !h.chat_version);
    }
}
