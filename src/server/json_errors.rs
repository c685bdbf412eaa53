//! A connection's I/O, as the server sees it: hyper's own error answers
//! get a JSON body, and every read is reported to the connection's
//! deadlines ([`Activity`]). One wrapper does both, as every read and write
//! of every connection goes through it.
//!
//! hyper answers a request it cannot parse (a malformed request line or
//! header, an unsupported HTTP version, headers too large) itself, before
//! any handler runs, with a bare status and an empty body, and closes the
//! connection; it has no hook for that answer. The API promises a JSON
//! `{"error": ...}` body on every error, and `505` for an unsupported HTTP
//! version (hyper says `400`). So the connection is wrapped: the wrapper
//! keeps the request line being read, and when hyper writes one of its
//! canned answers (a 4xx head with `content-length: 0`, which jobq's own
//! handlers never send: their errors all have a body), it writes a JSON
//! answer in its place.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Activity;

/// Longest request line kept (enough to name the version of any sane one).
const LINE_MAX: usize = 256;

/// A connection whose hyper-made error answers get a JSON body, and whose
/// reads its [`Activity`] hears of.
pub struct JsonErrors<T> {
    io: T,
    /// The connection's deadlines.
    activity: Arc<Activity>,
    /// The start of the request line being read (until its newline).
    line: Vec<u8>,
    /// The line is complete (or too long to keep more of).
    line_done: bool,
    /// A rewritten answer still being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonErrors<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        JsonErrors {
            io,
            activity,
            line: Vec::new(),
            line_done: false,
            pending: None,
        }
    }

    /// Keeps the start of the request line from bytes just read.
    fn saw_read(&mut self, mut bytes: &[u8]) {
        if self.line_done {
            return;
        }
        if self.line.is_empty() {
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            let skip = bytes
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(bytes.len());
            bytes = &bytes[skip..];
        }
        let (take, done) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (bytes.len(), false),
        };
        let room = LINE_MAX - self.line.len();
        self.line.extend_from_slice(&bytes[..take.min(room)]);
        self.line_done = done || self.line.len() == LINE_MAX;
    }

    /// A response head is going out: the next bytes read start a new request.
    fn next_request(&mut self) {
        self.line.clear();
        self.line_done = false;
    }
}

/// The JSON answer replacing hyper's canned `head`, if it is one.
fn rewrite(head: &[u8], request_line: &[u8]) -> Option<Vec<u8>> {
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    if !matches!(status, b"400" | b"414" | b"431") || !contains(head, EMPTY) {
        return None;
    }
    let (status_line, error) = match status {
        b"431" => (
            "431 Request Header Fields Too Large",
            "request headers are too large".to_owned(),
        ),
        b"414" => ("414 URI Too Long", "request URI is too long".to_owned()),
        _ => match unsupported_version(request_line) {
            Some(v) => (
                "505 HTTP Version Not Supported",
                format!("HTTP version {v} is not supported; use HTTP/1.1"),
            ),
            None => ("400 Bad Request", "malformed HTTP request".to_owned()),
        },
    };
    let body = serde_json::json!({ "error": error }).to_string();
    // hyper's head: status line, headers (lower-case), blank line, no body.
    let text = std::str::from_utf8(head).ok()?;
    let headers = text.split_once("\r\n")?.1;
    let headers = headers.strip_suffix("\r\n\r\n")?;
    let mut out = format!("HTTP/1.1 {status_line}\r\n");
    for h in headers.split("\r\n") {
        if h != "content-length: 0" {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The version named by a request line `METHOD TARGET HTTP/x.y`, if it is
/// one hyper does not speak.
fn unsupported_version(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (_method, _target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/") {
        return None;
    }
    let v = &version[5..];
    let well_formed = v.len() == 3
        && v.as_bytes()[1] == b'.'
        && v.as_bytes()[0].is_ascii_digit()
        && v.as_bytes()[2].is_ascii_digit();
    (well_formed && v != "1.0" && v != "1.1").then(|| version.to_owned())
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
            if *sent == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Checks a write of `first` (all of it when `whole`): hyper's canned
    /// answer is replaced (and counted as written), a response head resets
    /// the request line.
    fn intercept(&mut self, first: &[u8], whole: bool) -> bool {
        if !first.starts_with(b"HTTP/1.") {
            return false;
        }
        if whole {
            if let Some(out) = rewrite(first, &self.line) {
                self.pending = Some((out, 0));
                return true;
            }
        }
        self.next_request();
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.on_read();
            this.saw_read(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if this.intercept(buf, true) {
            // Taken: flush and shutdown write the rest.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let Some(first) = nonempty.next() {
            let whole = nonempty.next().is_none();
            if this.intercept(first, whole) {
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANNED: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 28 Nov 2026 19:35:56 GMT\r\n\r\n";

    fn parts(out: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let has = |h: &str| head.split("\r\n").any(|l| l == h);
        assert!(has("content-type: application/json"), "{head}");
        assert!(has(&format!("content-length: {}", body.len())), "{head}");
        assert!(has("connection: close"), "{head}");
        assert!(!has("content-length: 0"), "{head}");
        (
            head.lines().next().unwrap().to_owned(),
            serde_json::from_str(body).unwrap(),
        )
    }

    #[test]
    fn a_bad_request_gets_a_json_body() {
        let (status, body) = parts(&rewrite(CANNED, b"GARBAGE").unwrap());
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert_eq!(body["error"], "malformed HTTP request");
    }

    #[test]
    fn an_unknown_version_gets_505() {
        for v in ["HTTP/3.0", "HTTP/1.2", "HTTP/2.0"] {
            let line = format!("GET /health {v}\r");
            let (status, body) = parts(&rewrite(CANNED, line.as_bytes()).unwrap());
            assert_eq!(status, "HTTP/1.1 505 HTTP Version Not Supported");
            assert!(body["error"].as_str().unwrap().contains(v));
        }
        // Not a version at all: a malformed request.
        for line in ["GET /health HTTP/one", "GET /health", "GET / HTTP/1.1 x"] {
            let (status, _) = parts(&rewrite(CANNED, line.as_bytes()).unwrap());
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{line}");
        }
    }

    #[test]
    fn jobqs_own_answers_are_left_alone() {
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n";
        assert!(rewrite(own, b"").is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite(ok, b"").is_none());
    }

    #[test]
    fn the_request_line_is_kept_across_reads() {
        let mut c = JsonErrors::new((), Activity::new());
        c.saw_read(b"\r\nGET /he");
        c.saw_read(b"alth HTTP/9.9\r\nhost: x\r\n");
        c.saw_read(b"more: y\r\n");
        assert_eq!(c.line, b"GET /health HTTP/9.9\r");
        c.next_request();
        c.saw_read(&[b'x'; 1000]);
        assert_eq!(c.line.len(), LINE_MAX);
    }
}
