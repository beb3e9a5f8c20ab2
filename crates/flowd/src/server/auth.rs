//! `AUTHENTICATE` and `CAPABILITIES`.

use super::*;

impl Session {
    /// Whether PLAIN is accepted in clear from this client's address.
    pub(super) fn plain_trusted(&self) -> bool {
        self.config()
            .plain_auth_from
            .iter()
            .any(|net| net.contains(&self.peer.ip()))
    }

    pub(super) fn capabilities(&self) -> Response {
        let mut lines = vec!["FNAP 1".to_owned()];
        // PLAIN is offered where it would be accepted: over TLS, or from a
        // trusted network.
        let mut auth = Vec::new();
        if self.tls || self.plain_trusted() {
            auth.push("PLAIN");
        }
        if self.config().anonymous {
            auth.push("ANONYMOUS");
        }
        lines.push(format!("AUTH {}", auth.join(" ")));
        if self.shared.acceptor.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.tls {
            lines.push("TLS".into());
        }
        lines.push("PROCESSORS bridge collector distributor signal".into());
        lines.push("SUBSCRIBE bridge".into());
        lines.push("READ FOLLOW".into());
        lines.push(format!(
            "BROKER nats-jetstream {}",
            self.shared.ctx.broker_urls.join(",")
        ));
        lines.push(format!("MAX-LINE {}", self.config().max_line));
        lines.push(format!(
            "MAX-COMPONENT {}",
            self.config().max_component_bytes
        ));
        Response::Data(lines, Reply::ok("OK"))
    }

    pub(super) async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        if self.principal.is_some() {
            return Ok(Response::One(Reply::new(
                Code::Sequence,
                "already authenticated",
            )));
        }
        match mechanism {
            Mechanism::Anonymous => {
                if !self.config().anonymous {
                    return Ok(Response::One(Reply::new(
                        Code::AuthFailed,
                        "anonymous access is disabled on this host",
                    )));
                }
                self.principal = Some(Principal::Anonymous);
                Ok(ok("Authenticated (anonymous: public flows, read only)"))
            }
            Mechanism::Plain => {
                if !self.tls && !self.plain_trusted() {
                    return Ok(Response::One(Reply::new(
                        Code::EncryptionRequired,
                        "PLAIN needs TLS on this connection: STARTTLS first",
                    )));
                }
                let token = match initial {
                    Some(t) => t,
                    None => {
                        send(writer, &Reply::ok("OK")).await?;
                        match self.line(reader).await? {
                            Line::Text(t) => t,
                            Line::Closed => return Err(End::Closed),
                            _ => String::new(),
                        }
                    }
                };
                let PlainCredentials { user, password } = match PlainCredentials::decode(&token) {
                    Ok(credentials) => credentials,
                    Err(e) => return Ok(Response::One(Reply::new(Code::Arguments, e.to_string()))),
                };
                let ctx = &self.shared.ctx;
                let verified = ctx.agent.login(&ctx.state_dir, &user, &password).await;
                match verified {
                    Ok(Some(identity)) => {
                        tracing::debug!(peer = %self.peer, user = identity.user, "FNAP user authenticated");
                        self.principal = Some(Principal::User(identity));
                        self.auth_failures = 0;
                        Ok(ok("Authenticated"))
                    }
                    Ok(None) => {
                        self.auth_failures += 1;
                        let delay = self
                            .config()
                            .auth_failure_delay_ms
                            .saturating_mul(1 << (self.auth_failures - 1).min(5))
                            .min(10_000);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        if self.auth_failures >= self.config().max_auth_failures {
                            return Err(End::Limit("too many failed authentications".into()));
                        }
                        Ok(Response::One(Reply::new(
                            Code::AuthFailed,
                            "authentication failed",
                        )))
                    }
                    Err(e) => {
                        tracing::error!("accounts: {e}");
                        Ok(Response::One(Reply::new(
                            Code::TryLater,
                            "accounts are unavailable",
                        )))
                    }
                }
            }
        }
    }
}
