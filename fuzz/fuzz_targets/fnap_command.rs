//! Arbitrary bytes through the FNAP protocol crate (`crates/fnap`):
//!
//! 1. as one command line: the parser returns a command or a syntax error,
//!    never panics; what parses re-encodes to a line that parses to the
//!    same command; replies and data-block stuffing round-trip; the typed
//!    data blocks and outcomes decode without panicking and what decodes
//!    re-encodes to the same value;
//! 2. as a byte stream cut into arbitrary chunks: the `LineDecoder` never
//!    yields a line longer than its maximum, and yields the same lines
//!    whatever the chunking;
//! 3. as a client talking to a `Session` driven by a simulated host: the
//!    state machine never panics, never refuses an input a well-behaved
//!    host gives, and everything it sends is well framed.
#![no_main]

use flowd_fnap::command;
use flowd_fnap::data::{
    ComponentPut, KeyValues, Outcome, ProcessorUpdated, ReadDone, SequencedEvent, SubscribeReply,
    WriteFailed, Written,
};
use flowd_fnap::framing::{self, Line, LineDecoder};
use flowd_fnap::sasl::PlainCredentials;
use flowd_fnap::session::{Action, Input, Limits, Response, Session, SessionConfig, State};
use flowd_fnap::{Code, Command, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        one_line(text);
        blocks(text);
    }
    decoder(data);
    session(data);
});

fn one_line(line: &str) {
    if let Ok(parsed) = command::parse(line) {
        // What parses is a command a session knows how to gate...
        let _ = parsed.allowed_before_auth();
        // ...and has a canonical line that parses back to it.
        let encoded = parsed.to_string();
        assert_eq!(
            command::parse(&encoded),
            Ok(parsed.clone()),
            "{line:?} -> {encoded:?}"
        );
        assert_eq!(parsed.try_encode(), Ok(encoded));
    }
    if let Some(reply) = Reply::parse(line) {
        assert_eq!(Reply::parse(&reply.to_string()), Some(reply.clone()));
        assert_eq!(reply.code, Code::from_number(reply.code.number()));
        if let Ok(w) = Written::from_reply(&reply) {
            assert_eq!(Written::from_reply(&w.to_reply()), Ok(w));
        }
        if let Ok(f) = WriteFailed::from_reply(&reply) {
            assert_eq!(
                WriteFailed::from_reply(&f.to_reply()).map(|g| g.stored),
                Ok(f.stored)
            );
        }
        if let Ok(r) = ReadDone::from_reply(&reply) {
            assert_eq!(ReadDone::from_reply(&r.to_reply()), Ok(r));
        }
        if let Ok(c) = ComponentPut::from_reply(&reply) {
            assert_eq!(ComponentPut::from_reply(&c.to_reply()), Ok(c));
        }
        if let Ok(p) = ProcessorUpdated::from_reply(&reply) {
            assert_eq!(ProcessorUpdated::from_reply(&p.to_reply()), Ok(p));
        }
    }
    let stuffed = framing::stuff(line);
    assert!(!framing::is_end(&stuffed));
    assert!(Reply::parse(&stuffed).is_none());
    assert_eq!(framing::unstuff(&stuffed), line);
    if let Ok(e) = SequencedEvent::decode(line) {
        // Leading zeros of the sequence are not kept: compare values.
        assert_eq!(SequencedEvent::decode(&e.encode()), Ok(e));
    }
    let _ = PlainCredentials::decode(line);
}

fn blocks(text: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    if let Ok(kv) = KeyValues::decode(&lines) {
        assert_eq!(KeyValues::decode(&kv.encode()), Ok(kv));
    }
    let _ = KeyValues::decode_request(&lines);
    if let Ok(reply) = SubscribeReply::decode(&lines) {
        assert_eq!(SubscribeReply::decode(&reply.encode()), Ok(reply));
    }
}

/// Feeds `input` to a decoder in the chunks `sizes` cycles through.
fn decode(input: &[u8], max: usize, sizes: &[u8]) -> Vec<Line> {
    let mut decoder = LineDecoder::new(max);
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let size = usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(255)).max(1);
        i += 1;
        let mut chunk = &rest[..size.min(rest.len())];
        rest = &rest[chunk.len()..];
        while !chunk.is_empty() {
            let (used, line) = decoder.feed(chunk);
            assert!(used > 0 && used <= chunk.len());
            chunk = &chunk[used..];
            out.extend(line);
        }
    }
    out.push(decoder.finish());
    out
}

fn decoder(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(first % 64);
    let (sizes, input) = rest.split_at(rest.len().min(4));
    let chunked = decode(input, max, sizes);
    for line in &chunked {
        if let Line::Text(t) = line {
            assert!(t.len() <= max, "a line of {} bytes, max {max}", t.len());
            assert!(!t.contains('\n') && !t.contains('\0'));
        }
    }
    assert_eq!(
        chunked,
        decode(input, max, &[255]),
        "chunking changed the lines"
    );
}

