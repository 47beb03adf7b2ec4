//! What identity providers and browsers send the OAuth2 side: token endpoint answers and device
//! authorizations under any HTTP status, the SASL error challenges of a provider that turns a
//! token down, and the request the loopback listener reads for the browser flow's redirect.
#![no_main]

use coi_proxy::oauth::sasl::Challenge;
use coi_proxy::oauth::token::{self, TokenReply};
use coi_proxy::oauth::{Redirect, parse_redirect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let status = data.first().map_or(200, |&b| 100 + u16::from(b) * 2);
    let body = data.get(1..).unwrap_or_default();
    match token::parse_token_reply(status, body) {
        Ok(TokenReply::Tokens(t)) => {
            assert!(!t.access_token.is_empty());
            assert!(t.access_token.expose().iter().all(u8::is_ascii_graphic));
        }
        Ok(TokenReply::Error(e)) => {
            let text = e.describe();
            assert!(!e.error.is_empty() && !text.contains(['\r', '\n']), "{text:?}");
        }
        Err(_) => {}
    }
    match token::parse_device_authorization(status, body) {
        Ok(Ok(d)) => {
            assert!(d.interval >= 1 && d.expires_in >= 1);
            assert!(!d.user_code.contains(['\r', '\n']) && !d.verification_uri.contains(['\r', '\n']));
        }
        Ok(Err(e)) => assert!(!e.describe().contains(['\r', '\n'])),
        Err(_) => {}
    }
    if let Some(c) = Challenge::parse(body) {
        assert!(!c.describe().contains(['\r', '\n']));
    }
    match parse_redirect(body, "fuzz-state") {
        Redirect::Code(code) => assert!(!code.is_empty()),
        Redirect::Denied(e) => assert!(!e.describe().contains(['\r', '\n'])),
        Redirect::WrongState | Redirect::Other => {}
    }
});
