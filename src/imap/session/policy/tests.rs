//! The policy driven with byte strings and instants, as the I/O loop drives it, without a
//! socket: what each side hears, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::imap::session::quiet::HOLD;
use crate::imap::wire::provider::MAX_INTERCEPTED;

const AUTOLOGOUT: Duration = Duration::from_secs(1800);
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_secs(10);

fn options() -> PolicyOptions {
    PolicyOptions {
        max_literal: 1000,
        autologout: AUTOLOGOUT,
        provider_timeout: PROVIDER_TIMEOUT,
        extra_capabilities: vec!["COI"],
        emulate_idle: None,
        rescan: false,
        quiet: None,
        compress: false,
        memory: None,
    }
}

/// A policy and everything it made each side hear, as the I/O loop would have written it.
struct Session {
    policy: Policy,
    t0: Instant,
    now: Instant,
    /// Unframed bytes, as in the loop's read buffers.
    from_client: Vec<u8>,
    from_provider: Vec<u8>,
    /// What each side was sent so far.
    client: Vec<u8>,
    provider: Vec<u8>,
    events: Vec<Event>,
    /// Each fragment's fate, for the tests that look closer.
    steps: Vec<(Vec<u8>, Keep)>,
    wants: fn(CommandName) -> bool,
    /// The interceptor's limit for a line of a command it wants.
    limit: fn(&[u8]) -> usize,
}

impl Session {
    fn new(opts: PolicyOptions) -> Session {
        let t0 = Instant::now();
        let policy = Policy::new(opts, Framer::new(200), Framer::new(200), Verdicts::default(), t0);
        Session {
            policy,
            t0,
            now: t0,
            from_client: Vec::new(),
            from_provider: Vec::new(),
            client: Vec::new(),
            provider: Vec::new(),
            events: Vec::new(),
            steps: Vec::new(),
            wants: |_| false,
            limit: |_| MAX_INTERCEPTED,
        }
    }

    /// The client sends `bytes`; returns what reached the provider because of them.
    fn client_sends(&mut self, bytes: &[u8]) -> String {
        self.policy.client_read(self.now);
        self.from_client.extend_from_slice(bytes);
        let before = self.provider.len();
        self.pump();
        String::from_utf8_lossy(&self.provider[before..]).into_owned()
    }

    /// The provider sends `bytes`; returns what reached the client because of them.
    fn provider_sends(&mut self, bytes: &[u8]) -> String {
        self.policy.provider_read(self.now);
        self.from_provider.extend_from_slice(bytes);
        let before = self.client.len();
        self.pump();
        String::from_utf8_lossy(&self.client[before..]).into_owned()
    }

    /// Time passes to `t0 + at`; returns what reached the client.
    fn at(&mut self, at: Duration) -> String {
        self.now = self.t0 + at;
        let before = self.client.len();
        if self.policy.deadline().is_some_and(|d| d <= self.now) {
            self.policy.tick(self.now);
        }
        self.pump();
        String::from_utf8_lossy(&self.client[before..]).into_owned()
    }

