//! Moving chat messages out of INBOX on any provider, as a sans-I/O state machine: it says which
//! command to send next, the caller sends it and reports the reply, until the plan is done.
//!
//! With MOVE it is one command. Without it, COPY + `\Deleted` + EXPUNGE, and EXPUNGE is the
//! danger: a plain EXPUNGE removes every `\Deleted` message, including those a user flagged and
//! chose to keep for now. With UIDPLUS, `UID EXPUNGE` names exactly ours. Without it (imap4d),
//! the plan asks which messages are `\Deleted`. If none but ours are, it expunges. Else it sets
//! the user's aside for the moment of the EXPUNGE: `\Deleted` off, EXPUNGE, `\Deleted` on
//! again (also when the EXPUNGE is refused), so ours leave at once and theirs stay, flag and
//! all. Only if the provider will not take the flag off do ours stay flagged in INBOX, reported
//! as pending, for a later [`MovePlan::retry`] once the user's own `\Deleted` messages are gone.
//!
//! Races remain without UIDPLUS: a message flagged `\Deleted` on another connection between our
//! `UID SEARCH DELETED` and the `EXPUNGE` goes with ours; one the user unflags while set aside
//! is flagged again. Another client's EXPUNGE in that moment spares the set-aside ones (the
//! safe direction). IMAP4rev1 offers nothing closer.

use std::collections::BTreeSet;

use super::MoveStrategy;

/// A command of the plan (without tag). Flags always in parentheses: imap4d answers BAD to
/// `STORE 1 +FLAGS \Deleted`, which RFC 3501 allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    UidMove {
        uids: Vec<u32>,
        target: String,
    },
    UidCopy {
        uids: Vec<u32>,
        target: String,
    },
    StoreDeleted {
        uids: Vec<u32>,
    },
    /// `\Deleted` off the user's messages for the moment of an EXPUNGE (set aside).
    StoreUndeleted {
        uids: Vec<u32>,
    },
    UidExpunge {
        uids: Vec<u32>,
    },
    SearchDeleted,
    Expunge,
    Create {
        mailbox: String,
    },
    Subscribe {
        mailbox: String,
    },
}

impl Command {
    /// The command line after the tag, CRLF included.
    pub fn to_line(&self) -> String {
        match self {
            Command::UidMove { uids, target } => format!("UID MOVE {} {}\r\n", uid_set(uids), quote(target)),
            Command::UidCopy { uids, target } => format!("UID COPY {} {}\r\n", uid_set(uids), quote(target)),
            Command::StoreDeleted { uids } => format!("UID STORE {} +FLAGS.SILENT (\\Deleted)\r\n", uid_set(uids)),
            Command::StoreUndeleted { uids } => format!("UID STORE {} -FLAGS.SILENT (\\Deleted)\r\n", uid_set(uids)),
            Command::UidExpunge { uids } => format!("UID EXPUNGE {}\r\n", uid_set(uids)),
            Command::SearchDeleted => "UID SEARCH DELETED\r\n".to_owned(),
            Command::Expunge => "EXPUNGE\r\n".to_owned(),
            Command::Create { mailbox } => format!("CREATE {}\r\n", quote(mailbox)),
            Command::Subscribe { mailbox } => format!("SUBSCRIBE {}\r\n", quote(mailbox)),
        }
    }
}

/// The provider's answer to the last command, as the caller read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// NO or BAD, with the status text (response code included, e.g. `[TRYCREATE] ...`).
    Refused(String),
    /// The UIDs of `* SEARCH` responses to [`Command::SearchDeleted`] (see [`parse_search`]),
    /// followed by an OK.
    Searched(Vec<u32>),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Send(Command),
    Done(Outcome),
    Failed(MoveError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Gone from INBOX, in Chats.
    pub moved: Vec<u32>,
    /// Copied to Chats and flagged `\Deleted` in INBOX, not yet expunged because the user has
    /// `\Deleted` messages of their own there: clients must not be shown these; retry later.
    pub pending: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("the mailbox name {0:?} cannot be sent as a quoted string (CR, LF, NUL or non-ASCII)")]
    BadMailboxName(String),
    #[error("the provider refused {command}: {status}")]
    Refused { command: &'static str, status: String },
    #[error("unexpected reply to {command}")]
    Unexpected { command: &'static str },
    #[error(
        "the provider refused to flag \\Deleted again the user's messages (UIDs {uids:?}) that were set aside for an EXPUNGE: {status}"
    )]
    NotRestored { uids: Vec<u32>, status: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Start,
    Moving,
    Creating,
    Subscribing,
    Copying,
    Flagging,
    UidExpunging,
    Searching,
    Expunging,
    SettingAside,
    ExpungingAside,
    /// `\Deleted` back on the set-aside messages; the EXPUNGE's refusal, if it was refused.
    Restoring(Option<String>),
    Done,
}

