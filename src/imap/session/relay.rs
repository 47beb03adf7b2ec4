//! The authenticated phase's I/O loop: client and provider bytes relayed both ways,
//! byte-exactly, as a streaming copy, around the sans-I/O [`Policy`] that decides everything
//! else.
//!
//! One task, one `select!`: read either side, let the policy frame and judge what was read,
//! write what it says, and wake it at its deadlines. Each side's writes go on while the other
//! side is read, so a client sending a large APPEND while the provider streams a large FETCH
//! cannot deadlock; a side is read again only once what was read from it has been written on
//! (the bytes stay in their read buffer until then: unchanged runs are written straight from
//! it, no copy).
//!
//! The wait is one hand-written poll over long-lived sources, so a wake-up costs little: each
//! socket is owned whole (no split halves and their lock), one timer serves every deadline and
//! is moved only when it must fire earlier, and the watches of shutdown and verdicts stay
//! registered between waits. A plain TCP side that waits with nothing unfinished holds no read
//! buffer: it waits for readiness and takes a buffer only once bytes are there.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::lane::{Failure, Lanes, Watched};
use super::own::{OwnCommands, OwnReply, OwnRequest};
pub use super::policy::RelayEnd;
use super::policy::{Event, Keep, Policy, PolicyOptions, Step};
use super::quiet::Verdicts;
use super::splice::{self, Splicing};
use super::wakes::{Group, Wakes};
use crate::deflate::Counters;
use crate::imap::conn::{Conn, ReadSize};
use crate::imap::wire::provider::{Interceptor, ReplyOut};
use crate::imap::wire::trace;
use crate::net::Stream;

/// What the relay needs to know about its session.
pub struct RelayOptions {
    pub max_literal: u64,
    pub autologout: Duration,
    /// How long the provider may stay silent while it owes an answer.
    pub provider_timeout: Duration,
    /// Capabilities the proxy adds to the provider's.
    pub extra_capabilities: Vec<&'static str>,
    /// Called when a STORE that sets or clears `\Seen` has been answered (the COI worker
    /// moves chat messages once they are seen).
    pub seen_changed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Keeps an IDLE-ing client asleep while messages that get moved away arrive.
    pub quiet: Option<QuietInbox>,
    /// The provider lacks IDLE: the proxy serves it, polling with NOOP at this interval.
    pub emulate_idle: Option<Duration>,
    /// The provider's NOOP may miss new mail (imap4d): the emulated IDLE also counts with
    /// STATUS (see `policy::rescan`).
    pub rescan: bool,
    /// Serve the client's `COMPRESS DEFLATE`.
    pub compress: bool,
    /// The account's share of the memory budget (what the policy reads whole is charged to it).
    pub memory: Option<crate::limits::budget::Share>,
}

/// What the quiet INBOX needs: whether it applies now, the worker's verdicts, and a way to wake
/// the worker when new messages wait for its look.
pub struct QuietInbox {
    pub active: Arc<dyn Fn() -> bool + Send + Sync>,
    pub verdicts: watch::Receiver<Verdicts>,
    pub wake: Arc<dyn Fn() + Send + Sync>,
}

/// Byte counts for the session's log line (uncompressed; the bytes on the wire of a
/// compressed side are in its counters).
#[derive(Debug, Default, Clone)]
pub struct Traffic {
    pub from_client: u64,
    pub from_provider: u64,
    /// The client's connection, once it asked for COMPRESS.
    pub client_wire: Option<Arc<Counters>>,
}

/// The most an idle outbox keeps of its assembly buffer.
const KEEP_ASSEMBLED: usize = 4 * 1024;

/// How long the last words to the client may take once the session is over.
const LAST_WORDS: Duration = Duration::from_secs(5);
/// How long a client may leave what it is sent unread before the session ends: it stops being
/// served, and what was waiting for it is freed.
const CLIENT_STALL: Duration = Duration::from_secs(5 * 60);

/// The interceptor at work on one command; it hands itself back with the reply.
type Intercepting<'a, I> = Pin<Box<dyn Future<Output = (&'a mut I, Vec<u8>)> + Send + 'a>>;

/// Relays until either side closes, the proxy says BYE, or shutdown is signalled.
pub async fn run<I: Interceptor>(
    client: Conn,
    upstream: Conn,
    opts: RelayOptions,
    interceptor: &mut I,
    shutdown: watch::Receiver<bool>,
) -> (RelayEnd, Traffic) {
    let mut relay = Relay::new(client, upstream, opts, interceptor, shutdown);
    let sleep = tokio::time::sleep_until(far_future());
    tokio::pin!(sleep);
    let end = loop {
        if let Some(end) = relay.work().await {
            break end;
        }
        if let Some(lanes) = relay.lanes
            && relay.lane_eligible()
        {
            if let Err(end) = relay.lane(lanes, sleep.as_mut()).await {
                break end;
            }
            continue;
        }
        if let Some(end) = relay.wait(sleep.as_mut()).await {
            break end;
        }
        relay.back_from_lane = false;
    };
    let traffic = match relay.core.get() {
        Some(core) => core.traffic.clone(),
        None => relay.traffic_in_lane,
    };
    (end, traffic)
}

