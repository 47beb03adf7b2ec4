//! Health and metrics on an optional loopback HTTP listener (`[listen] metrics`): `/healthz`
//! for service monitors and `/metrics` in Prometheus' text format (the counters are
//! `crate::metrics`).
//!
//! A few lines of HTTP/1.1 on tokio (one request per connection), enough for Prometheus and
//! `curl`; it has no authentication, which is why the listener must be on a loopback address.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::context::Context;

/// Why `/healthz` says 503.
#[derive(Debug, thiserror::Error)]
enum Unhealthy {
    #[error("shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Serves `/healthz` and `/metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), answer(stream, &ctx)).await {
                debug!("metrics request: {e}");
            }
        });
    }
}

/// Reads one request head and answers it; the connection is closed afterwards.
async fn answer(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET" | "HEAD", "/healthz") => match health(ctx).await {
            Ok(()) => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("{why}\n")),
        },
        ("GET" | "HEAD", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(ctx).await),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "try /metrics or /healthz\n".into()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".into()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Healthy: not shutting down (the listeners are bound before this listener starts), and the
/// store answers a read.
async fn health(ctx: &Context) -> Result<(), Unhealthy> {
    if *ctx.shutdown.borrow() {
        return Err(Unhealthy::ShuttingDown);
    }
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || store.schema_version()).await??;
    Ok(())
}

/// Every counter, plus the queue as the store has it.
async fn render(ctx: &Context) -> String {
    let store = ctx.store.clone();
    let queue = tokio::task::spawn_blocking(move || store.queue_list()).await.ok().and_then(Result::ok);
    let (depth, oldest) = match &queue {
        Some(list) => {
            let oldest = list.iter().map(|(_, m)| m.received_at).min();
            (list.len() as i64, oldest.map_or(0, |t| (crate::clock::now() - t).max(0)))
        }
        None => (-1, 0),
    };
    crate::metrics::render(depth, oldest)
}
