//! The COMPRESS=DEFLATE layer (RFC 4978) on what a peer sends: any bytes, as compressed input
//! split anywhere between "read before the switch" and the stream, must inflate or fail with an
//! error, never panic or hang; and anything written through it must come back unchanged.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use coi_proxy::deflate::{Deflate, LEVEL};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads until the end or an error (an in-memory source is never pending).
fn read_all(z: &mut Deflate<&[u8]>, chunk: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk.max(1)];
    loop {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut *z).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => panic!("an in-memory source is never pending"),
        }
        assert!(out.len() < 64 << 20, "output bounded by the input's expansion");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    // Peer input, part of it read before compression started.
    let at = usize::from(split).min(rest.len());
    let mut z = Deflate::new(&rest[at..], &rest[..at], LEVEL);
    let _ = read_all(&mut z, usize::from(split) * 7 + 1);

    // What the proxy writes comes back whole, written in pieces and flushed in between.
    let mut sink: Vec<u8> = Vec::new();
    {
        let mut w = Deflate::new(&mut sink, &[], u32::from(split % 10));
        let mut cx = Context::from_waker(Waker::noop());
        for piece in rest.chunks(usize::from(split).max(1)) {
            let mut done = 0;
            while done < piece.len() {
                match Pin::new(&mut w).poll_write(&mut cx, &piece[done..]) {
                    Poll::Ready(Ok(n)) => done += n,
                    other => panic!("writing to memory: {other:?}"),
                }
            }
            assert!(matches!(Pin::new(&mut w).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        }
    }
    let mut back = Deflate::new(&sink[..], &[], LEVEL);
    assert_eq!(read_all(&mut back, 4096).expect("our own output inflates"), rest);
});
