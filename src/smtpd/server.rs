//! The smtpd listener actor: accepts connections on a socket master hands it, runs one tokio
//! task per session, applies reloaded settings to new sessions and limits how many sessions
//! one client address may hold at once.

use super::session::{Session, SessionInfo};
use super::settings::Settings;
use super::Backend;
use crate::config::Config;
use actix::prelude::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
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

/// How many sessions each client address holds, shared by the accept loop and the sessions.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Smtpd {
    listener: Option<std::net::TcpListener>,
    settings: Arc<RwLock<Arc<Settings>>>,
    backend: Arc<dyn Backend>,
    service: String,
    counts: Counts,
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
        Smtpd {
            listener: Some(listener),
            settings: Arc::new(RwLock::new(Arc::new(Settings::from_config(cfg, service)))),
            backend,
            service: service.to_string(),
            counts: Arc::new(Mutex::new(HashMap::new())),
            accept: None,
        }
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
        let counts = self.counts.clone();
        let service = self.service.clone();
        self.accept = Some(tokio::spawn(accept_loop(
            listener, settings, backend, counts, service,
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

/// Decrements the client's session count when the session ends, however it ends.
struct CountGuard {
    counts: Counts,
    ip: IpAddr,
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            if let Some(n) = c.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.remove(&self.ip);
                }
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    settings: Arc<RwLock<Arc<Settings>>>,
    backend: Arc<dyn Backend>,
    counts: Counts,
    service: String,
) {
    // Runs until the actor stops and aborts it.
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
        let ip = peer.ip();
        let current = match counts.lock() {
            Ok(mut c) => {
                let n = c.entry(ip).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => continue,
        };
        let guard = CountGuard {
            counts: counts.clone(),
            ip,
        };
        let info = SessionInfo::new("unknown", &ip.to_string(), peer.port(), &service);
        let backend = backend.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let limit = s.connection_count_limit;
            if limit > 0 && current > limit && !s.limit_exempt(ip) {
                let span = crate::log::service_span!(s.tag.clone());
                refuse(stream, &s, &info, current).instrument(span).await;
                return;
            }
            Session::new(stream, s, backend, info).run().await;
        });
    }
}

/// Postfix's answer to one connection too many from the same client.
async fn refuse(mut stream: tokio::net::TcpStream, s: &Settings, info: &SessionInfo, count: usize) {
    let namaddr = info.namaddr();
    info!("connect from {namaddr}");
    warn!(
        "Connection concurrency limit exceeded: {count} from {namaddr} for service {}",
        s.service
    );
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
