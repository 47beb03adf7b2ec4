//! A buffered IMAP connection for the phases where whole messages are read (before login, and the
//! proxy's own exchanges with a provider). The relay takes the stream and the buffer over after
//! login and streams from then on.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::imap::wire::framing::{Fragment, Framer};
use crate::net::Stream;

/// Read size; also the granularity in which literals are relayed.
pub const READ_CHUNK: usize = 16 * 1024;

/// How much to read at once: small while traffic is light, so idle sessions stay small, and
/// doubling while reads fill the buffer, so a bulk FETCH or APPEND streams in fewer, larger reads
/// (fewer system calls per byte relayed). After a small read a grown buffer is given back, so a
/// session that once moved a large message does not keep its buffer for life.
#[derive(Debug, Clone, Copy)]
pub struct ReadSize {
    size: usize,
    /// Room in the buffer before the last read.
    spare: usize,
    /// The last read was small after the size had grown: give the large buffer back once empty.
    shrink: bool,
    /// The size reached before the last shrink: a full read goes straight back to it, so a
    /// stream that pauses for a moment does not climb up from the small size again.
    peak: usize,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize { size: ReadSize::INITIAL, spare: 0, shrink: false, peak: ReadSize::INITIAL }
    }
}

impl ReadSize {
    /// What a session reads while traffic is light (commands, short responses, IDLE updates).
    /// At most 1 KiB: glibc's malloc serves such a size from its per-thread cache, and this
    /// buffer is taken and given back at every readiness of a waiting side (a 2 KiB one cost
    /// ~300 instructions more per NOOP in callgrind, in malloc's bins).
    const INITIAL: usize = 1024;
    /// Larger reads do not stream faster: a 64 KiB chunk is still in cache when it is written
    /// on (an A/B run of `cargo bench --bench peers`: FETCH ratio 0.944 at 64 KiB, 0.889 at
    /// 256 KiB).
    const MAX: usize = 64 * 1024;

    /// Makes room in `buf` before a read; gives a large buffer back once traffic is light again.
    pub fn prepare(&mut self, buf: &mut BytesMut) {
        // `capacity` may not show a large allocation that `reserve` would reclaim (the bytes
        // relayed from it were split off), hence `shrink` as well.
        if buf.is_empty() && self.size == Self::INITIAL && (self.shrink || buf.capacity() > 2 * Self::INITIAL) {
            *buf = BytesMut::with_capacity(Self::INITIAL);
            self.shrink = false;
        }
        if buf.capacity() - buf.len() < self.size / 2 {
            buf.reserve(self.size);
        }
        self.spare = buf.capacity() - buf.len();
    }

    /// The side waits for its peer: a buffer holding nothing is given back while traffic is
    /// light (the next read takes a new one), so that a waiting session holds no read buffer.
    /// A stream in full flow keeps its large buffer between reads.
    pub fn release(&self, buf: &mut BytesMut) {
        if buf.is_empty() && self.size == Self::INITIAL && buf.capacity() > 0 {
            *buf = BytesMut::new();
        }
    }

    /// Traffic is light: reads are at their small size.
    pub fn light(&self) -> bool {
        self.size == Self::INITIAL
    }

    /// Adapts to a read of `n` bytes.
    pub fn after_read(&mut self, n: usize) {
        if n >= self.spare {
            self.size = if self.size < self.peak { self.peak } else { (self.size * 2).min(Self::MAX) };
            self.peak = self.size;
        } else if n < Self::INITIAL && self.size > Self::INITIAL {
            self.size = Self::INITIAL;
            self.shrink = true;
        }
    }
}

pub struct Conn {
    pub stream: Stream,
    /// Bytes read but not yet consumed.
    pub buf: BytesMut,
    pub framer: Framer,
}

