use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn complete(bytes: &[u8]) -> (Header, usize) {
    match parse(bytes) {
        Ok(Parsed::Complete(header, len)) => (header, len),
        other => panic!("{other:?} for {bytes:?}"),
    }
}

fn error(bytes: &[u8]) -> HeaderError {
    match parse(bytes) {
        Err(e) => e,
        other => panic!("{other:?} for {bytes:?}"),
    }
}

/// Feeds `bytes` as a reader would: never more than `parse` asks for, at most `step` at once.
/// Returns the header and what was left unread.
fn read_in_steps(bytes: &[u8], step: usize) -> Result<(Header, Vec<u8>), HeaderError> {
    let mut buf = Vec::new();
    let mut rest = bytes;
    loop {
        match parse(&buf)? {
            Parsed::Complete(header, len) => {
                assert_eq!(len, buf.len(), "a reader that reads what is wanted ends exactly at the header");
                return Ok((header, rest.to_vec()));
            }
            Parsed::Incomplete(wanted) => {
                assert!(wanted >= 1);
                let take = wanted.min(step).min(rest.len());
                assert!(take > 0, "input ended inside the header: {buf:?}");
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
    }
}

#[test]
fn v1_tcp4() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 993\r\n";
    let (header, len) = complete(line);
    assert_eq!(len, line.len());
    assert_eq!((header.version, header.command, header.family), (Version::V1, Command::Proxy, Family::Inet));
    assert_eq!(header.addresses, Some((addr("192.0.2.7:56324"), addr("198.51.100.1:993"))));
    assert_eq!(header.client(addr("127.0.0.1:1")), addr("192.0.2.7:56324"));
}

#[test]
fn v1_tcp6() {
    let (header, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 143\r\n");
    assert_eq!(header.family, Family::Inet6);
    assert_eq!(header.addresses, Some((addr("[2001:db8::1]:65535"), addr("[2001:db8::2]:143"))));
}

#[test]
fn v1_unknown_keeps_the_socket_addresses_and_ignores_the_rest_of_its_line() {
    for line in [&b"PROXY UNKNOWN\r\n"[..], b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"] {
        let (header, len) = complete(line);
        assert_eq!(len, line.len());
        assert_eq!((header.family, header.addresses), (Family::Unspec, None));
        assert_eq!(header.client(addr("127.0.0.1:4")), addr("127.0.0.1:4"));
    }
}

#[test]
fn v1_bytes_after_the_line_are_not_part_of_it() {
    let input = b"PROXY TCP4 192.0.2.7 192.0.2.8 1 2\r\na1 CAPABILITY\r\n";
    let (_, len) = complete(input);
    assert_eq!(&input[len..], b"a1 CAPABILITY\r\n");
    let (_, rest) = read_in_steps(input, 1000).unwrap();
    assert_eq!(rest, b"a1 CAPABILITY\r\n");
}

#[test]
fn v1_malformed_lines_are_refused_with_what_is_wrong() {
    let cases: &[(&[u8], HeaderError)] = &[
        (b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n", HeaderError::V1Protocol),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n", HeaderError::V1Fields("TCP4")),
        (b"PROXY TCP4 1.2.3.4  1.2.3.5 1 2\r\n", HeaderError::V1Fields("TCP4")),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 \r\n", HeaderError::V1Fields("TCP4")),
        (b"PROXY TCP4 01.2.3.4 1.2.3.5 1 2\r\n", HeaderError::V1Field("source address")),
        (b"PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n", HeaderError::V1Field("source address")),
        (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", HeaderError::V1Field("source address")),
        (b"PROXY TCP4 1.2.3.4 1.2.3.500 1 2\r\n", HeaderError::V1Field("destination address")),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 01 2\r\n", HeaderError::V1Field("source port")),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 65536\r\n", HeaderError::V1Field("destination port")),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 +2\r\n", HeaderError::V1Field("destination port")),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n", HeaderError::V1LineEnd),
        (b"PROXY TCP4 1.2.3.4\r1.2.3.5 1 2\r\n", HeaderError::V1LineEnd),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\t\r\n", HeaderError::V1NotAscii),
        ("PROXY TCP4 1.2.3.4 1.2.3.5 1 2é\r\n".as_bytes(), HeaderError::V1NotAscii),
    ];
    for (line, wanted) in cases {
        assert_eq!(&error(line), wanted, "{}", String::from_utf8_lossy(line));
    }
}

#[test]
fn v1_line_is_capped_at_107_bytes() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(V1_MAX - 2, b'x');
    line.extend(b"\r\n");
    assert_eq!(complete(&line).1, V1_MAX);
    let mut long = line.clone();
    long.insert(20, b'x');
    assert_eq!(error(&long), HeaderError::V1TooLong);
    // Without an end in sight, the reader stops at the cap too.
    assert_eq!(error(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20)), HeaderError::V1TooLong);
}

