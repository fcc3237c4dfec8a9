//! Server-Sent Events, read from bytes: the one parser of the crate. The watch stream
//! ([`super::Watch`]) is built on it, and so is anything that must see the events raw (the
//! contract tests look at names and ids themselves).

/// One event as the stream sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; `"message"` when the event named none.
    pub event: String,
    /// The last `id:` the stream sent, at this event or before (the standard's "last event ID").
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Turns a byte stream into Server-Sent Events as the HTML standard reads them: lines end in
/// LF, CRLF or CR; `:` starts a comment (keep-alives); a blank line ends an event; an event
/// without data is dropped; several `data:` lines are joined with `\n`. Chunks may split lines
/// (and UTF-8 characters) anywhere.
///
/// Lines are found with `memchr` and read in place: only a line split between two chunks is
/// copied, and a `data:` line is copied once, into the event's data. A client following thousands
/// of streams (`gm bench watch`) spends its time here: the byte-at-a-time scan with a `String` per
/// line this replaced took about a quarter of that client's CPU.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of a line the last chunk did not finish.
    pending: Vec<u8>,
    /// The last byte seen ended a line with a CR: a LF right after it ends no second line.
    after_cr: bool,
    event: String,
    /// The `data:` lines so far, joined with `\n`; `None` before the first.
    data: Option<String>,
    last_id: Option<String>,
}