    /// What the I/O loop does between reads: the proxy's own output, the buffered input,
    /// the events.
    fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(step) = self.policy.provider_input(&self.from_provider, self.now) {
                let bytes: Vec<u8> = self.from_provider.drain(..step.len).collect();
                self.client.extend(&step.before);
                match &step.keep {
                    Keep::Forward => self.client.extend(&bytes),
                    Keep::Replace(with) => self.client.extend(with),
                    _ => {}
                }
                self.steps.push((bytes, step.keep));
                progress = true;
            }
            if let Some(bytes) = self.policy.poll_to_client() {
                self.client.extend(bytes);
                progress = true;
            }
            if let Some(bytes) = self.policy.poll_to_provider() {
                self.provider.extend(bytes);
                progress = true;
            }
            let (wants, limit) = (self.wants, self.limit);
            while let Some(step) = self.policy.client_input(&self.from_client, self.now, |n, uid, line: &[u8]| {
                (!uid && wants(n)).then(|| limit(line))
            }) {
                let bytes: Vec<u8> = self.from_client.drain(..step.len).collect();
                if step.keep == Keep::Forward {
                    self.provider.extend(&bytes);
                }
                self.steps.push((bytes, step.keep));
                progress = true;
            }
            while let Some(event) = self.policy.poll_event() {
                // The loop switches the client's connection to compression before anything else.
                let switch = event == Event::Compress;
                self.events.push(event);
                if switch {
                    return;
                }
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The fate of the last fragment framed.
    fn last_keep(&self) -> &Keep {
        &self.steps.last().expect("a fragment").1
    }
}

/// The worker watches INBOX and has classified every UID below 5; its latest look began at
/// `t0 + looked`, and it has moved `moved` chat messages.
fn verdicts(s: &Session, looked: Duration, moved: u64) -> Verdicts {
    Verdicts { watching: true, moved, looked: Some(s.t0 + looked), position: Some((1, 5)), kept: 0 }
}

/// A session with the quiet INBOX on and INBOX selected with 4 messages (all classified).
fn in_inbox() -> (Session, Arc<AtomicBool>) {
    let active = Arc::new(AtomicBool::new(true));
    let flag = active.clone();
    let mut s = Session::new(PolicyOptions { quiet: Some(Arc::new(move || flag.load(Ordering::SeqCst))), ..options() });
    let v = verdicts(&s, Duration::ZERO, 0);
    s.policy.set_verdicts(v, s.now);
    assert_eq!(s.client_sends(b"s SELECT INBOX\r\n"), "s SELECT INBOX\r\n");
    let selected = "* 4 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 5] Predicted next UID\r\n\
                    s OK [READ-WRITE] Select completed.\r\n";
    assert_eq!(s.provider_sends(selected.as_bytes()), selected, "every UID classified: told at once");
    (s, active)
}

/// `in_inbox`, idling.
fn idling_on_inbox() -> (Session, Arc<AtomicBool>) {
    let (mut s, active) = in_inbox();
    assert_eq!(s.client_sends(b"i IDLE\r\n"), "i IDLE\r\n");
    assert_eq!(s.provider_sends(b"+ idling\r\n"), "+ idling\r\n");
    s.events();
    (s, active)
}

#[test]
fn quiet_inbox_a_chat_the_worker_moves_never_wakes_the_idle_client() {
    let (mut s, _) = idling_on_inbox();
    assert_eq!(s.provider_sends(b"* 5 EXISTS\r\n"), "");
    assert_eq!(*s.last_keep(), Keep::Hold);
    assert_eq!(s.events(), vec![Event::WakeWorker]);
    assert_eq!(s.provider_sends(b"* 1 RECENT\r\n"), "");
    // The chat's keyword is mailbox news, told after IDLE rather than now.
    assert_eq!(s.provider_sends(b"* FLAGS (\\Seen $Chat)\r\n"), "");
    let v = verdicts(&s, Duration::from_millis(1), 1);
    s.policy.set_verdicts(v, s.now);
    assert_eq!(s.at(Duration::from_millis(2900)), "", "waiting for the EXPUNGE of the moved chat");
    assert_eq!(s.provider_sends(b"* 5 EXPUNGE\r\n"), "");
    assert_eq!(s.policy.deadline(), Some(s.t0 + AUTOLOGOUT), "nothing held any more; IDLE may last");
    assert_eq!(s.at(Duration::from_secs(60)), "");
    assert_eq!(s.client_sends(b"DONE\r\n"), "DONE\r\n");
    assert_eq!(
        s.provider_sends(b"i OK Idle completed.\r\n"),
        "* FLAGS (\\Seen $Chat)\r\ni OK Idle completed.\r\n",
        "only the deferred mailbox news, never the chat"
    );
}

#[test]
fn quiet_inbox_ordinary_mail_is_released_once_the_worker_has_looked() {
    let (mut s, _) = idling_on_inbox();
    s.now = s.t0 + Duration::from_millis(100);
    assert_eq!(s.provider_sends(b"* 5 EXISTS\r\n"), "");
    let before = verdicts(&s, Duration::from_millis(99), 0);
    s.policy.set_verdicts(before, s.now);
    s.pump();
    assert!(s.client.ends_with(b"+ idling\r\n"), "a look that began before the EXISTS says nothing");
    let after = verdicts(&s, Duration::from_millis(101), 0);
    s.policy.set_verdicts(after, s.now);
    s.pump();
    assert_eq!(String::from_utf8_lossy(&s.client).rsplit_once("+ idling\r\n").unwrap().1, "* 5 EXISTS\r\n");
}

#[test]
fn quiet_inbox_a_hold_ends_in_time_and_the_end_of_idle_waits_for_it() {
    let (mut s, _) = idling_on_inbox();
    s.provider_sends(b"* 5 EXISTS\r\n");
    assert_eq!(s.at(HOLD - Duration::from_millis(1)), "");
    assert_eq!(s.at(HOLD), "* 5 EXISTS\r\n", "the worker said nothing: told anyway");
    s.provider_sends(b"* 6 EXISTS\r\n");
    s.client_sends(b"DONE\r\n");
    assert_eq!(s.provider_sends(b"i OK Idle completed.\r\n"), "", "the end of IDLE waits for the held message");
    assert_eq!(s.client_sends(b"a NOOP\r\n"), "", "and so does the next command");
    let v = verdicts(&s, HOLD + Duration::from_millis(1), 0);
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(String::from_utf8_lossy(&s.client).ends_with("* 6 EXISTS\r\ni OK Idle completed.\r\n"));
    assert_eq!(String::from_utf8_lossy(&s.provider).rsplit_once("DONE\r\n").unwrap().1, "a NOOP\r\n");
}

#[test]
fn quiet_inbox_holds_a_whole_response_and_releases_only_between_responses() {
    let (mut s, _) = idling_on_inbox();
    s.provider_sends(b"* 5 EXISTS\r\n* 5 FETCH (BODY[] {5}\r\nab");
    assert_eq!(s.steps.iter().rev().take(3).filter(|(_, k)| *k == Keep::Hold).count(), 3);
    let v = verdicts(&s, Duration::from_millis(1), 0);
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(s.client.ends_with(b"+ idling\r\n"), "not inside the held response");
    assert_eq!(s.provider_sends(b"cde)\r\n"), "* 5 EXISTS\r\n");
}

#[test]
fn quiet_inbox_stays_out_of_the_way_when_off_or_elsewhere() {
    let (mut s, active) = idling_on_inbox();
    active.store(false, Ordering::SeqCst);
    assert_eq!(s.provider_sends(b"* 5 EXISTS\r\n"), "* 5 EXISTS\r\n", "filter not active");
    let mut s = Session::new(PolicyOptions { quiet: Some(Arc::new(|| true)), ..options() });
    let v = verdicts(&s, Duration::ZERO, 0);
    s.policy.set_verdicts(v, s.now);
    s.client_sends(b"s SELECT Archive\r\n");
    s.provider_sends(b"* 4 EXISTS\r\ns OK done\r\n");
    s.client_sends(b"i IDLE\r\n");
    assert_eq!(s.provider_sends(b"+ idling\r\n* 5 EXISTS\r\n"), "+ idling\r\n* 5 EXISTS\r\n", "not INBOX");
    // No worker watching INBOX: nothing to wait for.
    let (mut s, _) = in_inbox();
    s.policy.set_verdicts(Verdicts::default(), s.now);
    s.client_sends(b"n NOOP\r\n");
    assert_eq!(s.provider_sends(b"* 5 EXISTS\r\nn OK\r\n"), "* 5 EXISTS\r\nn OK\r\n");
}

#[test]
fn quiet_inbox_a_polling_client_never_sees_a_chat_message() {
    let (mut s, _) = in_inbox();
    s.now = s.t0 + Duration::from_millis(10);
    assert_eq!(s.client_sends(b"n NOOP\r\nf FETCH 1:* (FLAGS)\r\n"), "n NOOP\r\n", "one command at a time");
    assert_eq!(s.provider_sends(b"* 6 EXISTS\r\n* 2 RECENT\r\nn OK NOOP completed.\r\n"), "");
    assert_eq!(s.events(), vec![Event::WakeWorker]);
    // The worker moved the chat (5) and kept the mail (6): the EXPUNGE is fetched first.
    let v = verdicts(&s, Duration::from_millis(11), 1);
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips1 NOOP\r\n"), "the session asks for the EXPUNGE");
    assert_eq!(
        s.provider_sends(b"* 5 EXPUNGE\r\n* 1 RECENT\r\ncoips1 OK NOOP completed.\r\n"),
        "* 5 EXISTS\r\nn OK NOOP completed.\r\n"
    );
    assert!(String::from_utf8_lossy(&s.provider).ends_with("f FETCH 1:* (FLAGS)\r\n"), "then the next command");
    // A chat alone: nothing to tell.
    s.provider_sends(b"* 5 FETCH (FLAGS ())\r\nf OK done\r\n");
    s.client_sends(b"n NOOP\r\n");
    s.now = s.t0 + Duration::from_millis(20);
    assert_eq!(s.provider_sends(b"* 6 EXISTS\r\nn OK NOOP completed.\r\n"), "");
    let v = verdicts(&s, Duration::from_millis(21), 2);
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips2 NOOP\r\n"));
    assert_eq!(s.provider_sends(b"* 6 EXPUNGE\r\ncoips2 OK NOOP completed.\r\n"), "n OK NOOP completed.\r\n");
}

#[test]
fn quiet_inbox_a_select_with_a_message_the_worker_has_not_seen_waits_and_runs_again() {
    let (mut s, _) = in_inbox();
    s.now = s.t0 + Duration::from_millis(10);
    s.client_sends(b"s SELECT INBOX\r\n");
    let stale = "* 5 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 6] next\r\ns OK [READ-WRITE] done\r\n";
    assert_eq!(s.provider_sends(stale.as_bytes()), "", "UID 5 is not classified yet");
    assert_eq!(s.events(), vec![Event::WakeWorker]);
    let v = Verdicts { position: Some((1, 6)), ..verdicts(&s, Duration::from_millis(11), 1) };
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips1 SELECT INBOX\r\n"), "the chat moved: again");
    let fresh = "* 4 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 6] next\r\n";
    assert_eq!(
        s.provider_sends(format!("{fresh}coips1 OK [READ-WRITE] done\r\n").as_bytes()),
        format!("{fresh}s OK [READ-WRITE] done\r\n")
    );
    assert_eq!(s.client_sends(b"n NOOP\r\n"), "n NOOP\r\n");
    assert_eq!(s.provider_sends(b"n OK\r\n"), "n OK\r\n", "the counts are the second answer's");
}

#[test]
fn quiet_inbox_a_status_of_inbox_waits_for_the_worker() {
    let (mut s, _) = in_inbox();
    s.now = s.t0 + Duration::from_millis(10);
    s.client_sends(b"t STATUS INBOX (MESSAGES UIDNEXT)\r\n");
    assert_eq!(
        s.provider_sends(b"* STATUS INBOX (MESSAGES 4 UIDNEXT 5)\r\nt OK\r\n"),
        "* STATUS INBOX (MESSAGES 4 UIDNEXT 5)\r\nt OK\r\n",
        "all classified"
    );
    s.client_sends(b"t STATUS INBOX (MESSAGES)\r\n");
    assert_eq!(s.provider_sends(b"* STATUS INBOX (MESSAGES 5)\r\nt OK\r\n"), "", "not known to be classified");
    assert_eq!(s.events(), vec![Event::WakeWorker]);
    let v = verdicts(&s, Duration::from_millis(11), 1);
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips1 STATUS INBOX (MESSAGES)\r\n"));
    assert_eq!(s.provider_sends(b"* STATUS INBOX (MESSAGES 4)\r\ncoips1 OK\r\n"), "");
    s.now = s.t0 + Duration::from_millis(12);
    let v = verdicts(&s, Duration::from_millis(13), 1);
    s.policy.set_verdicts(v, s.now);
    s.pump();
    assert!(String::from_utf8_lossy(&s.client).ends_with("* STATUS INBOX (MESSAGES 4)\r\nt OK\r\n"));
}

#[test]
fn a_read_by_fetch_is_reported_for_read_receipts() {
    let mut s = Session::new(options());
    s.client_sends(b"f UID FETCH 4 (BODY[])\r\n");
    s.provider_sends(b"* 4 FETCH (UID 4 FLAGS (\\Seen) BODY[] {3}\r\nabc)\r\n");
    assert!(s.events().is_empty(), "told when the command ends");
    s.provider_sends(b"f OK\r\n");
    assert_eq!(s.events(), vec![Event::SeenChanged]);
    s.client_sends(b"g FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n");
    s.provider_sends(b"* 1 FETCH (FLAGS (\\Seen) BODY[HEADER] {2}\r\n\r\n)\r\ng OK\r\n");
    assert!(s.events().is_empty(), "flags the client asked for are old news");
    s.client_sends(b"h UID FETCH 5 (BODY[TEXT])\r\n");
    s.provider_sends(b"* 5 FETCH (UID 5 BODY[TEXT] {3}\r\nabc FLAGS (\\Seen))\r\nh OK\r\n");
    assert_eq!(s.events(), vec![Event::SeenChanged], "FLAGS after the literal");
    s.client_sends(b"n NOOP\r\n");
    s.provider_sends(b"* 2 FETCH (FLAGS (\\Seen))\r\nn OK\r\n");
    assert_eq!(s.events(), vec![Event::SeenChanged], "read elsewhere, reported by the provider");
    s.client_sends(b"n NOOP\r\n");
    s.provider_sends(b"* 2 FETCH (FLAGS (\\Seen $MDNSent))\r\nn OK\r\n");
    assert!(s.events().is_empty(), "handled already");
    s.client_sends(b"i IDLE\r\n");
    s.provider_sends(b"+ idling\r\n* 3 FETCH (FLAGS (\\Seen))\r\n");
    assert_eq!(s.events(), vec![Event::SeenChanged], "in IDLE: at once");
}

#[test]
fn quiet_inbox_counts_start_over_with_each_select() {
    // imaptest's `select`: EXAMINE, CLOSE, SELECT of one mailbox; the provider says the same
    // RECENT count both times, and the client must hear it both times.
    let mut s = Session::new(PolicyOptions { quiet: Some(Arc::new(|| true)), ..options() });
    for (tag, command) in [("e", "EXAMINE"), ("s", "SELECT")] {
        s.client_sends(format!("{tag} {command} box\r\n").as_bytes());
        let answer = format!("* 2 EXISTS\r\n* 2 RECENT\r\n{tag} OK done\r\n");
        assert_eq!(s.provider_sends(answer.as_bytes()), answer, "{command}");
        s.client_sends(b"c CLOSE\r\n");
        s.provider_sends(b"c OK closed\r\n");
    }
    // Within one selection a RECENT count back where the client knows it is still no news.
    s.client_sends(b"s2 SELECT INBOX\r\n");
    s.provider_sends(b"* 4 EXISTS\r\n* 1 RECENT\r\ns2 OK done\r\n");
    s.client_sends(b"i IDLE\r\n");
    s.provider_sends(b"+ idling\r\n");
    assert_eq!(s.provider_sends(b"* 1 RECENT\r\n"), "");
}

fn emulating() -> Session {
    let mut s = Session::new(PolicyOptions { emulate_idle: Some(POLL), ..options() });
    assert_eq!(s.client_sends(b"i IDLE\r\n"), "", "the provider has no IDLE: not relayed");
    assert_eq!(*s.last_keep(), Keep::Discard);
    assert_eq!(String::from_utf8_lossy(&s.client), "+ idling\r\n");
    s
}

#[test]
fn idle_emulation_polls_with_noop_and_passes_news() {
    let mut s = emulating();
    assert_eq!(s.policy.deadline(), Some(s.t0 + POLL), "no autologout while the proxy serves IDLE");
    assert_eq!(s.at(POLL - Duration::from_millis(1)), "");
    assert!(s.provider.is_empty());
    s.at(POLL);
    assert_eq!(String::from_utf8_lossy(&s.provider), "coips1 NOOP\r\n");
    assert!(!s.policy.reading_client(), "client commands wait for the poll");
    assert_eq!(s.provider_sends(b"* 3 EXISTS\r\n"), "* 3 EXISTS\r\n", "as IDLE would have told it");
    assert_eq!(s.provider_sends(b"coips1 OK NOOP completed.\r\n"), "", "the poll's status is the proxy's");
    assert_eq!(s.policy.deadline(), Some(s.t0 + 2 * POLL), "next poll one interval after the answer");
    s.at(2 * POLL);
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips2 NOOP\r\n"));
    // DONE during a poll waits for it: the IDLE's end comes after the poll's news.
    assert_eq!(s.client_sends(b"DONE\r\n"), "");
    assert_eq!(
        s.provider_sends(b"* 4 EXISTS\r\ncoips2 OK NOOP completed.\r\n"),
        "* 4 EXISTS\r\ni OK Idle completed.\r\n"
    );
    assert!(s.events().is_empty());
    assert_eq!(s.client_sends(b"a NOOP\r\n"), "a NOOP\r\n", "relaying as before");
}

/// imap4d's NOOP misses mail delivered in the second of the session's last look; STATUS
/// counts it, and the session selects the mailbox again to have it reported (`rescan.rs`).
#[test]
fn idle_emulation_finds_mail_the_providers_noop_missed() {
    let mut s = Session::new(PolicyOptions { emulate_idle: Some(POLL), rescan: true, ..options() });
    let ends = |s: &Session, with: &str| {
        let sent = String::from_utf8_lossy(&s.provider).into_owned();
        assert!(sent.ends_with(with), "{sent:?} does not end with {with:?}");
    };
    assert_eq!(s.client_sends(b"s SELECT INBOX\r\n"), "s SELECT INBOX\r\n");
    s.provider_sends(b"* 2 EXISTS\r\n* 0 RECENT\r\ns OK [READ-WRITE] SELECT completed\r\n");
    s.client_sends(b"i IDLE\r\n");
    s.at(POLL);
    ends(&s, "coips1 NOOP\r\n");
    assert_eq!(s.provider_sends(b"coips1 OK NOOP completed\r\n"), "");
    ends(&s, "coips2 STATUS \"INBOX\" (MESSAGES)\r\n");
    assert_eq!(s.provider_sends(b"* STATUS INBOX (MESSAGES 3)\r\ncoips2 OK STATUS completed\r\n"), "");
    ends(&s, "coips3 UID SEARCH ALL\r\n");
    assert_eq!(s.provider_sends(b"* SEARCH 4 5\r\ncoips3 OK SEARCH completed\r\n"), "");
    ends(&s, "coips4 SELECT \"INBOX\"\r\n");
    assert_eq!(s.client_sends(b"DONE\r\n"), "", "the DONE waits for the look to end");
    let reselected = b"* 3 EXISTS\r\n* 1 RECENT\r\n* OK [UIDVALIDITY 9] UID validity status\r\n\
* FLAGS (\\Seen)\r\ncoips4 OK [READ-WRITE] SELECT Completed\r\n";
    assert_eq!(s.provider_sends(reselected), "", "none of the re-selection reaches the client");
    ends(&s, "coips5 UID SEARCH ALL\r\n");
    assert_eq!(
        s.provider_sends(b"* SEARCH 4 5 6\r\ncoips5 OK SEARCH completed\r\n"),
        "* 3 EXISTS\r\n* 1 RECENT\r\ni OK Idle completed.\r\n",
        "as IDLE would have told it, before the IDLE's end"
    );
    assert_eq!(s.client_sends(b"a NOOP\r\n"), "a NOOP\r\n");
}

#[test]
fn idle_emulation_counts_with_status_only_where_noop_misses_mail() {
    let mut s = Session::new(PolicyOptions { emulate_idle: Some(POLL), rescan: true, ..options() });
    s.client_sends(b"s SELECT INBOX\r\n");
    s.provider_sends(b"* 2 EXISTS\r\ns OK SELECT completed\r\n");
    s.client_sends(b"i IDLE\r\n");
    s.at(POLL);
    s.provider_sends(b"* 3 EXISTS\r\ncoips1 OK NOOP completed\r\n");
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips2 STATUS \"INBOX\" (MESSAGES)\r\n"));
    assert_eq!(s.provider_sends(b"* STATUS INBOX (MESSAGES 3)\r\ncoips2 OK STATUS completed\r\n"), "");
    assert_eq!(s.policy.deadline(), Some(s.now + POLL), "nothing missed: the next poll");
    // Without a mailbox selected there is nothing to count.
    let mut s = emulating();
    s.at(POLL);
    s.provider_sends(b"coips1 OK NOOP completed\r\n");
    assert_eq!(String::from_utf8_lossy(&s.provider), "coips1 NOOP\r\n");
}

