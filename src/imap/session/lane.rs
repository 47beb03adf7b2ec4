//! Lanes: threads that relay sessions in their plain state straight from `epoll`, without the
//! async runtime in the way (issue 19).
//!
//! Through the runtime, a NOOP's round trip cost ~12,500 user-space instructions, most of them
//! the runtime's wake-up, scheduling and I/O-driver dispatch before the session's bytes moved
//! (nginx's mail proxy: ~1,400), and every instruction between a read and its write is latency
//! the proxy adds. So a session whose policy is in its plain state ([`Policy::lane_ready`]:
//! every fragment is forwarded or rewritten, nothing of the proxy's own waits) over plain TCP
//! both ways is handed, sockets and all, to a lane: a thread that waits in `epoll_wait` on the
//! sockets of many sessions and, per readiness, reads, frames through the same policy and
//! writes, in one pass.
//!
//! Anything else goes back to the session's task with everything where the task would have
//! left it: a command the interceptor may watch (not framed: the task frames it), anything the
//! proxy says or does itself, a write that would block, a large literal to splice, the end of a
//! stream or an error. The task calls the session back for its timer, shutdown and the
//! worker's verdicts. `COI_PROXY_LANES=0` in the environment turns lanes off.
//!
//! [`Policy::lane_ready`]: super::policy::Policy::lane_ready
//!
//! Linux only (`epoll`, like the splicing of `splice.rs`): elsewhere there are no lanes and
//! every session is relayed by its task.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use bytes::BytesMut;

use super::policy::LaneInput;
use super::relay::{Core, Outbox, frame};
use super::splice;
use crate::imap::wire::command::CommandName;
use crate::imap::wire::provider::Interceptor;

/// Events taken from `epoll_wait` at once.
const EVENTS: usize = 256;
/// The epoll key of a lane's own wake-up (its eventfd).
const WAKE: u64 = u64::MAX;

/// The commands an interceptor may watch (`Interceptor::watches`), by name and `UID`: a lane
/// hands such a command back unframed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watched(u128);

impl Watched {
    pub fn of<I: Interceptor + ?Sized>(interceptor: &I) -> Watched {
        let mut bits = 0u128;
        for &name in CommandName::ALL {
            for uid in [false, true] {
                if interceptor.watches(name, uid) {
                    bits |= Watched::bit(name, uid);
                }
            }
        }
        Watched(bits)
    }

    fn bit(name: CommandName, uid: bool) -> u128 {
        1 << (name as u32 * 2 + uid as u32)
    }

    pub fn has(self, name: CommandName, uid: bool) -> bool {
        self.0 & Watched::bit(name, uid) != 0
    }
}

/// Why a session came back from its lane with an error of one of its sockets.
#[derive(Debug)]
pub enum Failure {
    ClientRead(io::Error),
    ClientWrite(io::Error),
    ProviderRead(io::Error),
    ProviderWrite(io::Error),
}

/// A session in a lane: its relaying state, its sockets (taken from the runtime), and how it
/// goes back.
pub struct Laned {
    pub core: Box<Core>,
    pub client: TcpStream,
    pub provider: TcpStream,
    pub watched: Watched,
    /// The session goes back before this, so the task's timer never has to reach into a lane
    /// (no deadline the policy can get in a lane is earlier).
    pub bound: Option<Instant>,
    pub failed: Option<Failure>,
    id: u64,
    back: Option<oneshot::Sender<Box<Laned>>>,
}