/// A tiny deterministic generator for the simulated host's choices.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn reply(choices: &mut Choices) -> Reply {
    match choices.pick(4) {
        0 => Reply::new(Code::Forbidden, "no"),
        1 => Reply::new(Code::TryLater, "later\r\nreally"),
        _ => Reply::ok("OK"),
    }
}

/// The simulated host's answer to a dispatched command.
fn respond(command: &Command, choices: &mut Choices) -> Response {
    match (command, choices.pick(3)) {
        (Command::WriteFlow(_), 0 | 1) => Response::Stream,
        (
            Command::PutComponent | Command::CreateProcessor(_) | Command::UpdateProcessor(_),
            0 | 1,
        ) => Response::Collect,
        (Command::ReadFlow { .. }, _) => Response::Sent {
            success: choices.pick(2) == 0,
        },
        (_, 0) => Response::Data {
            lines: vec!["1".into(), ".".into(), "a\nb".into(), "220 OK".into()],
            end: reply(choices),
        },
        _ => Response::Reply(reply(choices)),
    }
}

fn check_sent(action: &Action) {
    let Some(wire) = action.wire() else {
        return;
    };
    assert!(wire.ends_with("\r\n"));
    let lines: Vec<&str> = wire[..wire.len() - 2].split("\r\n").collect();
    assert!(lines.iter().all(|l| !l.contains(['\r', '\n'])), "{wire:?}");
    let last = lines.len() - 1;
    for (i, line) in lines.iter().enumerate() {
        let is_reply = Reply::parse(line).is_some();
        assert_eq!(is_reply, i == 0 || i == last, "{wire:?}");
    }
}

fn session(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_line: 64,
        max_commands_before_auth: u32::from(flags >> 5),
        max_auth_failures: 1 + u32::from((flags >> 3) & 3),
        max_errors: u32::from(flags & 7),
        max_component_bytes: 30,
        max_request_bytes: 40,
        ..Limits::default()
    };
    let config = SessionConfig {
        tls: flags & 0x10 != 0,
        starttls: flags & 0x08 != 0,
        plain_in_clear: flags & 0x04 != 0,
        anonymous: flags & 0x02 != 0,
        limits,
        ..SessionConfig::new("fuzz.example")
    };
    let mut choices = Choices(
        data.iter().fold(0x9e37_79b9_7f4a_7c15, |h: u64, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1,
    );
    let mut lines = decode(rest, config.limits.max_line, &[7, 13, 64]).into_iter();
    let mut session: Session<u64> = Session::new(config);
    let mut next = Some(Input::Start);
    let mut steps = 0usize;
    loop {
        steps += 1;
        assert!(steps < 100_000, "the session does not progress");
        let input = match next.take() {
            Some(input) => input,
            None if session.state().wants_line() => match lines.next() {
                Some(line) => Input::Line(line),
                None => Input::IdleTimeout,
            },
            None => panic!("no input for state {}", session.state()),
        };
        // Now and then, an input out of order: refused, nothing changes.
        if choices.pick(16) == 0 && session.state() == State::Accepting {
            let before = (session.state(), session.errors());
            assert!(session.handle(Input::AuthFailed).is_err());
            assert!(session.handle(Input::Response(Response::Collect)).is_err());
            assert_eq!(before, (session.state(), session.errors()));
        }
        let actions = session.handle(input).expect("a well-behaved host's input");
        let mut closed = false;
        for action in &actions {
            check_sent(action);
            assert!(!closed, "nothing after Close: {actions:?}");
            match action {
                Action::Dispatch(command) => {
                    next = Some(Input::Response(respond(command, &mut choices)))
                }
                Action::Authenticate(_) => {
                    next = Some(match choices.pick(3) {
                        0 => Input::Authenticated(choices.next()),
                        1 => Input::AuthFailed,
                        _ => Input::AuthUnavailable,
                    })
                }
                Action::StartTls => {
                    next = Some(if choices.pick(4) == 0 {
                        Input::TlsFailed
                    } else {
                        Input::TlsEstablished
                    })
                }
                Action::Data { .. } | Action::DataEnd => {
                    next = Some(Input::Response(Response::Reply(reply(&mut choices))))
                }
                Action::Close => closed = true,
                Action::Reply(_)
                | Action::DataBlock { .. }
                | Action::DataLine { .. }
                | Action::Wait(_) => {}
            }
        }
        if closed {
            assert_eq!(session.state(), State::Closed);
            assert!(session.handle(Input::IdleTimeout).is_err());
            return;
        }
        if next == Some(Input::TlsEstablished) {
            assert_eq!(session.state(), State::StartingTls);
        }
    }
}
