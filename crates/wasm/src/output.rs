//! What a guest says: its `log` calls and the lines it writes to stdout and
//! stderr, kept for the host to collect after each call.
//!
//! Bounded on every side, since a guest can write without end: a line is
//! cut at [`MAX_LINE`] bytes, at most [`MAX_PENDING`] lines wait to be
//! collected (later ones are counted as dropped), and a write never fails,
//! so a chatty guest is never made to trap by its own output (a fixed-size
//! pipe would fail its writes once full, and Rust's `println!` panics on
//! that).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of one line kept (the rest is cut, marked with `…`).
pub const MAX_LINE: usize = 2048;
/// Lines kept between two collections.
pub const MAX_PENDING: usize = 256;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `log` call at this level.
    Log(crate::wit::log::Level),
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl Source {
    /// The name logs show (`info`, `stdout`, ...).
    pub fn as_str(self) -> &'static str {
        use crate::wit::log::Level;
        match self {
            Source::Log(Level::Trace) => "trace",
            Source::Log(Level::Debug) => "debug",
            Source::Log(Level::Info) => "info",
            Source::Log(Level::Warn) => "warn",
            Source::Log(Level::Error) => "error",
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// One line a guest said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Where it came from.
    pub source: Source,
    /// The line, without its line break.
    pub text: String,
}

/// What a guest said since the last collection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Said {
    /// The lines, in the order said.
    pub lines: Vec<Line>,
    /// Lines not kept because [`MAX_PENDING`] were waiting.
    pub dropped: u64,
}

#[derive(Default)]
struct Buffer {
    lines: VecDeque<Line>,
    dropped: u64,
    /// The unfinished last line of stdout and of stderr.
    partial: [Vec<u8>; 2],
    /// The most recent stderr lines, kept across collections to explain a
    /// trap (a Rust panic writes `panicked at file:line:` then the message;
    /// a Go panic `panic: message` then its goroutine's frames).
    recent_stderr: VecDeque<String>,
}

/// Stderr lines kept to explain a trap: enough for a Go panic's message
/// and its first frames.
const RECENT_STDERR: usize = 32;

impl Buffer {
    fn push(&mut self, source: Source, text: String) {
        if source == Source::Stderr {
            if self.recent_stderr.len() == RECENT_STDERR {
                self.recent_stderr.pop_front();
            }
            self.recent_stderr.push_back(text.clone());
        }
        if self.lines.len() >= MAX_PENDING {
            self.dropped += 1;
        } else {
            self.lines.push_back(Line { source, text });
        }
    }

    fn write(&mut self, stream: usize, mut bytes: &[u8]) {
        let source = if stream == 0 {
            Source::Stdout
        } else {
            Source::Stderr
        };
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            extend_bounded(&mut line, &bytes[..end]);
            bytes = &bytes[end + 1..];
            self.push(source, text_of(&line));
        }
        extend_bounded(&mut self.partial[stream], bytes);
    }
}

