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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::own::{OwnCommands, OwnReply, OwnRequest};
pub use super::policy::RelayEnd;
use super::policy::{Event, Keep, Policy, PolicyOptions, Step};
use super::quiet::Verdicts;
use crate::imap::conn::{Conn, READ_CHUNK, ReadSize};
use crate::imap::wire::provider::Interceptor;
use crate::imap::wire::trace;

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
}

/// What the quiet INBOX needs: whether it applies now, and the worker's verdicts.
pub struct QuietInbox {
    pub active: Arc<dyn Fn() -> bool + Send + Sync>,
    pub verdicts: watch::Receiver<Verdicts>,
}

/// Byte counts for the session's log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub from_client: u64,
    pub from_provider: u64,
}

/// How long the last words to the client may take once the session is over.
const LAST_WORDS: Duration = Duration::from_secs(5);

/// The interceptor at work on one command; it hands itself back with the reply.
type Intercepting<'a, I> = Pin<Box<dyn Future<Output = (&'a mut I, Vec<u8>)> + Send + 'a>>;

/// Relays until either side closes, the proxy says BYE, or shutdown is signalled.
pub async fn run<'a, I: Interceptor>(
    client: Conn,
    upstream: Conn,
    opts: RelayOptions,
    interceptor: &'a mut I,
    mut shutdown: watch::Receiver<bool>,
) -> (RelayEnd, Traffic) {
    let (mut client_read, mut client_write) = tokio::io::split(client.stream);
    let (mut provider_read, mut provider_write) = tokio::io::split(upstream.stream);
    let (mut client_buf, mut provider_buf) = (client.buf, upstream.buf);
    let (mut client_size, mut provider_size) = (ReadSize::default(), ReadSize::default());
    let mut traffic = Traffic::default();
    let mut verdicts = opts.quiet.as_ref().map(|q| q.verdicts.clone());
    let initial = verdicts.as_mut().map(|v| *v.borrow_and_update()).unwrap_or_default();
    let policy_opts = PolicyOptions {
        max_literal: opts.max_literal,
        autologout: opts.autologout,
        provider_timeout: opts.provider_timeout,
        extra_capabilities: opts.extra_capabilities.clone(),
        emulate_idle: opts.emulate_idle,
        quiet: opts.quiet.as_ref().map(|q| q.active.clone()),
    };
    let mut policy = Policy::new(policy_opts, client.framer, upstream.framer, initial, Instant::now());
    // The interceptor, when it is not at work; its own commands come over `own_rx`.
    let mut interceptor: Option<&'a mut I> = Some(interceptor);
    let mut intercepting: Option<Intercepting<'a, I>> = None;
    let (own_tx, mut own_rx) = mpsc::unbounded_channel::<OwnRequest>();
    let mut own_replies: Option<mpsc::UnboundedSender<OwnReply>> = None;
    let (mut to_client, mut to_provider) = (Outbox::default(), Outbox::default());
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        policy.shutdown();
    }
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        if to_client.is_idle() {
            if let Some(bytes) = policy.poll_to_client() {
                to_client.set(bytes);
            } else if !provider_buf.is_empty() {
                let now = Instant::now();
                frame(&mut provider_buf, &mut to_client, |buf| {
                    let step = policy.provider_input(buf, now)?;
                    trace::provider_fragment(&step.fragment, &buf[..step.len]);
                    Some(step)
                });
            }
        }
        if to_provider.is_idle() {
            if let Some(bytes) = policy.poll_to_provider() {
                to_provider.set(bytes);
            } else if !client_buf.is_empty() {
                let wants = |name| interceptor.as_deref().is_some_and(|i| i.wants(name));
                let now = Instant::now();
                frame(&mut client_buf, &mut to_provider, |buf| {
                    let step = policy.client_input(buf, now, wants)?;
                    trace::client_fragment(&step.fragment, &buf[..step.len]);
                    Some(step)
                });
            }
        }
        while let Some(event) = policy.poll_event() {
            match event {
                Event::Intercept(command) => {
                    let Some(i) = interceptor.take() else { unreachable!("one intercepted command at a time") };
                    let mut own = OwnCommands::new(own_tx.clone());
                    intercepting = Some(Box::pin(async move {
                        let reply = i.handle(command, &mut own).await;
                        (i, reply)
                    }));
                }
                Event::OwnUntagged(response) => {
                    if let Some(replies) = &own_replies {
                        let _ = replies.send(OwnReply::Untagged(response));
                    }
                }
                Event::OwnStatus(status) => {
                    if let Some(replies) = own_replies.take() {
                        let _ = replies.send(OwnReply::Status(status));
                    }
                }
                Event::SeenChanged => {
                    if let Some(seen_changed) = &opts.seen_changed {
                        seen_changed();
                    }
                }
                Event::End(end) => {
                    if !to_client.is_idle() {
                        let _ = tokio::time::timeout(LAST_WORDS, to_client.write(&mut client_write)).await;
                    }
                    return (end, traffic);
                }
            }
        }
        let deadline = policy.deadline();
        if deadline != armed {
            armed = deadline;
            let at = deadline.map_or_else(far_future, tokio::time::Instant::from_std);
            sleep.as_mut().reset(at);
        }
        let read_provider = to_client.is_idle();
        let read_client = to_provider.is_idle() && policy.reading_client();
        if read_provider {
            provider_size.prepare(&mut provider_buf);
        }
        if read_client {
            client_size.prepare(&mut client_buf);
        }
        tokio::select! {
            biased;
            written = to_client.write(&mut client_write), if !to_client.is_idle() => {
                if let Err(e) = written {
                    return (RelayEnd::ClientError(e.to_string()), traffic);
                }
            }
            written = to_provider.write(&mut provider_write), if !to_provider.is_idle() => {
                if let Err(e) = written {
                    return (RelayEnd::ProviderError(e.to_string()), traffic);
                }
            }
            read = provider_read.read_buf(&mut provider_buf), if read_provider => match read {
                Ok(0) => policy.provider_closed(),
                Ok(n) => {
                    traffic.from_provider += n as u64;
                    provider_size.after_read(n);
                    policy.provider_read(Instant::now());
                }
                Err(e) => policy.provider_failed(e.to_string()),
            },
            read = client_read.read_buf(&mut client_buf), if read_client => match read {
                Ok(0) => return (RelayEnd::ClientClosed, traffic),
                Ok(n) => {
                    traffic.from_client += n as u64;
                    client_size.after_read(n);
                    policy.client_read(Instant::now());
                }
                // Many clients close TLS without close_notify: that is a close, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return (RelayEnd::ClientClosed, traffic),
                Err(e) => return (RelayEnd::ClientError(e.to_string()), traffic),
            },
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                policy.tick(Instant::now());
            }
            changed = async { verdicts.as_mut()?.changed().await.ok() }, if verdicts.is_some() => match changed {
                Some(()) => {
                    let current = verdicts.as_mut().map(|v| *v.borrow_and_update()).unwrap_or_default();
                    policy.set_verdicts(current, Instant::now());
                }
                // The worker's side is gone: no more verdicts.
                None => verdicts = None,
            },
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                policy.shutdown();
            }
            (i, reply) = async {
                match intercepting.as_mut() {
                    Some(work) => work.await,
                    None => std::future::pending().await,
                }
            }, if intercepting.is_some() => {
                intercepting = None;
                interceptor = Some(i);
                own_replies = None;
                policy.interceptor_reply(reply, Instant::now());
            }
            Some(request) = own_rx.recv() => {
                own_replies = Some(request.replies);
                policy.own_request(request.command, request.capture, Instant::now());
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Runs `next` over the bytes in `buf`, putting what it decides into `out`; the bytes framed
/// leave `buf` for `out` (without a copy).
fn frame(buf: &mut BytesMut, out: &mut Outbox, mut next: impl FnMut(&[u8]) -> Option<Step>) {
    let mut pos = 0;
    while let Some(step) = next(&buf[pos..]) {
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
    if pos > 0 {
        out.seal(buf.split_to(pos));
    }
}

/// What goes to one side next: a run of unchanged input is written straight from the read
/// buffer it came in (no copy); only once something is rewritten, dropped or added is the
/// output assembled in a second buffer.
#[derive(Default)]
struct Outbox {
    /// The input bytes the output was made from; `run` points into it.
    chunk: BytesMut,
    /// Unchanged input bytes `start..end`, not yet copied anywhere.
    run: Option<(usize, usize)>,
    assembled: Vec<u8>,
    /// How much of the output has been written.
    written: usize,
    /// Whether there is output (sealed and not yet all written and flushed).
    pending: bool,
}

impl Outbox {
    fn is_idle(&self) -> bool {
        !self.pending
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
    fn seal(&mut self, chunk: BytesMut) {
        if !self.assembled.is_empty()
            && let Some((s, e)) = self.run.take()
        {
            self.assembled.extend_from_slice(&chunk[s..e]);
        }
        self.chunk = chunk;
        self.pending = !self.output().is_empty();
        if !self.pending {
            self.clear();
        }
    }

    /// Output made by the proxy alone.
    fn set(&mut self, bytes: Vec<u8>) {
        self.assembled = bytes;
        self.pending = !self.assembled.is_empty();
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
        while self.written < self.output().len() {
            let n = w.write(&self.output()[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        w.flush().await?;
        self.clear();
        Ok(())
    }

    fn clear(&mut self) {
        self.chunk = BytesMut::new();
        self.run = None;
        self.written = 0;
        self.pending = false;
        if self.assembled.capacity() > 4 * READ_CHUNK {
            self.assembled = Vec::new();
        } else {
            self.assembled.clear();
        }
    }
}
