//! FNAP replies: a three-digit code, a space, a human text.
//!
//! The draft's proof of concept answers every success with `220`; flowd
//! keeps that and uses SMTP's scheme for the rest: `4xx` is a temporary
//! failure (retrying later may work), `5xx` a permanent one (the same
//! command will fail again). See `docs/fnap.md`.

use std::fmt;

/// A reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 220: success (greeting, `OK`, `DATA`, `Authenticated`, `Bye`).
    Ok,
    /// 421: the server closes the connection (limits, shutdown, idle).
    Closing,
    /// 450: temporary failure (the broker is unreachable, ...).
    TryLater,
    /// 454: TLS is not available right now.
    TlsUnavailable,
    /// 500: the line is not a command (unknown verb, too long, not text).
    Syntax,
    /// 501: a known command with bad arguments.
    Arguments,
    /// 502: a known command this host does not implement.
    NotImplemented,
    /// 503: a command out of sequence (STARTTLS twice, AUTHENTICATE twice).
    Sequence,
    /// 530: authenticate first.
    AuthRequired,
    /// 534: the mechanism needs TLS on this connection.
    EncryptionRequired,
    /// 535: authentication failed.
    AuthFailed,
    /// 550: no such flow, namespace, processor, subscription or account.
    NotFound,
    /// 552: a size limit was exceeded.
    TooLarge,
    /// 553: it already exists.
    Exists,
    /// 554: not permitted for this account.
    Forbidden,
    /// 555: the request is well-formed but cannot be done (invalid
    /// component, namespace not empty, ...).
    Invalid,
}

impl Code {
    pub fn number(self) -> u16 {
        match self {
            Code::Ok => 220,
            Code::Closing => 421,
            Code::TryLater => 450,
            Code::TlsUnavailable => 454,
            Code::Syntax => 500,
            Code::Arguments => 501,
            Code::NotImplemented => 502,
            Code::Sequence => 503,
            Code::AuthRequired => 530,
            Code::EncryptionRequired => 534,
            Code::AuthFailed => 535,
            Code::NotFound => 550,
            Code::TooLarge => 552,
            Code::Exists => 553,
            Code::Forbidden => 554,
            Code::Invalid => 555,
        }
    }

    pub fn from_number(n: u16) -> Option<Code> {
        ALL.iter().copied().find(|c| c.number() == n)
    }

    pub fn is_success(self) -> bool {
        self == Code::Ok
    }
}

const ALL: &[Code] = &[
    Code::Ok,
    Code::Closing,
    Code::TryLater,
    Code::TlsUnavailable,
    Code::Syntax,
    Code::Arguments,
    Code::NotImplemented,
    Code::Sequence,
    Code::AuthRequired,
    Code::EncryptionRequired,
    Code::AuthFailed,
    Code::NotFound,
    Code::TooLarge,
    Code::Exists,
    Code::Forbidden,
    Code::Invalid,
];

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn new(code: Code, text: impl Into<String>) -> Reply {
        let text: String = text.into();
        // A reply is one line: fold any line break a message carried.
        let text = if text.contains(['\r', '\n']) {
            text.replace(['\r', '\n'], " ")
        } else {
            text
        };
        Reply {
            code: code.number(),
            text,
        }
    }

    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::new(Code::Ok, text)
    }

    pub fn code(&self) -> Option<Code> {
        Code::from_number(self.code)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Parses `NNN text` (or `NNN` alone); `None` if the line is not a reply.
    pub fn parse(line: &str) -> Option<Reply> {
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        if bytes.len() > 3 && bytes[3] != b' ' {
            return None;
        }
        let code = line[..3].parse().ok()?;
        Some(Reply {
            code,
            text: line.get(4..).unwrap_or_default().trim_end().to_owned(),
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let r = Reply::ok("OK time.flows.unix.ar");
        assert_eq!(r.to_string(), "220 OK time.flows.unix.ar");
        assert_eq!(Reply::parse("220 OK time.flows.unix.ar"), Some(r));
        assert_eq!(
            Reply::parse("220 DATA ").map(|r| r.text),
            Some("DATA".into())
        );
        assert_eq!(
            Reply::parse("550").map(|r| r.code()),
            Some(Some(Code::NotFound))
        );
        assert_eq!(Reply::parse("2200 x"), None);
        assert_eq!(Reply::parse("flow=x"), None);
        assert_eq!(
            Reply::new(Code::Invalid, "a\nb").to_string(),
            "555 a b",
            "a reply never spans lines"
        );
        for code in ALL {
            assert_eq!(Code::from_number(code.number()), Some(*code));
        }
    }
}
