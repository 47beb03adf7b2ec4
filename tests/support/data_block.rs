//! SMTP DATA framing, shared by the tests' SMTP client, the provider harness (LMTP) and the
//! benchmarks.

/// A message as DATA content: a line starting with "." gets another one (RFC 5321 4.5.2), and
/// a non-empty message ends with CRLF before the final ".".
pub fn data_block(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