/// One move of some INBOX messages (by UID) to `target`, with the provider's strategy.
#[derive(Debug, Clone)]
pub struct MovePlan {
    strategy: MoveStrategy,
    target: String,
    uids: Vec<u32>,
    /// Flagged and copied by an earlier plan, waiting for a safe EXPUNGE.
    pending: Vec<u32>,
    phase: Phase,
    /// CREATE after `[TRYCREATE]` happens once; a second TRYCREATE is a failure.
    created: bool,
    /// The user's `\Deleted` messages, unflagged for the moment of our EXPUNGE.
    aside: Vec<u32>,
}

impl MovePlan {
    /// Plans moving `uids` (any order, duplicates ignored) to `target`. `pending` are UIDs an
    /// earlier plan left flagged (only [`MoveStrategy::CopySafeExpunge`] leaves any).
    pub fn new(strategy: MoveStrategy, uids: &[u32], target: &str, pending: &[u32]) -> Result<MovePlan, MoveError> {
        if !target.bytes().all(|b| (0x20..0x7f).contains(&b)) || target.is_empty() {
            return Err(MoveError::BadMailboxName(target.to_owned()));
        }
        let set: BTreeSet<u32> = uids.iter().copied().filter(|&u| u > 0).collect();
        let pending: BTreeSet<u32> = pending.iter().copied().filter(|u| !set.contains(u) && *u > 0).collect();
        Ok(MovePlan {
            strategy,
            target: target.to_owned(),
            uids: set.into_iter().collect(),
            pending: pending.into_iter().collect(),
            phase: Phase::Start,
            created: false,
            aside: Vec::new(),
        })
    }

    /// Moving `uids` to the profile's Chats folder (`<prefix><root><sep>Chats`) its way.
    pub fn to_chats(
        profile: &super::ProviderProfile,
        configured_root: &str,
        uids: &[u32],
        pending: &[u32],
    ) -> Result<MovePlan, MoveError> {
        MovePlan::new(profile.move_strategy, uids, &profile.folder(configured_root, "Chats"), pending)
    }

    /// Only the expunge of what earlier plans left pending (nothing new to copy).
    pub fn retry(pending: &[u32], target: &str) -> Result<MovePlan, MoveError> {
        MovePlan::new(MoveStrategy::CopySafeExpunge, &[], target, pending)
    }

    /// The first step.
    pub fn start(&mut self) -> Next {
        if self.phase != Phase::Start {
            return Next::Failed(MoveError::Unexpected { command: "start" });
        }
        if self.uids.is_empty() {
            if self.pending.is_empty() || self.strategy != MoveStrategy::CopySafeExpunge {
                self.phase = Phase::Done;
                return Next::Done(Outcome::default());
            }
            self.phase = Phase::Searching;
            return Next::Send(Command::SearchDeleted);
        }
        self.transfer()
    }

    fn transfer(&mut self) -> Next {
        let (uids, target) = (self.uids.clone(), self.target.clone());
        if self.strategy == MoveStrategy::Move {
            self.phase = Phase::Moving;
            Next::Send(Command::UidMove { uids, target })
        } else {
            self.phase = Phase::Copying;
            Next::Send(Command::UidCopy { uids, target })
        }
    }

    /// The reply to the command last returned; gives the next step.
    pub fn on_reply(&mut self, reply: Reply) -> Next {
        let next = self.step(reply);
        if matches!(next, Next::Done(_) | Next::Failed(_)) {
            self.phase = Phase::Done;
        }
        next
    }

