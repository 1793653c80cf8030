//! The connection layer of the worker's HTTP endpoint: accepts, reads one
//! request head, hands it to the routes, answers with `Connection: close`.
//!
//! Why not a pooled server: the web view's event streams stay open for as
//! long as a page does. A pool that reads keep-alive connections (as
//! tiny_http's does) keeps a thread per open stream and can queue a new
//! connection behind those threads until some page closes, so a page could
//! wait forever. Here every connection has a thread of its own, one
//! request, and a cap ([`MAX_CONNECTIONS`]) answered with 503 beyond it.
//!
//! Invariants: a connection's reads and writes time out (`IO_TIMEOUT`), so
//! a client that sends or reads nothing cannot hold its thread; a request
//! head larger than `MAX_HEAD` or not HTTP is answered 4xx and closed; only
//! the head is read (the endpoint takes no request bodies).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections served at once: every web view page (`web::MAX_CLIENTS`)
/// plus as many short requests (probes, scrapes, page files).
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends or reads nothing this long is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read: ample for a browser's GET.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed per request; a request with more is refused (431).
const MAX_HEADERS: usize = 64;

/// One request head: what the routes need to answer.
pub struct Request {
    method: String,
    url: String,
    stream: TcpStream,
}

impl Request {
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or("/")
    }

    /// Writes `resp` (no body for `HEAD`) and closes the connection.
    pub fn respond(mut self, resp: Response) {
        let head_only = self.method == "HEAD";
        let _ = write_response(&mut self.stream, &resp, head_only);
        close(&self.stream);
    }

    /// Writes `head` (status line and headers, ending in a blank line) and
    /// hands over the socket, for a response that streams until closed.
    pub fn into_stream(mut self, head: &str) -> std::io::Result<TcpStream> {
        self.stream.write_all(head.as_bytes())?;
        self.stream.flush()?;
        Ok(self.stream)
    }
}

/// A whole response: status, headers, body (`Content-Length` is added).
pub struct Response {
    code: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    pub fn new(code: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            code,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn text(code: u16, body: impl Into<String>) -> Self {
        Self::new(code, "text/plain; charset=utf-8", body.into())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Accepts on `listener` until the process exits, on a thread of its own;
/// each connection's request goes to `handler` on the connection's thread.
pub fn spawn(
    listener: TcpListener,
    handler: Arc<dyn Fn(Request) + Send + Sync>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || accept_loop(listener, handler))?;
    Ok(())
}

fn accept_loop(listener: TcpListener, handler: Arc<dyn Fn(Request) + Send + Sync>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, a reset before accept: keep serving.
                tracing::warn!("status endpoint: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let Some(slot) = ConnectionSlot::take(&open) else {
            refuse(stream, 503, "too many connections; retry shortly\n");
            continue;
        };
        let handler = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, &*handler);
            });
        if let Err(e) = spawned {
            tracing::warn!("status endpoint: no thread for a connection: {e}");
        }
    }
}

/// One of the `MAX_CONNECTIONS`, given back when its thread ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Self> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnectionSlot(Arc::clone(open)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(mut stream: TcpStream, handler: &(dyn Fn(Request) + Send + Sync)) {
    match read_head(&mut stream) {
        Ok((method, url)) => handler(Request {
            method,
            url,
            stream,
        }),
        Err(HeadError::Closed) => {}
        Err(HeadError::Refused(code, why)) => refuse(stream, code, why),
    }
}

/// Why a request head was not read.
#[derive(Debug, PartialEq)]
enum HeadError {
    /// The client went (or never sent a byte): nothing to answer.
    Closed,
    /// Answered with this status and reason.
    Refused(u16, &'static str),
}

/// Reads up to the end of the head and parses its request line.
fn read_head(stream: &mut impl Read) -> Result<(String, String), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(if buf.is_empty() {
                    HeadError::Closed
                } else {
                    HeadError::Refused(408, "request head not sent in time\n")
                });
            }
            Err(_) => return Err(HeadError::Closed),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = parse_head(&buf)? {
            return Ok(parsed);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::Refused(431, "request head too large\n"));
        }
    }
}

/// The method and target of a complete head; `None` while it is partial.
fn parse_head(buf: &[u8]) -> Result<Option<(String, String)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Ok(Some((
            req.method.unwrap_or("GET").to_string(),
            req.path.unwrap_or("/").to_string(),
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(HeadError::Refused(431, "too many request headers\n"))
        }
        Err(_) => Err(HeadError::Refused(400, "not an HTTP/1.x request\n")),
    }
}

fn refuse(mut stream: TcpStream, code: u16, why: &str) {
    let resp = Response::text(code, why).with_header("Retry-After", "5");
    let _ = write_response(&mut stream, &resp, false);
    close(&stream);
}

fn write_response(out: &mut impl Write, resp: &Response, head_only: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.code, reason(resp.code));
    for (name, value) in &resp.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    out.write_all(head.as_bytes())?;
    if !head_only {
        out.write_all(&resp.body)?;
    }
    out.flush()
}

/// Ends the response; the client sees the end of the body.
fn close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_complete_and_garbage_is_refused() {
        assert_eq!(parse_head(b"GET /status HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(
            parse_head(b"GET /status?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(("GET".into(), "/status?x=1".into())))
        );
        assert_eq!(
            parse_head(b"\x16\x03\x01 TLS hello\r\n\r\n"),
            Err(HeadError::Refused(400, "not an HTTP/1.x request\n"))
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&many), Err(HeadError::Refused(431, _))));
    }

    #[test]
    fn a_head_that_never_ends_is_refused_not_buffered_forever() {
        let endless = std::iter::repeat_n(b'a', MAX_HEAD * 2).collect::<Vec<u8>>();
        let mut input = b"GET /".to_vec();
        input.extend_from_slice(&endless);
        assert!(matches!(
            read_head(&mut input.as_slice()),
            Err(HeadError::Refused(431, _))
        ));
        assert_eq!(read_head(&mut &b""[..]), Err(HeadError::Closed));
    }

    #[test]
    fn a_response_has_its_length_and_closes_and_head_has_no_body() {
        let resp = Response::text(404, "nope\n").with_header("X-A", "b");
        let mut out = Vec::new();
        write_response(&mut out, &resp, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("X-A: b\r\n") && text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\nnope\n"), "{text}");
        let mut out = Vec::new();
        write_response(&mut out, &resp, true).unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with("\r\n\r\n"));
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_and_slots_come_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let slots: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| ConnectionSlot::take(&open).unwrap())
            .collect();
        assert!(ConnectionSlot::take(&open).is_none());
        drop(slots);
        assert_eq!(open.load(Ordering::SeqCst), 0);
        assert!(ConnectionSlot::take(&open).is_some());
    }
}
