//! Names of the COI folders on a provider: `<prefix><root><sep>Chats` and `…Contacts`, with the
//! provider's personal namespace prefix and hierarchy separator (Dovecot uses `.` or `/`), the
//! configured root in modified UTF-7; and names compared as the provider resolves them.

use crate::imap::wire::command::{self, Arg};
use crate::imap::wire::mailbox;
use crate::imap::wire::provider::{ProviderCommands, ProviderError};
use crate::provider_profile::Namespaces;

const CAPTURE_NAMESPACE: &[&[u8]] = &[b"* NAMESPACE "];
const CAPTURE_LIST: &[&[u8]] = &[b"* LIST "];

/// The provider's personal namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: String,
    pub separator: Option<char>,
}

impl Namespace {
    /// From `* NAMESPACE (("INBOX." ".")) NIL NIL`: the first personal namespace. Read by the
    /// provider profile's RFC 2342 reader, which takes Courier's `(("#shared." ".")("shared." "."))`
    /// (no space between descriptors); the generic command parser refused that whole response,
    /// so Courier's `INBOX.` prefix was lost and `CREATE COI.Chats` refused.
    pub fn from_namespace_response(resp: &[u8]) -> Option<Namespace> {
        let ns = Namespaces::parse(resp).ok()?;
        let personal = ns.personal()?;
        Some(Namespace { prefix: personal.prefix.clone(), separator: personal.separator })
    }

    /// From `* LIST (\Noselect) "/" ""`: the separator, no prefix.
    pub fn from_list_response(resp: &[u8]) -> Option<Namespace> {
        let body = resp.strip_prefix(b"* ")?;
        let cmd = command::parse(&[b"x ", body].concat()).ok()?;
        if cmd.name != "LIST" {
            return None;
        }
        let separator = match cmd.args.get(1) {
            Some(Arg::Str(s)) => s.first().map(|&b| b as char),
            _ => None,
        };
        Some(Namespace { prefix: String::new(), separator })
    }

    /// Asks the provider: NAMESPACE, and where that gives no separator, `LIST "" ""`.
    pub async fn discover(provider: &mut impl ProviderCommands) -> Result<Namespace, ProviderError> {
        let reply = provider.run(b"NAMESPACE\r\n", CAPTURE_NAMESPACE).await?;
        let mut ns = reply.untagged.iter().find_map(|r| Namespace::from_namespace_response(r));
        if ns.as_ref().is_none_or(|n| n.separator.is_none()) {
            let reply = provider.run(b"LIST \"\" \"\"\r\n", CAPTURE_LIST).await?;
            let separator =
                reply.untagged.iter().find_map(|r| Namespace::from_list_response(r)).and_then(|n| n.separator);
            ns = Some(Namespace { prefix: ns.map(|n| n.prefix).unwrap_or_default(), separator });
        }
        Ok(ns.unwrap_or(Namespace { prefix: String::new(), separator: Some('/') }))
    }

    /// The mailbox root as clients see it (the `mailbox-root` METADATA value), in modified
    /// UTF-7 as on the wire.
    pub fn root(&self, configured: &str) -> String {
        format!("{}{}", self.prefix, mailbox::encode(configured))
    }

    pub fn chats(&self, configured_root: &str) -> String {
        self.child(configured_root, "Chats")
    }

    pub fn contacts(&self, configured_root: &str) -> String {
        self.child(configured_root, "Contacts")
    }

    fn child(&self, configured_root: &str, name: &str) -> String {
        let sep = self.separator.unwrap_or('/');
        format!("{}{sep}{name}", self.root(configured_root))
    }

    /// Whether `mailbox` lies in the Trash folder `trash` (or is it).
    pub fn in_trash(&self, name: &[u8], trash: &[u8]) -> bool {
        mailbox::at_or_below(name, trash, self.separator)
    }

    /// Whether two names are the same mailbox at this provider.
    pub fn same(&self, a: &[u8], b: &[u8]) -> bool {
        mailbox::canonical(a, self.separator) == mailbox::canonical(b, self.separator)
    }

    /// Whether renaming `name` takes `mailbox` with it: it is `mailbox` or one of its parents
    /// (not INBOX, whose RENAME moves its messages and leaves its children).
    pub fn holds(&self, name: &[u8], mailbox: &[u8]) -> bool {
        mailbox::at_or_below(mailbox, name, self.separator) && mailbox::canonical(name, self.separator) != "INBOX"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_namespaces() {
        let ns = Namespace::from_namespace_response(b"* NAMESPACE ((\"\" \".\")) NIL NIL\r\n").unwrap();
        assert_eq!(ns, Namespace { prefix: String::new(), separator: Some('.') });
        assert_eq!(ns.chats("COI"), "COI.Chats");
        assert_eq!(ns.contacts("COI"), "COI.Contacts");
        let ns = Namespace::from_namespace_response(b"* NAMESPACE ((\"INBOX/\" \"/\")) NIL NIL\r\n").unwrap();
        assert_eq!(ns.chats("COI"), "INBOX/COI/Chats");
        assert_eq!(ns.root("COI"), "INBOX/COI");
        let courier = b"* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")(\"shared.\" \".\"))\r\n";
        let ns = Namespace::from_namespace_response(courier).unwrap();
        assert_eq!(ns.chats("COI"), "INBOX.COI.Chats");
        let ns = Namespace::from_list_response(b"* LIST (\\Noselect) \"/\" \"\"\r\n").unwrap();
        assert_eq!(ns.chats("COI"), "COI/Chats");
        assert!(ns.in_trash(b"Trash/COI/Chats", b"Trash"));
        assert!(!ns.in_trash(b"Trashy", b"Trash"));
        assert!(ns.same(b"COI/Chats/", b"COI/Chats"));
        assert!(ns.holds(b"COI", b"COI/Chats") && ns.holds(b"COI/Chats", b"COI/Chats"));
        assert!(!ns.holds(b"COI/Contacts", b"COI/Chats"));
        let courier = Namespace { prefix: "INBOX.".into(), separator: Some('.') };
        assert!(!courier.holds(b"INBOX", b"INBOX.COI.Chats"), "RENAME INBOX leaves its children");
        assert!(courier.holds(b"inbox.COI", b"INBOX.COI.Chats"));
        assert_eq!(courier.chats("Ärger"), "INBOX.&AMQ-rger.Chats");
    }
}
