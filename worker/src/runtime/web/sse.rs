//! `/events`: one Server-Sent Events connection per page, on its
//! connection's thread (see `http::server`), so a page never holds up
//! another request (nor, via [`super::WebView`], the pipeline).
//!
//! Invariants: the thread only ever waits on its page's channel or on its
//! socket, whose writes time out (`http::server::IO_TIMEOUT`); it ends when
//! the page goes, when the publisher drops a page that fell behind, or when
//! a write fails (a keepalive comment every `KEEPALIVE` finds a page that
//! went quietly), and its client slot goes with it.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::{ClientSlot, WebView};
use crate::runtime::http::server::{Request, Response};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a page waits before reconnecting after the stream ends.
const RETRY_MS: u32 = 1000;

/// Takes over `req` for the event stream (or answers 503 when the page
/// limit is reached); returns when the stream ends.
pub fn serve_events(req: Request, web: &WebView) {
    match web.subscribe() {
        Ok((slot, rx)) => stream(req, slot, rx),
        Err(e) => {
            req.respond(Response::text(503, format!("{e}\n")).with_header("Retry-After", "5"))
        }
    }
}

/// Writes the response head, then each message as it comes.
fn stream(req: Request, _slot: ClientSlot, rx: Receiver<Arc<str>>) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
         Cache-Control: no-store\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n\
         X-Accel-Buffering: no\r\n\r\nretry: {RETRY_MS}\n\n"
    );
    let Ok(mut out) = req.into_stream(&head) else {
        return;
    };
    loop {
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
