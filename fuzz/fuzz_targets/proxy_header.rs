//! The PROXY protocol header parser (`net::proxy_header`, `[listen] proxy_protocol`) on any
//! bytes: no panic; a complete header is no longer than the input or the cap; a reader that
//! reads only what the parser asks for, in any steps, ends exactly at the same header (so the
//! bytes after it are never consumed) or fails the same way; written v2 headers read back.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use coi_proxy::net::proxy_header::{MAX_HEADER, Parsed, Tlv, encode_v2, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let whole = parse(input);
    if let Ok(Parsed::Complete(_, len)) = &whole {
        assert!(*len <= input.len() && *len <= MAX_HEADER);
    }
    if let Ok(Parsed::Incomplete(wanted)) = &whole {
        assert!(*wanted >= 1 && input.len() + wanted <= MAX_HEADER);
    }
    // A reader taking at most `step` (1..=16) of what is asked each time.
    let step = usize::from(step % 16) + 1;
    let mut buf: Vec<u8> = Vec::new();
    let stepped = loop {
        match parse(&buf) {
            Ok(Parsed::Incomplete(wanted)) if buf.len() < input.len() => {
                let take = wanted.min(step).min(input.len() - buf.len());
                buf.extend_from_slice(&input[buf.len()..buf.len() + take]);
            }
            other => break other,
        }
    };
    match (&whole, &stepped) {
        (Ok(Parsed::Complete(a, n)), Ok(Parsed::Complete(b, m))) => {
            assert_eq!((a, n), (b, m));
            assert_eq!(*m, buf.len(), "the reader stopped exactly at the header's end");
        }
        (Ok(Parsed::Incomplete(_)), Ok(Parsed::Incomplete(_))) => assert_eq!(buf, input),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole {a:?} but stepped {b:?}"),
    }

    // Written headers read back, addresses and TLVs included.
    if input.len() >= 12 {
        let v6 = input[0] & 1 == 1;
        let addr = |at: usize| -> SocketAddr {
            let port = u16::from_be_bytes([input[at], input[at + 1]]);
            let ip = if v6 {
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&input[at + 2..at + 6]);
                o[0] = 0x20;
                IpAddr::from(o)
            } else {
                IpAddr::from(<[u8; 4]>::try_from(&input[at + 2..at + 6]).unwrap())
            };
            SocketAddr::new(ip, port)
        };
        let pair = (addr(0), addr(6));
        let tlvs: Vec<Tlv> =
            input[12..].chunks(7).take(8).map(|c| Tlv { kind: c[0], value: c[1..].to_vec() }).collect();
        let written = encode_v2(Some(pair), &tlvs);
        let Ok(Parsed::Complete(header, len)) = parse(&written) else { panic!("own header unread: {written:?}") };
        assert_eq!((header.addresses, header.tlvs, len), (Some(pair), tlvs, written.len()));
    }
});