/// The lanes of the process, one per core, started on first use.
pub struct Lanes {
    lanes: Vec<Arc<Lane>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

/// How a task calls its session back.
pub struct Ticket {
    lane: Arc<Lane>,
    id: u64,
}

impl Ticket {
    /// Asks the lane to hand the session back soon (it may be on its way back already).
    pub fn recall(&self) {
        self.lane.send(Message::Recall(self.id));
    }
}

impl Lanes {
    /// The process's lanes; `None` when they are turned off or could not be started (sessions
    /// are then relayed by their tasks alone, as before lanes).
    pub fn get() -> Option<&'static Lanes> {
        static LANES: OnceLock<Option<Lanes>> = OnceLock::new();
        LANES
            .get_or_init(|| {
                if !cfg!(target_os = "linux") {
                    return None;
                }
                if std::env::var_os("COI_PROXY_LANES").is_some_and(|v| v == "0") {
                    return None;
                }
                let count = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
                match (0..count).map(Lane::start).collect::<io::Result<Vec<_>>>() {
                    Ok(lanes) => Some(Lanes { lanes, next: AtomicUsize::new(0), ids: AtomicU64::new(0) }),
                    Err(e) => {
                        tracing::warn!("could not start the relay lanes ({e}); sessions are relayed without them");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Hands a session to a lane; it comes back through the receiver.
    pub fn enter(
        &self,
        core: Box<Core>,
        client: TcpStream,
        provider: TcpStream,
        watched: Watched,
        bound: Option<Instant>,
    ) -> (Ticket, oneshot::Receiver<Box<Laned>>) {
        let lane = &self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()];
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let laned = Laned { core, client, provider, watched, bound, failed: None, id, back: Some(tx) };
        lane.send(Message::Enter(Box::new(laned)));
        crate::metrics::LANE_ENTRIES.add(1);
        (Ticket { lane: lane.clone(), id }, rx)
    }
}

enum Message {
    Enter(Box<Laned>),
    Recall(u64),
}

/// One lane thread's epoll set and mailbox.
struct Lane {
    epoll: OwnedFd,
    /// An eventfd in the epoll set: written when the mailbox has news.
    wake: OwnedFd,
    inbox: Mutex<Vec<Message>>,
}

#[cfg(target_os = "linux")]
impl Lane {
    fn start(n: usize) -> io::Result<Arc<Lane>> {
        // SAFETY: plain system calls; each returned descriptor is checked and owned at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, wake.as_raw_fd(), WAKE)?;
        let lane = Arc::new(Lane { epoll, wake, inbox: Mutex::new(Vec::new()) });
        let run = lane.clone();
        std::thread::Builder::new().name(format!("coi-lane-{n}")).spawn(move || run.run())?;
        Ok(lane)
    }

    fn send(&self, message: Message) {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner).push(message);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. It can fail only when the
        // counter is at its maximum, and then a wake-up is pending anyway.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn run(&self) {
        let mut sessions = Sessions::default();
        let mut scratch = Scratch::default();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: `events` is a live buffer of `EVENTS` entries; no signal mask is passed.
            // A direct system call, as `read_into` and `send` are (`epoll_pwait`: `epoll_wait`
            // is not on every architecture).
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait,
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    -1 as libc::c_int,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("relay lane: epoll_wait failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                continue;
            }
            for event in &events[..n as usize] {
                let key = event.u64;
                if key == WAKE {
                    self.take_mail(&mut sessions);
                    continue;
                }
                let Some(laned) = sessions.get(key) else { continue };
                let side = if key & 1 == 0 { Side::Client } else { Side::Provider };
                // The peer closed or the socket failed: what is still there is read here, the
                // end (which edge-triggered readiness tells only once) by the task.
                let ended = event.events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
                // A bug on one session's bytes must not take the lane's other sessions with it
                // (as a panicking task takes only itself): that session is closed, its task
                // hears that the lane dropped it, and the lane goes on.
                match std::panic::catch_unwind(AssertUnwindSafe(|| step(laned, side, &mut scratch))) {
                    Ok(Next::Stay) if !ended => {}
                    Ok(Next::Stay | Next::Back) => {
                        let laned = sessions.remove(key);
                        self.give_back(laned);
                    }
                    outcome => {
                        let mut laned = sessions.remove(key);
                        laned.back = None;
                        self.give_back(laned);
                        scratch = Scratch::default();
                        match outcome {
                            Err(_) => tracing::error!("relay lane: relaying a session panicked; it was closed"),
                            _ => tracing::error!(
                                "relay lane: the policy changed input a lane had sent on already; the session was closed"
                            ),
                        }
                    }
                }
            }
        }
    }

    fn take_mail(&self, sessions: &mut Sessions) {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        let mail = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(PoisonError::into_inner));
        for message in mail {
            match message {
                Message::Enter(laned) => {
                    let (client, provider) = (laned.client.as_raw_fd(), laned.provider.as_raw_fd());
                    let key = sessions.insert(laned);
                    let added = ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, client, key)
                        .and_then(|()| ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, provider, key | 1));
                    if added.is_err() {
                        let laned = sessions.remove(key);
                        self.give_back(laned);
                    }
                }
                Message::Recall(id) => {
                    if let Some(key) = sessions.key_of(id) {
                        let laned = sessions.remove(key);
                        self.give_back(laned);
                    }
                }
            }
        }
    }

    /// Takes the session's sockets out of the epoll set and sends it back to its task (if the
    /// task is gone, the session is dropped: its sockets close).
    fn give_back(&self, mut laned: Box<Laned>) {
        for fd in [laned.client.as_raw_fd(), laned.provider.as_raw_fd()] {
            let _ = ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0);
        }
        if let Some(back) = laned.back.take() {
            let _ = back.send(laned);
        }
    }
}

