//! The supervisor actor: one entry per started master.cf row, watched and restarted with
//! backoff when its actor dies, reloaded on SIGHUP, stopped in order on shutdown.

use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// What the master knows about one master.cf row it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `name/type` as master.cf writes it, e.g. `smtp/inet`.
    pub name: String,
    pub kind: String,
    pub command: String,
    pub args: Vec<String>,
    /// Parallelism allowed by the maxproc column (0: unlimited).
    pub maxproc: usize,
    /// master.cf wakeup column in seconds (0: none).
    pub wakeup: u32,
    pub overrides: Vec<(String, String)>,
    pub line: usize,
}

impl ServiceSpec {
    pub fn id(&self) -> String {
        format!("{}/{}", self.name, self.kind)
    }

    /// The service's view of the configuration: main.cf overlaid with its `-o` settings and
    /// its identity (`service_name`, `process_name`), as Postfix's master passes them.
    pub fn config(&self, base: &Config) -> Config {
        let mut ov: Vec<(&str, &str)> = vec![
            ("service_name", self.name.as_str()),
            ("process_name", self.command.as_str()),
        ];
        ov.extend(self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        base.with_overrides(ov)
    }

    /// The log tag `syslog_name/command`, honouring `-o syslog_name=`.
    pub fn log_tag(&self, base: &Config) -> String {
        crate::log::tag(&self.config(base).get("syslog_name"), &self.command)
    }
}

/// A running service as the supervisor sees it.
pub trait ServiceHandle: Send {
    /// False once the service's actor has stopped or panicked.
    fn alive(&self) -> bool;
    /// New settings; established sessions keep theirs.
    fn reload(&self, cfg: Config);
    /// Stop accepting work; in-flight work finishes on its own.
    fn stop(&self);
}

/// Starts the service of one row; `Err` text is logged and the start retried with backoff.
pub type Starter =
    Arc<dyn Fn(&ServiceSpec, Config) -> Result<Box<dyn ServiceHandle>, String> + Send + Sync>;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A service that has run this long is considered healthy again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

struct Entry {
    spec: ServiceSpec,
    handle: Option<Box<dyn ServiceHandle>>,
    backoff: Duration,
    next_start: Instant,
    started_at: Instant,
    restarts: u32,
}

pub struct Supervisor {
    base: Config,
    entries: Vec<Entry>,
    starter: Starter,
    check_every: Duration,
}

/// Re-read configuration: new base settings and the rows to run.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload {
    pub base: Config,
    pub services: Vec<ServiceSpec>,
}

/// Stop every service (sessions finish or time out on their own).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Per service: `name/type`, alive, and how many times it was restarted.
#[derive(Message)]
#[rtype(result = "Vec<(String, bool, u32)>")]
pub struct Status;

impl Supervisor {
    pub fn new(base: Config, services: Vec<ServiceSpec>, starter: Starter) -> Self {
        let now = Instant::now();
        let entries = services
            .into_iter()
            .map(|spec| Entry {
                spec,
                handle: None,
                backoff: FIRST_BACKOFF,
                next_start: now,
                started_at: now,
                restarts: 0,
            })
            .collect();
        Supervisor {
            base,
            entries,
            starter,
            check_every: Duration::from_millis(250),
        }
    }

