//! Binding, accepting and admitting connections.

use super::*;

pub(super) struct Shared {
    pub(super) ctx: ServerContext,
    pub(super) acceptor: Option<TlsAcceptor>,
    /// Open sessions, in all and per client address.
    pub(super) admission: Mutex<Admission>,
}

/// Counts a session for its address while alive.
pub(super) struct SessionSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Ok(mut admission) = self.shared.admission.lock() {
            admission.release(self.ip);
        }
    }
}

impl Shared {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, Reply> {
        let mut admission = self
            .admission
            .lock()
            .map_err(|_| Reply::new(Code::Closing, "server state poisoned"))?;
        admission.admit(ip).map_err(|refusal| refusal.reply())?;
        Ok(SessionSlot {
            shared: self.clone(),
            ip,
        })
    }

    /// The state machine's view of a new connection from `peer`.
    fn session_config(&self, peer: SocketAddr, implicit_tls: bool) -> SessionConfig {
        let config = &self.ctx.config;
        SessionConfig {
            fqdn: self.ctx.fqdn.clone(),
            limits: config.limits(),
            tls: implicit_tls,
            starttls: self.acceptor.is_some(),
            // PLAIN is accepted (and offered) in clear from trusted networks.
            plain_in_clear: config
                .plain_auth_from
                .iter()
                .any(|net| net.contains(&peer.ip())),
            anonymous: config.anonymous,
        }
    }
}

pub(super) async fn accept(shared: Arc<Shared>, listener: TcpListener, implicit_tls: bool) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, keep serving.
                tracing::warn!("FNAP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let slot = match shared.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(reply) => {
                    let mut socket = socket;
                    let line = format!("{reply}\r\n");
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        socket.write_all(line.as_bytes()),
                    )
                    .await;
                    return;
                }
            };
            let config = shared.session_config(peer, implicit_tls);
            let stream: Stream = if implicit_tls {
                let Some(acceptor) = shared.acceptor.clone() else {
                    return;
                };
                let handshake = tokio::time::timeout(
                    config.limits.tls_handshake_timeout(),
                    acceptor.accept(socket),
                )
                .await;
                match handshake {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                Box::new(socket)
            };
            let driver = Driver::new(shared.clone(), peer, config);
            if let Err(e) = driver.run(stream).await {
                tracing::debug!(%peer, "FNAP session ended: {e}");
            }
            drop(slot);
        });
    }
}