#[test]
fn idle_emulation_ends_with_done_only() {
    let mut s = emulating();
    assert_eq!(s.client_sends(b"DONE\r\n"), "");
    assert!(String::from_utf8_lossy(&s.client).ends_with("i OK Idle completed.\r\n"));
    let mut s = emulating();
    assert_eq!(s.client_sends(b"a APPEND x {5}\r\n"), "", "anything else ends IDLE, refused");
    assert!(String::from_utf8_lossy(&s.client).ends_with("i BAD Expected DONE\r\n"));
    assert!(s.policy.client.at_message_start(), "the refused literal never comes");
    assert_eq!(s.client_sends(b"b NOOP\r\n"), "b NOOP\r\n");
    assert_eq!(s.policy.deadline(), Some(s.t0 + PROVIDER_TIMEOUT), "IDLE over: no more polls");
}

#[test]
fn idle_is_relayed_where_the_provider_has_it() {
    let mut s = Session::new(options());
    assert_eq!(s.client_sends(b"i IDLE\r\n"), "i IDLE\r\n");
    assert_eq!(s.provider_sends(b"+ idling\r\n"), "+ idling\r\n");
    assert_eq!(s.policy.deadline(), Some(s.t0 + AUTOLOGOUT), "an IDLE owes nothing until DONE");
    s.now = s.t0 + Duration::from_secs(5);
    s.client_sends(b"DONE\r\n");
    assert_eq!(s.policy.deadline(), Some(s.now + PROVIDER_TIMEOUT), "after DONE the provider owes the OK");
}

