//! The SMTP submission state machine, driven like the server drives it, with any input.
#![no_main]

use coi_proxy::smtp::session::{AuthResult, Event, Policy, QueueRefusal, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    let policy = Policy { max_size: 4096, smtputf8: flags & 1 != 0, dsn: flags & 2 != 0 };
    let mut session = Session::new("mail.example.org", flags & 4 != 0, flags & 8 != 0, policy);
    let mut chunks = input.chunks(usize::from(flags >> 4).max(1));
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 100_000, "the session must make progress");
        match session.next_event() {
            Event::NeedInput => match chunks.next() {
                Some(chunk) => session.feed(chunk),
                None => break,
            },
            Event::Authenticate { login, .. } => {
                let result = if login.len() % 2 == 0 { AuthResult::Ok(None) } else { AuthResult::Refused };
                session.auth_result(result);
            }
            Event::CheckRoom { size, .. } => {
                let full = size % 3 == 1;
                session.room(if full { Err(QueueRefusal::Full("full".into())) } else { Ok(()) });
            }
            Event::Enqueue(submission) => {
                assert!(submission.body.len() <= 4096 + 1024 * 1024 + 2);
                let full = submission.body.len() % 5 == 4;
                session.queued(if full { Err(QueueRefusal::Full("full".into())) } else { Ok(1) });
            }
            Event::StartTls => session.tls_started(),
            Event::Close => break,
        }
        let _ = session.take_output();
    }
});