    fn step(&mut self, reply: Reply) -> Next {
        let command = self.command_name();
        match (self.phase.clone(), reply) {
            (Phase::Moving | Phase::Copying, Reply::Refused(status)) if try_create(&status) && !self.created => {
                self.created = true;
                self.phase = Phase::Creating;
                Next::Send(Command::Create { mailbox: self.target.clone() })
            }
            (Phase::Creating, Reply::Refused(status)) if !already_exists(&status) => {
                Next::Failed(MoveError::Refused { command, status })
            }
            (Phase::Creating, Reply::Ok | Reply::Refused(_)) => {
                self.phase = Phase::Subscribing;
                Next::Send(Command::Subscribe { mailbox: self.target.clone() })
            }
            // a refused SUBSCRIBE costs only the folder's visibility in some clients
            (Phase::Subscribing, Reply::Ok | Reply::Refused(_)) => self.transfer(),
            (Phase::Moving, Reply::Ok) => {
                Next::Done(Outcome { moved: std::mem::take(&mut self.uids), pending: Vec::new() })
            }
            (Phase::Copying, Reply::Ok) => {
                self.phase = Phase::Flagging;
                Next::Send(Command::StoreDeleted { uids: self.uids.clone() })
            }
            (Phase::Flagging, Reply::Ok) if self.strategy == MoveStrategy::CopyUidExpunge => {
                self.phase = Phase::UidExpunging;
                Next::Send(Command::UidExpunge { uids: self.uids.clone() })
            }
            (Phase::Flagging, Reply::Ok) => {
                self.phase = Phase::Searching;
                Next::Send(Command::SearchDeleted)
            }
            (Phase::UidExpunging, Reply::Ok) => {
                Next::Done(Outcome { moved: std::mem::take(&mut self.uids), pending: Vec::new() })
            }
            (Phase::Searching, Reply::Searched(deleted)) => {
                let ours: BTreeSet<u32> = self.uids.iter().chain(&self.pending).copied().collect();
                self.aside = deleted.iter().copied().filter(|u| !ours.contains(u)).collect();
                if self.aside.is_empty() {
                    self.phase = Phase::Expunging;
                    Next::Send(Command::Expunge)
                } else {
                    // the user keeps \Deleted messages: set them aside for the EXPUNGE
                    self.phase = Phase::SettingAside;
                    Next::Send(Command::StoreUndeleted { uids: self.aside.clone() })
                }
            }
            (Phase::SettingAside, Reply::Ok) => {
                self.phase = Phase::ExpungingAside;
                Next::Send(Command::Expunge)
            }
            (Phase::SettingAside, Reply::Refused(_)) => {
                // nothing changed: ours wait, flagged, until the user's are gone
                let ours: BTreeSet<u32> = self.uids.iter().chain(&self.pending).copied().collect();
                Next::Done(Outcome { moved: Vec::new(), pending: ours.into_iter().collect() })
            }
            (Phase::ExpungingAside, reply) => {
                let refused = match reply {
                    Reply::Ok => None,
                    Reply::Refused(status) => Some(status),
                    Reply::Searched(_) => Some("an unexpected SEARCH reply".to_owned()),
                };
                self.phase = Phase::Restoring(refused);
                Next::Send(Command::StoreDeleted { uids: self.aside.clone() })
            }
            (Phase::Restoring(expunge_refused), Reply::Ok) => match expunge_refused {
                Some(status) => Next::Failed(MoveError::Refused { command: "EXPUNGE", status }),
                None => {
                    let moved: BTreeSet<u32> = self.uids.iter().chain(&self.pending).copied().collect();
                    Next::Done(Outcome { moved: moved.into_iter().collect(), pending: Vec::new() })
                }
            },
            (Phase::Restoring(_), Reply::Refused(status)) => {
                Next::Failed(MoveError::NotRestored { uids: self.aside.clone(), status })
            }
            (Phase::Expunging, Reply::Ok) => {
                let moved: BTreeSet<u32> = self.uids.iter().chain(&self.pending).copied().collect();
                Next::Done(Outcome { moved: moved.into_iter().collect(), pending: Vec::new() })
            }
            (_, Reply::Refused(status)) => Next::Failed(MoveError::Refused { command, status }),
            _ => Next::Failed(MoveError::Unexpected { command }),
        }
    }

    fn command_name(&self) -> &'static str {
        match self.phase {
            Phase::Start | Phase::Done => "no command",
            Phase::Moving => "UID MOVE",
            Phase::Creating => "CREATE",
            Phase::Subscribing => "SUBSCRIBE",
            Phase::Copying => "UID COPY",
            Phase::Flagging => "UID STORE",
            Phase::UidExpunging => "UID EXPUNGE",
            Phase::Searching => "UID SEARCH",
            Phase::Expunging | Phase::ExpungingAside => "EXPUNGE",
            Phase::SettingAside | Phase::Restoring(_) => "UID STORE",
        }
    }
}

