//! Server-sent events as `GET /v1/watch` sends them: a small incremental
//! parser of the `text/event-stream` format (fields `event`, `data`, `id`;
//! comments and `retry` ignored; an empty line ends an event), and the
//! decoding of a watch's `data`.

use base64::Engine;
use serde_json::Value;

use super::check::{Change, WatchedEvent};

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty: `message`).
    pub event: String,
    /// `data:` lines, joined by `\n`.
    pub data: String,
    /// `id:`.
    pub id: Option<String>,
}

/// Turns bytes as they arrive into events.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The event being read.
    current: SseEvent,
    /// Whether the event being read has a field yet.
    started: bool,
    /// The longest line accepted; a longer one is an error.
    max_line: usize,
}

impl SseParser {
    /// A parser that refuses lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            ..Self::default()
        }
    }

    /// Feeds `bytes`; returns the events they complete.
    ///
    /// # Errors
    ///
    /// A line longer than the limit, or not UTF-8.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                if self.line.len() > self.max_line {
                    return Err(format!(
                        "an event-stream line longer than {} bytes",
                        self.max_line
                    ));
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line)
                .map_err(|_| "an event-stream line that is not UTF-8".to_string())?;
            if let Some(e) = self.line_done(&line) {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let done = std::mem::take(&mut self.current);
            return std::mem::take(&mut self.started).then_some(done);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.started && !self.current.data.is_empty() {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
            }
            "id" => self.current.id = Some(value.to_owned()),
            _ => return None,
        }
        self.started = true;
        None
    }
}

/// Bytes of `obj[name]`, or of `obj[name_base64]` decoded.
fn bytes_of(obj: &Value, name: &str) -> Result<Vec<u8>, String> {
    if let Some(s) = obj.get(name).and_then(Value::as_str) {
        return Ok(s.as_bytes().to_vec());
    }
    let b64 = format!("{name}_base64");
    match obj.get(&b64).and_then(Value::as_str) {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| format!("{b64} is not base64")),
        None => Err(format!("no {name}")),
    }
}

/// The revision and changes of a change event's `data`
/// (`{"revision":R,"events":[{"type":"put"|"delete","kv":{…}}]}`).
///
/// # Errors
///
/// When it is not that.
pub fn changes_of(data: &str) -> Result<(u64, Vec<WatchedEvent>), String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("bad JSON ({e}): {data}"))?;
    let revision = v
        .get("revision")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no revision: {data}"))?;
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no events: {data}"))?;
    let mut out = Vec::new();
    for e in events {
        let kv = e
            .get("kv")
            .ok_or_else(|| format!("an event without kv: {data}"))?;
        let key = bytes_of(kv, "key").map_err(|m| format!("{m}: {data}"))?;
        let change = match e.get("type").and_then(Value::as_str) {
            Some("put") => Change::Put(bytes_of(kv, "value").map_err(|m| format!("{m}: {data}"))?),
            Some("delete") => Change::Delete,
            _ => return Err(format!("an event of no known type: {data}")),
        };
        out.push(WatchedEvent { key, change });
    }
    Ok((revision, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_put_back_together() {
        let text = ": keep-alive\n\nid: 7\ndata: {\"a\":1}\n\nevent: progress\r\nid: 9\r\ndata: x\r\ndata: y\r\n\r\n";
        for cut in 0..text.len() {
            let mut p = SseParser::new(1024);
            let mut got = p.feed(&text.as_bytes()[..cut]).unwrap();
            got.extend(p.feed(&text.as_bytes()[cut..]).unwrap());
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        event: String::new(),
                        data: "{\"a\":1}".into(),
                        id: Some("7".into())
                    },
                    SseEvent {
                        event: "progress".into(),
                        data: "x\ny".into(),
                        id: Some("9".into())
                    },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_overlong_line_is_an_error() {
        let mut p = SseParser::new(8);
        assert!(p.feed(b"data: 0123456789").is_err());
    }

    #[test]
    fn change_data_decodes_puts_deletes_and_base64() {
        let (rev, events) = changes_of(
            r#"{"revision":9,"events":[{"type":"put","kv":{"key":"a","value_base64":"/w=="}},{"type":"delete","kv":{"key_base64":"Yg=="}}]}"#,
        )
        .unwrap();
        assert_eq!(rev, 9);
        assert_eq!(
            events,
            vec![
                WatchedEvent {
                    key: b"a".to_vec(),
                    change: Change::Put(vec![0xff])
                },
                WatchedEvent {
                    key: b"b".to_vec(),
                    change: Change::Delete
                },
            ]
        );
        for bad in [
            "",
            "{}",
            r#"{"revision":1}"#,
            r#"{"revision":1,"events":[{"type":"x","kv":{"key":"a"}}]}"#,
        ] {
            assert!(changes_of(bad).is_err(), "{bad}");
        }
    }
}
