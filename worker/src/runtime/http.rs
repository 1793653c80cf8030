//! The worker's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the
//! process is alive and its run loop makes progress), `/readyz` (it is processing) and `/status` (JSON, for
//! the operator and for humans); with a [`WebView`], also the live web
//! view (`/`, its files, and `/events`).
//!
//! Requests are answered one at a time on one thread, so nothing slow may
//! run on it: a web page's event stream moves to a thread of its own
//! (`web::sse`), and every connection's writes time out (`WRITE_TIMEOUT`,
//! set on the listening socket, which accepted sockets inherit), so a
//! client that stops reading cannot hold the loop for long.

use std::net::SocketAddr;
use std::sync::Arc;

use super::status::{StatusHandle, WorkerState, render_metrics};
use super::web::{self, WebView, assets};

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
    socket2::SockRef::from(&listener).set_write_timeout(Some(web::WRITE_TIMEOUT))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("cannot serve on {addr}: {e}"))?;
    let server = Arc::new(server);
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("status endpoint is not on an IP socket"))?;
    std::thread::Builder::new()
        .name("status-http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let req = match &web {
                    Some(web) => match serve_web(req, web) {
                        Some(req) => req,
                        None => continue,
                    },
                    None => req,
                };
                let (code, ctype, body) = respond(req.url(), &status);
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                    .expect("static header is valid");
                let resp = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                let _ = req.respond(resp);
            }
        })?;
    Ok(bound)
}

/// Answers the web view's paths; hands back any other request.
fn serve_web(req: tiny_http::Request, web: &WebView) -> Option<tiny_http::Request> {
    let path = req.url().split('?').next().unwrap_or("/").to_string();
    if path == "/events" {
        web::sse::serve_events(req, web);
        return None;
    }
    let Some((ctype, body)) = assets::file(&path) else {
        return Some(req);
    };
    if *req.method() != tiny_http::Method::Get && *req.method() != tiny_http::Method::Head {
        // Read-only: nothing on this endpoint takes a write.
        let _ = req.respond(
            tiny_http::Response::from_string("read-only: GET only\n")
                .with_status_code(405)
                .with_header(assets::header("Allow", "GET, HEAD")),
        );
        return None;
    }
    let mut resp =
        tiny_http::Response::from_data(body).with_header(assets::header("Content-Type", ctype));
    for h in assets::security_headers() {
        resp.add_header(h);
    }
    let _ = req.respond(resp);
    None
}

fn respond(url: &str, status: &StatusHandle) -> (u16, &'static str, String) {
    let s = status.get();
    let path = url.split('?').next().unwrap_or(url);
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
    fn accepted_connections_inherit_the_write_timeout() {
        // What keeps a client that stops reading from holding the loop:
        // Linux copies SO_SNDTIMEO from the listener to accepted sockets.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&listener)
            .set_write_timeout(Some(web::WRITE_TIMEOUT))
            .unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.write_timeout().unwrap(), Some(web::WRITE_TIMEOUT));
    }

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
