//! Properties of the IMAP framer over generated streams: however the bytes are split into reads,
//! the fragments are the same; the fragments put together are the input, byte for byte; and no
//! literal content is ever taken for a line.

use coi_proxy::imap::wire::framing::{Fragment, Framer};
use proptest::prelude::*;

/// A line, and the literal it announces (bytes, synchronizing) if any.
type Part = (String, Option<(Vec<u8>, bool)>);

/// One generated message: lines, each optionally followed by a literal of arbitrary bytes.
#[derive(Debug, Clone)]
struct Message {
    parts: Vec<Part>,
}

fn line_text() -> impl Strategy<Value = String> {
    // Printable text that does not itself end in a literal announcement.
    "[ -~]{0,40}".prop_map(|s| format!("{s}x"))
}

/// A message: lines that each announce a literal, then a final line without one.
fn message() -> impl Strategy<Value = Message> {
    let literal = (prop::collection::vec(any::<u8>(), 0..64), any::<bool>());
    (prop::collection::vec((line_text(), literal), 0..3), line_text()).prop_map(|(with_literals, last)| {
        let mut parts: Vec<_> = with_literals.into_iter().map(|(text, lit)| (text, Some(lit))).collect();
        parts.push((last, None));
        Message { parts }
    })
}

fn encode(messages: &[Message]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut lines = 0;
    for m in messages {
        for (text, literal) in &m.parts {
            out.extend_from_slice(text.as_bytes());
            lines += 1;
            match literal {
                Some((bytes, sync)) => {
                    out.extend_from_slice(
                        format!(" {{{}{}}}\r\n", bytes.len(), if *sync { "" } else { "+" }).as_bytes(),
                    );
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(b"\r\n"),
            }
        }
    }
    (out, lines)
}

/// Frames `input` read in the given chunk sizes; returns (kind, bytes) with literal pieces merged.
fn frame(input: &[u8], chunks: &[usize]) -> Vec<(&'static str, Vec<u8>)> {
    let mut framer = Framer::new(1024);
    let mut buf = Vec::new();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < input.len() {
        let n = (*sizes.next().unwrap()).max(1).min(input.len() - pos);
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        while let Some(f) = framer.next(&buf) {
            let (kind, len) = match f {
                Fragment::Line { len, first: true, .. } => ("first line", len),
                Fragment::Line { len, .. } => ("continuation line", len),
                Fragment::LiteralData { len, .. } => ("literal", len),
                Fragment::Overlong { len, .. } => ("overlong", len),
            };
            let bytes: Vec<u8> = buf.drain(..len).collect();
            match out.last_mut() {
                Some((k, b)) if *k == "literal" && kind == "literal" => b.extend(bytes),
                _ => out.push((kind, bytes)),
            }
        }
    }
    assert!(buf.is_empty(), "bytes left unframed");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_fragments(messages in prop::collection::vec(message(), 1..6), chunks in prop::collection::vec(1usize..50, 1..8)) {
        let (input, _) = encode(&messages);
        prop_assert_eq!(frame(&input, &chunks), frame(&input, &[input.len()]));
    }

    #[test]
    fn fragments_are_the_input_and_literals_never_lines(messages in prop::collection::vec(message(), 1..6), chunks in prop::collection::vec(1usize..50, 1..8)) {
        let (input, lines) = encode(&messages);
        let frags = frame(&input, &chunks);
        let joined: Vec<u8> = frags.iter().flat_map(|(_, b)| b.clone()).collect();
        prop_assert_eq!(&joined, &input);
        let framed_lines = frags.iter().filter(|(k, _)| k.ends_with("line")).count();
        prop_assert_eq!(framed_lines, lines);
        let first_lines = frags.iter().filter(|(k, _)| *k == "first line").count();
        prop_assert_eq!(first_lines, messages.len());
    }
}
