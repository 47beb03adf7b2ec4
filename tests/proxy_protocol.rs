//! `[listen] proxy_protocol = true` (issue 21, part 1): coi-proxy behind a real HAProxy that
//! sends PROXY v2 headers, and by hand-written v1/v2 headers where HAProxy cannot make the case
//! (two client addresses, fragments, garbage).

mod support;

use std::time::Duration;

use support::haproxy::{Backend, Haproxy, parse_stat};

/// The harness itself: the generated config passes `haproxy -c`, HAProxy runs, and `show stat`
/// lists one row per server and backend; nothing listens on the servers' ports, so their
/// checks fail and they go DOWN.
#[test]
fn haproxy_harness_starts_and_reports_servers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let haproxy = Haproxy::start_with(&[
        Backend::new("node-a", closed, closed),
        Backend::new("node-b", closed, closed).with_imaps(closed),
    ]);
    assert_ne!(haproxy.imaps_port, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = haproxy.stats();
        let rows: Vec<_> = stats.iter().map(|s| (s.backend.as_str(), s.server.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("be_imap", "node-a"),
                ("be_imap", "node-b"),
                ("be_smtp", "node-a"),
                ("be_smtp", "node-b"),
                ("be_imaps", "node-b")
            ],
            "{stats:?}"
        );
        if stats.iter().all(|s| s.status == "DOWN" && s.check_status == "L4CON") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "checks did not fail on a closed port: {stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn show_stat_csv_is_read_by_column_name() {
    let text = "# pxname,svname,qcur,status,stot,check_status\n\
                fe_imap,FRONTEND,,OPEN,3,\n\
                be_imap,node-a,0,UP,7,L7OK\n\
                be_imap,BACKEND,0,UP,7,\n";
    let rows = parse_stat(text);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].server.as_str(), rows[0].status.as_str(), rows[0].sessions), ("node-a", "UP", 7));
    assert_eq!(rows[0].check_status, "L7OK");
}