fn wants_metadata(name: CommandName) -> bool {
    matches!(name, CommandName::GetMetadata | CommandName::SetMetadata)
}

#[test]
fn local_metadata_answers_go_between_provider_responses() {
    let mut s = Session::new(options());
    s.wants = wants_metadata;
    assert_eq!(s.client_sends(b"f FETCH 1 BODY[]\r\n"), "f FETCH 1 BODY[]\r\n");
    assert_eq!(s.provider_sends(b"* 1 FETCH (BODY[] {10}\r\n0123"), "* 1 FETCH (BODY[] {10}\r\n0123");
    assert_eq!(s.client_sends(b"m GETMETADATA \"\" /shared/comment\r\nn NOOP\r\n"), "", "collected; n waits");
    assert_eq!(s.events(), vec![Event::Intercept(b"m GETMETADATA \"\" /shared/comment\r\n".to_vec())]);
    assert!(!s.policy.reading_client());
    s.policy.interceptor_reply(b"* METADATA \"\" (/shared/comment NIL)\r\nm OK done\r\n".to_vec(), s.now);
    s.pump();
    assert!(s.client.ends_with(b"0123"), "never inside the provider's response");
    assert_eq!(
        s.provider_sends(b"456789)\r\nf OK Fetch completed.\r\n"),
        "456789)\r\n* METADATA \"\" (/shared/comment NIL)\r\nm OK done\r\nf OK Fetch completed.\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&s.provider), "f FETCH 1 BODY[]\r\nn NOOP\r\n", "n went on after the reply");
}

#[test]
fn an_interceptor_command_is_collected_with_its_literals() {
    let mut s = Session::new(options());
    s.wants = wants_metadata;
    assert_eq!(s.client_sends(b"m SETMETADATA \"\" (/private/x {3}\r\n"), "");
    assert_eq!(String::from_utf8_lossy(&s.client), "+ Ready for literal data\r\n");
    assert_eq!(s.client_sends(b"abc)\r\n"), "");
    assert_eq!(s.events(), vec![Event::Intercept(b"m SETMETADATA \"\" (/private/x {3}\r\nabc)\r\n".to_vec())]);
    assert!(s.steps.iter().all(|(_, k)| *k == Keep::Collect));
    // UID commands are never intercepted.
    s.policy.interceptor_reply(b"m OK\r\n".to_vec(), s.now);
    s.wants = |_| true;
    assert_eq!(s.client_sends(b"u UID FETCH 1 FLAGS\r\n"), "u UID FETCH 1 FLAGS\r\n");
}

#[test]
fn own_commands_are_routed_by_their_tag_and_capture() {
    let mut s = Session::new(options());
    s.wants = wants_metadata;
    s.client_sends(b"a NOOP\r\n");
    s.client_sends(b"m GETMETADATA \"\" /shared/comment\r\n");
    s.events();
    s.policy.own_request(b"GETMETADATA \"\" /shared/comment\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    assert_eq!(String::from_utf8_lossy(&s.provider), "a NOOP\r\n", "waits for the relayed command");
    assert_eq!(s.provider_sends(b"a OK NOOP completed.\r\n"), "a OK NOOP completed.\r\n");
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips1 GETMETADATA \"\" /shared/comment\r\n"));
    let got = s.provider_sends(b"* METADATA \"\" (/shared/comment {2}\r\nhi)\r\n* 2 EXISTS\r\ncoips1 OK done\r\n");
    assert_eq!(got, "* 2 EXISTS\r\n", "only what the own command does not capture");
    assert_eq!(
        s.events(),
        vec![
            Event::OwnUntagged(b"* METADATA \"\" (/shared/comment {2}\r\nhi)\r\n".to_vec()),
            Event::OwnStatus(b"OK done\r\n".to_vec())
        ]
    );
}

