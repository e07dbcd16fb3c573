//! The smtpd listener actor: accepts connections on a socket master hands it, runs one tokio
//! task per session, applies reloaded settings to new sessions, and reports each session to
//! anvil to enforce the per-client connection count and rate limits.

use super::session::{Session, SessionInfo};
use super::settings::Settings;
use super::Backend;
use crate::anvil::AnvilClient;
use crate::config::Config;
use actix::prelude::*;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn, Instrument};

/// New settings (main.cf re-read, -o overrides applied); sessions already running keep theirs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(pub Config);

/// Stop accepting (the socket closes); sessions in progress finish on their own.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Smtpd {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

pub struct Smtpd {
    listener: Option<std::net::TcpListener>,
    settings: Arc<RwLock<Arc<Settings>>>,
    backend: Arc<dyn Backend>,
    service: String,
    anvil: AnvilClient,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Smtpd {
    /// `cfg` must already carry the service's `-o` overrides.
    pub fn new(
        listener: std::net::TcpListener,
        cfg: &Config,
        service: &str,
        backend: Arc<dyn Backend>,
    ) -> Self {
        let settings = Settings::from_config(cfg, service);
        Smtpd {
            listener: Some(listener),
            anvil: AnvilClient::local(settings.anvil_unit),
            settings: Arc::new(RwLock::new(Arc::new(settings))),
            backend,
            service: service.to_string(),
            accept: None,
        }
    }

    /// Report to this anvil (the master's, shared by every listener of the mail system)
    /// instead of the listener's own counters.
    pub fn with_anvil(mut self, anvil: AnvilClient) -> Self {
        self.anvil = anvil;
        self
    }
}

impl Actor for Smtpd {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(std_listener) = self.listener.take() else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("smtpd: cannot use the listening socket: {e}");
                ctx.stop();
                return;
            }
        };
        let settings = self.settings.clone();
        let backend = self.backend.clone();
        let anvil = self.anvil.clone();
        let service = self.service.clone();
        self.accept = Some(tokio::spawn(accept_loop(
            listener, settings, backend, anvil, service,
        )));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(h) = self.accept.take() {
            h.abort();
        }
    }
}

impl Handler<Reload> for Smtpd {
    type Result = ();

    fn handle(&mut self, msg: Reload, _: &mut Context<Self>) {
        let new = Arc::new(Settings::from_config(&msg.0, &self.service));
        if let Ok(mut s) = self.settings.write() {
            *s = new;
        }
    }
}

/// Tells anvil the session ended when it ends, however it ends.
struct AnvilGuard {
    anvil: AnvilClient,
    service: String,
    ip: IpAddr,
}

impl Drop for AnvilGuard {
    fn drop(&mut self) {
        self.anvil.disconnect(&self.service, &self.ip);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    settings: Arc<RwLock<Arc<Settings>>>,
    backend: Arc<dyn Backend>,
    anvil: AnvilClient,
    service: String,
) {
    // Runs until the actor stops and aborts it. Nothing here waits on a client: the session
    // task does the rest, so a slow or idle client never holds up the next accept.
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("smtpd: accept: {e}");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let s = match settings.read() {
            Ok(s) => s.clone(),
            Err(_) => continue,
        };
        let info = SessionInfo::new("unknown", &peer.ip().to_string(), peer.port(), &service);
        let backend = backend.clone();
        let anvil = anvil.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let ip = peer.ip();
            let reported = s.uses_anvil() && !s.limit_exempt(ip);
            let mut _guard = None;
            if reported {
                match anvil.connect(&service, &ip).await {
                    Ok((count, rate)) => {
                        _guard = Some(AnvilGuard {
                            anvil: anvil.clone(),
                            service: service.clone(),
                            ip,
                        });
                        let span = crate::log::service_span!(s.tag.clone());
                        let limit = s.connection_count_limit;
                        if limit > 0 && count as usize > limit {
                            let why = format!(
                                "Connection concurrency limit exceeded: {count} from {} for service {}",
                                info.namaddr(),
                                s.service
                            );
                            refuse(stream, &s, &info, &why).instrument(span).await;
                            return;
                        }
                        let limit = s.connection_rate_limit;
                        if limit > 0 && rate > limit {
                            let why = format!(
                                "Connection rate limit exceeded: {rate} from {} for service {}",
                                info.namaddr(),
                                s.service
                            );
                            refuse(stream, &s, &info, &why).instrument(span).await;
                            return;
                        }
                    }
                    Err(e) => {
                        let span = crate::log::service_span!(s.tag.clone());
                        span.in_scope(|| warn!("{e}; connection limits not applied"));
                    }
                }
            }
            let session = Session::new(stream, s, backend, info);
            let session = if reported {
                session.with_anvil(anvil, ip)
            } else {
                session
            };
            session.run().await;
        });
    }
}

/// Postfix's answer to one connection too many (or too fast) from the same client.
async fn refuse(mut stream: tokio::net::TcpStream, s: &Settings, info: &SessionInfo, why: &str) {
    let namaddr = info.namaddr();
    info!("connect from {namaddr}");
    warn!("{why}");
    let line = format!(
        "421 4.7.0 {} Error: too many connections from {}\r\n",
        s.myhostname, info.client_addr
    );
    let _ = tokio::time::timeout(s.timeout, async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    info!("disconnect from {namaddr} commands=0/0");
}
