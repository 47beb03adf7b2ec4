//! "Is this a chat message?", decided from header fields only (the worker fetches just these).
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

use crate::mail::{fields, msg_ids};

/// The header fields the worker fetches (`BODY.PEEK[HEADER.FIELDS (...)]`).
pub const FIELDS: &str = "CHAT-VERSION MESSAGE-ID REFERENCES IN-REPLY-TO CONTENT-TYPE SUBJECT TO";

/// The fields that matter, parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChatHeaders {
    pub chat_version: bool,
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub is_report: bool,
    /// Delta Chat's header-protected encrypted shape (see the module doc).
    pub protected_chat_shape: bool,
}

impl ChatHeaders {
    /// Parses a header block (folded lines allowed, any case of field names).
    pub fn parse(raw: &[u8]) -> ChatHeaders {
        let mut h = ChatHeaders::default();
        let (mut encrypted, mut obscured_subject, mut hidden_recipients) = (false, false, false);
        for (name, value) in fields(raw) {
            match name.to_ascii_lowercase().as_str() {
                "chat-version" => h.chat_version = true,
                "message-id" => h.message_id = msg_ids(&value).into_iter().next(),
                "in-reply-to" => h.in_reply_to = msg_ids(&value),
                "references" => h.references = msg_ids(&value),
                "content-type" => {
                    let value = value.trim_start().to_ascii_lowercase();
                    h.is_report = value.starts_with("multipart/report");
                    encrypted = value.starts_with("multipart/encrypted");
                }
                "subject" => obscured_subject = value.trim() == "[...]",
                "to" => hidden_recipients = value.trim_start().starts_with("\"hidden-recipients\":"),
                _ => {}
            }
        }
        h.protected_chat_shape = encrypted && obscured_subject && hidden_recipients;
        h
    }

    /// Whether the message is chat; `known` says whether a Message-ID was classified chat before.
    pub fn is_chat(&self, known: impl Fn(&str) -> bool) -> bool {
        let chat_prefix = |id: &str| id.starts_with("chat$");
        self.chat_version
            || self.protected_chat_shape
            || self.message_id.as_deref().is_some_and(chat_prefix)
            || self.references.first().is_some_and(|id| chat_prefix(id))
            || self.in_reply_to.iter().chain(&self.references).any(|id| known(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(raw: &str) -> bool {
        ChatHeaders::parse(raw.as_bytes()).is_chat(|id| id == "known@x")
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