/// One session's sockets, buffers and policy.
struct Relay<'a, I> {
    /// Away while the session is in a lane.
    core: Hold<Core>,
    /// The byte counts when the session last went to a lane (if it never comes back).
    traffic_in_lane: Traffic,
    /// Where the session is relayed while it is plain (`None`: lanes are off).
    lanes: Option<&'static Lanes>,
    /// The commands the interceptor may watch: a lane leaves them to the task.
    watched: Watched,
    provider_timeout: Duration,
    /// The session came back from its lane and has not waited here since: it does once before
    /// it goes again, so that what sent it back (the end of a stream, a write that would block)
    /// is seen here rather than sending it back and forth.
    back_from_lane: bool,
    /// Literal bodies moved to the client in the kernel; what its pipe holds goes to the
    /// client before anything in `to_client`.
    splice: Splicing,
    /// The interceptor when it is not at work.
    interceptor: Option<&'a mut I>,
    intercepting: Option<Intercepting<'a, I>>,
    /// The parts of the interceptor's response it writes before its end.
    parts: Option<mpsc::Receiver<Vec<u8>>>,
    /// The interceptor's own commands come here ...
    own_tx: mpsc::UnboundedSender<OwnRequest>,
    own_rx: mpsc::UnboundedReceiver<OwnRequest>,
    /// ... and the responses to the pending one go there.
    own_replies: Option<mpsc::UnboundedSender<OwnReply>>,
    seen_changed: Option<Arc<dyn Fn() + Send + Sync>>,
    wake_worker: Option<Arc<dyn Fn() + Send + Sync>>,
    verdicts: Option<Changes<Verdicts>>,
    /// `None` once shutting down.
    shutdown: Option<Changes<bool>>,
    /// When the timer fires (at or before the policy's deadline and the client's stall).
    armed: Option<Instant>,
    /// Which group of sources woke the task.
    wakes: Wakes,
    /// The time of this wake-up, read once when first needed (everything a wake-up does
    /// happens at practically one instant; a clock read per step cost ~800 instructions of a
    /// NOOP's round trip).
    now: Cell<Option<Instant>>,
    /// The sources whose last poll was pending and whose group has not woken since: polling
    /// them again would only tell the same (bits of [`Source`]).
    standing: u16,
}

/// What a session's relaying needs besides its waiting: the policy, both sockets, their read
/// buffers and what goes to each. It moves to a lane (`lane.rs`) and back whole.
pub(super) struct Core {
    pub policy: Policy,
    pub client: Stream,
    pub client_buf: BytesMut,
    pub client_size: ReadSize,
    pub provider: Stream,
    pub provider_buf: BytesMut,
    pub provider_size: ReadSize,
    pub to_client: Outbox,
    pub to_provider: Outbox,
    pub traffic: Traffic,
}

impl Core {
    /// Frames what was read from the provider into what goes to the client; whether anything
    /// was framed.
    pub(super) fn frame_provider(&mut self, now: Instant) -> bool {
        let policy = &mut self.policy;
        frame(&mut self.provider_buf, &mut self.to_client, now, |buf| {
            let step = policy.provider_input(buf, now)?;
            trace::provider_fragment(&step.fragment, &buf[..step.len]);
            Some(step)
        })
    }
}

/// A value that is away at times (a session's [`Core`] while it is in a lane): the relay's
/// state holds one pointer for it rather than a second place for the whole of it, and reads it
/// through as if it were always there (it is, whenever the task runs anything but `lane`).
struct Hold<T>(Option<Box<T>>);

impl<T> Hold<T> {
    fn new(value: T) -> Hold<T> {
        Hold(Some(Box::new(value)))
    }

    fn take(&mut self) -> Box<T> {
        self.0.take().expect("taken once, then put back")
    }

    fn put(&mut self, value: Box<T>) {
        self.0 = Some(value);
    }

    fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }
}

impl<T> std::ops::Deref for Hold<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().expect("the session's core is here while its task runs")
    }
}

impl<T> std::ops::DerefMut for Hold<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_deref_mut().expect("the session's core is here while its task runs")
    }
}

/// The sources the relay waits on, as bits of `Relay::standing`.
struct Source;

impl Source {
    const CLIENT_READ: u16 = 1;
    const CLIENT_WRITE: u16 = 1 << 1;
    const PROVIDER_READ: u16 = 1 << 2;
    const PROVIDER_WRITE: u16 = 1 << 3;
    const TIMER: u16 = 1 << 4;
    const PARTS: u16 = 1 << 5;
    const VERDICTS: u16 = 1 << 6;
    const SHUTDOWN: u16 = 1 << 7;
    const INTERCEPTING: u16 = 1 << 8;
    const OWN: u16 = 1 << 9;
    const CLIENT: u16 = Source::CLIENT_READ | Source::CLIENT_WRITE;
    const PROVIDER: u16 = Source::PROVIDER_READ | Source::PROVIDER_WRITE;
    const OTHER: u16 = Source::PARTS | Source::VERDICTS | Source::SHUTDOWN | Source::INTERCEPTING | Source::OWN;
}

