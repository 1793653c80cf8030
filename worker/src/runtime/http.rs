//! The worker's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the
//! process is alive and its run loop makes progress), `/readyz` (it is processing) and `/status` (JSON, for
//! the operator and for humans).

use std::net::SocketAddr;
use std::sync::Arc;

use super::status::{StatusHandle, WorkerState, render_metrics};

/// Serves the endpoint on a background thread until the process exits.
/// Returns the bound address (useful with port 0).
pub fn serve(addr: SocketAddr, status: StatusHandle) -> anyhow::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the status endpoint: {e}"))?;
    let server = Arc::new(server);
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("status endpoint is not on an IP socket"))?;
    std::thread::Builder::new()
        .name("status-http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
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
