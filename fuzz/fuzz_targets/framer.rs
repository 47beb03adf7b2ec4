//! The IMAP framer (both directions use it): any bytes, split anywhere, frame without panic,
//! the fragments put together are the input, and a bounded line limit holds.
#![no_main]

use coi_proxy::imap::wire::framing::{Fragment, Framer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let step = usize::from(split).max(1);
    let mut framer = Framer::new(256);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
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