/// Why no whole message could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between messages.
    #[error("connection closed")]
    Eof,
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The message was longer than allowed; it was read and discarded, except for a refused
    /// synchronizing literal, which the peer never sends. `tag` is what the message began with.
    #[error("message too long")]
    TooLong { tag: Vec<u8>, literal: bool },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Conn {
    pub fn new(stream: Stream, max_line: usize) -> Conn {
        Conn { stream, buf: BytesMut::with_capacity(1024), framer: Framer::new(max_line) }
    }

    /// Reads more bytes into the buffer; 0 means end of stream.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_CHUNK.max(self.buf.len()));
        }
        self.stream.read_buf(&mut self.buf).await
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one whole command or response, literals inline, of at most `limit` bytes. When a
    /// synchronizing literal is announced and `continuation` is given, it is sent so the peer goes
    /// on (that is the server's role; a client reading responses passes `None`).
    pub async fn read_message(&mut self, limit: usize, continuation: Option<&[u8]>) -> Result<Vec<u8>, ReadError> {
        let mut msg = Vec::new();
        let mut too_long: Option<Vec<u8>> = None;
        loop {
            while let Some(fragment) = self.framer.next(&self.buf) {
                match fragment {
                    Fragment::Line { len, literal, .. } => {
                        if too_long.is_none() && msg.len() + len > limit {
                            too_long = Some(tag_of(if msg.is_empty() { &self.buf[..len] } else { &msg }));
                        }
                        if too_long.is_none() {
                            msg.extend_from_slice(&self.buf[..len]);
                        }
                        self.buf.advance(len);
                        match literal {
                            None => {
                                return too_long.map_or(Ok(msg), |tag| Err(ReadError::TooLong { tag, literal: false }));
                            }
                            Some(lit)
                                if too_long.is_none() && (msg.len() as u64).saturating_add(lit.len) > limit as u64 =>
                            {
                                let tag = tag_of(&msg);
                                if lit.sync {
                                    // RFC 3501 7.5: refusing instead of sending "+" means the
                                    // client never sends the literal.
                                    self.framer.refuse_literal();
                                    return Err(ReadError::TooLong { tag, literal: true });
                                }
                                too_long = Some(tag);
                            }
                            Some(lit) if lit.sync && too_long.is_none() => {
                                if let Some(c) = continuation {
                                    self.write(c).await?;
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    Fragment::LiteralData { len, .. } => {
                        if too_long.is_none() {
                            msg.extend_from_slice(&self.buf[..len]);
                        }
                        self.buf.advance(len);
                    }
                    Fragment::Overlong { len, start, end, literal, .. } => {
                        if start && too_long.is_none() {
                            too_long = Some(tag_of(if msg.is_empty() { &self.buf[..len] } else { &msg }));
                        }
                        self.buf.advance(len);
                        if end {
                            match literal {
                                Some(lit) if lit.sync => {
                                    self.framer.refuse_literal();
                                    return Err(ReadError::TooLong {
                                        tag: too_long.unwrap_or_default(),
                                        literal: true,
                                    });
                                }
                                Some(_) => {}
                                None => {
                                    return Err(ReadError::TooLong {
                                        tag: too_long.unwrap_or_default(),
                                        literal: false,
                                    });
                                }
                            }
                        }
                    }
                }
            }
            if self.fill().await? == 0 {
                let idle =
                    msg.is_empty() && self.buf.is_empty() && too_long.is_none() && self.framer.at_message_start();
                return Err(if idle { ReadError::Eof } else { ReadError::Truncated });
            }
        }
    }
}

impl Conn {
    /// Takes one whole message out of the buffer if one is there, without reading. Together
    /// with [`Conn::fill`] (which is cancel-safe) this lets a caller wait on other things too.
    pub fn try_message(&mut self) -> Option<Vec<u8>> {
        let mut framer = self.framer.clone();
        let mut pos = 0;
        while let Some(fragment) = framer.next(&self.buf[pos..]) {
            pos += match fragment {
                Fragment::Line { len, .. } | Fragment::LiteralData { len, .. } | Fragment::Overlong { len, .. } => len,
            };
            if framer.at_message_start() {
                self.framer = framer;
                return Some(self.buf.split_to(pos).to_vec());
            }
        }
        None
    }
}

/// The tag a message starts with, if it has a plausible one.
fn tag_of(msg: &[u8]) -> Vec<u8> {
    let end = msg.iter().position(|&b| b == b' ' || b == b'\r' || b == b'\n').unwrap_or(msg.len());
    let tag = &msg[..end.min(64)];
    if !tag.is_empty() && tag.iter().all(|&b| crate::imap::wire::command::is_atom_char(b) && b != b'+') {
        tag.to_vec()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the room `prepare` made, as a read would; the bytes are then relayed (split off).
    fn full_read(size: &mut ReadSize, buf: &mut BytesMut) -> usize {
        size.prepare(buf);
        let room = buf.capacity() - buf.len();
        buf.extend(std::iter::repeat_n(0u8, room));
        size.after_read(room);
        drop(buf.split());
        room
    }

    #[test]
    fn reads_grow_while_full_and_shrink_when_light() {
        let mut size = ReadSize::default();
        let mut buf = BytesMut::new();
        size.prepare(&mut buf);
        assert!(buf.capacity() <= 2 * ReadSize::INITIAL, "an idle session starts with a small buffer");
        let mut largest = 0;
        for _ in 0..8 {
            largest = largest.max(full_read(&mut size, &mut buf));
        }
        assert_eq!(size.size, ReadSize::MAX);
        assert!(largest >= ReadSize::MAX / 2, "bulk transfers read large chunks");
        assert!(largest <= 2 * ReadSize::MAX, "reads stay at most around 64 KiB: {largest}");
        size.prepare(&mut buf);
        buf.extend_from_slice(b"* OK\r\n");
        size.after_read(6);
        drop(buf.split());
        size.prepare(&mut buf);
        assert_eq!(size.size, ReadSize::INITIAL);
        assert!(buf.capacity() <= 2 * ReadSize::INITIAL, "a light session gives its large buffer back");
        // A stream that goes on after a pause is back at full size after one full read.
        full_read(&mut size, &mut buf);
        assert_eq!(size.size, ReadSize::MAX);
    }

    #[test]
    fn a_large_buffer_carried_over_is_given_back_when_empty() {
        // The pre-login buffer grows by `Conn::fill`; the relay starts from it.
        let mut buf = BytesMut::with_capacity(READ_CHUNK + 1024);
        let mut size = ReadSize::default();
        buf.extend_from_slice(b"a NOOP\r\n");
        size.prepare(&mut buf);
        assert!(buf.capacity() > READ_CHUNK, "a buffer holding bytes is kept");
        drop(buf.split());
        size.prepare(&mut buf);
        assert!(buf.capacity() <= 2 * ReadSize::INITIAL);
    }

    #[test]
    fn a_medium_read_keeps_the_size() {
        let mut size = ReadSize::default();
        let mut buf = BytesMut::new();
        for _ in 0..3 {
            full_read(&mut size, &mut buf);
        }
        let grown = size.size;
        size.prepare(&mut buf);
        size.after_read(ReadSize::INITIAL);
        assert_eq!(size.size, grown, "the tail of a message is no reason to shrink");
    }
}