    fn start_entry(starter: &Starter, base: &Config, e: &mut Entry) {
        let cfg = e.spec.config(base);
        match starter(&e.spec, cfg) {
            Ok(h) => {
                e.handle = Some(h);
                e.started_at = Instant::now();
            }
            Err(why) => {
                tracing::warn!(
                    "service {}: cannot start: {why}; retrying in {}s",
                    e.spec.id(),
                    e.backoff.as_secs()
                );
                e.next_start = Instant::now() + e.backoff;
                e.backoff = (e.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        for e in &mut self.entries {
            match &e.handle {
                Some(h) if h.alive() => {
                    if now.duration_since(e.started_at) > STABLE_AFTER {
                        e.backoff = FIRST_BACKOFF;
                    }
                }
                Some(_) => {
                    e.handle = None;
                    e.restarts += 1;
                    tracing::warn!(
                        "service {} ({}) stopped unexpectedly; restarting in {}s",
                        e.spec.id(),
                        e.spec.command,
                        e.backoff.as_secs()
                    );
                    e.next_start = now + e.backoff;
                    e.backoff = (e.backoff * 2).min(MAX_BACKOFF);
                }
                None if now >= e.next_start => Self::start_entry(&self.starter, &self.base, e),
                None => {}
            }
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for e in &mut self.entries {
            Self::start_entry(&self.starter, &self.base, e);
        }
        ctx.run_interval(self.check_every, |act, _| act.tick());
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Reload, _: &mut Self::Context) {
        self.base = msg.base;
        let mut old: Vec<Entry> = std::mem::take(&mut self.entries);
        for spec in msg.services {
            // A row that is unchanged keeps its running actor (and its listening socket) and
            // only receives the new settings; a changed or new row is started afresh.
            if let Some(pos) = old.iter().position(|e| e.spec == spec) {
                let e = old.swap_remove(pos);
                if let Some(h) = &e.handle {
                    h.reload(e.spec.config(&self.base));
                }
                self.entries.push(e);
            } else {
                let now = Instant::now();
                let mut e = Entry {
                    spec,
                    handle: None,
                    backoff: FIRST_BACKOFF,
                    next_start: now,
                    started_at: now,
                    restarts: 0,
                };
                // Stop the old version of this service first, so it releases its port.
                if let Some(pos) = old.iter().position(|o| o.spec.id() == e.spec.id()) {
                    if let Some(h) = old.swap_remove(pos).handle {
                        h.stop();
                    }
                }
                Self::start_entry(&self.starter, &self.base, &mut e);
                self.entries.push(e);
            }
        }
        for e in old {
            if let Some(h) = e.handle {
                tracing::info!(
                    "service {} removed from master.cf: stopping it",
                    e.spec.id()
                );
                h.stop();
            }
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        for e in &mut self.entries {
            if let Some(h) = e.handle.take() {
                h.stop();
            }
        }
        ctx.stop();
    }
}

impl Handler<Status> for Supervisor {
    type Result = Vec<(String, bool, u32)>;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.spec.id(),
                    e.handle.as_ref().is_some_and(|h| h.alive()),
                    e.restarts,
                )
            })
            .collect()
    }
}

/// A `ServiceHandle` for a service that is a single actix actor.
pub struct ActorHandle<A: Actor> {
    pub addr: Addr<A>,
    pub on_reload: Box<dyn Fn(&Addr<A>, Config) + Send>,
    pub on_stop: Box<dyn Fn(&Addr<A>) + Send>,
}

impl<A: Actor> ServiceHandle for ActorHandle<A> {
    fn alive(&self) -> bool {
        self.addr.connected()
    }
    fn reload(&self, cfg: Config) {
        (self.on_reload)(&self.addr, cfg)
    }
    fn stop(&self) {
        (self.on_stop)(&self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A trivial service that answers pings and can be told to fail.
    struct Echo;
    impl Actor for Echo {
        type Context = Context<Self>;
    }
    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Ping;
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Crash;
    impl Handler<Ping> for Echo {
        type Result = u32;
        fn handle(&mut self, _: Ping, _: &mut Self::Context) -> u32 {
            42
        }
    }
    impl Handler<Crash> for Echo {
        type Result = ();
        fn handle(&mut self, _: Crash, _: &mut Self::Context) {
            panic!("deliberate failure of the test service");
        }
    }

    #[test]
    fn a_failed_service_is_restarted_with_backoff() {
        let sys = System::with_tokio_rt(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        });
        let starts = Arc::new(AtomicUsize::new(0));
        let addrs: Arc<Mutex<Vec<Addr<Echo>>>> = Arc::default();
        let (s2, a2) = (starts.clone(), addrs.clone());
        let starter: Starter = Arc::new(move |_, _| {
            s2.fetch_add(1, Ordering::SeqCst);
            let addr = Echo.start();
            a2.lock().unwrap().push(addr.clone());
            Ok(Box::new(ActorHandle {
                addr,
                on_reload: Box::new(|_, _| {}),
                on_stop: Box::new(|_| {}),
            }))
        });
        let spec = ServiceSpec {
            name: "echo".into(),
            kind: "unix".into(),
            command: "echo".into(),
            args: vec![],
            maxproc: 1,
            wakeup: 0,
            overrides: vec![],
            line: 1,
        };
        let base = Config::from_text(std::path::Path::new("/tmp"), "").unwrap();
        let (starts2, addrs2) = (starts.clone(), addrs.clone());
        sys.block_on(async move {
            let sup = Supervisor::new(base, vec![spec], starter).start();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(starts2.load(Ordering::SeqCst), 1);
            let first = addrs2.lock().unwrap()[0].clone();
            assert_eq!(first.send(Ping).await.unwrap(), 42);
            let _ = first.send(Crash).await; // the handler panics: the actor is gone
            let st = sup.send(Status).await.unwrap();
            assert_eq!(st.len(), 1);
            // Restart comes after the 1 s backoff; poll for it, bounded.
            let deadline = Instant::now() + Duration::from_secs(5);
            while starts2.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                starts2.load(Ordering::SeqCst),
                2,
                "service was not restarted"
            );
            let second = addrs2.lock().unwrap()[1].clone();
            assert_eq!(second.send(Ping).await.unwrap(), 42);
            let st = sup.send(Status).await.unwrap();
            assert_eq!(st, vec![("echo/unix".to_string(), true, 1)]);
            sup.send(Shutdown).await.unwrap();
        });
    }
}
