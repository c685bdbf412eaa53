//! A Server-Sent Events reader over a real HTTP response (the WHATWG
//! parsing rules: `field: value` lines, `:` comments, a blank line ends an
//! event), for the streaming tests.

use std::time::Duration;

use serde_json::Value;

use super::{within, BOUND};

/// One event as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:`, if the event had one.
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// `data` parsed as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// Whether this event ends a stream.
    pub fn is_final(&self) -> bool {
        matches!(
            self.event.as_str(),
            "result" | "failed" | "cancelled" | "accepted"
        )
    }
}

/// An open event stream.
pub struct SseReader {
    /// The answer's status.
    pub status: u16,
    /// The answer's headers.
    pub headers: reqwest::header::HeaderMap,
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
    done: bool,
}

impl SseReader {
    /// Sends `rb` with `Accept: text/event-stream` and returns once the
    /// head has arrived.
    pub async fn open(rb: reqwest::RequestBuilder) -> SseReader {
        let resp = within(BOUND, "event stream head", async {
            rb.header("accept", "text/event-stream")
                .send()
                .await
                .expect("send request")
        })
        .await;
        SseReader {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            resp,
            buf: Vec::new(),
            comments: 0,
            done: false,
        }
    }

    /// A header of the answer (`""` when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The next event, waiting up to `d`; `None` when the stream ended.
    pub async fn next_within(&mut self, d: Duration) -> Option<SseEvent> {
        within(d, "next event", self.next_event()).await
    }

    /// The next event, waiting up to [`BOUND`]; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(BOUND).await
    }

    /// Every event up to and including the final one (bounded).
    pub async fn until_final(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let last = e.is_final();
            out.push(e);
            if last {
                break;
            }
        }
        out
    }

    /// Reads the rest of the stream; asserts it ends (bounded) with no more events.
    pub async fn assert_ends(&mut self) {
        if let Some(e) = self.next().await {
            panic!("an event after the final one: {e:?}");
        }
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        let (mut event, mut id, mut data): (Option<String>, Option<String>, Option<String>) =
            (None, None, None);
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Some(SseEvent {
                        event: event.take().unwrap_or_else(|| "message".into()),
                        id: id.take(),
                        data,
                    });
                }
                event = None;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => event = Some(value),
                "id" => id = Some(value),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => data = Some(value),
                },
                _ => {}
            }
        }
    }

    /// One line without its ending (`\n`, `\r\n` or `\r`); `None` at the end.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
                let mut rest = self.buf.split_off(at + 1);
                let ending = self.buf.pop();
                if ending == Some(b'\r') && rest.first() == Some(&b'\n') {
                    rest.remove(0);
                }
                let line = String::from_utf8(std::mem::replace(&mut self.buf, rest))
                    .expect("UTF-8 stream");
                return Some(line);
            }
            if self.done {
                return None;
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) | Err(_) => self.done = true,
            }
        }
    }
}