impl<'a, I: Interceptor> Relay<'a, I> {
    fn new(
        client: Conn,
        upstream: Conn,
        opts: RelayOptions,
        interceptor: &'a mut I,
        shutdown: watch::Receiver<bool>,
    ) -> Relay<'a, I> {
        let mut verdicts = opts.quiet.as_ref().map(|q| q.verdicts.clone());
        let wake_worker = opts.quiet.as_ref().map(|q| q.wake.clone());
        let initial = verdicts.as_mut().map(|v| *v.borrow_and_update()).unwrap_or_default();
        let verdicts = verdicts.map(Changes::new);
        let provider_timeout = opts.provider_timeout;
        let policy_opts = PolicyOptions {
            max_literal: opts.max_literal,
            autologout: opts.autologout,
            provider_timeout: opts.provider_timeout,
            extra_capabilities: opts.extra_capabilities,
            emulate_idle: opts.emulate_idle,
            rescan: opts.rescan,
            quiet: opts.quiet.map(|q| q.active),
            compress: opts.compress,
            memory: opts.memory,
        };
        let mut policy = Policy::new(policy_opts, client.framer, upstream.framer, initial, Instant::now());
        let shutting_down = *shutdown.borrow();
        if shutting_down {
            policy.shutdown(Instant::now());
        }
        let (own_tx, own_rx) = mpsc::unbounded_channel();
        let watched = Watched::of(&*interceptor);
        Relay {
            lanes: Lanes::get(),
            watched,
            provider_timeout,
            back_from_lane: false,
            traffic_in_lane: Traffic::default(),
            core: Hold::new(Core {
                policy,
                client: client.stream,
                client_buf: client.buf,
                client_size: ReadSize::default(),
                provider: upstream.stream,
                provider_buf: upstream.buf,
                provider_size: ReadSize::default(),
                to_client: Outbox::default(),
                to_provider: Outbox::default(),
                traffic: Traffic::default(),
            }),
            splice: Splicing::default(),
            interceptor: Some(interceptor),
            intercepting: None,
            parts: None,
            own_tx,
            own_rx,
            own_replies: None,
            seen_changed: opts.seen_changed,
            wake_worker,
            verdicts,
            shutdown: (!shutting_down).then(|| Changes::new(shutdown)),
            armed: None,
            wakes: Wakes::default(),
            now: Cell::new(None),
            standing: 0,
        }
    }

    /// Lets the policy work through what is buffered until it waits for I/O: frames what was
    /// read, takes what it writes itself, acts on its events. `Some` when the session is over.
    async fn work(&mut self) -> Option<RelayEnd> {
        loop {
            let mut progress = false;
            if self.core.to_provider.is_idle() {
                if let Some(bytes) = self.core.policy.poll_to_provider() {
                    let now = self.now();
                    self.core.to_provider.set(bytes, now);
                    progress = true;
                } else {
                    progress |= self.frame_client();
                }
            }
            if self.client_idle() {
                // Framing first: the proxy's answers pending go in before the next response.
                if self.frame_provider() {
                    progress = true;
                } else if let Some(bytes) = self.core.policy.poll_to_client() {
                    let now = self.now();
                    self.core.to_client.set(bytes, now);
                    progress = true;
                }
            }
            while let Some(event) = self.core.policy.poll_event() {
                progress = true;
                if let Event::End(end) = event {
                    // A session cut off at shutdown has no last words: the client is not
                    // reading what it was sent already, and the daemon is about to exit.
                    if !self.client_idle() && end != RelayEnd::ShutdownCut {
                        let _ = tokio::time::timeout(LAST_WORDS, self.last_words()).await;
                    }
                    return Some(end);
                }
                if event == Event::Compress {
                    if let Err(e) = self.start_compression().await {
                        return Some(RelayEnd::ClientError(e.to_string()));
                    }
                    continue;
                }
                self.event(event);
            }
            if !progress {
                return None;
            }
        }
    }

    /// The time of the current wake-up.
    fn now(&self) -> Instant {
        match self.now.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.now.set(Some(now));
                now
            }
        }
    }

    /// Nothing waits to be written to the client (in the outbox or the splice pipe).
    fn client_idle(&self) -> bool {
        self.core.to_client.is_idle() && self.splice.held() == 0
    }

    /// What waits for the client, in order: the pipe's bytes, then the outbox.
    async fn last_words(&mut self) {
        if self.splice.held() > 0 {
            let drained = std::future::poll_fn(|cx| self.splice.poll_drain(cx, &self.core.client)).await;
            if drained.is_err() {
                return;
            }
        }
        let core = &mut *self.core;
        let _ = core.to_client.write(&mut core.client).await;
    }

    /// When the client will have read nothing of what waits for it for [`CLIENT_STALL`].
    fn client_stalled_at(&self) -> Option<Instant> {
        match (self.core.to_client.stalled_at(CLIENT_STALL), self.splice.stalled_at(CLIENT_STALL)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the `OK` to the client's COMPRESS (the last uncompressed bytes), then puts
    /// deflate on its connection; what the client sent after the command is compressed too.
    async fn start_compression(&mut self) -> std::io::Result<()> {
        if !self.core.to_client.is_idle() {
            let core = &mut *self.core;
            tokio::time::timeout(LAST_WORDS, core.to_client.write(&mut core.client))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read"))??;
        }
        let already_read = self.core.client_buf.split();
        let (stream, counters) = std::mem::replace(&mut self.core.client, Stream::Upgrading).compress(&already_read);
        self.core.client = stream;
        self.standing &= !Source::CLIENT;
        self.core.traffic.client_wire = Some(counters);
        tracing::debug!("client connection compressed (COMPRESS DEFLATE)");
        Ok(())
    }

    fn frame_client(&mut self) -> bool {
        if self.core.client_buf.is_empty() {
            return false;
        }
        let now = self.now();
        let core = &mut *self.core;
        let (policy, interceptor) = (&mut core.policy, &self.interceptor);
        let wants = |name, uid, line: &[u8]| {
            let i = interceptor.as_deref()?;
            i.wants_command(name, uid, line).then(|| i.collect_limit(name, uid, line))
        };
        frame(&mut core.client_buf, &mut core.to_provider, now, |buf| {
            let step = policy.client_input(buf, now, wants)?;
            trace::client_fragment(&step.fragment, &buf[..step.len]);
            Some(step)
        })
    }

    fn frame_provider(&mut self) -> bool {
        if self.core.provider_buf.is_empty() {
            return false;
        }
        let now = self.now();
        self.core.frame_provider(now)
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Intercept(command) => {
                // The policy hands out one command at a time.
                let Some(interceptor) = self.interceptor.take() else { return };
                let mut own = OwnCommands::new(self.own_tx.clone());
                // One part waits at most: the next is made once the client took that.
                let (parts, rx) = mpsc::channel(1);
                self.parts = Some(rx);
                self.standing &= !(Source::PARTS | Source::INTERCEPTING);
                self.intercepting = Some(Box::pin(async move {
                    let mut out = ReplyOut::channel(parts);
                    let reply = interceptor.handle(command, &mut own, &mut out).await;
                    (interceptor, reply)
                }));
            }
            Event::OwnUntagged(response) => {
                if let Some(replies) = &self.own_replies {
                    let _ = replies.send(OwnReply::Untagged(response));
                }
            }
            Event::OwnStatus(status) => {
                if let Some(replies) = self.own_replies.take() {
                    let _ = replies.send(OwnReply::Status(status));
                }
            }
            Event::SeenChanged => {
                if let Some(seen_changed) = &self.seen_changed {
                    seen_changed();
                }
            }
            Event::WakeWorker => {
                if let Some(wake) = &self.wake_worker {
                    wake();
                }
            }
            // `work` handles these itself.
            Event::End(_) | Event::Compress => {}
        }
    }

    fn after_provider_read(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(0) => self.core.policy.provider_closed(),
            Ok(n) => {
                self.core.traffic.from_provider += n as u64;
                self.core.provider_size.after_read(n);
                let now = self.now();
                self.core.policy.provider_read(now);
            }
            Err(e) => self.core.policy.provider_failed(e.to_string()),
        }
    }

    fn after_client_read(&mut self, read: std::io::Result<usize>) -> Option<RelayEnd> {
        match read {
            Ok(0) => Some(RelayEnd::ClientClosed),
            Ok(n) => {
                self.core.traffic.from_client += n as u64;
                self.core.client_size.after_read(n);
                let now = self.now();
                self.core.policy.client_read(now);
                None
            }
            // Many clients close TLS without close_notify: that is a close, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(RelayEnd::ClientClosed),
            Err(e) => Some(RelayEnd::ClientError(e.to_string())),
        }
    }

    /// Whether the session can go to a lane now: both sides plain TCP with nothing unwritten
    /// or spliced, the policy plain, no interceptor at work, no deadline passed, not shutting
    /// down, no protocol trace.
    fn lane_eligible(&self) -> bool {
        !self.back_from_lane
            && matches!((&self.core.client, &self.core.provider), (Stream::Plain(_), Stream::Plain(_)))
            && self.core.to_client.is_idle()
            && self.core.to_provider.is_idle()
            && self.splice.held() == 0
            && !self.splice.active()
            && self.intercepting.is_none()
            && self.parts.is_none()
            && self.own_replies.is_none()
            && self.shutdown.is_some()
            && !trace::on()
            && self.core.policy.lane_ready()
            && self.core.policy.deadline().is_none_or(|d| d > Instant::now())
    }

    /// Relays in a lane until the session comes back to its task: by itself (something the
    /// task does), or called back for the timer, shutdown or new verdicts, which are then
    /// acted on here. `Err` with the session's end when a socket failed in the lane.
    async fn lane(&mut self, lanes: &'static Lanes, mut sleep: Pin<&mut tokio::time::Sleep>) -> Result<(), RelayEnd> {
        let mut core = self.core.take();
        self.traffic_in_lane = core.traffic.clone();
        let client = std::mem::replace(&mut core.client, Stream::Upgrading);
        let provider = std::mem::replace(&mut core.provider, Stream::Upgrading);
        let (Stream::Plain(client), Stream::Plain(provider)) = (client, provider) else {
            unreachable!("only plain TCP sessions go to a lane (lane_eligible)")
        };
        let (client, provider) = match (client.into_std(), provider.into_std()) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return Err(RelayEnd::ClientError(format!("leaving the runtime: {e}"))),
        };
        let now = Instant::now();
        let bound = match core.policy.deadline() {
            Some(d) => d.min(now + self.provider_timeout),
            None => now + self.provider_timeout,
        };
        self.armed = Some(bound);
        sleep.as_mut().reset(tokio::time::Instant::from_std(bound));
        let (ticket, mut back) = lanes.enter(core, client, provider, self.watched, Some(bound));
        let (mut timer, mut shutdown, mut verdicts, mut recalled) = (false, false, None, false);
        let shutdown_watch = &mut self.shutdown;
        let verdicts_watch = &mut self.verdicts;
        let laned = std::future::poll_fn(|cx| {
            if let Poll::Ready(laned) = Pin::new(&mut back).poll(cx) {
                return Poll::Ready(laned);
            }
            if !recalled {
                timer = sleep.as_mut().poll(cx).is_ready();
                if let Some(watch) = shutdown_watch.as_mut()
                    && watch.poll(cx).is_ready()
                {
                    *shutdown_watch = None;
                    shutdown = true;
                }
                if let Some(watch) = verdicts_watch.as_mut() {
                    match watch.poll(cx) {
                        Poll::Ready(Some(current)) => verdicts = Some(current),
                        Poll::Ready(None) => *verdicts_watch = None,
                        Poll::Pending => {}
                    }
                }
                if timer || shutdown || verdicts.is_some() {
                    ticket.recall();
                    recalled = true;
                }
            }
            Poll::Pending
        })
        .await;
        // A lane drops a session only when relaying it panicked (it logged that).
        let Ok(laned) = laned else {
            return Err(RelayEnd::ClientError("relaying failed in the relay lane".into()));
        };
        let laned = *laned;
        let mut core = laned.core;
        let streams = (TcpStream::from_std(laned.client), TcpStream::from_std(laned.provider));
        let registered = match streams {
            (Ok(c), Ok(p)) => {
                (core.client, core.provider) = (Stream::Plain(c), Stream::Plain(p));
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => Err(RelayEnd::ClientError(format!("back from the relay lane: {e}"))),
        };
        self.core.put(core);
        registered?;
        // Every source is polled anew: the sockets are new registrations, and the timer and
        // watches were polled above with the task's own waker rather than their group's.
        self.standing = 0;
        self.back_from_lane = true;
        self.now.set(None);
        let now = Instant::now();
        match laned.failed {
            None => {}
            Some(Failure::ClientRead(e)) => {
                return Err(self.after_client_read(Err(e)).unwrap_or(RelayEnd::ClientClosed));
            }
            Some(Failure::ClientWrite(e)) => return Err(RelayEnd::ClientError(e.to_string())),
            Some(Failure::ProviderWrite(e)) => return Err(RelayEnd::ProviderError(e.to_string())),
            Some(Failure::ProviderRead(e)) => self.core.policy.provider_failed(e.to_string()),
        }
        if timer {
            self.armed = None;
            self.core.policy.tick(now);
        }
        if shutdown {
            self.core.policy.shutdown(now);
        }
        if let Some(current) = verdicts {
            self.core.policy.set_verdicts(current, now);
        }
        Ok(())
    }

    /// Frames what was just read from the client and writes it to the provider in the same
    /// wake-up, as [`Relay::work`] and [`Relay::poll_wait`] would do next: the time the bytes
    /// spend in the proxy is the latency it adds, and the bookkeeping of `work` and `wait` can
    /// follow once they are out (a NOOP's round trip ran ~1,500 instructions more per direction
    /// before its bytes left).
    fn pass_client_on(&mut self) -> Option<RelayEnd> {
        if !self.core.to_provider.is_idle() {
            return None;
        }
        match self.core.policy.poll_to_provider() {
            Some(bytes) => {
                let now = self.now();
                self.core.to_provider.set(bytes, now)
            }
            None => {
                self.frame_client();
            }
        }
        if self.core.to_provider.is_idle() {
            return None;
        }
        let waker = self.wakes.waker(Group::Provider).clone();
        let core = &mut *self.core;
        match core.to_provider.poll_write(&mut Context::from_waker(&waker), &mut core.provider, &self.now) {
            Poll::Ready(written) => written.err().map(|e| RelayEnd::ProviderError(e.to_string())),
            Poll::Pending => {
                self.standing |= Source::PROVIDER_WRITE;
                None
            }
        }
    }

    /// [`Relay::pass_client_on`] the other way: what was just read from the provider goes to
    /// the client in the same wake-up (the proxy's answers pending first, as in `work`).
    fn pass_provider_on(&mut self) -> Option<RelayEnd> {
        if !self.client_idle() {
            return None;
        }
        if !self.frame_provider()
            && let Some(bytes) = self.core.policy.poll_to_client()
        {
            let now = self.now();
            self.core.to_client.set(bytes, now);
        }
        if self.core.to_client.is_idle() {
            return None;
        }
        let waker = self.wakes.waker(Group::Client).clone();
        let core = &mut *self.core;
        match core.to_client.poll_write(&mut Context::from_waker(&waker), &mut core.client, &self.now) {
            Poll::Ready(written) => written.err().map(|e| RelayEnd::ClientError(e.to_string())),
            Poll::Pending => {
                self.standing |= Source::CLIENT_WRITE;
                None
            }
        }
    }

    /// Waits for the next thing to happen: a write done, bytes read, a deadline, new verdicts,
    /// shutdown, the interceptor. `Some` when the session is over.
    async fn wait(&mut self, mut sleep: Pin<&mut tokio::time::Sleep>) -> Option<RelayEnd> {
        // A timer set earlier than needed just fires early (ticking is harmless then), so it is
        // only reset to move it forward: not on every read that pushes a deadline back.
        let stalled = self.client_stalled_at();
        let due = match (self.core.policy.deadline(), stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(due) = due
            && self.armed.is_none_or(|armed| due < armed)
        {
            self.armed = Some(due);
            sleep.as_mut().reset(tokio::time::Instant::from_std(due));
            self.standing &= !Source::TIMER;
        }
        // A side is read again once what was read from it has been written on.
        let read_provider = self.client_idle() && self.core.policy.reading_provider();
        let want_part = self.client_idle() && self.core.policy.wants_part();
        let read_client = self.core.to_provider.is_idle() && self.core.policy.reading_client();
        std::future::poll_fn(|cx| self.poll_wait(cx, sleep.as_mut(), read_provider, read_client, want_part)).await
    }

    /// One poll of the sources [`Relay::wait`] waits on that may have news (see `standing`), in
    /// order of precedence; acts on the first that is ready. `Ready(Some)` ends the session.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut tokio::time::Sleep>,
        read_provider: bool,
        read_client: bool,
        want_part: bool,
    ) -> Poll<Option<RelayEnd>> {
        let woken = self.wakes.begin(cx);
        if woken.any() {
            // A new wake-up: a new time.
            self.now.set(None);
        }
        for (group, sources) in [
            (Group::Client, Source::CLIENT),
            (Group::Provider, Source::PROVIDER),
            (Group::Timer, Source::TIMER),
            (Group::Other, Source::OTHER),
        ] {
            if woken.has(group) {
                self.standing &= !sources;
            }
        }
        let wakes = &self.wakes;
        let mut client_cx = Context::from_waker(wakes.waker(Group::Client));
        let mut provider_cx = Context::from_waker(wakes.waker(Group::Provider));
        let mut other_cx = Context::from_waker(wakes.waker(Group::Other));
        let standing = &mut self.standing;
        // Whether `source` is to be polled; if its poll is pending, it stands until its group wakes.
        let due = |standing: &u16, source: u16| *standing & source == 0;
        if self.splice.held() > 0 && due(standing, Source::CLIENT_WRITE) {
            match self.splice.poll_drain(&mut client_cx, &self.core.client) {
                Poll::Ready(Ok(())) => return Poll::Ready(None),
                Poll::Ready(Err(e)) if self.splice.cannot(&e) => {
                    // The pipe's bytes go the ordinary way, before anything else.
                    return Poll::Ready(match self.splice.take_held() {
                        Ok(bytes) => {
                            let now = self.now();
                            self.core.to_client.set(bytes, now);
                            None
                        }
                        Err(e) => Some(RelayEnd::ClientError(e.to_string())),
                    });
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(RelayEnd::ClientError(e.to_string()))),
                Poll::Pending => *standing |= Source::CLIENT_WRITE,
            }
        }
        if !self.core.to_client.is_idle() && due(standing, Source::CLIENT_WRITE) {
            let core = &mut *self.core;
            match core.to_client.poll_write(&mut client_cx, &mut core.client, &self.now) {
                Poll::Ready(written) => {
                    return Poll::Ready(written.err().map(|e| RelayEnd::ClientError(e.to_string())));
                }
                Poll::Pending => *standing |= Source::CLIENT_WRITE,
            }
        }
        if !self.core.to_provider.is_idle() && due(standing, Source::PROVIDER_WRITE) {
            let core = &mut *self.core;
            match core.to_provider.poll_write(&mut provider_cx, &mut core.provider, &self.now) {
                Poll::Ready(written) => {
                    return Poll::Ready(written.err().map(|e| RelayEnd::ProviderError(e.to_string())));
                }
                Poll::Pending => *standing |= Source::PROVIDER_WRITE,
            }
        }
        if read_provider && due(standing, Source::PROVIDER_READ) {
            // A literal the policy forwards as-is, with nothing of it read yet, may go to the
            // client without being seen (plain TCP both sides).
            let splice = match self.core.provider_buf.is_empty() && !trace::on() {
                true => {
                    self.splice.chunk(&self.core.client, &self.core.provider, self.core.policy.provider_passthrough())
                }
                false => 0,
            };
            if splice > 0 {
                match self.splice.poll_fill(&mut provider_cx, &self.core.provider, splice) {
                    Poll::Ready(Ok(0)) => self.core.policy.provider_closed(),
                    Poll::Ready(Ok(n)) => {
                        self.core.traffic.from_provider += n as u64;
                        self.core.policy.provider_passed(n as u64, Instant::now());
                    }
                    // Nothing moved: read the ordinary way.
                    Poll::Ready(Err(e)) if self.splice.cannot(&e) => {}
                    Poll::Ready(Err(e)) => self.core.policy.provider_failed(e.to_string()),
                    Poll::Pending => *standing |= Source::PROVIDER_READ,
                }
                if *standing & Source::PROVIDER_READ == 0 {
                    return Poll::Ready(None);
                }
            } else {
                // While literals are spliced, a read between them takes little more than the
                // lines before the next, so that the next literal's bytes go through the pipe.
                let most = (self.splice.active()
                    && self.core.provider_buf.is_empty()
                    && !self.core.policy.provider_in_literal())
                .then_some(splice::LINES_READ);
                let core = &mut *self.core;
                match poll_read(
                    &mut provider_cx,
                    &mut core.provider,
                    &mut core.provider_buf,
                    &mut core.provider_size,
                    most,
                ) {
                    Poll::Ready(read) => {
                        self.after_provider_read(read);
                        return Poll::Ready(self.pass_provider_on());
                    }
                    Poll::Pending => {
                        *standing |= Source::PROVIDER_READ;
                        if self.core.provider_size.light() {
                            self.splice.release();
                        }
                    }
                }
            }
        }
        if read_client && due(standing, Source::CLIENT_READ) {
            let core = &mut *self.core;
            match poll_read(&mut client_cx, &mut core.client, &mut core.client_buf, &mut core.client_size, None) {
                Poll::Ready(read) => {
                    return Poll::Ready(self.after_client_read(read).or_else(|| self.pass_client_on()));
                }
                Poll::Pending => *standing |= Source::CLIENT_READ,
            }
        }
        if want_part
            && due(standing, Source::PARTS)
            && let Some(parts) = self.parts.as_mut()
        {
            match parts.poll_recv(&mut other_cx) {
                Poll::Ready(Some(part)) => {
                    self.core.policy.interceptor_part(part, Instant::now());
                    return Poll::Ready(None);
                }
                // Its sender is gone: the interceptor's reply comes next.
                Poll::Ready(None) => {}
                Poll::Pending => *standing |= Source::PARTS,
            }
        }
        if self.armed.is_some() && due(standing, Source::TIMER) {
            let mut timer_cx = Context::from_waker(wakes.waker(Group::Timer));
            if sleep.as_mut().poll(&mut timer_cx).is_pending() {
                *standing |= Source::TIMER;
            } else {
                self.armed = None;
                let now = Instant::now();
                if self.client_stalled_at().is_some_and(|at| now >= at) {
                    return Poll::Ready(Some(RelayEnd::ClientError(format!(
                        "the client read nothing for {} seconds",
                        CLIENT_STALL.as_secs()
                    ))));
                }
                self.core.policy.tick(now);
                return Poll::Ready(None);
            }
        }
        if due(standing, Source::VERDICTS)
            && let Some(verdicts) = self.verdicts.as_mut()
        {
            match verdicts.poll(&mut other_cx) {
                Poll::Ready(Some(current)) => {
                    self.core.policy.set_verdicts(current, Instant::now());
                    return Poll::Ready(None);
                }
                // The worker's side is gone: no more verdicts.
                Poll::Ready(None) => {
                    self.verdicts = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => *standing |= Source::VERDICTS,
            }
        }
        if due(standing, Source::SHUTDOWN)
            && let Some(shutdown) = self.shutdown.as_mut()
        {
            if shutdown.poll(&mut other_cx).is_ready() {
                self.shutdown = None;
                self.core.policy.shutdown(Instant::now());
                return Poll::Ready(None);
            }
            *standing |= Source::SHUTDOWN;
        }
        if due(standing, Source::INTERCEPTING)
            && let Some(work) = self.intercepting.as_mut()
        {
            match work.as_mut().poll(&mut other_cx) {
                Poll::Ready((interceptor, reply)) => {
                    self.intercepting = None;
                    self.interceptor = Some(interceptor);
                    self.own_replies = None;
                    // A part it wrote last may still wait in the channel: it goes first.
                    if let Some(mut parts) = self.parts.take() {
                        while let Ok(part) = parts.try_recv() {
                            self.core.policy.interceptor_part(part, Instant::now());
                        }
                    }
                    self.core.policy.interceptor_reply(reply, Instant::now());
                    return Poll::Ready(None);
                }
                Poll::Pending => *standing |= Source::INTERCEPTING,
            }
        }
        if due(standing, Source::OWN) {
            match self.own_rx.poll_recv(&mut other_cx) {
                Poll::Ready(Some(request)) => {
                    if !self.core.policy.streaming() {
                        self.own_replies = Some(request.replies);
                        self.core.policy.own_request(request.command, request.capture, Instant::now());
                    }
                    // Else its response has begun: the provider is not read until it ends. The
                    // request is dropped, and the interceptor hears that the command failed.
                    return Poll::Ready(None);
                }
                // The relay holds a sender itself: never closed.
                Poll::Ready(None) | Poll::Pending => *standing |= Source::OWN,
            }
        }
        Poll::Pending
    }
}

