//! The SASL responses of `AUTHENTICATE`: PLAIN (RFC 4616), as FNAP sends
//! it, the standard base64 encoding (with `=` padding) of
//! `authzid NUL authcid NUL password`. See `docs/fnap.md`, section 9.1.

use base64::Engine as _;
use std::fmt;

/// The cancel response: a client sends `*` instead of a response to give
/// up the authentication (`501 authentication cancelled`).
pub const CANCEL: &str = "*";

/// A decoded PLAIN response: the account and its password. The
/// authorisation identity, when the client gave one, equals the account.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The account name (authentication identity).
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why a PLAIN response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*`.
    #[error("authentication cancelled")]
    Cancelled,
    /// Not base64 of UTF-8 text with exactly two NUL separators, or an
    /// authorisation identity that is neither empty nor the account.
    #[error("not a SASL PLAIN response (base64 of \\0user\\0password)")]
    Malformed,
}

impl PlainCredentials {
    /// Decodes a response line (surrounding white space ignored).
    pub fn decode(response: &str) -> Result<PlainCredentials, SaslError> {
        let response = response.trim();
        if response == CANCEL {
            return Err(SaslError::Cancelled);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response)
            .map_err(|_| SaslError::Malformed)?;
        let text = String::from_utf8(bytes).map_err(|_| SaslError::Malformed)?;
        let mut parts = text.split('\0');
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::Malformed);
        };
        if !authz.is_empty() && authz != user {
            return Err(SaslError::Malformed);
        }
        Ok(PlainCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The response line, with an empty authorisation identity (as flowd's
    /// client sends it).
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", self.user, self.password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses_decode_as_the_draft_sends_them() {
        let test = PlainCredentials::decode("AHRlc3QAdGVzdA==").expect("the draft's");
        assert_eq!(test.user, "test");
        assert_eq!(test.password, "test");
        assert_eq!(test.encode(), "AHRlc3QAdGVzdA==");
        assert_eq!(
            PlainCredentials::decode(" AGFsaWNlAHMzY3JldA== ").map(|c| c.user),
            Ok("alice".to_owned())
        );
        // authzid equal to the account is accepted, another one is not.
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(PlainCredentials::decode(&b64("bob\0bob\0pw")).is_ok());
        assert_eq!(
            PlainCredentials::decode(&b64("eve\0bob\0pw")),
            Err(SaslError::Malformed)
        );
        for bad in ["", "!!", &b64("bob\0pw"), &b64("\0a\0b\0c")] {
            assert_eq!(
                PlainCredentials::decode(bad),
                Err(SaslError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            PlainCredentials::decode(
                &base64::engine::general_purpose::STANDARD.encode(b"\0a\0\xff")
            ),
            Err(SaslError::Malformed),
            "not UTF-8"
        );
        assert_eq!(PlainCredentials::decode(" * "), Err(SaslError::Cancelled));
        let alice = PlainCredentials::decode("AGFsaWNlAHMzY3JldA==").expect("alice");
        assert!(!format!("{alice:?}").contains("s3cret"), "password hidden");
    }
}
