//! Literal bodies moved from the provider's socket to the client's inside the kernel
//! (`splice(2)` through a pipe), when both sides are plain TCP: a relayed FETCH spends most of
//! the proxy's CPU on two copies (into the read buffer and out of it, issue 19), and a literal
//! the policy forwards as-is need not be seen at all.
//!
//! A session takes a pipe when a large literal streams and gives it back once its traffic is
//! light again, so idle sessions hold no more file descriptors than their two sockets. The
//! pipe is filled only when empty and emptied to the client before anything else is written
//! to it. Any error that says splicing is not possible here (an old kernel, a socket type
//! that cannot be spliced, no file descriptor left for a pipe) turns it off for the session:
//! the bytes then go through the read buffer as before. Linux only; elsewhere [`Pipe`] cannot
//! be made and the relay always copies.

use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::net::Stream;

/// Literals with less than this left go through the read buffer: for a short rest, the two
/// extra system calls per chunk cost more than the copies they save.
pub const THRESHOLD: u64 = 16 * 1024;
/// A session without a pipe takes one only for a literal with at least this left: making and
/// closing it costs five system calls, more than a medium message's copies.
pub const START: u64 = 64 * 1024;
/// While literals are spliced, what a read between two of them takes at most: the lines
/// between them (a FETCH response's end and the next one's start, usually under 200 bytes)
/// and the next literal's first bytes, copied; the rest of the literal goes through the pipe.
pub const LINES_READ: usize = 4 * 1024;
/// The capacity asked for a pipe, and so the most moved through it at once: fewer, larger
/// splices. Where the user's pipes exceed the kernel's soft limit (`pipe-user-pages-soft`), a
/// pipe keeps the capacity it got.
const PIPE_SIZE: usize = 256 * 1024;

/// The splicing state of one session.
#[derive(Default)]
pub struct Splicing {
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet moved on to the client.
    held: usize,
    /// Splicing failed once in this session: the read buffer it is.
    off: bool,
    /// When the bytes in the pipe came, or the client last took some of them.
    progress: Option<Instant>,
}

impl Splicing {
    /// How many bytes to move from the provider in one splice now, at most (0: read them).
    /// `left` is what the policy lets pass unseen ([`super::policy::Policy::provider_passthrough`]).
    pub fn chunk(&self, client: &Stream, provider: &Stream, left: u64) -> usize {
        let plain = matches!((client, provider), (Stream::Plain(_), Stream::Plain(_)));
        let least = if self.pipe.is_some() { THRESHOLD } else { START };
        if self.off || self.held > 0 || !plain || left < least || !cfg!(target_os = "linux") {
            return 0;
        }
        left.min(PIPE_SIZE as u64) as usize
    }

    /// Whether the session splices now (it holds a pipe: large literals are streaming).
    pub fn active(&self) -> bool {
        self.pipe.is_some()
    }

    /// Bytes waiting in the pipe for the client.
    pub fn held(&self) -> usize {
        self.held
    }

    /// When the client will have taken nothing of what the pipe holds for `limit`.
    pub fn stalled_at(&self, limit: Duration) -> Option<Instant> {
        (self.held > 0).then(|| self.progress.unwrap_or_else(Instant::now) + limit)
    }