/// Reads from one side into `buf`. A plain TCP side waits for readiness first and takes its
/// buffer only then, so that a side waiting with nothing unfinished holds none (idle sessions
/// are most sessions); other streams (TLS, COMPRESS) keep theirs.
fn poll_read(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    size: &mut ReadSize,
    most: Option<usize>,
) -> Poll<std::io::Result<usize>> {
    // The read itself goes through `poll_read` all the same: it notes a short read as the end
    // of what is there, where a `try_read` would cost another system call to learn it.
    if let Stream::Plain(tcp) = stream
        && tcp.poll_read_ready(cx).is_pending()
    {
        size.release(buf);
        return Poll::Pending;
    }
    size.prepare(buf);
    match most {
        Some(most) => std::pin::pin!(stream.read_buf(&mut (&mut *buf).limit(most))).poll(cx),
        None => std::pin::pin!(stream.read_buf(buf)).poll(cx),
    }
}

/// The next change of a watch, kept registered between waits (a `changed()` made anew for
/// each wait would register with the sender and leave again every time).
struct Changes<T> {
    next: Pin<Box<dyn Future<Output = (watch::Receiver<T>, bool)> + Send>>,
}

impl<T: Copy + Send + Sync + 'static> Changes<T> {
    fn new(mut rx: watch::Receiver<T>) -> Changes<T> {
        Changes {
            next: Box::pin(async move {
                let changed = rx.changed().await.is_ok();
                (rx, changed)
            }),
        }
    }

    /// The value it changed to (and it waits for the next change), or `None` once the sender is
    /// gone.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let (mut rx, changed) = ready!(self.next.as_mut().poll(cx));
        if !changed {
            return Poll::Ready(None);
        }
        let value = *rx.borrow_and_update();
        *self = Changes::new(rx);
        Poll::Ready(Some(value))
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Runs `next` over the bytes in `buf`, putting what it decides into `out`; the bytes framed
/// leave `buf` for `out` (without a copy). Whether anything was framed.
pub(super) fn frame(
    buf: &mut BytesMut,
    out: &mut Outbox,
    now: Instant,
    mut next: impl FnMut(&[u8]) -> Option<Step>,
) -> bool {
    let mut pos = 0;
    // Nothing is framed from no bytes: the loop ends without asking once more.
    while pos < buf.len()
        && let Some(step) = next(&buf[pos..])
    {
        let end = pos + step.len;
        if !step.before.is_empty() {
            out.push(buf, &step.before);
        }
        match step.keep {
            Keep::Forward => out.pass(buf, pos, end),
            Keep::Replace(bytes) => out.push(buf, &bytes),
            Keep::Discard | Keep::Collect | Keep::Hold | Keep::Own => {}
        }
        pos = end;
    }
    if pos > 0 && pos == buf.len() {
        // Everything read was framed: the buffer goes whole (splitting it would allocate the
        // shared header that lets two halves live apart).
        out.seal(std::mem::take(buf), now);
    } else if pos > 0 {
        out.seal(buf.split_to(pos), now);
    }
    pos > 0
}