/// The numbers of one `* SEARCH 3 7 9` response (`* SEARCH` alone: none). `None` for any other
/// line or a malformed number.
pub fn parse_search(line: &[u8]) -> Option<Vec<u32>> {
    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(line);
    let rest = line.strip_prefix(b"* ")?;
    let (name, numbers) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    if !name.eq_ignore_ascii_case(b"SEARCH") {
        return None;
    }
    numbers
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .map(|w| std::str::from_utf8(w).ok()?.parse::<u32>().ok().filter(|&n| n > 0))
        .collect()
}

fn try_create(status: &str) -> bool {
    status.to_ascii_uppercase().contains("[TRYCREATE]")
}

/// `[ALREADYEXISTS]` (RFC 5530), or the text servers without it use (Courier: "Cannot create
/// this folder."; Cyrus: "Mailbox already exists"; imap4d: "already exists").
fn already_exists(status: &str) -> bool {
    let s = status.to_ascii_lowercase();
    s.contains("[alreadyexists]") || s.contains("already exists") || s.contains("cannot create this folder")
}

/// `1:3,7,9:10` from sorted, distinct UIDs.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        while i + 1 < uids.len() && uids[i + 1] == uids[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if uids[i] == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{}", uids[i]));
        }
        i += 1;
    }
    out
}