    /// Moves up to `max` bytes from the provider into the (empty) pipe; `Ok(0)` at the end of
    /// its stream. An error [`Splicing::cannot`] says is not the socket's: nothing was moved.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, provider: &Stream, max: usize) -> Poll<io::Result<usize>> {
        let Stream::Plain(tcp) = provider else { return Poll::Ready(Err(unsupported())) };
        if self.pipe.is_none() {
            self.pipe = Some(Pipe::new()?);
            tracing::debug!("splicing literal bodies from the provider to the client");
        }
        let pipe = self.pipe.as_ref().expect("made above");
        let n = std::task::ready!(pipe.poll_fill(cx, tcp, max.min(pipe.capacity())))?;
        self.held = n;
        self.progress = Some(Instant::now());
        crate::metrics::SPLICED_BYTES.add(n as u64);
        Poll::Ready(Ok(n))
    }

    /// Moves what the pipe holds on to the client. On an error [`Splicing::cannot`] says is
    /// not the socket's, [`Splicing::take_held`] gets the bytes for the ordinary write path.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, client: &Stream) -> Poll<io::Result<()>> {
        let (Some(pipe), Stream::Plain(tcp)) = (self.pipe.as_ref(), client) else {
            return Poll::Ready(Err(unsupported()));
        };
        while self.held > 0 {
            let n = std::task::ready!(pipe.poll_drain(cx, tcp, self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held -= n;
            self.progress = Some(Instant::now());
        }
        Poll::Ready(Ok(()))
    }

    /// What the pipe holds, read out of it (splicing to the client failed); splicing is off
    /// from now on.
    pub fn take_held(&mut self) -> io::Result<Vec<u8>> {
        self.off = true;
        let mut out = vec![0; self.held];
        if let Some(pipe) = self.pipe.take() {
            pipe.read_exact(&mut out)?;
        }
        self.held = 0;
        Ok(out)
    }

    /// Whether `e` says splicing cannot be done here (rather than that a socket failed); then
    /// it is turned off for the session.
    pub fn cannot(&mut self, e: &io::Error) -> bool {
        let cannot = e.kind() == io::ErrorKind::Unsupported
            || matches!(
                e.raw_os_error(),
                Some(
                    libc::EINVAL
                        | libc::ENOSYS
                        | libc::EOPNOTSUPP
                        | libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOMEM
                        | libc::EPERM
                )
            );
        if cannot {
            tracing::debug!("splicing turned off for the session: {e}");
            self.off = true;
            if self.held == 0 {
                self.pipe = None;
            }
        }
        cannot
    }

    /// Traffic is light again: the pipe (two file descriptors) is given back.
    pub fn release(&mut self) {
        if self.held == 0 {
            self.pipe = None;
        }
    }
}

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "splicing needs plain TCP on both sides")
}

#[cfg(target_os = "linux")]
pub use linux::Pipe;

#[cfg(not(target_os = "linux"))]
pub use other::Pipe;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::task::{Context, Poll, ready};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// A pipe between the two sockets, both ends non-blocking.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// What it holds at most.
        capacity: usize,
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let mut fds: [libc::c_int; 2] = [-1; 2];
            // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both are open file descriptors that nothing else owns.
            let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: F_SETPIPE_SZ and F_GETPIPE_SZ on an open pipe; failure changes nothing.
            let capacity = unsafe {
                libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, super::PIPE_SIZE as libc::c_int);
                libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
            };
            let capacity = if capacity > 0 { capacity as usize } else { 4096 };
            Ok(Pipe { read, write, capacity })
        }

        /// What it holds at most.
        pub fn capacity(&self) -> usize {
            self.capacity
        }

        /// Splices up to `max` bytes from `tcp` into the pipe (which must have room for them).
        pub fn poll_fill(&self, cx: &mut Context<'_>, tcp: &TcpStream, max: usize) -> Poll<io::Result<usize>> {
            loop {
                ready!(tcp.poll_read_ready(cx))?;
                let to = self.write.as_raw_fd();
                match tcp.try_io(Interest::READABLE, || splice(tcp.as_raw_fd(), to, max)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            }
        }

        /// Splices up to `max` bytes (at most what the pipe holds) from the pipe to `tcp`.
        pub fn poll_drain(&self, cx: &mut Context<'_>, tcp: &TcpStream, max: usize) -> Poll<io::Result<usize>> {
            loop {
                ready!(tcp.poll_write_ready(cx))?;
                let from = self.read.as_raw_fd();
                match tcp.try_io(Interest::WRITABLE, || splice(from, tcp.as_raw_fd(), max)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            }
        }

        /// Reads exactly `out.len()` bytes the pipe holds.
        pub fn read_exact(&self, out: &mut [u8]) -> io::Result<()> {
            let mut done = 0;
            while done < out.len() {
                let rest = &mut out[done..];
                // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
                let n = unsafe { libc::read(self.read.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
                match n {
                    n if n > 0 => done += n as usize,
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    _ => return Err(io::Error::last_os_error()),
                }
            }
            Ok(())
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        // SAFETY: both are open file descriptors; null offsets splice from/to the current
        // position, as a socket and a pipe require.
        let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::io;
    use std::task::{Context, Poll};

    use tokio::net::TcpStream;

    /// No pipe to splice through on this system: [`Pipe::new`] always fails, so the relay
    /// copies.
    pub enum Pipe {}

    impl Pipe {
        pub fn capacity(&self) -> usize {
            match *self {}
        }

        pub fn new() -> io::Result<Pipe> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub fn poll_fill(&self, _: &mut Context<'_>, _: &TcpStream, _: usize) -> Poll<io::Result<usize>> {
            match *self {}
        }

        pub fn poll_drain(&self, _: &mut Context<'_>, _: &TcpStream, _: usize) -> Poll<io::Result<usize>> {
            match *self {}
        }

        pub fn read_exact(&self, _: &mut [u8]) -> io::Result<()> {
            match *self {}
        }
    }
}