/// What goes to one side next: a run of unchanged input is written straight from the read
/// buffer it came in (no copy); only once something is rewritten, dropped or added is the
/// output assembled in a second buffer.
#[derive(Default)]
pub(super) struct Outbox {
    /// The input bytes the output was made from; `run` points into it.
    chunk: BytesMut,
    /// Unchanged input bytes `start..end`, not yet copied anywhere.
    run: Option<(usize, usize)>,
    assembled: Vec<u8>,
    /// How much of the output has been written.
    written: usize,
    /// Whether there is output (sealed and not yet all written and flushed).
    pending: bool,
    /// When the output became pending, or the last write made progress.
    progress: Option<Instant>,
}

impl Outbox {
    pub(super) fn is_idle(&self) -> bool {
        !self.pending
    }

    /// When the peer will have read nothing of what waits for it for `limit`.
    fn stalled_at(&self, limit: Duration) -> Option<Instant> {
        self.pending.then(|| self.progress.unwrap_or_else(Instant::now) + limit)
    }

    /// Sends `buf[start..end]` on unchanged.
    fn pass(&mut self, buf: &[u8], start: usize, end: usize) {
        match self.run {
            Some((s, e)) if e == start => self.run = Some((s, end)),
            Some((s, e)) => {
                // Something between the runs was dropped.
                self.assembled.extend_from_slice(&buf[s..e]);
                self.run = Some((start, end));
            }
            None => self.run = Some((start, end)),
        }
    }

