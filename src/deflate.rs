//! COMPRESS=DEFLATE (RFC 4978) as a layer under any byte stream: raw deflate (no zlib header)
//! both ways, so the IMAP framer above it never knows. Phones on mobile data (Delta Chat turns
//! compression on whenever it is offered) save most of their bytes with it.
//!
//! Written for the relay: a write is compressed at once and a flush ends with a sync flush
//! (RFC 4978 section 4: the peer can inflate everything sent so far), so each relayed piece
//! reaches the peer as soon as it would uncompressed, and a literal streams through in the
//! pieces it came in. A read inflates into the caller's buffer. Nothing of this exists on a
//! connection that never asked for compression (the stream type only gains a variant).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Compressed bytes read from the peer at once.
const INPUT: usize = 32 * 1024;
/// Compressed output waiting for the peer beyond which a write waits (backpressure).
const MAX_PENDING: usize = 256 * 1024;
/// Most inflated bytes handed out per read (the part of the caller's buffer zeroed first).
const MAX_READ: usize = 64 * 1024;

/// The compression level: Dovecot's default for COMPRESS (a zlib level, 0-9).
pub const LEVEL: u32 = 6;

/// Bytes on the wire and as the layer above sees them, per direction; shared, so a session
/// can log them after the stream is gone.
#[derive(Debug, Default)]
pub struct Counters {
    pub wire_in: AtomicU64,
    pub plain_in: AtomicU64,
    pub wire_out: AtomicU64,
    pub plain_out: AtomicU64,
}

impl Counters {
    /// (wire in, plain in, wire out, plain out).
    pub fn get(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.wire_in), l(&self.plain_in), l(&self.wire_out), l(&self.plain_out))
    }
}

/// A stream with deflate on it, both ways.
pub struct Deflate<S> {
    inner: S,
    deflate: Compress,
    inflate: Decompress,
    /// Compressed bytes read, `input[start..end]` not yet inflated.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The peer ended the stream (EOF, or a final deflate block).
    eof: bool,
    /// Compressed bytes for the peer, `output[sent..]` not yet written.
    output: Vec<u8>,
    sent: usize,
    /// Data went into the compressor since the last sync flush.
    unflushed: bool,
    counters: Arc<Counters>,
}

