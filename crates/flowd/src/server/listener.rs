//! Binding, accepting and admitting connections.

use super::*;

pub(super) struct Shared {
    pub(super) ctx: ServerContext,
    pub(super) acceptor: Option<TlsAcceptor>,
    /// Open sessions per client address.
    pub(super) sessions: Mutex<HashMap<IpAddr, usize>>,
}

/// Counts a session for its address while alive.
pub(super) struct SessionSlot {
    pub(super) shared: Arc<Shared>,
    pub(super) ip: IpAddr,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.shared.sessions.lock()
            && let Some(n) = sessions.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                sessions.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, &'static str> {
        let mut sessions = self.sessions.lock().map_err(|_| "server state poisoned")?;
        let total: usize = sessions.values().sum();
        if total >= self.ctx.config.max_sessions {
            return Err("too many sessions, try again later");
        }
        let n = sessions.entry(ip).or_insert(0);
        if *n >= self.ctx.config.max_sessions_per_address {
            return Err("too many sessions from your address");
        }
        *n += 1;
        Ok(SessionSlot {
            shared: self.clone(),
            ip,
        })
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
                Err(why) => {
                    let mut socket = socket;
                    let line = format!("{}\r\n", Reply::new(Code::Closing, why));
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        socket.write_all(line.as_bytes()),
                    )
                    .await;
                    return;
                }
            };
            let stream: Stream = if implicit_tls {
                let Some(acceptor) = shared.acceptor.clone() else {
                    return;
                };
                let handshake = tokio::time::timeout(
                    Duration::from_secs(shared.ctx.config.idle_timeout_secs.clamp(1, 30)),
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
            let mut session = Session {
                shared: shared.clone(),
                peer,
                tls: implicit_tls,
                principal: None,
                before_auth: 0,
                auth_failures: 0,
                errors: 0,
                buf: Vec::new(),
            };
            if let Err(e) = session.run(stream).await {
                tracing::debug!(%peer, "FNAP session ended: {e}");
            }
            drop(slot);
        });
    }
}