fn v4(s: &str, d: &str) -> Option<(SocketAddr, SocketAddr)> {
    Some((addr(s), addr(d)))
}

#[test]
fn v2_proxy_inet() {
    let bytes = encode_v2(v4("203.0.113.9:40000", "127.0.0.1:1143"), &[]);
    assert_eq!(bytes.len(), 28);
    let (header, len) = complete(&bytes);
    assert_eq!(len, 28);
    assert_eq!((header.version, header.command, header.family), (Version::V2, Command::Proxy, Family::Inet));
    assert_eq!(header.addresses, v4("203.0.113.9:40000", "127.0.0.1:1143"));
    assert_eq!(header.client(addr("127.0.0.1:5")), addr("203.0.113.9:40000"));
}

#[test]
fn v2_proxy_inet6() {
    let pair = v4("[2001:db8::7]:1", "[2001:db8::8]:993");
    let bytes = encode_v2(pair, &[]);
    assert_eq!(bytes.len(), 16 + 36);
    let (header, _) = complete(&bytes);
    assert_eq!((header.family, header.addresses), (Family::Inet6, pair));
}

#[test]
fn v2_local_keeps_the_socket_addresses_whatever_its_block_holds() {
    // HAProxy's health checks: LOCAL, family UNSPEC, no addresses.
    let bytes = encode_v2(None, &[]);
    assert_eq!(bytes, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
    let (header, len) = complete(&bytes);
    assert_eq!((header.command, header.family, header.addresses, len), (Command::Local, Family::Unspec, None, 16));
    assert_eq!(header.client(addr("127.0.0.1:9")), addr("127.0.0.1:9"));
    // LOCAL with an INET family and addresses: discarded, family included.
    let mut local = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[]);
    local[12] = 0x20;
    let (header, len) = complete(&local);
    assert_eq!((header.command, header.addresses, len), (Command::Local, None, 28));
}

#[test]
fn v2_unspec_and_unix_and_dgram_keep_the_socket_addresses() {
    let mut unspec = encode_v2(None, &[]);
    unspec[12] = 0x21;
    let (header, _) = complete(&unspec);
    assert_eq!((header.command, header.family, header.addresses), (Command::Proxy, Family::Unspec, None));

    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend([0x21, 0x31]);
    unix.extend(216u16.to_be_bytes());
    unix.extend([b'/'; 216]);
    let (header, len) = complete(&unix);
    assert_eq!((header.family, header.addresses, len), (Family::Unix, None, 232));
    unix[15] = 215;
    unix.pop();
    assert_eq!(error(&unix), HeaderError::V2Addresses { needed: 216, got: 215 });

    let mut dgram = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[]);
    dgram[13] = 0x12;
    assert_eq!(complete(&dgram).0.addresses, None);
}

#[test]
fn v2_tlvs_are_read_and_must_stay_inside_the_header() {
    let tlvs = [
        Tlv { kind: 0x01, value: b"imap".to_vec() },
        Tlv { kind: 0x05, value: vec![7; 128] },
        Tlv { kind: 0x04, value: vec![] },
        Tlv { kind: 0xee, value: b"unknown types are kept, not refused".to_vec() },
    ];
    let bytes = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &tlvs);
    let (header, len) = complete(&bytes);
    assert_eq!(len, bytes.len());
    assert_eq!(header.tlvs, tlvs);
    assert_eq!(header.addresses, v4("203.0.113.9:1", "127.0.0.1:2"));

    // A TLV whose length runs past the header, and a TLV cut inside its type and length.
    let mut past = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[Tlv { kind: 1, value: b"ab".to_vec() }]);
    let at = past.len() - 3;
    past[at] = 9;
    assert_eq!(error(&past), HeaderError::V2Tlv);
    let mut cut = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[]);
    cut.extend([0x01, 0x00]);
    cut[15] += 2;
    assert_eq!(error(&cut), HeaderError::V2Tlv);
}

#[test]
fn v2_short_address_block_is_refused() {
    let mut bytes = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[]);
    bytes[15] = 11;
    bytes.pop();
    assert_eq!(error(&bytes), HeaderError::V2Addresses { needed: 12, got: 11 });
    let mut v6 = encode_v2(v4("[2001:db8::1]:1", "[2001:db8::2]:2"), &[]);
    v6[15] = 12;
    v6.truncate(28);
    assert_eq!(error(&v6), HeaderError::V2Addresses { needed: 36, got: 12 });
}

