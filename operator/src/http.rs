//! /metrics, /healthz and /readyz on a small blocking HTTP server thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::metrics::Metrics;

/// Serves until the process exits. `/readyz` turns 200 once the API server
/// answered (a follower is ready too: it is ready to take over).
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("serving HTTP on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (code, body, kind) = match req.url() {
                    "/metrics" => (200, metrics.render(), "text/plain; version=0.0.4"),
                    "/healthz" => (200, "ok\n".to_string(), "text/plain"),
                    "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                        (200, "ready\n".to_string(), "text/plain")
                    }
                    "/readyz" => (503, "not ready\n".to_string(), "text/plain"),
                    _ => (404, "not found\n".to_string(), "text/plain"),
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", kind).expect("valid header");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(header),
                );
            }
        })?;
    Ok(())
}
