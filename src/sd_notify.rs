//! systemd's readiness protocol (sd_notify(3)): one datagram to `$NOTIFY_SOCKET` per state
//! change, so `Type=notify` units start dependents only once the listeners are bound and
//! `systemctl reload` can show progress. Without `$NOTIFY_SOCKET` (not under systemd) every
//! call does nothing.

use std::os::unix::net::UnixDatagram;

/// The listeners are bound; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A SIGHUP reload begins (`ready` again when it is done).
pub fn reloading() {
    notify("RELOADING=1\nSTATUS=reloading the configuration");
}

/// Shutdown begins.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path, message) {
        tracing::warn!("cannot notify systemd on {}: {e}", path.to_string_lossy());
    }
}

fn send(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // `@name` is a socket in Linux's abstract namespace.
    #[cfg(target_os = "linux")]
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        return socket.send_to_addr(message.as_bytes(), &addr).map(|_| ());
    }
    let _ = bytes;
    socket.send_to(message.as_bytes(), path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
    }
}
