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
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

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

/// Reads one line of at most `max` bytes (not counting the line ending).
/// Memory use is bounded by `max` whatever the peer sends.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // EOF: a last line without its ending still counts.
            if buf.is_empty() && !too_long {
                return Ok(Line::Closed);
            }
            break;
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if !too_long {
                    if buf.len() + i > max + 1 {
                        too_long = true;
                    } else {
                        buf.extend_from_slice(&available[..i]);
                    }
                }
                reader.consume(i + 1);
                break;
            }
            None => {
                let n = available.len();
                if !too_long {
                    if buf.len() + n > max + 1 {
                        too_long = true;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(available);
                    }
                }
                reader.consume(n);
            }
        }
    }
    if too_long {
        buf.clear();
        return Ok(Line::TooLong);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if buf.len() > max {
        buf.clear();
        return Ok(Line::TooLong);
    }
    match std::str::from_utf8(buf) {
        Ok(s) if !s.contains('\0') => Ok(Line::Text(s.to_owned())),
        _ => Ok(Line::NotText),
    }
}

/// A data line as sent: with the extra `.` when it needs one.
pub fn stuff(line: &str) -> Cow<'_, str> {
    match line.as_bytes().first() {
        Some(b'.') | Some(b'0'..=b'9') => Cow::Owned(format!(".{line}")),
        _ => Cow::Borrowed(line),
    }
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

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, max, &mut buf).await.expect("read");
            let closed = line == Line::Closed;
            out.push(line);
            if closed {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn lines_are_bounded_and_checked() {
        let got = lines(b"NOOP\r\nabcdefghij\r\nQUIT\nx\xff\r\nlast", 8).await;
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
        assert_eq!(
            lines(b"12345678\r\n", 8).await[0],
            Line::Text("12345678".into())
        );
        assert_eq!(lines(b"123456789\r\n", 8).await[0], Line::TooLong);
        assert_eq!(lines(b"a\0b\n", 8).await[0], Line::NotText);
    }

    #[test]
    fn stuffing_keeps_data_apart_from_markers() {
        for line in [".", "..", "220 OK", "1", "{\"a\":1}", "flow=x", ""] {
            let sent = stuff(line);
            assert!(!is_end(&sent), "{line:?} would end a block");
            assert!(
                crate::fnap::Reply::parse(&sent).is_none(),
                "{line:?} would look like a reply"
            );
            assert_eq!(unstuff(&sent), line);
        }
        assert_eq!(
            key_value("config.expr=a = b"),
            Some(("config.expr", "a = b"))
        );
        assert_eq!(key_value("=x"), None);
    }
}
