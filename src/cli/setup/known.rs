//! The built-in table: the largest providers' servers and login rules, for when a provider
//! publishes neither autoconfig nor SRV records, and to recognise them by MX host (a custom
//! domain hosted there) or by server name (to say when a password will not do).

use crate::config::Security;

/// How a provider lets third-party programs log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// The account password.
    Password,
    /// An app password made in the account's security settings; the account password fails.
    AppPassword,
    /// OAuth2 only: password logins are switched off for IMAP and SMTP.
    OAuth2,
}

#[derive(Debug)]
pub struct Known {
    pub name: &'static str,
    /// Address domains served.
    pub domains: &'static [&'static str],
    /// MX host suffixes of domains hosted there.
    pub mx: &'static [&'static str],
    pub imap: (&'static str, u16, Security),
    pub smtp: (&'static str, u16, Security),
    pub login: Login,
    /// What to tell the user about logging in.
    pub note: &'static str,
}

use Security::{Implicit, StartTls};

/// Gmail, Microsoft (Outlook.com and 365), Yahoo, iCloud, AOL, GMX, WEB.DE, Fastmail,
/// mailbox.org, Posteo, Yandex and Zoho.
pub const TABLE: &[Known] = &[
    Known {
        name: "Gmail",
        domains: &["gmail.com", "googlemail.com"],
        mx: &["google.com", "googlemail.com"],
        imap: ("imap.gmail.com", 993, Implicit),
        smtp: ("smtp.gmail.com", 465, Implicit),
        login: Login::OAuth2,
        note: "Google accepts OAuth2 (or an app password, with 2-Step Verification on)",
    },
    Known {
        name: "Microsoft (Outlook.com, Microsoft 365)",
        domains: &["outlook.com", "hotmail.com", "live.com", "msn.com", "outlook.de", "hotmail.de"],
        mx: &["outlook.com"],
        imap: ("outlook.office365.com", 993, Implicit),
        smtp: ("smtp-mail.outlook.com", 587, StartTls),
        login: Login::OAuth2,
        note: "Microsoft has switched password logins off for IMAP and SMTP; OAuth2 only",
    },
    Known {
        name: "Yahoo",
        domains: &["yahoo.com", "yahoo.de", "yahoo.co.uk", "yahoo.fr", "ymail.com", "rocketmail.com"],
        mx: &["yahoodns.net"],
        imap: ("imap.mail.yahoo.com", 993, Implicit),
        smtp: ("smtp.mail.yahoo.com", 465, Implicit),
        login: Login::AppPassword,
        note: "Yahoo needs an app password (Account security > Generate app password)",
    },
    Known {
        name: "iCloud",
        domains: &["icloud.com", "me.com", "mac.com"],
        mx: &["icloud.com"],
        imap: ("imap.mail.me.com", 993, Implicit),
        smtp: ("smtp.mail.me.com", 587, StartTls),
        login: Login::AppPassword,
        note: "iCloud needs an app-specific password (account.apple.com > Sign-In and Security)",
    },
    Known {
        name: "AOL",
        domains: &["aol.com", "aim.com"],
        mx: &["aol.com"],
        imap: ("imap.aol.com", 993, Implicit),
        smtp: ("smtp.aol.com", 465, Implicit),
        login: Login::AppPassword,
        note: "AOL needs an app password (Account security > Generate app password)",
    },
    Known {
        name: "GMX",
        domains: &["gmx.net", "gmx.de", "gmx.at", "gmx.ch"],
        mx: &["gmx.net"],
        imap: ("imap.gmx.net", 993, Implicit),
        smtp: ("mail.gmx.net", 465, Implicit),
        login: Login::Password,
        note: "GMX: allow IMAP access in the web mailer's settings first",
    },
    Known {
        name: "GMX (international)",
        domains: &["gmx.com"],
        mx: &[],
        imap: ("imap.gmx.com", 993, Implicit),
        smtp: ("mail.gmx.com", 465, Implicit),
        login: Login::Password,
        note: "GMX: allow IMAP access in the web mailer's settings first",
    },
    Known {
        name: "WEB.DE",
        domains: &["web.de"],
        mx: &["web.de"],
        imap: ("imap.web.de", 993, Implicit),
        smtp: ("smtp.web.de", 587, StartTls),
        login: Login::Password,
        note: "WEB.DE: allow IMAP access in the web mailer's settings first",
    },
    Known {
        name: "Fastmail",
        domains: &["fastmail.com", "fastmail.fm"],
        mx: &["messagingengine.com"],
        imap: ("imap.fastmail.com", 993, Implicit),
        smtp: ("smtp.fastmail.com", 465, Implicit),
        login: Login::AppPassword,
        note: "Fastmail needs an app password (Settings > Privacy & Security)",
    },
    Known {
        name: "mailbox.org",
        domains: &["mailbox.org"],
        mx: &["mailbox.org"],
        imap: ("imap.mailbox.org", 993, Implicit),
        smtp: ("smtp.mailbox.org", 465, Implicit),
        login: Login::Password,
        note: "",
    },
    Known {
        name: "Posteo",
        domains: &["posteo.de", "posteo.net"],
        mx: &["posteo.de"],
        imap: ("posteo.de", 993, Implicit),
        smtp: ("posteo.de", 465, Implicit),
        login: Login::Password,
        note: "",
    },
    Known {
        name: "Yandex",
        domains: &["yandex.com", "yandex.ru"],
        mx: &["yandex.net", "yandex.ru"],
        imap: ("imap.yandex.com", 993, Implicit),
        smtp: ("smtp.yandex.com", 465, Implicit),
        login: Login::AppPassword,
        note: "Yandex needs an app password and IMAP allowed in its mail settings",
    },
    Known {
        name: "Zoho",
        domains: &["zoho.com", "zohomail.com"],
        mx: &["zoho.com", "zoho.eu"],
        imap: ("imap.zoho.com", 993, Implicit),
        smtp: ("smtp.zoho.com", 465, Implicit),
        login: Login::Password,
        note: "Zoho: allow IMAP access in its mail settings first (an app password with 2FA on)",
    },
];

fn matches_suffix(host: &str, suffix: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case(suffix)
        || (host.len() > suffix.len()
            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
}

/// The provider serving addresses at `domain`.
pub fn by_domain(domain: &str) -> Option<&'static Known> {
    TABLE.iter().find(|k| k.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
}

/// The provider whose mail exchanger `mx_host` is.
pub fn by_mx(mx_host: &str) -> Option<&'static Known> {
    TABLE.iter().find(|k| k.mx.iter().any(|s| matches_suffix(mx_host, s)))
}

/// The provider running the IMAP server `host` (found some other way).
pub fn by_server(host: &str) -> Option<&'static Known> {
    TABLE.iter().find(|k| {
        let imap_domain = k.imap.0.split_once('.').map_or(k.imap.0, |(_, d)| d);
        k.imap.0.eq_ignore_ascii_case(host) || (matches_suffix(host, imap_domain) && imap_domain.contains('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(by_domain("GMAIL.com").unwrap().name, "Gmail");
        assert_eq!(by_mx("aspmx.l.google.com").unwrap().name, "Gmail");
        assert_eq!(by_mx("example-org.mail.protection.outlook.com.").unwrap().login, Login::OAuth2);
        assert!(by_mx("notgoogle.com").is_none(), "suffixes match whole labels");
        assert_eq!(by_server("imap.gmail.com").unwrap().name, "Gmail");
        assert_eq!(by_server("imap.mail.me.com").unwrap().name, "iCloud");
        assert!(by_server("imap.example.org").is_none());
        assert!(by_domain("example.org").is_none());
        for k in TABLE {
            assert!(k.domains.iter().all(|d| by_domain(d).is_some()), "{}", k.name);
        }
    }
}