/// Appends up to [`MAX_LINE`] bytes in all (one more marks a cut).
fn extend_bounded(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = (MAX_LINE + 1).saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn text_of(line: &[u8]) -> String {
    let cut = line.len() > MAX_LINE;
    let line = &line[..line.len().min(MAX_LINE)];
    let mut text = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned();
    if cut {
        text.push('…');
    }
    text
}

/// The shared buffer of one processor's instances (an instance discarded
/// after a trap leaves its last words here).
#[derive(Clone, Default)]
pub(crate) struct GuestOutput(Arc<Mutex<Buffer>>);

impl GuestOutput {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding the lock leaves plain data behind.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log(&self, level: crate::wit::log::Level, message: &str) {
        let mut text = String::new();
        let cut = message.len() > MAX_LINE;
        let mut end = message.len().min(MAX_LINE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        text.push_str(&message[..end]);
        if cut {
            text.push('…');
        }
        self.lock().push(Source::Log(level), text);
    }

    /// Takes what was said since the last call, with unfinished lines.
    pub(crate) fn take(&self) -> Said {
        let mut buffer = self.lock();
        for stream in 0..2 {
            if !buffer.partial[stream].is_empty() {
                buffer.write(stream, b"\n");
            }
        }
        Said {
            lines: buffer.lines.drain(..).collect(),
            dropped: std::mem::take(&mut buffer.dropped),
        }
    }

    /// What the guest last wrote to stderr, as a trap's explanation: a
    /// Rust panic's message with the `file:line` it names.
    pub(crate) fn trap_context(&self) -> Option<String> {
        let mut buffer = self.lock();
        if !buffer.partial[1].is_empty() {
            buffer.write(1, b"\n");
        }
        let recent = &buffer.recent_stderr;
        if let Some(go) = go_panic(recent) {
            return Some(go);
        }
        let message = recent
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.contains("RUST_BACKTRACE"))?
            .trim()
            .to_owned();
        let place = recent.iter().rev().find_map(|l| {
            let rest = l.split("panicked at ").nth(1)?;
            Some(rest.trim().trim_end_matches(':').to_owned())
        });
        Some(match place {
            Some(place) if !message.contains("panicked at ") => format!("{message} (at {place})"),
            _ => message,
        })
    }

    /// Forgets the recent stderr lines (a new call starts).
    pub(crate) fn clear_recent(&self) {
        self.lock().recent_stderr.clear();
    }

    pub(crate) fn stdout(&self) -> Stream {
        Stream {
            output: self.clone(),
            stream: 0,
        }
    }

    pub(crate) fn stderr(&self) -> Stream {
        Stream {
            output: self.clone(),
            stream: 1,
        }
    }
}

/// The guest's stdout or stderr: writes always succeed.
#[derive(Clone)]
pub(crate) struct Stream {
    output: GuestOutput,
    stream: usize,
}

impl IsTerminal for Stream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Stream {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.output.lock().write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.lock().write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_cut_and_bounded() {
        let out = GuestOutput::default();
        let mut s = out.stdout();
        OutputStream::write(&mut s, bytes::Bytes::from_static(b"one\ntw")).expect("write");
        OutputStream::write(&mut s, bytes::Bytes::from_static(b"o\nthree")).expect("write");
        let said = out.take();
        let texts: Vec<&str> = said.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);

        let long = vec![b'x'; MAX_LINE * 3];
        OutputStream::write(&mut s, bytes::Bytes::from(long)).expect("write");
        let said = out.take();
        assert_eq!(said.lines.len(), 1);
        assert_eq!(said.lines[0].text.chars().count(), MAX_LINE + 1);

        for i in 0..MAX_PENDING + 10 {
            OutputStream::write(&mut s, bytes::Bytes::from(format!("{i}\n"))).expect("write");
        }
        let said = out.take();
        assert_eq!(said.lines.len(), MAX_PENDING);
        assert_eq!(said.dropped, 10);
        assert_eq!(out.take(), Said::default());
    }

    #[test]
    fn a_panic_is_explained_with_its_place() {
        let out = GuestOutput::default();
        let mut s = out.stderr();
        OutputStream::write(
            &mut s,
            bytes::Bytes::from_static(
                b"\nthread '<unnamed>' panicked at src/lib.rs:47:30:\nboom on e-7\nnote: run with `RUST_BACKTRACE=1`\n",
            ),
        )
        .expect("write");
        assert_eq!(
            out.trap_context().as_deref(),
            Some("boom on e-7 (at src/lib.rs:47:30)")
        );
        out.clear_recent();
        assert_eq!(out.trap_context(), None);
    }
}

/// A Go panic or fatal error in the guest's stderr: its message, and the
/// `file:line` of the first frame outside the Go runtime.
fn go_panic(recent: &VecDeque<String>) -> Option<String> {
    let at = recent
        .iter()
        .rposition(|l| l.starts_with("panic: ") || l.starts_with("fatal error: "))?;
    let message = recent[at].trim();
    let place = recent
        .iter()
        .skip(at + 1)
        .filter(|l| l.starts_with('\t') && l.contains(".go:"))
        .map(|l| l.trim().split(" +0x").next().unwrap_or_default())
        .find(|l| !l.starts_with("runtime/") && !l.contains("/src/runtime/"));
    Some(match place {
        Some(place) => format!("{message} (at {place})"),
        None => message.to_owned(),
    })
}

#[cfg(test)]
mod go_tests {
    use super::*;

    #[test]
    fn a_go_panic_names_its_message_and_first_own_frame() {
        let stderr: VecDeque<String> = [
            "some output",
            "panic: runtime error: index out of range [3] with length 3",
            "",
            "goroutine 1 [running]:",
            "runtime.gopanic(...)",
            "\truntime/panic.go:800 +0x12",
            "main.(*dedupe).Process(0x1, 0x2)",
            "\tdedupe/main.go:95 +0x3",
            "github.com/flowd-project/flowd/sdk/go/flow/bridge.exportProcess(...)",
            "\tgithub.com/flowd-project/flowd/sdk/go/flow/bridge/bridge.go:50 +0x9",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            go_panic(&stderr).as_deref(),
            Some(
                "panic: runtime error: index out of range [3] with length 3 (at dedupe/main.go:95)"
            )
        );
        let plain: VecDeque<String> = ["thread panicked at src/lib.rs:3:5:", "boom"]
            .map(String::from)
            .into();
        assert_eq!(go_panic(&plain), None);
    }
}