#[test]
fn v2_bad_version_command_family_transport() {
    let good = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[]);
    let with = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    assert_eq!(error(&with(12, 0x11)), HeaderError::V2Version(1));
    assert_eq!(error(&with(12, 0x31)), HeaderError::V2Version(3));
    assert_eq!(error(&with(12, 0x22)), HeaderError::V2Command(2));
    assert_eq!(error(&with(13, 0x41)), HeaderError::V2Family(4));
    assert_eq!(error(&with(13, 0x13)), HeaderError::V2Transport(3));
}

#[test]
fn v2_longer_than_the_cap_is_refused_before_it_is_read() {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend([0x21, 0x11]);
    bytes.extend(u16::try_from(MAX_HEADER - 16 + 1).unwrap().to_be_bytes());
    assert_eq!(error(&bytes), HeaderError::V2TooLong(MAX_HEADER + 1));
    bytes[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(error(&bytes), HeaderError::V2TooLong(16 + 65535));
    // Up to the cap is taken.
    let header = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[Tlv { kind: 4, value: vec![0; MAX_HEADER - 28 - 3] }]);
    assert_eq!(header.len(), MAX_HEADER);
    assert_eq!(complete(&header).1, MAX_HEADER);
}

#[test]
fn bad_signature_and_garbage_are_no_header() {
    let mut almost = V2_SIGNATURE.to_vec();
    almost[11] = b'X';
    almost.extend([0x21, 0x11, 0, 0]);
    assert!(matches!(error(&almost), HeaderError::NotProxy(_)));
    for garbage in [&b"a1 LOGIN alice secret\r\n"[..], b"EHLO client\r\n", b"\x16\x03\x01\x02\x00\x01", b"PROXZ", b"\0"]
    {
        assert!(matches!(error(garbage), HeaderError::NotProxy(_)), "{garbage:?}");
    }
    // Seen early: a TLS hello is refused at its first byte, a wrong v2 signature where it differs.
    assert!(matches!(error(b"\x16"), HeaderError::NotProxy(_)));
    assert!(matches!(error(b"\r\n\r\n\0\r\nQUX"), HeaderError::NotProxy(_)));
    assert!(matches!(error(b"PRX"), HeaderError::NotProxy(_)));
}

#[test]
fn the_refusal_text_shows_an_escaped_and_cut_start() {
    let HeaderError::NotProxy(shown) = error(b"\x16\x03\x01 hello\r\n and a long tail of bytes") else { panic!() };
    assert_eq!(shown, "\\x16\\x03\\x01 hello\\r\\n and ...");
    assert!(shown.is_ascii() && !shown.contains('\r'));
}

#[test]
fn incomplete_asks_for_at_least_what_any_header_still_needs() {
    assert_eq!(parse(b""), Ok(Parsed::Incomplete(15)));
    assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Incomplete(12)));
    let v2 = encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[]);
    assert_eq!(parse(&v2[..16]), Ok(Parsed::Incomplete(12)));
    assert_eq!(parse(&v2[..27]), Ok(Parsed::Incomplete(1)));
    assert_eq!(parse(b"PROXY "), Ok(Parsed::Incomplete(9)));
    assert_eq!(parse(b"PROXY UNKNOWN"), Ok(Parsed::Incomplete(2)));
    assert_eq!(parse(b"PROXY UNKNOWN\r"), Ok(Parsed::Incomplete(1)));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2"), Ok(Parsed::Incomplete(2)));
}

#[test]
fn fragmented_headers_read_exactly_to_their_end_in_any_steps() {
    let after = b"\x16\x03\x01\x00\x05hello";
    let headers = [
        encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[Tlv { kind: 2, value: b"imap.example.org".to_vec() }]),
        encode_v2(v4("[2001:db8::1]:1", "[2001:db8::2]:2"), &[]),
        encode_v2(None, &[]),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 993\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ];
    for header in headers {
        let whole = complete(&header).0;
        let mut input = header.clone();
        input.extend(after);
        for step in [1, 2, 3, 7, 16, 100] {
            let (got, rest) = read_in_steps(&input, step).unwrap();
            assert_eq!(got, whole);
            assert_eq!(rest, after, "step {step}");
        }
    }
}

#[test]
fn every_prefix_of_a_valid_header_is_incomplete_never_an_error() {
    let headers = [
        encode_v2(v4("203.0.113.9:1", "127.0.0.1:2"), &[Tlv { kind: 5, value: b"id".to_vec() }]),
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
    ];
    for header in headers {
        for cut in 0..header.len() {
            let Ok(Parsed::Incomplete(wanted)) = parse(&header[..cut]) else { panic!("cut at {cut}") };
            assert!(cut + wanted <= header.len(), "asks past the end at {cut}: {wanted}");
        }
    }
}