    /// Sends `bytes` after what is there so far.
    fn push(&mut self, buf: &[u8], bytes: &[u8]) {
        if let Some((s, e)) = self.run.take() {
            self.assembled.extend_from_slice(&buf[s..e]);
        }
        self.assembled.extend_from_slice(bytes);
    }

    /// The output is complete; `chunk` holds the input it was made from.
    fn seal(&mut self, chunk: BytesMut, now: Instant) {
        if !self.assembled.is_empty()
            && let Some((s, e)) = self.run.take()
        {
            self.assembled.extend_from_slice(&chunk[s..e]);
        }
        self.chunk = chunk;
        self.pending = !self.output().is_empty();
        self.progress = Some(now);
        if !self.pending {
            self.clear();
        }
    }

    /// Output made by the proxy alone.
    fn set(&mut self, bytes: Vec<u8>, now: Instant) {
        self.assembled = bytes;
        self.pending = !self.assembled.is_empty();
        self.progress = Some(now);
    }

    fn output(&self) -> &[u8] {
        match self.run {
            Some((s, e)) if self.assembled.is_empty() => &self.chunk[s..e],
            _ => &self.assembled,
        }
    }

    /// Writes and flushes the output. Cancel-safe: what was written is remembered, so a
    /// later call goes on from there.
    async fn write<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        let now = Cell::new(None);
        std::future::poll_fn(move |cx| {
            now.set(None);
            self.poll_write(cx, w, &now)
        })
        .await
    }

    /// [`Outbox::write`] as a poll; `now` is the wake-up's time once read.
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        now: &Cell<Option<Instant>>,
    ) -> Poll<std::io::Result<()>> {
        while self.written < self.output().len() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.output()[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.progress = Some(now.get().unwrap_or_else(|| {
                let read = Instant::now();
                now.set(Some(read));
                read
            }));
        }
        ready!(Pin::new(&mut *w).poll_flush(cx))?;
        self.clear();
        Poll::Ready(Ok(()))
    }

    /// Input sent on unchanged, of which the first `written` bytes went out already (a lane's
    /// express send, `policy/express.rs`): the rest is the output. The outbox is idle.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn sent_in_part(&mut self, chunk: BytesMut, written: usize, now: Instant) {
        self.pass(&chunk, 0, chunk.len());
        self.seal(chunk, now);
        self.written = written;
    }

    /// Writes what it can without waiting (a socket in a lane). Once all of it went, the
    /// buffer the output was taken from, for the next read (`None`: the rest would block).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn write_now(
        &mut self,
        socket: &std::net::TcpStream,
        now: Instant,
    ) -> std::io::Result<Option<BytesMut>> {
        while self.written < self.output().len() {
            match super::lane::send(socket, &self.output()[self.written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    self.progress = Some(now);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.clear();
        Ok(Some(chunk))
    }

    fn clear(&mut self) {
        self.chunk = BytesMut::new();
        self.run = None;
        self.written = 0;
        self.pending = false;
        // A rewritten answer is usually a line or two; a large one (a view's message) is not
        // kept for the session's life.
        if self.assembled.capacity() > KEEP_ASSEMBLED {
            self.assembled = Vec::new();
        } else {
            self.assembled.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn input_sent_in_part_ahead_is_finished_by_the_write() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let mut out = Outbox::default();
        // The lane's `send` took the first 3 bytes before the policy framed the line.
        out.sent_in_part(BytesMut::from(&b"a1 NOOP\r\n"[..]), 3, Instant::now());
        assert!(!out.is_idle());
        let chunk = out.write_now(&sender, Instant::now()).unwrap().expect("the rest goes at once");
        assert_eq!(&chunk[..], b"a1 NOOP\r\n", "the buffer comes back for the next read");
        assert!(out.is_idle());
        drop(sender);
        let mut got = Vec::new();
        receiver.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"NOOP\r\n", "only what had not gone");
    }

    #[test]
    fn an_outbox_gives_a_large_assembly_back_once_written() {
        let mut out = Outbox::default();
        out.set(vec![b'x'; 40 * 1024], Instant::now());
        assert!(!out.is_idle());
        out.clear();
        assert_eq!(out.assembled.capacity(), 0, "a 40 KB rewrite is not kept");
        out.set(b"* CAPABILITY IMAP4rev1\r\n".to_vec(), Instant::now());
        out.clear();
        assert!(out.assembled.capacity() > 0, "a small one is reused");
        assert!(out.is_idle());
    }
}
