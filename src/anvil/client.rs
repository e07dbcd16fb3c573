//! How a server talks to anvil: [`AnvilClient`], cheap to clone, either the master's anvil
//! actor (looked up at each request, so a restarted anvil is found) or a table private to one
//! listener (a server started on its own, as in tests).

use super::anvil::{Anvil, Connect, Count, Disconnect, Peek};
use super::table::{ident, Event, Table};
use super::AnvilError;
use actix::prelude::*;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the master's anvil actor is now (None while it is down).
pub type Locate = Arc<dyn Fn() -> Option<Addr<Anvil>> + Send + Sync>;

#[derive(Clone)]
enum Inner {
    Actor(Locate),
    Local(Arc<Mutex<Table>>),
}

#[derive(Clone)]
pub struct AnvilClient(Inner);

impl std::fmt::Debug for AnvilClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Actor(_) => f.write_str("AnvilClient(actor)"),
            Inner::Local(_) => f.write_str("AnvilClient(local)"),
        }
    }
}

impl AnvilClient {
    /// Requests go to the anvil actor `locate` finds.
    pub fn actor(locate: Locate) -> AnvilClient {
        AnvilClient(Inner::Actor(locate))
    }

    /// A private table with this anvil_rate_time_unit.
    pub fn local(unit: Duration) -> AnvilClient {
        AnvilClient(Inner::Local(Arc::new(Mutex::new(Table::new(unit)))))
    }

    fn addr(&self) -> Result<Addr<Anvil>, AnvilError> {
        match &self.0 {
            Inner::Actor(l) => l().ok_or(AnvilError::Unavailable),
            Inner::Local(_) => Err(AnvilError::Unavailable),
        }
    }

    fn with_table<T>(
        t: &Arc<Mutex<Table>>,
        f: impl FnOnce(&mut Table) -> T,
    ) -> Result<T, AnvilError> {
        let mut g = t.lock().map_err(|_| AnvilError::Unavailable)?;
        Ok(f(&mut g))
    }

    /// A new session: (sessions from this client now, connections in this time unit).
    pub async fn connect(&self, service: &str, addr: &IpAddr) -> Result<(u32, u32), AnvilError> {
        let id = ident(service, addr);
        match &self.0 {
            Inner::Local(t) => Self::with_table(t, |t| t.connect(&id, Instant::now())),
            Inner::Actor(_) => Ok(self.addr()?.send(Connect(id)).await?),
        }
    }

    /// The session ended. Synchronous so that it can run from a `Drop`.
    pub fn disconnect(&self, service: &str, addr: &IpAddr) {
        let id = ident(service, addr);
        match &self.0 {
            Inner::Local(t) => {
                let _ = Self::with_table(t, |t| t.disconnect(&id, Instant::now()));
            }
            Inner::Actor(_) => {
                if let Ok(a) = self.addr() {
                    a.do_send(Disconnect(id));
                }
            }
        }
    }

    /// Counts one event; answers the events of that kind in this time unit.
    pub async fn event(&self, service: &str, addr: &IpAddr, ev: Event) -> Result<u32, AnvilError> {
        let id = ident(service, addr);
        match &self.0 {
            Inner::Local(t) => Self::with_table(t, |t| t.event(&id, ev, Instant::now())),
            Inner::Actor(_) => Ok(self.addr()?.send(Count(id, ev)).await?),
        }
    }

    /// The events of that kind in this time unit, without counting one.
    pub async fn peek(&self, service: &str, addr: &IpAddr, ev: Event) -> Result<u32, AnvilError> {
        let id = ident(service, addr);
        match &self.0 {
            Inner::Local(t) => Self::with_table(t, |t| t.peek(&id, ev, Instant::now())),
            Inner::Actor(_) => Ok(self.addr()?.send(Peek(id, ev)).await?),
        }
    }

    /// An AUTH command: counts it and answers the AUTH commands in this time unit (the SASL
    /// code compares that with smtpd_client_auth_rate_limit).
    pub async fn auth(&self, service: &str, addr: &IpAddr) -> Result<u32, AnvilError> {
        self.event(service, addr, Event::Auth).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_client_counts() {
        let c = AnvilClient::local(Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(c.connect("smtp", &a).await.unwrap(), (1, 1));
        assert_eq!(c.connect("smtp", &a).await.unwrap(), (2, 2));
        c.disconnect("smtp", &a);
        assert_eq!(c.connect("smtp", &a).await.unwrap(), (2, 3));
        assert_eq!(c.auth("smtp", &a).await.unwrap(), 1);
        assert_eq!(c.peek("smtp", &a, Event::Auth).await.unwrap(), 1);
    }

    #[actix_rt::test]
    async fn actor_client_counts_and_survives_absence() {
        let addr = Anvil::new(
            Duration::from_secs(60),
            Duration::from_secs(600),
            "postfix/anvil",
        )
        .start();
        let slot = Arc::new(Mutex::new(Some(addr)));
        let s2 = slot.clone();
        let c = AnvilClient::actor(Arc::new(move || s2.lock().ok().and_then(|g| g.clone())));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(c.connect("smtp", &a).await.unwrap(), (1, 1));
        assert_eq!(c.event("smtp", &a, Event::Rcpt).await.unwrap(), 1);
        assert_eq!(c.event("smtp", &a, Event::Rcpt).await.unwrap(), 2);
        c.disconnect("smtp", &a);
        assert_eq!(c.connect("smtp", &a).await.unwrap(), (1, 2));
        let live = slot.lock().unwrap().clone().unwrap();
        assert_eq!(live.send(super::super::anvil::Size).await.unwrap(), 1);
        *slot.lock().unwrap() = None;
        assert!(c.connect("smtp", &a).await.is_err());
        c.disconnect("smtp", &a);
    }

    #[actix_rt::test]
    async fn the_actor_forgets_idle_clients_by_itself() {
        use super::super::anvil::Size;
        let addr = Anvil::new(
            Duration::from_secs(1),
            Duration::from_secs(600),
            "postfix/anvil",
        )
        .start();
        let c = AnvilClient::actor(Arc::new({
            let a = addr.clone();
            move || Some(a.clone())
        }));
        for i in 0..50u8 {
            let a = IpAddr::from([192, 0, 2, i]);
            c.connect("smtp", &a).await.unwrap();
            c.disconnect("smtp", &a);
        }
        assert_eq!(addr.send(Size).await.unwrap(), 50);
        // One time unit after the last session plus one sweep (every half unit): gone,
        // without any further request.
        tokio::time::sleep(Duration::from_millis(1700)).await;
        assert_eq!(addr.send(Size).await.unwrap(), 0);
    }
}
