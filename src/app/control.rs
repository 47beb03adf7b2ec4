//! The daemon's control socket (`control.sock` in the state directory, mode 0600): the command
//! line's way to a running daemon, which holds the store. Each connection sends one request
//! line (and, for some, a body); the area it names answers it: `queue …` the queue
//! (`smtp::control`), `key …`, `invite`, `join` the OpenPGP gateway (`smtp::control`, carried
//! out by `openpgp::commands`), `oauth …` the OAuth2 grants (`oauth::control`). Served whether
//! or not SMTP is configured.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::warn;

use crate::context::Context;
use crate::openpgp::identity::Identity;
use crate::smtp::Waits;

/// Longest request line: `key import` carries an armored key on it.
const MAX_LINE: u64 = crate::openpgp::commands::MAX_LINE as u64;

/// Creates the control socket (0600), before the listeners open: once a client can log in, the
/// command line reaches the daemon too (connections wait in the backlog until [`serve`] runs).
/// `None` (logged) when it cannot be created; the daemon runs without it.
pub fn bind(ctx: &Context) -> Option<UnixListener> {
    let path = crate::smtp::control::socket_path(&ctx.config().state_dir);
    // A socket left by a killed daemon; the store lock already ensures no other daemon runs.
    let _ = std::fs::remove_file(&path);
    match UnixListener::bind(&path) {
        Ok(listener) => {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            Some(listener)
        }
        Err(e) => {
            warn!(
                "cannot create the control socket {}: {e}; `coi-proxy queue`, `key`, `invite`, `join` and `oauth` will not reach the running daemon",
                path.display()
            );
            None
        }
    }
}

/// Serves the control socket until shutdown.
/// `waits`: the SMTP relay's reasons for `queue list` (`None` without SMTP); `identity`: the
/// OpenPGP gateway's state (`None` when `[autocrypt] enabled = false`).
pub async fn serve(
    listener: UnixListener,
    ctx: Arc<Context>,
    waits: Option<Arc<Waits>>,
    identity: Option<Identity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = crate::smtp::control::socket_path(&ctx.config().state_dir);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (ctx, waits, identity) = (ctx.clone(), waits.clone(), identity.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read);
            let mut line = String::new();
            if (&mut reader).take(MAX_LINE).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match crate::smtp::control::answer(&ctx, waits.as_deref(), &line).await {
                Some(reply) => reply,
                None if crate::oauth::control::is_ours(&line) => {
                    crate::oauth::control::answer(&ctx, &line, &mut reader).await
                }
                None => match crate::smtp::control::answer_gateway(&ctx, identity.as_ref(), &line).await {
                    Some(reply) => reply,
                    None => "error\nunknown command; use: queue list | queue retry ID | queue drop ID | key export \
                             LOGIN [--secret] | key import LOGIN BASE64 | invite LOGIN | join LOGIN LINK | oauth \
                             status\n"
                        .into(),
                },
            };
            let _ = write.write_all(reply.as_bytes()).await;
        });
    }
    let _ = std::fs::remove_file(&path);
}
