//! SecureJoin invite links (`coi-proxy join '<link>'`): a link that parses writes back to a link
//! that parses to the same invite (names aside, which links shorten).
#![no_main]

use coi_proxy::openpgp::securejoin::invite::Invite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(invite) = Invite::parse(text) {
        let again = Invite::parse(&invite.to_link()).unwrap();
        assert_eq!(again.fingerprint, invite.fingerprint);
        assert_eq!(again.addrs, invite.addrs);
        assert_eq!((again.auth, again.invitenumber), (invite.auth.clone(), invite.invitenumber.clone()));
        assert_eq!(std::mem::discriminant(&again.target), std::mem::discriminant(&invite.target));
        let _ = invite.password();
    }
});
