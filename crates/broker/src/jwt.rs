//! NATS JSON Web Tokens (v2), as nats-server reads them in decentralized
//! (operator) mode: `base64url(header).base64url(claims).base64url(sig)`,
//! signed with the issuer's nkey (ed25519). Only what the host mints is
//! here: account claims for its subscribers and user claims for their one
//! user, plus the operator and account claims the tests' harness needs.
//!
//! Limits are always written explicitly: nats-server reads a missing or
//! `0` limit as zero, `-1` as unlimited.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::Digest;

/// Why a token could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The issuer's key could not sign the token.
    #[error("signing: {0}")]
    Sign(String),
    /// An nkey seed did not decode, or a key pair has no seed.
    #[error("a NATS key: {0}")]
    Key(String),
    /// A token to read is not `header.claims.signature` with base64url
    /// JSON claims.
    #[error("not a NATS JWT: {0}")]
    Malformed(&'static str),
}

/// A token for `subject` (a public key) named `name`, with the `nats`
/// section given, signed by `issuer`.
pub fn encode(
    subject: &str,
    name: &str,
    nats: Value,
    issuer: &nkeys::KeyPair,
) -> Result<String, JwtError> {
    let mut claims = json!({
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    // nats-server does not check the id; it tells versions apart, so it
    // hashes everything (two edits in one second differ).
    let digest = sha2::Sha256::digest(claims.to_string().as_bytes());
    claims["jti"] = Value::String(hex::encode_upper(digest));
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The claims of a token, unverified (to read the host's own credentials).
pub fn claims(token: &str) -> Result<Value, JwtError> {
    let body = token
        .split('.')
        .nth(1)
        .ok_or(JwtError::Malformed("no claims"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| JwtError::Malformed("claims are not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("claims are not JSON"))
}

/// A key pair from its seed (`S...`).
pub fn key_from_seed(seed: &str) -> Result<nkeys::KeyPair, JwtError> {
    nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| JwtError::Key(e.to_string()))
}

/// The seed of a key pair.
pub fn seed_of(key: &nkeys::KeyPair) -> Result<String, JwtError> {
    key.seed().map_err(|e| JwtError::Key(e.to_string()))
}

/// A credentials file's text: the user's token and seed, as NATS clients
/// read it.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// Limits of an account without JetStream: `conn` connections,
/// `subs` subscriptions, `payload` bytes per published message.
pub fn account_limits(conn: i64, subs: i64, payload: i64) -> Value {
    json!({
        "subs": subs, "data": -1, "payload": payload, "imports": -1, "exports": 0,
        "wildcards": true, "conn": conn, "leaf": 0,
    })
}

/// `nats` section of a user allowed to publish `publish` and subscribe to
/// `subscribe`.
pub fn user(publish: &[String], subscribe: &[String]) -> Value {
    json!({
        "type": "user", "version": 2,
        "pub": { "allow": publish },
        "sub": { "allow": subscribe },
        "subs": -1, "data": -1, "payload": -1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_signed_by_its_issuer_and_reads_back() {
        let issuer = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let token = encode(
            &user.public_key(),
            "u",
            super::user(&["a.b".into()], &["_INBOX_x.>".into()]),
            &issuer,
        )
        .expect("signed");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url");
        let signed = format!("{}.{}", parts[0], parts[1]);
        issuer
            .verify(signed.as_bytes(), &signature)
            .expect("the issuer's signature");
        assert!(
            nkeys::KeyPair::new_account()
                .verify(signed.as_bytes(), &signature)
                .is_err(),
            "no one else's"
        );
        let claims = claims(&token).expect("claims");
        assert_eq!(claims["iss"], issuer.public_key());
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["nats"]["pub"]["allow"][0], "a.b");
        assert_eq!(claims["jti"].as_str().map(str::len), Some(64));
        let seed = seed_of(&user).expect("seed");
        assert_eq!(
            key_from_seed(&seed).expect("key").public_key(),
            user.public_key()
        );
        assert!(creds(&token, &seed).contains(&token));
    }
}