/// No lanes here: [`Lanes::get`] says so before one is started.
#[cfg(not(target_os = "linux"))]
impl Lane {
    fn start(_: usize) -> io::Result<Arc<Lane>> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn send(&self, _: Message) {}
}

#[cfg(target_os = "linux")]
fn ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, key: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: key };
    // SAFETY: `event` is a live epoll_event; the kernel checks the descriptors.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A lane's sessions, keyed for epoll as slot (high bits), generation and side (bit 0), so
/// that an event of a session gone back is not taken for its slot's next session.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Sessions {
    slots: Vec<(u32, Option<Box<Laned>>)>,
    free: Vec<u32>,
    ids: HashMap<u64, u64>,
}

#[cfg(target_os = "linux")]
impl Sessions {
    fn key(slot: u32, generation: u32) -> u64 {
        (u64::from(slot) << 32) | (u64::from(generation & 0x7fff_ffff) << 1)
    }

    fn insert(&mut self, laned: Box<Laned>) -> u64 {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push((0, None));
            (self.slots.len() - 1) as u32
        });
        let entry = &mut self.slots[slot as usize];
        entry.0 = entry.0.wrapping_add(1);
        let key = Sessions::key(slot, entry.0);
        self.ids.insert(laned.id, key);
        entry.1 = Some(laned);
        key
    }

    fn get(&mut self, key: u64) -> Option<&mut Laned> {
        let (generation, laned) = self.slots.get_mut((key >> 32) as usize)?;
        if Sessions::key((key >> 32) as u32, *generation) != key & !1 {
            return None;
        }
        laned.as_deref_mut()
    }

    fn key_of(&self, id: u64) -> Option<u64> {
        self.ids.get(&id).copied()
    }

    fn remove(&mut self, key: u64) -> Box<Laned> {
        let slot = (key >> 32) as u32;
        let laned = self.slots[slot as usize].1.take().expect("a session in its slot");
        self.ids.remove(&laned.id);
        self.free.push(slot);
        laned
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Provider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Stay,
    Back,
    /// What was sent ahead is not what the policy made of it (a bug): the session is closed.
    Close,
}

/// A lane's read buffer, lent to the session whose side is read (a session keeps a buffer of
/// its own only for bytes left between two reads): no allocation per read.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Scratch(BytesMut);

#[cfg(target_os = "linux")]
impl Scratch {
    /// The most a lane keeps of a buffer it was given back.
    const KEEP: usize = 64 * 1024;

    /// Lends the scratch buffer to `buf` if that has none.
    fn lend(&mut self, buf: &mut BytesMut) {
        if buf.capacity() == 0 {
            std::mem::swap(buf, &mut self.0);
        }
    }

    /// Takes a buffer back: one emptied by the session, or one that went out whole.
    fn take_back(&mut self, mut buf: BytesMut) {
        if self.0.capacity() == 0 && buf.capacity() <= Scratch::KEEP {
            buf.clear();
            self.0 = buf;
        }
    }

    /// Takes back what the session holds of `buf` if it holds nothing in it.
    fn take_back_empty(&mut self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 0 {
            self.take_back(std::mem::take(buf));
        }
    }
}

