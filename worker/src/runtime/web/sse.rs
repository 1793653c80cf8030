//! `/events`: one Server-Sent Events connection per page, on a thread of
//! its own, so a page never holds up the endpoint's request loop (nor, via
//! [`super::WebView`], the pipeline).
//!
//! Invariants: the thread only ever waits on its page's channel or on its
//! socket, and the socket's writes time out (`WRITE_TIMEOUT`, set on the
//! listening socket and inherited by every connection); it ends when the
//! page goes, when the publisher drops a page that fell behind, when a
//! write fails, or after `STREAM_LIFETIME`, and its client slot goes with it.
//!
//! Why streams end after a while: tiny_http reads each connection on a
//! thread of its pool, which an open event stream keeps busy, and its pool
//! can queue a burst of new connections behind busy threads (it counts a
//! woken thread as idle until it runs). A stream that ends hands its thread
//! back, so such a connection waits at most that long; the page reconnects
//! (`retry`) and gets a fresh snapshot.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::{ClientSlot, WebView};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a page waits before reconnecting after the stream ends.
const RETRY_MS: u32 = 1000;
/// An event stream ends after this long (see the module's notes).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(60);

/// Takes over `req` for the event stream (or answers 503 when the page
/// limit is reached).
pub fn serve_events(req: tiny_http::Request, web: &WebView) {
    let (slot, rx) = match web.subscribe() {
        Ok(s) => s,
        Err(e) => {
            let _ = req.respond(
                tiny_http::Response::from_string(format!("{e}\n"))
                    .with_status_code(503)
                    .with_header(super::assets::header("Retry-After", "5")),
            );
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("web-sse".into())
        .spawn(move || stream(req, slot, rx));
    if let Err(e) = spawned {
        tracing::warn!("no thread for a web view page: {e}");
    }
}

/// Writes the response head, then each message as it comes.
fn stream(req: tiny_http::Request, _slot: ClientSlot, rx: Receiver<Arc<str>>) {
    let mut out = req.into_writer();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
         Cache-Control: no-store\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n\
         X-Accel-Buffering: no\r\n\r\nretry: {RETRY_MS}\n\n"
    );
    if send(&mut out, head.as_bytes()).is_err() {
        return;
    }
    let started = std::time::Instant::now();
    while started.elapsed() < STREAM_LIFETIME {
        let frame = match rx.recv_timeout(KEEPALIVE) {
            Ok(msg) => frame(&msg),
            Err(RecvTimeoutError::Timeout) => ": keepalive\n\n".to_string(),
            // Dropped by the publisher (fell behind): the page reconnects.
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if send(&mut out, frame.as_bytes()).is_err() {
            return;
        }
    }
}

fn send(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// One SSE message: every line of `data` as a `data:` line (the feed's
/// JSON has none, but a line break must never end the message early).
pub fn frame(data: &str) -> String {
    let mut s = String::with_capacity(data.len() + 16);
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line.strip_suffix('\r').unwrap_or(line));
        s.push('\n');
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_data_lines_and_a_blank_line() {
        assert_eq!(frame("{\"a\":1}"), "data: {\"a\":1}\n\n");
        assert_eq!(frame("x\r\ny"), "data: x\ndata: y\n\n");
    }
}
