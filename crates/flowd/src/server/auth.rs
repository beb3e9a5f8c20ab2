//! Checking credentials, and `CAPABILITIES`.

use super::*;

impl Driver {
    /// Checks what `AUTHENTICATE` carried; the state machine answers.
    pub(super) async fn authenticate(&mut self, credentials: Credentials) -> Input<Principal> {
        match credentials {
            // The state machine refuses ANONYMOUS where it is disabled.
            Credentials::Anonymous { .. } => Input::Authenticated(Principal::Anonymous),
            Credentials::Plain(plain) => {
                let ctx = &self.shared.ctx;
                match ctx
                    .agent
                    .login(&ctx.state_dir, self.peer.ip(), &plain.user, &plain.password)
                    .await
                {
                    Ok(Some(identity)) => {
                        tracing::debug!(peer = %self.peer, user = identity.user, "FNAP user authenticated");
                        Input::Authenticated(Principal::User(identity))
                    }
                    Ok(None) => Input::AuthFailed,
                    Err(e) => {
                        tracing::error!("accounts: {e}");
                        Input::AuthUnavailable
                    }
                }
            }
        }
    }

    /// `CAPABILITIES`: the session's own lines (FNAP version, AUTH, TLS,
    /// limits) around what this host serves.
    pub(super) fn capabilities(&self) -> Response {
        let host = Capabilities {
            processors: ["bridge", "collector", "distributor", "signal"]
                .map(str::to_owned)
                .to_vec(),
            subscribe: vec!["bridge".to_owned()],
            read: vec!["FOLLOW".to_owned()],
            brokers: vec![BrokerOffer {
                kind: "nats-jetstream".to_owned(),
                urls: self.shared.ctx.broker_urls.clone(),
            }],
            ..Capabilities::default()
        };
        Response::Data {
            lines: self.session.offer(host).lines(),
            end: Reply::ok("OK"),
        }
    }
}