#[test]
fn an_own_command_waits_for_plus_before_each_synchronizing_literal() {
    let mut s = Session::new(options());
    s.policy.own_request(b"SETMETADATA \"\" (/private/x {3}\r\nabc)\r\n".to_vec(), &[], s.now);
    s.pump();
    assert_eq!(String::from_utf8_lossy(&s.provider), "coips1 SETMETADATA \"\" (/private/x {3}\r\n");
    assert_eq!(s.provider_sends(b"+ go ahead\r\n"), "", "the proxy's continuation");
    assert!(s.provider.ends_with(b"{3}\r\nabc)\r\n"));
    assert_eq!(s.provider_sends(b"coips1 OK\r\n"), "");
    assert_eq!(s.events(), vec![Event::OwnStatus(b"OK\r\n".to_vec())]);
}

#[test]
fn a_client_may_use_tags_that_look_like_the_proxys() {
    let mut s = Session::new(options());
    assert_eq!(s.client_sends(b"coip1 NOOP\r\ncoips1 NOOP\r\n"), "coip1 NOOP\r\ncoips1 NOOP\r\n");
    assert_eq!(s.provider_sends(b"coip1 OK NOOP completed.\r\n"), "coip1 OK NOOP completed.\r\n");
    // A relayed command unanswered past the drain wait: the own command's tag steers clear.
    s.policy.own_request(b"NAMESPACE\r\n".to_vec(), &[b"* NAMESPACE "], s.now);
    s.at(own::DRAIN_TIMEOUT);
    assert!(String::from_utf8_lossy(&s.provider).ends_with("coips2 NAMESPACE\r\n"));
    assert_eq!(s.provider_sends(b"coips1 OK NOOP completed.\r\n"), "coips1 OK NOOP completed.\r\n");
    assert_eq!(s.provider_sends(b"* NAMESPACE ((\"\" \".\")) NIL NIL\r\ncoips2 OK\r\n"), "");
    assert_eq!(s.events().len(), 2);
}