/// One readiness of one side: read, frame, write, as long as the side has bytes and the session
/// stays plain (the session was plain when this began: it is checked after each pass).
#[cfg(target_os = "linux")]
fn step(laned: &mut Laned, side: Side, scratch: &mut Scratch) -> Next {
    // Read once, after an express send: the clock is not asked before the bytes go on.
    let mut clock = None;
    loop {
        let core = &mut *laned.core;
        let (socket, buf, size) = match side {
            Side::Client => (&laned.client, &mut core.client_buf, &mut core.client_size),
            Side::Provider => (&laned.provider, &mut core.provider_buf, &mut core.provider_size),
        };
        scratch.lend(buf);
        size.prepare(buf);
        let spare = buf.capacity() - buf.len();
        let n = match read_into(socket, buf) {
            // The task reads the end itself.
            Ok(0) => {
                scratch.take_back_empty(buf);
                return Next::Back;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                scratch.take_back_empty(buf);
                return Next::Stay;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                scratch.take_back_empty(buf);
                laned.failed = Some(match side {
                    Side::Client => Failure::ClientRead(e),
                    Side::Provider => Failure::ProviderRead(e),
                });
                return Next::Back;
            }
        };
        size.after_read(n);
        let now;
        let mut back = false;
        let (to, peer) = match side {
            Side::Client => {
                // A line the policy is known to relay unchanged goes out before the policy
                // frames and records it (`policy/express.rs`).
                let express = match core.to_provider.is_idle() {
                    true => core.policy.client_express(&core.client_buf, |name, uid| laned.watched.has(name, uid)),
                    false => None,
                };
                let express = express.map(|express| (express, send_ahead(&laned.provider, &core.client_buf)));
                now = *clock.get_or_insert_with(Instant::now);
                core.traffic.from_client += n as u64;
                core.policy.client_read(now);
                match express {
                    Some((express, sent)) => {
                        if !core.policy.client_expressed(&core.client_buf, express, now) {
                            return Next::Close;
                        }
                        wrote_ahead(&mut core.to_provider, &mut core.client_buf, sent, now);
                    }
                    None => back |= frame_client(core, laned.watched, now),
                }
                (&mut core.to_provider, &laned.provider)
            }
            Side::Provider => {
                let express = core.to_client.is_idle() && core.policy.provider_express(&core.provider_buf);
                let sent = express.then(|| send_ahead(&laned.client, &core.provider_buf));
                now = *clock.get_or_insert_with(Instant::now);
                core.traffic.from_provider += n as u64;
                core.policy.provider_read(now);
                match sent {
                    Some(sent) => {
                        if !core.policy.provider_expressed(&core.provider_buf, now) {
                            return Next::Close;
                        }
                        wrote_ahead(&mut core.to_client, &mut core.provider_buf, sent, now);
                    }
                    None => {
                        core.frame_provider(now);
                    }
                }
                (&mut core.to_client, &laned.client)
            }
        };
        // Framed whole, the read buffer went out as it was: it comes back after the write.
        let whole = match side {
            Side::Client => core.client_buf.capacity() == 0,
            Side::Provider => core.provider_buf.capacity() == 0,
        };
        if !to.is_idle() {
            match to.write_now(peer, now) {
                Ok(Some(sent)) if whole => scratch.take_back(sent),
                Ok(Some(_)) => {}
                Ok(None) => return Next::Back,
                Err(e) => {
                    laned.failed = Some(match side {
                        Side::Client => Failure::ProviderWrite(e),
                        Side::Provider => Failure::ClientWrite(e),
                    });
                    return Next::Back;
                }
            }
        }
        let buf = match side {
            Side::Client => &mut core.client_buf,
            Side::Provider => &mut core.provider_buf,
        };
        scratch.take_back_empty(buf);
        // A large literal goes through the kernel: the task splices it.
        back |= side == Side::Provider && core.policy.provider_passthrough() >= splice::START;
        if back || !core.policy.lane_ready() {
            return Next::Back;
        }
        // No deadline the policy can get in its plain state comes before the bound (a command
        // sent now is owed an answer by now + the provider timeout, at least the bound).
        debug_assert!(
            core.policy.deadline().is_none_or(|d| laned.bound.is_none_or(|bound| d >= bound)),
            "a lane's session has a deadline before its bound"
        );
        if n < spare {
            // A short read took all there was; with edge-triggered readiness, new bytes are a
            // new event.
            return Next::Stay;
        }
    }
}

