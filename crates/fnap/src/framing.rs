//! FNAP framing: CRLF-terminated lines (a bare LF is accepted), with a
//! length limit, and data blocks.
//!
//! A data block is a run of lines after a reply or a command:
//!
//! - from the server, it follows `220 DATA` and ends with the next reply
//!   line (`220 OK ...` or an error), exactly as in the draft's transcripts;
//! - from the client (`WRITE FLOW`, `PUT COMPONENT`, `CREATE PROCESSOR`), it
//!   ends with a line holding a single `.`, as in SMTP.
//!
//! To keep both unambiguous, a data line that starts with `.` or with an
//! ASCII digit is sent with one extra `.` in front ("dot-stuffing"), and the
//! receiver removes one leading `.` from every data line. So no data line can
//! look like a reply (`NNN ...`) or like the end marker (`.`).

use std::borrow::Cow;

/// What reading one line gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line of UTF-8 text, without its line ending.
    Text(String),
    /// A line longer than the limit; it was read to its end and dropped.
    TooLong,
    /// A line that is not UTF-8 text; dropped.
    NotText,
    /// The peer closed the connection.
    Closed,
}

/// A sans-I/O line decoder: feed it bytes as they arrive, it yields a
/// [`Line`] per line ending. Memory use is bounded by `max` whatever the
/// peer sends: the bytes of a line over the limit are dropped as they come.
#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    buf: Vec<u8>,
    too_long: bool,
}

impl LineDecoder {
    /// A decoder of lines of at most `max` bytes (not counting the ending).
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder::with_buffer(max, Vec::new())
    }

    /// Like [`LineDecoder::new`], reusing `buf`'s allocation.
    pub fn with_buffer(max: usize, mut buf: Vec<u8>) -> LineDecoder {
        buf.clear();
        LineDecoder {
            max,
            buf,
            too_long: false,
        }
    }

    /// Takes bytes from `input`: returns how many it consumed and, when they
    /// ended a line, that line. Bytes after the line ending are not
    /// consumed; feed them again.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Line>) {
        match input.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.take(&input[..i]);
                (i + 1, Some(self.line()))
            }
            None => {
                self.take(input);
                (input.len(), None)
            }
        }
    }

    /// The peer closed: the last line without its ending, or
    /// [`Line::Closed`] when nothing is pending.
    pub fn finish(&mut self) -> Line {
        if self.buf.is_empty() && !self.too_long {
            return Line::Closed;
        }
        self.line()
    }

    /// The longest line this decoder yields, in bytes (line ending not
    /// counted).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the longest line accepted (a session allows longer lines
    /// once the client has logged in). A line being read is judged by the
    /// new limit.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.too_long {
            return;
        }
        // One byte more than the limit may be a `\r`.
        if self.buf.len() + bytes.len() > self.max + 1 {
            self.too_long = true;
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn line(&mut self) -> Line {
        let too_long = std::mem::take(&mut self.too_long);
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let line = if too_long || self.buf.len() > self.max {
            Line::TooLong
        } else {
            match std::str::from_utf8(&self.buf) {
                Ok(s) if !s.contains('\0') => Line::Text(s.to_owned()),
                _ => Line::NotText,
            }
        };
        self.buf.clear();
        // A long line's allocation is not kept for the short ones that
        // follow: idle sessions hold little memory.
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf.shrink_to(SHRINK_ABOVE);
        }
        line
    }
}

/// Capacity a decoder keeps between lines.
const SHRINK_ABOVE: usize = 8 << 10;

/// Reads one line of at most `max` bytes (not counting the line ending)
/// with a [`LineDecoder`]; `buf` is reused across calls.
#[cfg(feature = "io")]
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    use tokio::io::AsyncBufReadExt;
    let mut decoder = LineDecoder::with_buffer(max, std::mem::take(buf));
    let line = loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break decoder.finish();
        }
        let (used, line) = decoder.feed(available);
        reader.consume(used);
        if let Some(line) = line {
            break line;
        }
    };
    *buf = decoder.into_buffer();
    Ok(line)
}

/// A data line as sent: with the extra `.` when it needs one.
pub fn stuff(line: &str) -> Cow<'_, str> {
    match line.as_bytes().first() {
        Some(b'.') | Some(b'0'..=b'9') => Cow::Owned(format!(".{line}")),
        _ => Cow::Borrowed(line),
    }
}

/// A value as one data line: any CR or LF becomes a space (so no value can
/// break the framing), then the line is stuffed. This is what a server
/// sends for each line of a data block.
pub fn data_line(value: &str) -> Cow<'_, str> {
    if value.contains(['\r', '\n']) {
        Cow::Owned(stuff(&value.replace(['\r', '\n'], " ")).into_owned())
    } else {
        stuff(value)
    }
}