#[test]
fn an_abandoned_own_command_is_dropped_when_it_answers() {
    let mut s = Session::new(options());
    s.wants = wants_metadata;
    s.client_sends(b"m GETMETADATA \"\" /x\r\n");
    s.policy.own_request(b"GETMETADATA \"\" /x\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    // The interceptor timed out and answered.
    s.policy.interceptor_reply(b"m NO [UNAVAILABLE] the provider did not answer in time\r\n".to_vec(), s.now);
    s.pump();
    assert!(s.client.ends_with(b"m NO [UNAVAILABLE] the provider did not answer in time\r\n"));
    assert!(s.policy.reading_client());
    assert_eq!(s.provider_sends(b"coips1 OK late\r\n"), "");
    assert_eq!(s.client_sends(b"a NOOP\r\n"), "a NOOP\r\n");
}

#[test]
fn capabilities_are_rewritten_untagged_and_in_response_codes() {
    let mut s = Session::new(options());
    s.client_sends(b"c CAPABILITY\r\n");
    assert_eq!(
        s.provider_sends(
            b"* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\nc OK [CAPABILITY IMAP4rev1 STARTTLS] done\r\n"
        ),
        "* CAPABILITY IMAP4rev1 IDLE COI\r\nc OK [CAPABILITY IMAP4rev1 COI] done\r\n"
    );
    s.client_sends(b"f FETCH 1 BODY[]\r\n");
    let fetch = "* 1 FETCH (BODY[] {33}\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\n)\r\n";
    assert_eq!(s.provider_sends(fetch.as_bytes()), fetch, "literal bytes are never responses");
}

#[test]
fn unchanged_bytes_take_the_zero_copy_path() {
    let mut s = Session::new(options());
    s.client_sends(b"f FETCH 1 BODY[]\r\n");
    s.provider_sends(b"* 1 FETCH (BODY[] {6}\r\nabc");
    s.provider_sends(b"def)\r\nf OK\r\n");
    assert!(s.steps[1..].iter().all(|(_, k)| *k == Keep::Forward), "{:?}", s.steps);
    assert!(s.steps.iter().any(|(b, _)| b == b"abc"), "literal pieces pass as they come");
}

#[test]
fn overlong_lines_are_refused_and_the_session_goes_on() {
    let mut s = Session::new(options());
    let mut line = b"a SEARCH ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 500));
    line.extend(b"\r\n");
    assert_eq!(s.client_sends(&line), "");
    assert!(String::from_utf8_lossy(&s.client).ends_with("a BAD Command line too long\r\n"));
    assert_eq!(s.client_sends(b"b NOOP\r\n"), "b NOOP\r\n");
    // The same after a literal: the command is half sent, the session cannot go on.
    s.client_sends(b"c APPEND x {1+}\r\ny");
    assert_eq!(s.client_sends(&line[2..]), "");
    s.pump();
    assert!(String::from_utf8_lossy(&s.client).ends_with("* BYE Command line too long\r\n"));
    assert_eq!(s.events(), vec![Event::End(RelayEnd::Bye("command line too long"))]);
}

#[test]
fn literals_over_the_limit_are_refused() {
    let mut s = Session::new(options());
    assert_eq!(s.client_sends(b"a APPEND x {1001}\r\n"), "");
    assert!(
        String::from_utf8_lossy(&s.client)
            .ends_with("a NO [TOOBIG] Literal of 1001 bytes exceeds the limit of 1000 bytes\r\n")
    );
    assert!(s.policy.client.at_message_start(), "a refused synchronizing literal never comes");
    assert_eq!(s.client_sends(b"b APPEND x {1001+}\r\n"), "");
    assert!(
        String::from_utf8_lossy(&s.client)
            .ends_with("b BAD [TOOBIG] Literal of 1001 bytes exceeds the limit of 1000 bytes\r\n")
    );
    assert_eq!(s.client_sends(&[b'z'; 1001]), "", "a non-synchronizing literal comes anyway: dropped");
    assert_eq!(s.client_sends(b"\r\nc NOOP\r\n"), "c NOOP\r\n");
    assert_eq!(s.client_sends(b"d APPEND x {1000}\r\n"), "d APPEND x {1000}\r\n", "at the limit: relayed");
    // Over the limit after part of the command went out: the session ends.
    let mut s = Session::new(options());
    s.client_sends(b"e APPEND x {3+}\r\nabc {2000+}\r\n");
    assert_eq!(s.provider, b"e APPEND x {3+}\r\nabc");
    assert!(
        String::from_utf8_lossy(&s.client)
            .ends_with("* BYE [TOOBIG] Literal of 2000 bytes exceeds the limit of 1000 bytes\r\n")
    );
    assert_eq!(s.events(), vec![Event::End(RelayEnd::Bye("literal too big"))]);
}

#[test]
fn an_oversized_intercepted_command_is_refused() {
    let mut s = Session::new(options());
    s.wants = wants_metadata;
    let big = MAX_INTERCEPTED + 1;
    assert_eq!(s.client_sends(format!("m SETMETADATA \"\" (/private/x {{{big}}}\r\n").as_bytes()), "");
    assert!(String::from_utf8_lossy(&s.client).ends_with("m NO [TOOBIG] Command too large\r\n"));
    assert!(s.events().is_empty());
    assert_eq!(s.client_sends(b"n NOOP\r\n"), "n NOOP\r\n");
}

/// The interceptor's own limit (the decrypted view's for appended messages), raised for each
/// further literal (MULTIAPPEND) as it says.
#[test]
fn an_interceptor_may_take_more_and_more_per_literal() {
    let mut s = Session::new(options());
    s.wants = |n| n == CommandName::Append;
    // 2000 for the first line, 2000 more for each further literal.
    s.limit = |line| if line.starts_with(b"a ") { 2000 } else { 4000 };
    let one = "x".repeat(1500);
    s.client_sends(format!("a APPEND Sent {{1500}}\r\n{one} {{1500}}\r\n{one}\r\n").as_bytes());
    let expected = format!("a APPEND Sent {{1500}}\r\n{one} {{1500}}\r\n{one}\r\n").into_bytes();
    assert_eq!(s.events(), vec![Event::Intercept(expected)]);
    s.policy.interceptor_reply(b"a OK\r\n".to_vec(), s.now);
    // Past what it said: refused, nothing collected or relayed.
    let mut s = Session::new(options());
    s.wants = |n| n == CommandName::Append;
    s.limit = |_| 2000;
    assert_eq!(s.client_sends(b"b APPEND Sent {2500}\r\n"), "");
    assert!(String::from_utf8_lossy(&s.client).ends_with("b NO [TOOBIG] Command too large\r\n"));
    assert!(s.events().is_empty());
}

#[test]
fn an_intercepted_command_beyond_the_accounts_memory_is_refused_and_given_back() {
    use crate::limits::budget::Budget;
    let budget = Budget::new(1 << 30, 200_000);
    let mut s = Session::new(PolicyOptions { memory: Some(budget.account("a")), ..options() });
    s.wants = wants_metadata;
    // Another session of the account holds most of its share.
    let other = budget.account("a").charge(150_000).unwrap();
    assert_eq!(s.client_sends(b"m SETMETADATA \"\" (/private/x {100000}\r\n"), "");
    assert!(
        String::from_utf8_lossy(&s.client).ends_with(
            "m NO [LIMIT] the memory coi-proxy gives one account (max_memory_per_account) is in use; try again later\r\n"
        ),
        "{}",
        String::from_utf8_lossy(&s.client)
    );
    assert!(s.events().is_empty());
    assert_eq!(budget.used("a"), (150_000, 150_000), "nothing kept for the refused command");
    drop(other);
    // With room, it is collected, charged while the interceptor has it, and given back after.
    s.client_sends(b"n SETMETADATA \"\" (/private/x {100000+}\r\n");
    s.client_sends(&[b'v'; 100_000]);
    assert_eq!(s.client_sends(b")\r\n"), "");
    assert!(matches!(s.events().as_slice(), [Event::Intercept(_)]));
    assert!(budget.used("a").1 >= 100_000);
    s.policy.interceptor_reply(b"n OK\r\n".to_vec(), s.now);
    assert_eq!(budget.used("a"), (0, 0));
}

#[test]
fn an_own_commands_capture_beyond_the_budget_ends_with_limit() {
    use crate::limits::budget::Budget;
    let budget = Budget::new(100_000, 100_000);
    let mut s = Session::new(PolicyOptions { memory: Some(budget.account("a")), ..options() });
    let other = budget.account("b").charge(50_000).unwrap();
    s.policy.own_request(b"GETMETADATA \"\" /x\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    let big = "v".repeat(60_000);
    let response = format!("* METADATA \"\" (/x {{60000}}\r\n{big})\r\ncoips1 OK done\r\n");
    assert_eq!(s.provider_sends(response.as_bytes()), "", "never the client's");
    assert_eq!(
        s.events(),
        vec![Event::OwnStatus(
            b"NO [LIMIT] the memory coi-proxy gives all sessions (max_memory) is in use; try again later\r\n".to_vec()
        )]
    );
    assert_eq!(budget.used("a"), (50_000, 0), "what was charged is given back");
    drop(other);
    s.policy.own_request(b"GETMETADATA \"\" /x\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    let response = response.replace("coips1", "coips2");
    s.provider_sends(response.as_bytes());
    let events = s.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1], Event::OwnStatus(b"OK done\r\n".to_vec()));
    assert_eq!(budget.used("a"), (0, 0));
    // Refused, then abandoned by the interceptor: nothing of it stays for the next own command.
    let other = budget.account("b").charge(50_000).unwrap();
    s.policy.own_request(b"GETMETADATA \"\" /x\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    s.provider_sends(format!("* METADATA \"\" (/x {{60000}}\r\n{big})\r\n").as_bytes());
    s.policy.interceptor_reply(b"m NO [UNAVAILABLE] timed out\r\n".to_vec(), s.now);
    drop(other);
    let got = s.provider_sends(b"coips3 OK late\r\n");
    assert_eq!(got, "m NO [UNAVAILABLE] timed out\r\n", "the interceptor's answer, never the late status");
    s.events();
    s.policy.own_request(b"GETMETADATA \"\" /x\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    s.provider_sends(response.replace("coips2", "coips4").as_bytes());
    let events = s.events();
    assert_eq!(events.last(), Some(&Event::OwnStatus(b"OK done\r\n".to_vec())), "{events:?}");
    assert_eq!(budget.used("a"), (0, 0));
}

#[test]
fn commands_the_proxy_cannot_carry_are_refused() {
    let mut s = Session::new(options());
    assert_eq!(s.client_sends(b"z COMPRESS DEFLATE\r\nt STARTTLS\r\n"), "");
    assert_eq!(
        String::from_utf8_lossy(&s.client),
        "z NO [CANNOT] COMPRESS is not available through coi-proxy\r\nt BAD STARTTLS is only valid before login\r\n"
    );
}

#[test]
fn a_silent_provider_that_owes_an_answer_is_timed_out() {
    let mut s = Session::new(options());
    s.client_sends(b"a NOOP\r\n");
    assert_eq!(s.policy.deadline(), Some(s.t0 + PROVIDER_TIMEOUT));
    s.at(PROVIDER_TIMEOUT);
    assert_eq!(
        String::from_utf8_lossy(&s.client),
        "* BYE [UNAVAILABLE] The provider did not answer for 300 seconds; timed out\r\n"
    );
    assert_eq!(s.events(), vec![Event::End(RelayEnd::Bye("the provider timed out"))]);
    // In the middle of a response: no BYE inside it, the session just ends.
    let mut s = Session::new(options());
    s.client_sends(b"f FETCH 1 BODY[]\r\n");
    s.provider_sends(b"* 1 FETCH (BODY[] {10}\r\nab");
    s.at(PROVIDER_TIMEOUT);
    assert!(s.client.ends_with(b"ab"));
    assert_eq!(s.events(), vec![Event::End(RelayEnd::Bye("the provider timed out"))]);
}

#[test]
fn a_silent_client_is_logged_out() {
    let mut s = Session::new(options());
    assert_eq!(s.at(AUTOLOGOUT), "* BYE Autologout; idle for too long\r\n");
    assert_eq!(s.events(), vec![Event::End(RelayEnd::Bye("autologout"))]);
}

#[test]
fn shutdown_waits_for_the_response_in_progress() {
    let mut s = Session::new(options());
    s.client_sends(b"f FETCH 1 BODY[]\r\n");
    s.provider_sends(b"* 1 FETCH (BODY[] {4}\r\nab");
    s.policy.shutdown(s.now);
    s.pump();
    assert!(s.events().is_empty());
    assert_eq!(s.client_sends(b"g NOOP\r\n"), "", "no new commands");
    assert_eq!(s.provider_sends(b"cd)\r\n"), "cd)\r\n* BYE coi-proxy is shutting down\r\n");
    assert_eq!(s.events(), vec![Event::End(RelayEnd::Shutdown)]);
}

#[test]
fn shutdown_cuts_off_a_response_that_does_not_end_in_time() {
    let mut s = Session::new(options());
    s.client_sends(b"f FETCH 1 BODY[]\r\n");
    s.provider_sends(b"* 1 FETCH (BODY[] {400000000}\r\nabc");
    s.policy.shutdown(s.now);
    assert_eq!(s.policy.deadline(), Some(s.now + SHUTDOWN_CUT), "the cut is a deadline");
    s.policy.tick(s.now + SHUTDOWN_CUT - Duration::from_millis(1));
    s.pump();
    assert!(s.events().is_empty(), "the response may still end in time");
    s.policy.tick(s.now + SHUTDOWN_CUT);
    s.pump();
    assert_eq!(s.events(), vec![Event::End(RelayEnd::ShutdownCut)]);
    assert!(!String::from_utf8_lossy(&s.client).contains("BYE"), "no BYE in the middle of a literal");
    let said = RelayEnd::ShutdownCut.to_string();
    assert!(said.contains("shutdown") && said.contains("mid-response"), "{said}");
    assert_eq!(RelayEnd::ClientClosed.to_string(), "the client closed the connection");
}

#[test]
fn the_providers_end_is_told_between_responses() {
    let mut s = Session::new(options());
    s.policy.provider_closed();
    s.pump();
    assert_eq!(String::from_utf8_lossy(&s.client), "* BYE [UNAVAILABLE] The provider closed the connection\r\n");
    assert_eq!(s.events(), vec![Event::End(RelayEnd::ProviderClosed)]);
    let mut s = Session::new(options());
    s.provider_sends(b"* BYE Server shutting down\r\n");
    s.policy.provider_closed();
    s.pump();
    assert_eq!(String::from_utf8_lossy(&s.client), "* BYE Server shutting down\r\n", "one BYE is enough");
}

#[test]
fn a_seen_change_is_reported_when_answered() {
    let mut s = Session::new(options());
    s.client_sends(b"a UID STORE 1 +FLAGS (\\Seen)\r\nb STORE 2 +FLAGS (\\Flagged)\r\n");
    s.provider_sends(b"b OK\r\n");
    assert!(s.events().is_empty());
    s.provider_sends(b"* 1 FETCH (FLAGS (\\Seen))\r\na OK\r\n");
    assert_eq!(s.events(), vec![Event::SeenChanged]);
}

#[test]
fn an_early_tick_changes_nothing() {
    let mut s = emulating();
    s.client.clear();
    s.policy.own_request(b"NOOP\r\n".to_vec(), &[], s.now);
    for secs in [0, 1, 5, 9] {
        s.policy.tick(s.t0 + Duration::from_secs(secs));
    }
    s.pump();
    assert!(s.client.is_empty() && s.events().is_empty());
    assert_eq!(String::from_utf8_lossy(&s.provider), "coips1 NOOP\r\n", "only the requested command");
}

#[test]
fn compress_deflate_is_answered_by_the_proxy_between_responses_and_then_switched_on() {
    let mut s = Session::new(PolicyOptions { compress: true, ..options() });
    assert_eq!(s.client_sends(b"a FETCH 1 BODY[]\r\n"), "a FETCH 1 BODY[]\r\n");
    // The provider is in the middle of a response when COMPRESS comes: the OK waits for its end.
    assert_eq!(s.provider_sends(b"* 1 FETCH (BODY[] {5}\r\nab"), "* 1 FETCH (BODY[] {5}\r\nab");
    assert_eq!(s.client_sends(b"z COMPRESS DEFLATE\r\nthe rest is compressed"), "");
    assert!(s.events().is_empty());
    // The end of the FETCH response goes on; the next response (compressed) waits for the switch.
    assert_eq!(s.provider_sends(b"cde)\r\na OK done\r\n"), "cde)\r\nz OK DEFLATE active\r\n");
    assert_eq!(s.events(), vec![Event::Compress]);
    assert_eq!(s.from_provider, b"a OK done\r\n", "not framed before the switch");
    assert_eq!(s.from_client, b"the rest is compressed", "left for the inflater");
    // After the switch (the loop inflates), everything goes on as before.
    s.from_client.clear();
    assert_eq!(s.provider_sends(b""), "a OK done\r\n");
    assert!(s.events().is_empty());
    assert_eq!(s.client_sends(b"b NOOP\r\n"), "b NOOP\r\n");
    let before = s.client.len();
    assert_eq!(s.client_sends(b"c COMPRESS DEFLATE\r\nd COMPRESS x\r\n"), "");
    assert_eq!(
        String::from_utf8_lossy(&s.client[before..]),
        "c NO [COMPRESSIONACTIVE] DEFLATE is already active\r\nd NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n"
    );
    assert!(s.events().is_empty());
}

#[test]
fn compress_with_another_mechanism_or_a_literal_is_refused_and_nothing_switches() {
    let mut s = Session::new(PolicyOptions { compress: true, ..options() });
    assert_eq!(s.client_sends(b"a COMPRESS GZIP\r\nb COMPRESS {7}\r\n"), "");
    assert_eq!(
        String::from_utf8_lossy(&s.client),
        "a BAD Only COMPRESS DEFLATE is supported\r\nb BAD Only COMPRESS DEFLATE is supported\r\n"
    );
    assert!(s.events().is_empty());
    assert_eq!(s.client_sends(b"c NOOP\r\n"), "c NOOP\r\n", "the refused literal was never sent");
}

#[test]
fn only_a_literal_forwarded_as_is_may_pass_unseen() {
    let mut s = Session::new(options());
    assert_eq!(s.policy.provider_passthrough(), 0, "between responses");
    s.client_sends(b"f FETCH 1 BODY[]\r\n");
    assert_eq!(s.provider_sends(b"* 1 FETCH (BODY[] {10}\r\nabc"), "* 1 FETCH (BODY[] {10}\r\nabc");
    assert_eq!(s.policy.provider_passthrough(), 7, "the rest of a relayed literal");
    // The relay moved 5 of them socket to socket.
    s.policy.provider_passed(5, s.now);
    assert_eq!(s.policy.provider_passthrough(), 2);
    assert_eq!(s.provider_sends(b"ij)\r\nf OK done\r\n"), "ij)\r\nf OK done\r\n", "the stream stays in step");
    assert_eq!(s.policy.provider_passthrough(), 0);
    assert!(s.policy.reading_client());

    // A literal captured for the proxy's own command is read, never passed.
    s.wants = wants_metadata;
    s.client_sends(b"m GETMETADATA \"\" /shared/comment\r\n");
    s.events();
    s.policy.own_request(b"GETMETADATA \"\" /shared/comment\r\n".to_vec(), &[b"* METADATA "], s.now);
    s.pump();
    assert_eq!(s.provider_sends(b"* METADATA \"\" (/shared/comment {40000}\r\nhi"), "");
    assert_eq!(s.policy.provider_passthrough(), 0, "captured");
}

#[test]
fn a_literal_held_by_the_quiet_inbox_never_passes_unseen() {
    let (mut s, _active) = idling_on_inbox();
    // A new message the worker has not looked at is held, and so is a FETCH response about it.
    assert_eq!(s.provider_sends(b"* 5 EXISTS\r\n"), "");
    let got = s.provider_sends(b"* 5 FETCH (UID 70 BODY[] {40000}\r\nab");
    assert_eq!(got, "");
    assert_eq!(s.policy.provider_passthrough(), 0, "held");
}

#[test]
fn a_lane_sends_ahead_only_lines_the_policy_relays_unchanged() {
    let mut s = Session::new(options());
    assert!(s.policy.lane_ready());
    let none = |_, _| false;
    for line in [&b"a1 NOOP\r\n"[..], b"a1 uid fetch 1 flags\r\n", b"garbage\r\n", b"a1 NOOP\n"] {
        let text = String::from_utf8_lossy(line);
        assert!(s.policy.client_express(line, none).is_some(), "{text} is relayed as it is");
    }
    for line in [
        &b"a1 IDLE\r\n"[..],
        b"a1 COMPRESS DEFLATE\r\n",
        b"a1 STARTTLS\r\n",
        b"a1 APPEND x {5}\r\n",
        b"a1 NOOP\r\na2 NOOP\r\n",
        b"a1 NOOP",
        b"",
    ] {
        let text = String::from_utf8_lossy(line);
        assert!(s.policy.client_express(line, none).is_none(), "{text} is framed first");
    }
    let watched = |name, _| name == CommandName::GetMetadata;
    assert!(s.policy.client_express(b"a1 GETMETADATA \"\" /x\r\n", watched).is_none(), "the interceptor's");

    // What went ahead is recorded as framed input is: the STORE's end tells of `\Seen`.
    let line = b"a1 STORE 1 +FLAGS (\\Seen)\r\n";
    let express = s.policy.client_express(line, none).expect("relayed as it is");
    assert!(s.policy.client_expressed(line, express, s.now));
    assert!(s.policy.provider_express(b"a1 OK Store completed.\r\n"));
    for line in [
        &b"* 1 FETCH (FLAGS (\\Seen))\r\n"[..],
        b"+ go on\r\n",
        b"a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] Logged in\r\n",
        b"a1 OK Store completed.\r\n* 2 EXISTS\r\n",
        b"a1 OK Store completed.",
    ] {
        assert!(!s.policy.provider_express(line), "{} is framed first", String::from_utf8_lossy(line));
    }
    assert!(s.policy.provider_expressed(b"a1 OK Store completed.\r\n", s.now));
    assert_eq!(s.policy.poll_event(), Some(Event::SeenChanged));

    // A token for one line does not pass another: the policy frames what it is given.
    let express = s.policy.client_express(b"a2 NOOP\r\n", none).expect("relayed as it is");
    assert!(!s.policy.client_expressed(b"a2 NOOP\r\na3 NOOP\r\n", express, s.now), "two commands are not one");
}

#[test]
fn nothing_of_an_idle_or_an_own_command_goes_ahead() {
    let mut s = Session::new(options());
    assert_eq!(s.client_sends(b"a1 IDLE\r\n"), "a1 IDLE\r\n");
    assert_eq!(s.provider_sends(b"+ idling\r\n"), "+ idling\r\n");
    assert!(s.policy.lane_ready(), "a client's IDLE at the provider is relayed in a lane");
    assert!(s.policy.client_express(b"DONE\r\n", |_, _| false).is_none());
    assert!(!s.policy.provider_express(b"a1 OK Idle completed.\r\n"));
    assert_eq!(s.client_sends(b"DONE\r\n"), "DONE\r\n");
    assert_eq!(s.provider_sends(b"a1 OK Idle completed.\r\n"), "a1 OK Idle completed.\r\n");
    assert!(s.policy.lane_ready());
    assert!(s.policy.client_express(b"a2 NOOP\r\n", |_, _| false).is_some(), "the IDLE is over");

    // An own command's tagged end is the proxy's: it never reaches the client.
    s.policy.own_request(b"NAMESPACE\r\n".to_vec(), &[b"* NAMESPACE "], s.now);
    let sent = s.at(Duration::ZERO);
    assert!(sent.is_empty());
    let own = String::from_utf8_lossy(&s.provider).lines().last().unwrap_or_default().to_string();
    let tag = own.split(' ').next().unwrap_or_default().to_string();
    assert!(!tag.is_empty() && own.ends_with("NAMESPACE"), "{own}");
    assert!(s.policy.own.owns(tag.as_bytes()));
}
