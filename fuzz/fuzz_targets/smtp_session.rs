//! The SMTP submission state machine, driven like the server drives it, with any input: the
//! message data it hands out (to the spool, in the server) is collected and checked against
//! what it says it accepted (size, header, CRLF line ends only).
#![no_main]

use coi_proxy::smtp::session::{AuthResult, Event, Policy, QueueRefusal, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    let policy = Policy { max_size: 4096, smtputf8: flags & 1 != 0, dsn: flags & 2 != 0 };
    let mut session = Session::new("mail.example.org", flags & 4 != 0, flags & 8 != 0, policy);
    let mut chunks = input.chunks(usize::from(flags >> 4).max(1));
    let mut steps = 0;
    let mut spooled: Vec<u8> = Vec::new();
    loop {
        steps += 1;
        assert!(steps < 100_000, "the session must make progress");
        let event = session.next_event();
        let data = session.take_data();
        assert!(data.len() <= 4096 + 1, "data is handed out as it comes: {}", data.len());
        spooled.extend_from_slice(&data);
        if !matches!(event, Event::Enqueue(_)) && !session.data_kept() {
            spooled.clear();
        }
        // Now and then the spool cannot take the data (a full disk).
        if session.data_kept() && spooled.len() % 977 == 976 {
            session.spool_failed(QueueRefusal::NoSpace);
        }
        match event {
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
                let body = std::mem::take(&mut spooled);
                assert_eq!(submission.size, body.len() as u64);
                assert!(submission.size <= 4096);
                assert!(body.starts_with(&submission.header) || submission.header.starts_with(&body));
                for (i, &b) in body.iter().enumerate() {
                    let after = body.get(i + 1).copied();
                    let before = i.checked_sub(1).map(|j| body[j]);
                    assert!(b != b'\r' || after == Some(b'\n'), "bare CR accepted");
                    assert!(b != b'\n' || before == Some(b'\r'), "bare LF accepted");
                }
                let full = body.len() % 5 == 4;
                session.queued(if full { Err(QueueRefusal::Full("full".into())) } else { Ok(1) });
            }
            Event::StartTls => session.tls_started(),
            Event::Close => break,
        }
        let _ = session.take_output();
    }
});