/// A quoted string; `MovePlan::new` has made sure the name is printable ASCII.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a plan against scripted replies; returns the command lines and the end.
    fn run(mut plan: MovePlan, replies: &[Reply]) -> (Vec<String>, Next) {
        let mut lines = Vec::new();
        let mut next = plan.start();
        let mut replies = replies.iter();
        while let Next::Send(cmd) = &next {
            lines.push(cmd.to_line());
            let reply = replies.next().unwrap_or_else(|| panic!("no reply scripted after {lines:?}"));
            next = plan.on_reply(reply.clone());
        }
        assert!(replies.next().is_none(), "replies left over after {lines:?}");
        (lines, next)
    }

    fn done(moved: &[u32], pending: &[u32]) -> Next {
        Next::Done(Outcome { moved: moved.to_vec(), pending: pending.to_vec() })
    }

    #[test]
    fn move_is_one_command() {
        let plan = MovePlan::new(MoveStrategy::Move, &[9, 3, 4, 5, 3], "COI/Chats", &[]).unwrap();
        let (lines, end) = run(plan, &[Reply::Ok]);
        assert_eq!(lines, ["UID MOVE 3:5,9 \"COI/Chats\"\r\n"]);
        assert_eq!(end, done(&[3, 4, 5, 9], &[]));
    }

    #[test]
    fn uidplus_expunges_exactly_ours() {
        let plan = MovePlan::new(MoveStrategy::CopyUidExpunge, &[7], "INBOX.COI.Chats", &[]).unwrap();
        let (lines, end) = run(plan, &[Reply::Ok, Reply::Ok, Reply::Ok]);
        assert_eq!(
            lines,
            ["UID COPY 7 \"INBOX.COI.Chats\"\r\n", "UID STORE 7 +FLAGS.SILENT (\\Deleted)\r\n", "UID EXPUNGE 7\r\n"]
        );
        assert_eq!(end, done(&[7], &[]));
    }

    #[test]
    fn without_uidplus_expunge_only_when_nothing_else_is_deleted() {
        let plan = MovePlan::new(MoveStrategy::CopySafeExpunge, &[4, 5], "COI/Chats", &[]).unwrap();
        let (lines, end) = run(plan, &[Reply::Ok, Reply::Ok, Reply::Searched(vec![4, 5]), Reply::Ok]);
        assert_eq!(
            lines,
            [
                "UID COPY 4:5 \"COI/Chats\"\r\n",
                "UID STORE 4:5 +FLAGS.SILENT (\\Deleted)\r\n",
                "UID SEARCH DELETED\r\n",
                "EXPUNGE\r\n"
            ]
        );
        assert_eq!(end, done(&[4, 5], &[]));
    }

    #[test]
    fn a_users_deleted_message_is_set_aside_for_the_expunge() {
        // The user flagged UIDs 2 and 3 and kept them: unflagged for the EXPUNGE, flagged again.
        let plan = MovePlan::new(MoveStrategy::CopySafeExpunge, &[4], "COI/Chats", &[]).unwrap();
        let replies = [Reply::Ok, Reply::Ok, Reply::Searched(vec![2, 3, 4]), Reply::Ok, Reply::Ok, Reply::Ok];
        let (lines, end) = run(plan.clone(), &replies);
        assert_eq!(
            lines[2..],
            [
                "UID SEARCH DELETED\r\n",
                "UID STORE 2:3 -FLAGS.SILENT (\\Deleted)\r\n",
                "EXPUNGE\r\n",
                "UID STORE 2:3 +FLAGS.SILENT (\\Deleted)\r\n"
            ]
        );
        assert_eq!(end, done(&[4], &[]));
        // The EXPUNGE refused: theirs are flagged again all the same, then the failure.
        let refused = Reply::Refused("NO EXPUNGE failed".into());
        let replies = [Reply::Ok, Reply::Ok, Reply::Searched(vec![2, 4]), Reply::Ok, refused, Reply::Ok];
        let (lines, end) = run(plan.clone(), &replies);
        assert_eq!(lines.last().unwrap(), "UID STORE 2 +FLAGS.SILENT (\\Deleted)\r\n");
        assert!(matches!(end, Next::Failed(MoveError::Refused { command: "EXPUNGE", .. })), "{end:?}");
        // Flagging theirs again refused: said, with their UIDs.
        let replies =
            [Reply::Ok, Reply::Ok, Reply::Searched(vec![2, 4]), Reply::Ok, Reply::Ok, Reply::Refused("NO x".into())];
        let (_, end) = run(plan.clone(), &replies);
        assert_eq!(end, Next::Failed(MoveError::NotRestored { uids: vec![2], status: "NO x".into() }));
    }

    #[test]
    fn without_a_way_to_set_aside_ours_wait() {
        // The provider will not take \Deleted off the user's UID 2: no EXPUNGE; ours wait.
        let plan = MovePlan::new(MoveStrategy::CopySafeExpunge, &[4], "COI/Chats", &[]).unwrap();
        let no = Reply::Refused("NO read-only".into());
        let (lines, end) = run(plan, &[Reply::Ok, Reply::Ok, Reply::Searched(vec![2, 4]), no.clone()]);
        assert!(!lines.iter().any(|l| l.starts_with("EXPUNGE")), "{lines:?}");
        assert_eq!(end, done(&[], &[4]));
        // Later, still flagged by the user: still waiting, now with the new one too.
        let plan = MovePlan::new(MoveStrategy::CopySafeExpunge, &[6], "COI/Chats", &[4]).unwrap();
        let (lines, end) = run(plan, &[Reply::Ok, Reply::Ok, Reply::Searched(vec![2, 4, 6]), no]);
        assert_eq!(lines.len(), 4);
        assert_eq!(end, done(&[], &[4, 6]));
        // The user expunged (or unflagged) theirs: the retry expunges ours.
        let (lines, end) =
            run(MovePlan::retry(&[4, 6], "COI/Chats").unwrap(), &[Reply::Searched(vec![4, 6]), Reply::Ok]);
        assert_eq!(lines, ["UID SEARCH DELETED\r\n", "EXPUNGE\r\n"]);
        assert_eq!(end, done(&[4, 6], &[]));
        // A retry when a pending one is gone already (a client expunged it) is fine too.
        let (_, end) = run(MovePlan::retry(&[4, 6], "COI/Chats").unwrap(), &[Reply::Searched(vec![6]), Reply::Ok]);
        assert_eq!(end, done(&[4, 6], &[]));
    }

    #[test]
    fn trycreate_creates_and_subscribes_once() {
        let plan = MovePlan::new(MoveStrategy::Move, &[1], "COI/Chats", &[]).unwrap();
        let trycreate = Reply::Refused("NO [TRYCREATE] Mailbox doesn't exist".into());
        let (lines, end) = run(plan.clone(), &[trycreate.clone(), Reply::Ok, Reply::Ok, Reply::Ok]);
        assert_eq!(
            lines,
            [
                "UID MOVE 1 \"COI/Chats\"\r\n",
                "CREATE \"COI/Chats\"\r\n",
                "SUBSCRIBE \"COI/Chats\"\r\n",
                "UID MOVE 1 \"COI/Chats\"\r\n"
            ]
        );
        assert_eq!(end, done(&[1], &[]));
        // Created by someone else meanwhile (Courier's wording): go on.
        let exists = Reply::Refused("NO Cannot create this folder.".into());
        let (_, end) = run(plan.clone(), &[trycreate.clone(), exists, Reply::Ok, Reply::Ok]);
        assert_eq!(end, done(&[1], &[]));
        // TRYCREATE twice: give up rather than loop.
        let (_, end) = run(plan.clone(), &[trycreate.clone(), Reply::Ok, Reply::Ok, trycreate.clone()]);
        assert!(matches!(end, Next::Failed(MoveError::Refused { command: "UID MOVE", .. })), "{end:?}");
        // CREATE refused for good (Courier outside its namespace): the error says so.
        let invalid = Reply::Refused("NO Invalid mailbox name.".into());
        let (_, end) = run(plan, &[trycreate, invalid]);
        assert_eq!(
            end,
            Next::Failed(MoveError::Refused { command: "CREATE", status: "NO Invalid mailbox name.".into() })
        );
    }

    #[test]
    fn refusals_and_nonsense_fail_cleanly() {
        let plan = MovePlan::new(MoveStrategy::CopyUidExpunge, &[1], "Chats", &[]).unwrap();
        let (_, end) = run(plan.clone(), &[Reply::Ok, Reply::Refused("BAD STORE Syntax error".into())]);
        assert!(matches!(end, Next::Failed(MoveError::Refused { command: "UID STORE", .. })), "{end:?}");
        let (_, end) = run(plan, &[Reply::Searched(vec![1])]);
        assert_eq!(end, Next::Failed(MoveError::Unexpected { command: "UID COPY" }));
        assert!(matches!(MovePlan::new(MoveStrategy::Move, &[1], "a\r\nb", &[]), Err(MoveError::BadMailboxName(_))));
        assert!(MovePlan::new(MoveStrategy::Move, &[1], "Čety", &[]).is_err());
        assert!(MovePlan::new(MoveStrategy::Move, &[1], "", &[]).is_err());
        // nothing to do
        let (lines, end) = run(MovePlan::new(MoveStrategy::Move, &[], "Chats", &[]).unwrap(), &[]);
        assert!(lines.is_empty());
        assert_eq!(end, done(&[], &[]));
        // a finished plan does not start again
        let mut plan = MovePlan::new(MoveStrategy::Move, &[1], "Chats", &[]).unwrap();
        plan.start();
        assert_eq!(plan.start(), Next::Failed(MoveError::Unexpected { command: "start" }));
    }

    #[test]
    fn from_a_profile() {
        use crate::provider_profile::{Facts, Namespaces, ProviderProfile};
        let caps: Vec<String> = ["IMAP4rev1", "UIDPLUS", "IDLE"].map(String::from).to_vec();
        let ns = Namespaces::parse(b"* NAMESPACE ((\"INBOX.\" \".\")) NIL NIL").unwrap();
        let profile = ProviderProfile::decide(&Facts { capabilities: &caps, namespace: Some(&ns), ..Facts::default() });
        let (lines, end) =
            run(MovePlan::to_chats(&profile, "COI", &[3], &[]).unwrap(), &[Reply::Ok, Reply::Ok, Reply::Ok]);
        assert_eq!(lines[0], "UID COPY 3 \"INBOX.COI.Chats\"\r\n");
        assert_eq!(lines[2], "UID EXPUNGE 3\r\n");
        assert_eq!(end, done(&[3], &[]));
    }

    #[test]
    fn quoting_and_search_parsing() {
        let plan = MovePlan::new(MoveStrategy::Move, &[1], "we \"said\" \\o/", &[]).unwrap();
        let (lines, _) = run(plan, &[Reply::Ok]);
        assert_eq!(lines, ["UID MOVE 1 \"we \\\"said\\\" \\\\o/\"\r\n"]);
        assert_eq!(parse_search(b"* SEARCH 2 4 17\r\n"), Some(vec![2, 4, 17]));
        assert_eq!(parse_search(b"* SEARCH\r\n"), Some(vec![]));
        assert_eq!(parse_search(b"* search  5"), Some(vec![5]));
        assert_eq!(parse_search(b"* SEARCH 2 x"), None);
        assert_eq!(parse_search(b"* SEARCH 0"), None);
        assert_eq!(parse_search(b"* SEARCH 99999999999"), None);
        assert_eq!(parse_search(b"* ESEARCH (TAG \"a\") UID ALL 1:3"), None);
        assert_eq!(parse_search(b"a OK SEARCH"), None);
    }
}