impl<S> Deflate<S> {
    /// Deflate on `inner`; `already_read` are bytes read from it after the command that
    /// started compression (compressed already).
    pub fn new(inner: S, already_read: &[u8], level: u32) -> Deflate<S> {
        let mut input = vec![0u8; INPUT.max(already_read.len())].into_boxed_slice();
        input[..already_read.len()].copy_from_slice(already_read);
        let counters = Arc::new(Counters::default());
        counters.wire_in.fetch_add(already_read.len() as u64, Ordering::Relaxed);
        Deflate {
            inner,
            deflate: Compress::new(Compression::new(level.min(9)), false),
            inflate: Decompress::new(false),
            input,
            start: 0,
            end: already_read.len(),
            eof: false,
            output: Vec::new(),
            sent: 0,
            unflushed: false,
            counters,
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Compresses `data` into `output` (`flush`: what to end with).
    fn compress(&mut self, data: &[u8], flush: FlushCompress) -> io::Result<()> {
        let mut done = 0;
        loop {
            if self.output.capacity() - self.output.len() < 64 {
                self.output.reserve((data.len() - done) / 2 + 1024);
            }
            let before = self.deflate.total_in();
            self.deflate.compress_vec(&data[done..], &mut self.output, flush).map_err(io::Error::other)?;
            done += (self.deflate.total_in() - before) as usize;
            // Finished once all input is in and the output did not fill up (so the flush is
            // complete too).
            if done == data.len() && self.output.len() < self.output.capacity() {
                return Ok(());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Deflate<S> {
    /// Writes pending compressed output to the peer until all of it is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.output.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.output[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.counters.wire_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.output.clear();
        self.sent = 0;
        if self.output.capacity() > 4 * MAX_PENDING {
            self.output = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deflate<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.start < this.end {
                let room = buf.remaining().min(MAX_READ);
                let out = buf.initialize_unfilled_to(room);
                let (in_before, out_before) = (this.inflate.total_in(), this.inflate.total_out());
                let status = this
                    .inflate
                    .decompress(&this.input[this.start..this.end], out, FlushDecompress::None)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "invalid compressed data (DEFLATE)"))?;
                let used = (this.inflate.total_in() - in_before) as usize;
                let made = (this.inflate.total_out() - out_before) as usize;
                this.start += used;
                buf.advance(made);
                this.counters.plain_in.fetch_add(made as u64, Ordering::Relaxed);
                if status == Status::StreamEnd {
                    // RFC 4978 has no end of compression short of the connection's.
                    this.eof = true;
                    this.start = this.end;
                }
                if made > 0 {
                    return Poll::Ready(Ok(()));
                }
                if used > 0 && this.start < this.end {
                    continue;
                }
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Keep a partial block's bytes, then read more after them.
            if this.start > 0 {
                this.input.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            if this.end == this.input.len() {
                // The inflater took nothing from a full buffer: it cannot be deflate data.
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "compressed data stalled")));
            }
            let mut more = ReadBuf::new(&mut this.input[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut more))?;
            let n = more.filled().len();
            if n == 0 {
                this.eof = true;
                return Poll::Ready(Ok(()));
            }
            this.end += n;
            this.counters.wire_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deflate<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() - this.sent >= MAX_PENDING {
            ready!(this.poll_drain(cx))?;
        }
        this.compress(data, FlushCompress::None)?;
        this.unflushed |= !data.is_empty();
        this.counters.plain_out.fetch_add(data.len() as u64, Ordering::Relaxed);
        // Send what is ready without waiting for it; the flush waits.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unflushed {
            this.compress(&[], FlushCompress::Sync)?;
            this.unflushed = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Inflates a whole raw deflate stream (what a peer would see).
    fn inflate_all(wire: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(wire.len() * 20 + 1024);
        d.decompress_vec(wire, &mut out, FlushDecompress::Sync).unwrap();
        out
    }

    fn deflate_all(plain: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(plain.len() + 1024);
        c.compress_vec(plain, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    #[tokio::test]
    async fn each_flush_makes_everything_so_far_readable() {
        let (a, mut b) = duplex(1 << 20);
        let mut z = Deflate::new(a, &[], LEVEL);
        let mut wire = Vec::new();
        for piece in [&b"* 1 EXISTS\r\n"[..], b"a1 OK [READ-WRITE] Select completed.\r\n"] {
            z.write_all(piece).await.unwrap();
            z.flush().await.unwrap();
            let mut chunk = vec![0; 4096];
            let n = b.read(&mut chunk).await.unwrap();
            wire.extend_from_slice(&chunk[..n]);
            assert!(inflate_all(&wire).ends_with(piece), "a flush must not hold anything back");
            assert!(wire.ends_with(&[0, 0, 0xff, 0xff]), "sync flush marker");
        }
        let (wire_in, plain_in, wire_out, plain_out) = z.counters().get();
        assert_eq!((wire_in, plain_in, wire_out as usize, plain_out), (0, 0, wire.len(), 50));
    }

    #[tokio::test]
    async fn reads_inflate_in_any_split_with_bytes_read_before() {
        let plain: Vec<u8> =
            (0..2000).flat_map(|i| format!("* {i} FETCH (UID {i} FLAGS (\\Seen))\r\n").into_bytes()).collect();
        let wire = deflate_all(&plain);
        for split in [0, 1, 7, wire.len() / 2, wire.len()] {
            let (a, mut b) = duplex(64);
            let writer = {
                let rest = wire[split..].to_vec();
                tokio::spawn(async move {
                    for piece in rest.chunks(13) {
                        b.write_all(piece).await.unwrap();
                    }
                })
            };
            let mut z = Deflate::new(a, &wire[..split], LEVEL);
            let mut got = vec![0; plain.len()];
            z.read_exact(&mut got).await.unwrap();
            assert_eq!(got, plain, "split at {split}");
            writer.await.unwrap();
            assert_eq!(z.read(&mut [0; 16]).await.unwrap(), 0, "end of stream");
            assert_eq!(z.counters().get().0 as usize, wire.len());
        }
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_hang() {
        let (a, mut b) = duplex(1 << 16);
        b.write_all(&[0xff; 100]).await.unwrap();
        drop(b);
        let mut z = Deflate::new(a, &[], LEVEL);
        let err = z.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn both_ends_of_a_pipe_talk_through_it() {
        let (a, b) = duplex(4096);
        let (mut za, mut zb) = (Deflate::new(a, &[], LEVEL), Deflate::new(b, &[], 1));
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sender = {
            let big = big.clone();
            tokio::spawn(async move {
                za.write_all(&big).await.unwrap();
                za.flush().await.unwrap();
                za
            })
        };
        let mut got = vec![0; big.len()];
        zb.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        let (_, _, wire_out, plain_out) = sender.await.unwrap().counters().get();
        assert_eq!(plain_out, 300_000);
        assert!(wire_out < plain_out / 10, "repetitive data compresses: {wire_out}");
    }
}
