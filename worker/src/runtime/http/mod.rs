//! The worker's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the
//! process is alive and its run loop makes progress), `/readyz` (it is
//! processing) and `/status` (JSON, for the operator and for humans); with a
//! [`WebView`], also the live web view (`/`, its files, and `/events`).
//!
//! The routes are here; [`server`] accepts connections, each on a thread of
//! its own with read and write timeouts, so a web page's open event stream
//! or a client that stops reading holds only its own connection.

pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use super::status::{StatusHandle, WorkerState, render_metrics};
use super::web::{self, WebView, assets};
use server::{Request, Response};

/// Serves the endpoint on a background thread until the process exits.
/// Returns the bound address (useful with port 0).
pub fn serve(addr: SocketAddr, status: StatusHandle) -> anyhow::Result<SocketAddr> {
    serve_with(addr, status, None)
}

/// [`serve`], plus the live web view when `web` is given.
pub fn serve_with(
    addr: SocketAddr,
    status: StatusHandle,
    web: Option<WebView>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the status endpoint: {e}"))?;
    let bound = listener.local_addr()?;
    server::spawn(
        listener,
        Arc::new(move |req: Request| route(req, &status, web.as_ref())),
    )
    .map_err(|e| anyhow::anyhow!("cannot serve on {addr}: {e}"))?;
    Ok(bound)
}

/// Answers one request: the web view's paths when there is one, else the
/// worker's own.
fn route(req: Request, status: &StatusHandle, web: Option<&WebView>) {
    let req = match web {
        Some(web) => match serve_web(req, web) {
            Some(req) => req,
            None => return,
        },
        None => req,
    };
    let (code, ctype, body) = respond(req.path(), status);
    req.respond(Response::new(code, ctype, body));
}

/// Answers the web view's paths; hands back any other request.
fn serve_web(req: Request, web: &WebView) -> Option<Request> {
    if req.path() == "/events" {
        web::sse::serve_events(req, web);
        return None;
    }
    let Some((ctype, body)) = assets::file(req.path()) else {
        return Some(req);
    };
    if req.method() != "GET" && req.method() != "HEAD" {
        // Read-only: nothing on this endpoint takes a write.
        req.respond(Response::text(405, "read-only: GET only\n").with_header("Allow", "GET, HEAD"));
        return None;
    }
    let mut resp = Response::new(200, ctype, body);
    for (name, value) in assets::SECURITY_HEADERS {
        resp = resp.with_header(name, *value);
    }
    req.respond(resp);
    None
}

/// The worker's own answer to `path` (without its query).
fn respond(path: &str, status: &StatusHandle) -> (u16, &'static str, String) {
    let s = status.get();
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", render_metrics(&s)),
        "/healthz" => match (s.state, status.stalled()) {
            (WorkerState::Failed, _) => (
                503,
                "text/plain",
                format!("failed: {}\n", s.last_error.unwrap_or_default()),
            ),
            (_, Some(silent)) => (
                503,
                "text/plain",
                format!(
                    "stalled: the run loop made no progress for {} s (limit {} s)\n",
                    silent.as_secs(),
                    status.stall_limit().as_secs()
                ),
            ),
            _ => (200, "text/plain", "ok\n".into()),
        },
        "/readyz" => match s.state {
            WorkerState::Running | WorkerState::Degraded => (200, "text/plain", "ready\n".into()),
            other => (503, "text/plain", format!("{other:?}\n").to_lowercase()),
        },
        "/status" => (
            200,
            "application/json",
            serde_json::to_string_pretty(&s).expect("status serializes"),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /status, /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn healthz_fails_when_the_running_loop_stops_making_steps() {
        let status = StatusHandle::new("q");
        status.set_stall_limit(Duration::from_millis(50));
        status.set_state(WorkerState::Running);
        assert_eq!(respond("/healthz", &status).0, 200);
        std::thread::sleep(Duration::from_millis(120));
        let (code, _, body) = respond("/healthz", &status);
        assert_eq!(code, 503, "{body}");
        assert!(body.starts_with("stalled"), "{body}");
        status.beat();
        assert_eq!(respond("/healthz", &status).0, 200);
        // Silence is expected when the loop is not running (recovering, stopped).
        status.set_state(WorkerState::Stopped);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(respond("/healthz", &status).0, 200);
    }
}
