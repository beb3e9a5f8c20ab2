//! FNAP replies: a three-digit code, a space, a human text.
//!
//! The draft's proof of concept answers every success with `220`; flowd
//! keeps that and uses SMTP's scheme for the rest: `4xx` is a temporary
//! failure (retrying later may work), `5xx` a permanent one (the same
//! command will fail again). A receiver classifies any code by its first
//! digit, including codes it does not know ([`Code::Unknown`]). See
//! `docs/fnap.md`, section 4.

use std::fmt;
use std::hash::{Hash, Hasher};

/// A reply code.
///
/// Every number has exactly one `Code`: the named variants for the codes
/// flowd sends, [`Code::Unknown`] for any other. [`Code::from_number`] is
/// total, and equality and hashing go by the number, so
/// `Code::Unknown(550) == Code::NotFound` (build codes with
/// [`Code::from_number`] to get the named variant; `match` patterns see the
/// variant, not the number).
#[derive(Debug, Clone, Copy)]
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
    /// Any other number (a code of a newer or another server). It is
    /// classified by its first digit like the others.
    Unknown(u16),
}

impl Code {
    /// Every code with a name, in increasing order of number.
    pub const KNOWN: [Code; 16] = [
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

    /// The code's number (`220`, `550`, ...).
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
            Code::Unknown(n) => n,
        }
    }

    /// The code of a number: its named variant, or [`Code::Unknown`].
    /// Total: every `u16` has a code (a reply line holds `000` to `999`).
    pub fn from_number(n: u16) -> Code {
        Code::KNOWN
            .iter()
            .copied()
            .find(|c| c.number() == n)
            .unwrap_or(Code::Unknown(n))
    }

    /// `2xx`: success.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.number())
    }

    /// `4xx`: a temporary failure; the same command may succeed later
    /// (`421` included: the server closed, a new session may work).
    pub fn is_transient(self) -> bool {
        (400..500).contains(&self.number())
    }

    /// `5xx`: a permanent failure; the same command will fail again.
    pub fn is_permanent(self) -> bool {
        (500..600).contains(&self.number())
    }
}

impl PartialEq for Code {
    fn eq(&self, other: &Code) -> bool {
        self.number() == other.number()
    }
}

impl Eq for Code {}

impl Hash for Code {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.number().hash(state);
    }
}

/// `reply.code == 550` compares the number.
impl PartialEq<u16> for Code {
    fn eq(&self, other: &u16) -> bool {
        self.number() == *other
    }
}

impl From<u16> for Code {
    fn from(n: u16) -> Code {
        Code::from_number(n)
    }
}

impl From<Code> for u16 {
    fn from(code: Code) -> u16 {
        code.number()
    }
}

/// The three digits (`220`, `550`, `007` for a number below 100).
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.number())
    }
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply code.
    pub code: Code,
    /// The text after the code, without line breaks (may be empty).
    pub text: String,
}

impl Reply {
    /// A reply; any line break in `text` becomes a space, so a reply is
    /// always one line.
    pub fn new(code: Code, text: impl Into<String>) -> Reply {
        let text: String = text.into();
        // A reply is one line: fold any line break a message carried.
        let text = if text.contains(['\r', '\n']) {
            text.replace(['\r', '\n'], " ")
        } else {
            text
        };
        Reply { code, text }
    }

    /// A `220` reply.
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::new(Code::Ok, text)
    }

    /// The code, always `Some` (codes are total since [`Code::Unknown`];
    /// kept for callers written when they were not). Read the `code` field
    /// instead.
    pub fn code(&self) -> Option<Code> {
        Some(self.code)
    }

    /// `2xx`.
    pub fn is_success(&self) -> bool {
        self.code.is_success()
    }

    /// `4xx`: a temporary failure.
    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }

    /// `5xx`: a permanent failure.
    pub fn is_permanent(&self) -> bool {
        self.code.is_permanent()
    }

    /// Parses `NNN text` (or `NNN` alone); `None` if the line is not a reply.
    /// Trailing white space of the text is dropped (the draft's proof of
    /// concept sends `220 DATA `).
    pub fn parse(line: &str) -> Option<Reply> {
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        if bytes.len() > 3 && bytes[3] != b' ' {
            return None;
        }
        let number: u16 = line[..3].parse().ok()?;
        Some(Reply {
            code: Code::from_number(number),
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
        assert_eq!(Reply::parse("550").map(|r| r.code), Some(Code::NotFound));
        assert_eq!(
            Reply::parse("550").map(|r| r.to_string()),
            Some("550".into())
        );
        assert_eq!(Reply::parse("2200 x"), None);
        assert_eq!(Reply::parse("flow=x"), None);
        assert_eq!(Reply::parse("22"), None);
        assert_eq!(Reply::parse("22x"), None);
        assert_eq!(
            Reply::new(Code::Invalid, "a\nb").to_string(),
            "555 a b",
            "a reply never spans lines"
        );
        for code in Code::KNOWN {
            assert_eq!(Code::from_number(code.number()), code);
            assert!(!matches!(
                Code::from_number(code.number()),
                Code::Unknown(_)
            ));
        }
    }

    #[test]
    fn codes_are_total_and_classified_by_their_first_digit() {
        for n in 100..=999u16 {
            let code = Code::from_number(n);
            assert_eq!(code.number(), n);
            assert_eq!(code, n);
            assert_eq!(u16::from(code), n);
            assert_eq!(code.to_string(), n.to_string());
            assert_eq!(code.is_success(), n / 100 == 2, "{n}");
            assert_eq!(code.is_transient(), n / 100 == 4, "{n}");
            assert_eq!(code.is_permanent(), n / 100 == 5, "{n}");
            let line = format!("{n} some text");
            let reply = Reply::parse(&line).expect("a reply");
            assert_eq!(reply.code, code);
            assert_eq!(reply.to_string(), line, "Display is byte-identical");
        }
        assert!(matches!(Code::from_number(299), Code::Unknown(299)));
        // What callers wrote when the code was a number still reads.
        let reply = Reply::parse("550 no such flow").expect("a reply");
        assert!(reply.code == 550 && reply.code != 554);
        assert_eq!(reply.code, 550);
        assert!(Code::Unknown(250).is_success());
        assert!(Code::Unknown(471).is_transient());
        assert!(Code::Unknown(599).is_permanent());
        assert!(!Code::Unknown(150).is_success());
        assert_eq!(Code::Unknown(550), Code::NotFound, "equal by number");
        let mut set = std::collections::HashSet::new();
        set.insert(Code::Unknown(550));
        assert!(set.contains(&Code::NotFound), "hashed by number");
        assert_eq!(Code::from_number(7).to_string(), "007");
        assert_eq!(
            Reply::parse("007 x").map(|r| r.to_string()),
            Some("007 x".into()),
            "a code below 100 keeps its three digits"
        );
    }

    #[test]
    fn replies_are_classified() {
        let ok = Reply::ok("OK");
        assert!(ok.is_success() && !ok.is_transient() && !ok.is_permanent());
        let later = Reply::new(Code::TryLater, "broker request failed");
        assert!(later.is_transient() && !later.is_success() && !later.is_permanent());
        let no = Reply::new(Code::Forbidden, "no");
        assert!(no.is_permanent());
        assert_eq!(no.code(), Some(Code::Forbidden));
        assert!(Reply::parse("299 new").is_some_and(|r| r.is_success()));
        assert!(Reply::parse("499 new").is_some_and(|r| r.is_transient()));
        assert!(Reply::parse("599 new").is_some_and(|r| r.is_permanent()));
    }
}