impl SseParser {
    /// Feeds `chunk`; returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.pending.is_empty() {
            let read = self.lines(chunk, 0, &mut events);
            self.pending.extend_from_slice(&chunk[read..]);
        } else {
            let mut bytes = std::mem::take(&mut self.pending);
            let scan_from = bytes.len();
            bytes.extend_from_slice(chunk);
            let read = self.lines(&bytes, scan_from, &mut events);
            bytes.drain(..read);
            self.pending = bytes;
        }
        events
    }

    /// Reads the whole lines of `bytes`, whose first `scan_from` bytes hold no line end, and
    /// returns how many bytes they took.
    fn lines(&mut self, bytes: &[u8], scan_from: usize, events: &mut Vec<SseEvent>) -> usize {
        let mut start = 0;
        // A CR ended the last line and nothing was left over, so `bytes` starts after it.
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                start = 1;
            }
        }
        let mut at = scan_from.max(start);
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &bytes[at..]) {
            let end = at + offset;
            self.line(&bytes[start..end], events);
            start = end + 1;
            if bytes[end] == b'\r' {
                match bytes.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            at = start;
        }
        start
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if let Some(data) = self.data.take() {
                let event = if event.is_empty() { "message".to_owned() } else { event };
                events.push(SseEvent { event, id: self.last_id.clone(), data });
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        // A `:` is never part of a multi-byte UTF-8 character, so splitting the bytes splits
        // the text the same way.
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        // `from_utf8` checks a word at a time; `from_utf8_lossy` walks the bytes one by one, so it
        // only repairs what the first found wrong.
        let value = match std::str::from_utf8(value) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, chunks: &[&str]) -> Vec<SseEvent> {
        chunks.iter().flat_map(|c| parser.push(c.as_bytes())).collect()
    }

    fn view(id: &str, data: &str) -> SseEvent {
        SseEvent { event: "view".into(), id: Some(id.into()), data: data.into() }
    }

    fn message(data: &str) -> SseEvent {
        SseEvent { event: "message".into(), id: None, data: data.into() }
    }

    #[test]
    fn events_end_at_a_blank_line() {
        let mut p = SseParser::default();
        let got = events(&mut p, &["event: view\nid: 7\ndata: {\"a\":1}\n\n", "event: view\nid: 8\ndata: x\n\n"]);
        assert_eq!(got, vec![view("7", "{\"a\":1}"), view("8", "x")]);
    }

    #[test]
    fn an_event_waits_for_its_blank_line() {
        let mut p = SseParser::default();
        assert_eq!(events(&mut p, &["event: view\nid: 7\ndata: x\n"]), vec![]);
        assert_eq!(events(&mut p, &["\n"]), vec![view("7", "x")]);
    }

    #[test]
    fn chunks_split_anywhere() {
        let text = "event: view\r\nid: 9\r\ndata: {\"id\":\"é\"}\r\n\r\n";
        for cut in 1..text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            let mut p = SseParser::default();
            let mut got = p.push(a);
            got.extend(p.push(b));
            assert_eq!(got, vec![view("9", "{\"id\":\"é\"}")], "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = ": hi\r\n\r\nevent: view\r\nid: 3\r\ndata: a\r\ndata: b\r\n\r\n";
        let mut p = SseParser::default();
        let got: Vec<SseEvent> = text.as_bytes().iter().flat_map(|b| p.push(std::slice::from_ref(b))).collect();
        assert_eq!(got, vec![view("3", "a\nb")]);
    }

    #[test]
    fn line_ends_mix() {
        let mut p = SseParser::default();
        // LF, CRLF and lone CR each end a line, also a CRLF split between two chunks.
        let got = events(&mut p, &["data: a\r", "\ndata: b\rdata: c\n\r\n", "data: d\r\r"]);
        assert_eq!(got, vec![message("a\nb\nc"), message("d")]);
    }

    #[test]
    fn a_cr_that_ends_a_chunk_ends_its_line_whatever_comes_next() {
        let mut p = SseParser::default();
        let got = events(&mut p, &["data: a\r", "data: b\r", "\r", "\ndata: c\r", "", "\n\r\n"]);
        // `b\r` then `\r`: the second CR is a blank line; the LF after it is part of that CRLF.
        assert_eq!(got, vec![message("a\nb"), message("c")]);
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut p = SseParser::default();
        let got: Vec<SseEvent> = [&b"data: a\xff"[..], b"\xe2\x82", b"\n\n"].iter().flat_map(|c| p.push(c)).collect();
        assert_eq!(got, vec![message("a\u{fffd}\u{fffd}")]);
    }

    #[test]
    fn data_lines_join_with_newlines() {
        let mut p = SseParser::default();
        let got = events(&mut p, &["event: view\ndata: {\"group\":\ndata:  \"g\"}\ndata:\n\n"]);
        // Only the first space after the colon is stripped; an empty `data:` adds an empty line.
        assert_eq!(got, vec![SseEvent { event: "view".into(), id: None, data: "{\"group\":\n \"g\"}\n".into() }]);
    }

    #[test]
    fn comments_and_empty_events_are_skipped() {
        let mut p = SseParser::default();
        let got = events(&mut p, &[":\n\n", ": keep-alive\n\n", "event: view\n\n", "data: a\r\rdata:b\ndata\n\n"]);
        // Lone CRs end lines too; `data:b` has no space to strip; a bare `data` adds an empty line.
        assert_eq!(got, vec![message("a"), message("b\n")]);
    }

    #[test]
    fn a_comment_between_fields_is_ignored() {
        let mut p = SseParser::default();
        let got = events(&mut p, &["event: view\n: ping\nid: 4\n:\ndata: x\n\n"]);
        assert_eq!(got, vec![view("4", "x")]);
    }

    #[test]
    fn the_last_id_carries_over() {
        let mut p = SseParser::default();
        let got = events(&mut p, &["id: 3\ndata: a\n\n", "data: b\n\n"]);
        assert_eq!(got[1].id.as_deref(), Some("3"));
    }

    #[test]
    fn unknown_fields_and_ids_with_nul_are_ignored() {
        let mut p = SseParser::default();
        let got = events(&mut p, &["id: 1\nretry: 10\nfoo: bar\nid: a\0b\ndata: x\n\n"]);
        assert_eq!(got, vec![SseEvent { event: "message".into(), id: Some("1".into()), data: "x".into() }]);
    }
}