/// Frames the client's bytes as the task would, except that a command the interceptor may
/// watch is left unframed for the task. Whether the session goes back.
#[cfg(target_os = "linux")]
fn frame_client(core: &mut Core, watched: Watched, now: Instant) -> bool {
    let mut back = false;
    let policy = &mut core.policy;
    frame(&mut core.client_buf, &mut core.to_provider, now, |buf| {
        match policy.client_input_lane(buf, now, |name, uid| watched.has(name, uid)) {
            LaneInput::Step(step) => Some(step),
            LaneInput::More => None,
            LaneInput::Watched => {
                back = true;
                None
            }
        }
    });
    back
}

/// After an express send of `sent` bytes of `buf`: what did not go is the output (the write
/// after framing sends it), and a buffer sent whole is emptied for the next read.
#[cfg(target_os = "linux")]
fn wrote_ahead(to: &mut Outbox, buf: &mut BytesMut, sent: usize, now: Instant) {
    if sent < buf.len() {
        to.sent_in_part(std::mem::take(buf), sent, now);
    } else {
        buf.clear();
    }
}

/// [`send`] of input before it is framed: how much went. An error counts as nothing sent; the
/// write after framing meets it again and reports it.
#[cfg(target_os = "linux")]
fn send_ahead(socket: &TcpStream, bytes: &[u8]) -> usize {
    send(socket, bytes).unwrap_or(0)
}

/// One `read` into the spare room of `buf`.
#[cfg(target_os = "linux")]
fn read_into(socket: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into the spare capacity, and only
    // the `n` it reports count as written.
    let n = unsafe {
        libc::syscall(libc::SYS_recvfrom, socket.as_raw_fd(), spare.as_mut_ptr(), spare.len(), 0, 0usize, 0usize)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the first `n` spare bytes were just written.
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// `send(2)` of what `bytes` holds, without SIGPIPE. Both this and [`read_into`] are system
/// calls made directly rather than through libc's wrappers, which make them thread-cancellation
/// points (two calls more each, ~90 instructions a round trip, for a thread never cancelled).
#[cfg(target_os = "linux")]
pub fn send(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `bytes.len()` bytes of a live slice.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            socket.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
            0usize,
            0usize,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// [`send`] where there are no lanes (never called: only a lane writes this way).
#[cfg(not(target_os = "linux"))]
pub fn send(mut socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    std::io::Write::write(&mut socket, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Views;
    impl Interceptor for Views {
        fn wants(&self, _: CommandName) -> bool {
            false
        }
        fn watches(&self, name: CommandName, _uid: bool) -> bool {
            matches!(name, CommandName::Fetch | CommandName::Select)
        }
        async fn handle<P: crate::imap::wire::provider::ProviderCommands>(
            &mut self,
            _: Vec<u8>,
            _: &mut P,
            _: &mut crate::imap::wire::provider::ReplyOut,
        ) -> Vec<u8> {
            Vec::new()
        }
    }

    #[test]
    fn the_watched_commands_are_those_the_interceptor_names() {
        let w = Watched::of(&Views);
        assert!(w.has(CommandName::Fetch, false) && w.has(CommandName::Fetch, true));
        assert!(w.has(CommandName::Select, false));
        assert!(!w.has(CommandName::Noop, false) && !w.has(CommandName::Store, true));
        assert!(!w.has(CommandName::Other, false));
        let none = Watched::of(&crate::imap::wire::provider::Relay);
        assert_eq!(none, Watched::default());
    }

    #[test]
    fn every_command_name_has_its_place_in_the_table() {
        for (i, name) in CommandName::ALL.iter().enumerate() {
            assert_eq!(*name as usize, i, "{name:?}");
        }
        assert_eq!(CommandName::ALL.len(), CommandName::Other as usize + 1);
        assert!(CommandName::ALL.len() * 2 <= 128);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_key_of_a_session_gone_back_finds_nothing() {
        let mut sessions = Sessions::default();
        let key = Sessions::key(0, 1);
        assert!(sessions.get(key).is_none());
        assert!(sessions.get(key | 1).is_none());
        assert_eq!(sessions.key_of(7), None);
        sessions.free.push(0);
        sessions.slots.push((5, None));
        assert!(sessions.get(Sessions::key(0, 5)).is_none(), "an empty slot");
    }
}
