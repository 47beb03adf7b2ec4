//! The IMAP framer (both directions use it): any bytes, split anywhere, frame without panic,
//! the fragments put together are the input, and a bounded line limit holds. With the first
//! byte's high bit set, literal bytes that arrive while nothing is buffered pass unseen
//! (`pass_literal`), as the relay does when it splices them from socket to socket.
#![no_main]

use coi_proxy::imap::wire::framing::{Fragment, Framer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let step = usize::from(split & 0x7f).max(1);
    let splice = split & 0x80 != 0;
    let mut framer = Framer::new(256);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + step).min(input.len());
        if splice && buf.is_empty() {
            if let Some(left) = framer.literal_left() {
                let n = framer.pass_literal((end - at) as u64);
                assert_eq!(n, left.min((end - at) as u64), "passes what is asked, up to the literal's end");
                if n > 0 {
                    out.extend_from_slice(&input[at..at + n as usize]);
                    at += n as usize;
                    continue;
                }
            }
        }
        buf.extend_from_slice(&input[at..end]);
        at = end;
        while let Some(f) = framer.next(&buf) {
            let len = match f {
                Fragment::Line { len, .. } => {
                    assert!(len <= 256, "a Line never exceeds the limit");
                    len
                }
                Fragment::LiteralData { len, .. } | Fragment::Overlong { len, .. } => len,
            };
            assert!(len > 0 && len <= buf.len());
            out.extend(buf.drain(..len));
        }
        assert!(buf.len() <= 256 + 64, "the unconsumed rest stays bounded: {}", buf.len());
    }
    out.extend_from_slice(&buf);
    assert_eq!(out, input);
});