/// A server data block on the wire: `220 DATA`, each value as a
/// [`data_line`], then the final reply, every line ending in CRLF.
pub fn encode_block<S: AsRef<str>>(lines: &[S], end: &crate::Reply) -> String {
    let mut out = String::from("220 DATA\r\n");
    for line in lines {
        out.push_str(&data_line(line.as_ref()));
        out.push_str("\r\n");
    }
    out.push_str(&end.to_string());
    out.push_str("\r\n");
    out
}

/// A received data line without its extra `.`.
pub fn unstuff(line: &str) -> &str {
    line.strip_prefix('.').unwrap_or(line)
}

/// Whether a line from the client ends its data block.
pub fn is_end(line: &str) -> bool {
    line == "."
}

/// Splits `key=value`; the value is the rest of the line (it may hold `=`
/// and spaces).
pub fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()).then_some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of 4 bytes, as a slow peer would send it.
    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut decoder = LineDecoder::new(max);
        let mut out = Vec::new();
        for chunk in input.chunks(4) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (used, line) = decoder.feed(rest);
                rest = &rest[used..];
                out.extend(line);
            }
        }
        out.push(decoder.finish());
        if out.last() != Some(&Line::Closed) {
            out.push(decoder.finish());
        }
        out
    }

    #[test]
    fn lines_are_bounded_and_checked() {
        let got = lines(b"NOOP\r\nabcdefghij\r\nQUIT\nx\xff\r\nlast", 8);
        assert_eq!(
            got,
            [
                Line::Text("NOOP".into()),
                Line::TooLong,
                Line::Text("QUIT".into()),
                Line::NotText,
                Line::Text("last".into()),
                Line::Closed
            ]
        );
        assert_eq!(lines(b"12345678\r\n", 8)[0], Line::Text("12345678".into()));
        assert_eq!(lines(b"123456789\r\n", 8)[0], Line::TooLong);
        assert_eq!(lines(b"a\0b\n", 8)[0], Line::NotText);
    }

    #[test]
    fn stuffing_keeps_data_apart_from_markers() {
        for line in [".", "..", "220 OK", "1", "{\"a\":1}", "flow=x", ""] {
            let sent = stuff(line);
            assert!(!is_end(&sent), "{line:?} would end a block");
            assert!(
                crate::Reply::parse(&sent).is_none(),
                "{line:?} would look like a reply"
            );
            assert_eq!(unstuff(&sent), line);
        }
        assert_eq!(
            key_value("config.expr=a = b"),
            Some(("config.expr", "a = b"))
        );
        assert_eq!(key_value("=x"), None);
        assert_eq!(data_line("a\r\nb"), "a  b");
        assert_eq!(data_line("1\n"), ".1 ");
        assert_eq!(data_line("flow=x"), "flow=x");
        assert_eq!(
            encode_block(&["1", "x"], &crate::Reply::ok("OK")),
            "220 DATA\r\n.1\r\nx\r\n220 OK\r\n"
        );
    }

    /// A decoder's limit can change between lines, and a long line's
    /// allocation is given back once it is read.
    #[test]
    fn limits_change_and_buffers_shrink() {
        let mut d = LineDecoder::new(8);
        assert_eq!(
            d.feed(
                b"012345678
"
            )
            .1,
            Some(Line::TooLong)
        );
        d.set_max(64 << 10);
        let long = vec![b'a'; 60 << 10];
        assert_eq!(d.feed(&long).0, long.len());
        assert_eq!(
            d.feed(
                b"
"
            )
            .1,
            Some(Line::Text("a".repeat(60 << 10)))
        );
        let buf = d.into_buffer();
        assert!(buf.capacity() <= SHRINK_ABOVE, "{}", buf.capacity());
    }

    /// Whatever the chunking, the decoder yields the same lines, and none
    /// longer than its limit.
    #[test]
    fn chunking_does_not_matter() {
        let input = b"a\r\nbb\n\r\n0123456789abc\nend\r\r\n\xc3\xa9\n\xc3\n\r";
        let whole = {
            let mut d = LineDecoder::new(6);
            let mut out = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (used, line) = d.feed(rest);
                rest = &rest[used..];
                out.extend(line);
            }
            out.push(d.finish());
            out
        };
        assert_eq!(
            whole,
            [
                Line::Text("a".into()),
                Line::Text("bb".into()),
                Line::Text("".into()),
                Line::TooLong,
                Line::Text("end\r".into()),
                Line::Text("é".into()),
                Line::NotText,
                Line::Text("".into()),
            ]
        );
        for size in 1..8 {
            let mut d = LineDecoder::new(6);
            let mut out = Vec::new();
            for chunk in input.chunks(size) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let (used, line) = d.feed(rest);
                    assert!(used > 0);
                    rest = &rest[used..];
                    out.extend(line);
                }
            }
            out.push(d.finish());
            assert_eq!(out, whole, "chunks of {size}");
            assert!(
                out.iter()
                    .all(|l| !matches!(l, Line::Text(t) if t.len() > d.max()))
            );
        }
    }
}
