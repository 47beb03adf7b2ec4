//! The decrypted view's IMAP side (issue 15): FETCH item lists and SEARCH programs from clients,
//! FETCH responses from providers, and the FETCH values of any message a sender can make us
//! serve. Sections agree with the whole: `BODY[HEADER]` + `BODY[TEXT]` is `BODY[]`, whose
//! length is `RFC822.SIZE`; nothing panics.
#![no_main]

use coi_proxy::imap::wire::command;
use coi_proxy::imap::wire::fetch::{self, Section};
use coi_proxy::imap::wire::message::MessageView;
use coi_proxy::openpgp::search;
use libfuzzer_sys::fuzz_target;

const ITEMS: &[u8] = b"(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[] BODY[HEADER] BODY[TEXT] \
BODY[1] BODY[1.MIME] BODY[2.1.TEXT] BODY[1.2] BODY[HEADER.FIELDS (FROM TO)]<1.20> RFC822.HEADER RFC822.TEXT)";

fuzz_target!(|data: &[u8]| {
    let _ = fetch::parse_items(data);
    let _ = fetch::parse_response(data);
    if let Ok(cmd) = command::parse(&[b"t SEARCH ", data].concat()) {
        let _ = search::parse(&cmd.args);
    }
    let view = MessageView::new(data.to_vec());
    for item in fetch::parse_items(ITEMS).unwrap() {
        let _ = view.item(&item);
    }
    let header = view.section(&Section::header()).unwrap();
    let text = view.section(&Section::text()).unwrap();
    assert_eq!([header, text].concat(), data);
    assert_eq!(view.size(), data.len());
    let clear = search::Clear::new(&view);
    let program = search::Node::Local(search::Local::Text("a".into()));
    let _ = program.matches(&clear, &|_| true);
});
