//! Which daemon each master.cf command names, what they share (the queue, the address book),
//! and the order they start in.

use actix::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::supervisor::{ActorHandle, ServiceHandle, ServiceSpec, Starter};
use super::MasterError;
use crate::cleanup::cleanup::{self as cleanup_actor, Cleanup};
use crate::cleanup::message::Settings as CleanupSettings;
use crate::config::master_cf::MasterCf;
use crate::config::Config;
use crate::delivery::agent::DeliveryAgent;
use crate::delivery::Transport;
use crate::pickup::{Pickup, Scan};
use crate::qmgr::{self, Qmgr};
use crate::queue::{Queue, QueueEvent};
use crate::trivial_rewrite::Rewriter;

pub use crate::delivery::agent::AgentTable;

/// The master's address book: where each running service can be reached right now. A
/// restarted service re-registers, so holders of the book always find the live one.
#[derive(Default)]
pub struct Registry {
    pub cleanup: RwLock<Option<Addr<Cleanup>>>,
    pub pickup: RwLock<Option<Addr<Pickup>>>,
    pub qmgr: RwLock<Option<Addr<Qmgr>>>,
    pub anvil: RwLock<Option<Addr<crate::anvil::Anvil>>>,
    pub agents: AgentTable,
}

/// What every service of one master shares: opened once at start, kept across reloads.
pub struct Shared {
    pub queue: Queue,
    pub registry: Arc<Registry>,
    rewriter: RwLock<Arc<Rewriter>>,
    dns: Arc<crate::dns::Dns>,
    /// Transport names of the delivery rows (for per-transport limits).
    transports: RwLock<Vec<String>>,
    control: tokio::task::JoinHandle<()>,
}

fn setup(e: impl std::fmt::Display) -> MasterError {
    MasterError::Setup(e.to_string())
}

impl Shared {
    pub async fn open(cfg: &Config) -> Result<Arc<Shared>, MasterError> {
        let qdir = PathBuf::from(cfg.get("queue_directory"));
        let long = cfg.get_bool("enable_long_queue_ids");
        let segment = cfg.get_size("relais_body_segment_size");
        let q2 = qdir.clone();
        let queue = tokio::task::spawn_blocking(move || Queue::open_with(&q2, long, segment))
            .await
            .map_err(setup)?
            .map_err(|e| MasterError::Setup(format!("queue: {e}")))?;
        let rewriter = Arc::new(
            Rewriter::from_config(cfg)
                .map_err(|e| MasterError::Setup(format!("address rewriting: {e}")))?,
        );
        let registry = Arc::new(Registry::default());
        let dns = Arc::new(
            crate::dns::Dns::from_config(cfg)
                .map_err(|e| MasterError::Setup(format!("DNS resolver: {e}")))?,
        );
        // Queue events go to whoever handles them now (pickup for maildrop, qmgr for the rest).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<QueueEvent>(4096);
        queue.set_events(tx);
        let reg = registry.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match &ev {
                    QueueEvent::NewMaildrop(_) => {
                        if let Some(p) = reg.pickup.read().ok().and_then(|g| g.clone()) {
                            p.do_send(Scan);
                        }
                    }
                    QueueEvent::Requeued => {
                        if let Some(p) = reg.pickup.read().ok().and_then(|g| g.clone()) {
                            p.do_send(Scan);
                        }
                        if let Some(q) = reg.qmgr.read().ok().and_then(|g| g.clone()) {
                            q.do_send(qmgr::Event(ev.clone()));
                        }
                    }
                    _ => {
                        if let Some(q) = reg.qmgr.read().ok().and_then(|g| g.clone()) {
                            q.do_send(qmgr::Event(ev.clone()));
                        }
                    }
                }
            }
        });
        let listener = crate::control::server::bind(&qdir).map_err(|e| {
            MasterError::Setup(format!("control socket in {}: {e}", qdir.display()))
        })?;
        let handler = Arc::new(crate::control::server::QueueHandler::new(
            queue.clone(),
            cfg,
        ));
        let control = tokio::spawn(crate::control::serve(listener, handler));
        Ok(Arc::new(Shared {
            queue,
            registry,
            rewriter: RwLock::new(rewriter),
            dns,
            transports: RwLock::new(Vec::new()),
            control,
        }))
    }

    pub fn rewriter(&self) -> Arc<Rewriter> {
        self.rewriter
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// New tables and address classes after a reload (services get them with their Reload).
    pub fn reload(&self, cfg: &Config) {
        match Rewriter::from_config(cfg) {
            Ok(r) => {
                if let Ok(mut g) = self.rewriter.write() {
                    *g = Arc::new(r);
                }
            }
            Err(e) => tracing::warn!("reload: address rewriting: {e}; keeping the old tables"),
        }
    }

    pub async fn shutdown(&self, grace: Duration) {
        self.control.abort();
        let q = self.queue.clone();
        let _ = tokio::time::timeout(grace, q.durable()).await;
    }
}

/// The order rows start in: what others depend on first.
fn rank(command: &str) -> u8 {
    match command {
        "cleanup" | "anvil" => 0,
        "smtp" | "lmtp" | "virtual" | "error" | "discard" | "local" => 1,
        "qmgr" => 2,
        "pickup" => 3,
        "smtpd" => 4,
        _ => 5,
    }
}

/// Commands served inside other actors or the master itself (no actor of their own):
/// bounce notices are written by qmgr, address rewriting is a library, showq is the control
/// socket.
const BUILT_IN: &[&str] = &["bounce", "trivial-rewrite", "showq"];

/// The master.cf rows relais runs, with their `-o` overrides, in start order.
pub fn load_specs(cfg: &Config) -> Result<Vec<ServiceSpec>, MasterError> {
    let path = cfg.dir.join("master.cf");
    let m = MasterCf::read(&path).map_err(|e| MasterError::Setup(e.to_string()))?;
    let mut specs: Vec<ServiceSpec> = m
        .services(cfg)
        .into_iter()
        .filter(|s| s.implemented())
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            kind: s.kind.as_str().to_string(),
            command: s.command.clone(),
            args: s.args.clone(),
            maxproc: s.maxproc as usize,
            wakeup: s.wakeup,
            overrides: s.overrides.clone(),
            line: s.line,
        })
        .collect();
    // A TLS-wrapped service without TLS would serve plaintext where clients expect
    // encryption: it is not started (relais check says so too).
    // A service that must refuse plaintext (wrapper mode, smtpd_tls_security_level = encrypt)
    // is not started when its TLS keys cannot be loaded, rather than serve in plaintext.
    specs.retain(|s| {
        if s.command != "smtpd" {
            return true;
        }
        let c = s.config(cfg);
        let required = c.get_bool("smtpd_tls_wrappermode") || crate::tlsmgr::Level::from_config(&c) == crate::tlsmgr::Level::Encrypt;
        if !required {
            return true;
        }
        match crate::tlsmgr::server_config(&c) {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("service {}: TLS is required but not available ({e}); the service is not started rather than accept mail in plaintext", s.id());
                false
            }
        }
    });
    specs.sort_by_key(|s| rank(&s.command));
    Ok(specs)
}

/// The addresses an inet smtpd row listens on: `host:port` from the service name, or the
/// port (a number or smtp/submission/smtps) on each of inet_interfaces.
pub fn listen_addrs(name: &str, cfg: &Config) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let port_of = |p: &str| -> Result<u16, String> {
        match p {
            "smtp" => Ok(25),
            "submission" => Ok(587),
            "smtps" | "submissions" => Ok(465),
            n => n.parse().map_err(|_| format!("unknown service port {n:?}")),
        }
    };
    if let Some((host, port)) = name.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host.parse().map_err(|_| {
            format!("{name}: only numeric addresses are supported in service names")
        })?;
        return Ok(vec![SocketAddr::new(ip, port_of(port)?)]);
    }
    let port = port_of(name)?;
    let protos = cfg.get_list("inet_protocols");
    let v4 = protos.iter().any(|p| p == "all" || p == "ipv4");
    let v6 = protos.iter().any(|p| p == "all" || p == "ipv6");
    let mut out = Vec::new();
    for i in cfg.get_list("inet_interfaces") {
        match i.as_str() {
            "all" => {
                // A v6 wildcard socket also takes v4 connections on Linux (dual stack).
                if v6 {
                    out.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
                } else {
                    out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
                }
            }
            "loopback-only" => {
                if v4 {
                    out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
                }
                if v6 {
                    out.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
                }
            }
            a => {
                let ip: IpAddr = a.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| format!("inet_interfaces: {a}: only addresses, all and loopback-only are supported"))?;
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    if out.is_empty() {
        return Err("inet_interfaces names no address".into());
    }
    Ok(out)
}

/// Binds (and lets go) every address the smtpd rows will listen on, so that a port the
/// master cannot have is a fatal error at start, with Postfix's inet_listen() wording
/// (`bind 127.0.0.1 port 25: Address already in use`), rather than a service retried in the
/// background of a daemon that says it has started. std sets SO_REUSEADDR, so the services
/// bind the same addresses again at once.
pub fn probe_listeners(cfg: &Config, specs: &[ServiceSpec]) -> Result<(), MasterError> {
    for spec in specs
        .iter()
        .filter(|s| s.command == "smtpd" && s.kind == "inet")
    {
        // An address that does not parse is the service's own start error, logged with it.
        let Ok(addrs) = listen_addrs(&spec.name, &spec.config(cfg)) else {
            continue;
        };
        for a in addrs {
            std::net::TcpListener::bind(a).map_err(|e| {
                MasterError::Setup(format!(
                    "bind {} port {}: {}",
                    a.ip(),
                    a.port(),
                    crate::log::strerror(&e)
                ))
            })?;
        }
    }
    Ok(())
}

/// One smtpd row: a listener actor per address, sharing one backend.
struct SmtpdService {
    addrs: Vec<Addr<crate::smtpd::server::Smtpd>>,
    backend: Arc<crate::smtpd::backend::QueueBackend>,
    rewriter: Arc<dyn Fn() -> Arc<Rewriter> + Send + Sync>,
    dns: Option<Arc<crate::dns::Dns>>,
}

impl ServiceHandle for SmtpdService {
    fn alive(&self) -> bool {
        self.addrs.iter().all(|a| a.connected())
    }
    fn reload(&self, cfg: Config) {
        match crate::smtpd::policy::Policy::from_config(&cfg, (self.rewriter)()) {
            Ok((p, _)) => {
                let p = match &self.dns {
                    Some(d) => p.with_dns(d.clone()),
                    None => p,
                };
                if let Ok(mut g) = self.backend.policy.write() {
                    *g = Arc::new(p);
                }
            }
            Err(e) => tracing::warn!("reload: {e}; keeping the old relay policy"),
        }
        for a in &self.addrs {
            a.do_send(crate::smtpd::server::Reload(cfg.clone()));
        }
    }
    fn stop(&self) {
        for a in &self.addrs {
            a.do_send(crate::smtpd::server::Stop);
        }
    }
}

/// A built-in service: alive as long as the master is.
struct BuiltIn;
impl ServiceHandle for BuiltIn {
    fn alive(&self) -> bool {
        true
    }
    fn reload(&self, _: Config) {}
    fn stop(&self) {}
}

/// Makes a delivery agent reachable by its transport name (qmgr, local's mailbox_transport).
fn register_agent(shared: &Shared, name: &str, addr: &Addr<DeliveryAgent>, maxproc: usize) {
    if let Ok(mut t) = shared.registry.agents.write() {
        t.insert(name.to_string(), (addr.clone(), maxproc));
    }
    if let Ok(mut t) = shared.transports.write() {
        if !t.iter().any(|x| x == name) {
            t.push(name.to_string());
        }
    }
}

fn agent(
    shared: &Shared,
    spec: &ServiceSpec,
    cfg: &Config,
    transport: Arc<dyn Transport>,
) -> Box<dyn ServiceHandle> {
    let tag = spec.log_tag(cfg);
    let addr = DeliveryAgent::new(transport, spec.maxproc, tag).start();
    register_agent(shared, &spec.name, &addr, spec.maxproc);
    Box::new(ActorHandle {
        addr,
        on_reload: Box::new(|_, _| {}),
        on_stop: Box::new(|_| {}),
    })
}

pub fn starter(shared: Arc<Shared>) -> Starter {
    Arc::new(move |spec, cfg| {
        let sh = shared.clone();
        let tag = spec.log_tag(&cfg);
        match spec.command.as_str() {
            c if BUILT_IN.contains(&c) => Ok(Box::new(BuiltIn) as Box<dyn ServiceHandle>),
            "cleanup" => {
                let settings =
                    Arc::new(CleanupSettings::from_config(&cfg).map_err(|e| e.to_string())?);
                let addr = Cleanup::new(sh.queue.clone(), settings, sh.rewriter(), tag).start();
                if let Ok(mut g) = sh.registry.cleanup.write() {
                    *g = Some(addr.clone());
                }
                let sh2 = sh.clone();
                Ok(Box::new(ActorHandle {
                    addr,
                    on_reload: Box::new(move |a, cfg| match CleanupSettings::from_config(&cfg) {
                        Ok(s) => a.do_send(cleanup_actor::Reload {
                            settings: Arc::new(s),
                            rewriter: sh2.rewriter(),
                        }),
                        Err(e) => tracing::warn!("reload: cleanup: {e}; keeping the old settings"),
                    }),
                    on_stop: Box::new(|_| {}),
                }))
            }
            "anvil" => {
                let addr = crate::anvil::Anvil::new(
                    cfg.get_time("anvil_rate_time_unit"),
                    cfg.get_time("anvil_status_update_time"),
                    &tag,
                )
                .start();
                if let Ok(mut g) = sh.registry.anvil.write() {
                    *g = Some(addr.clone());
                }
                Ok(Box::new(ActorHandle {
                    addr,
                    // Like Postfix's anvil, the counters live as long as the process: a
                    // reload keeps them (and the time unit they were counted with).
                    on_reload: Box::new(|_, _| {}),
                    // Postfix's anvil logs its statistics when it exits.
                    on_stop: Box::new(|a| a.do_send(crate::anvil::anvil::Statistics)),
                }))
            }
            "pickup" => {
                let cleanup = sh
                    .registry
                    .cleanup
                    .read()
                    .ok()
                    .and_then(|g| g.clone())
                    .ok_or("cleanup is not running yet")?;
                let wakeup = Duration::from_secs(u64::from(spec.wakeup.max(1)));
                let addr = Pickup::new(sh.queue.clone(), cleanup, wakeup, &tag).start();
                if let Ok(mut g) = sh.registry.pickup.write() {
                    *g = Some(addr.clone());
                }
                Ok(Box::new(ActorHandle {
                    addr,
                    on_reload: Box::new(|_, _| {}),
                    on_stop: Box::new(|_| {}),
                }))
            }
            "qmgr" => {
                let transports = sh.transports.read().map(|t| t.clone()).unwrap_or_default();
                let settings = qmgr::Settings::from_config(&cfg, &transports);
                let addr = Qmgr::new(
                    sh.queue.clone(),
                    settings,
                    sh.rewriter(),
                    sh.registry.agents.clone(),
                    &tag,
                )
                .start();
                if let Ok(mut g) = sh.registry.qmgr.write() {
                    *g = Some(addr.clone());
                }
                let sh2 = sh.clone();
                Ok(Box::new(ActorHandle {
                    addr,
                    on_reload: Box::new(move |a, cfg| {
                        let transports =
                            sh2.transports.read().map(|t| t.clone()).unwrap_or_default();
                        a.do_send(qmgr::manager::Reload {
                            settings: qmgr::Settings::from_config(&cfg, &transports),
                            rewriter: sh2.rewriter(),
                        });
                    }),
                    on_stop: Box::new(|_| {}),
                }))
            }
            "virtual" => {
                let t = crate::r#virtual::VirtualTransport {
                    base: PathBuf::from(cfg.get("virtual_mailbox_base")),
                    rewriter: {
                        let sh3 = sh.clone();
                        Arc::new(move || sh3.rewriter())
                    },
                    hostname: cfg.get("myhostname"),
                };
                Ok(agent(&sh, spec, &cfg, Arc::new(t)))
            }
            "local" => {
                let sh3 = sh.clone();
                let t = crate::local::LocalTransport::new(
                    &cfg,
                    &spec.name,
                    Arc::new(move || sh3.rewriter()),
                    sh.queue.clone(),
                    sh.registry.agents.clone(),
                );
                let settings = t.settings.clone();
                let name = spec.name.clone();
                let tag = spec.log_tag(&cfg);
                let addr = DeliveryAgent::new(Arc::new(t), spec.maxproc, tag).start();
                register_agent(&sh, &spec.name, &addr, spec.maxproc);
                Ok(Box::new(ActorHandle {
                    addr,
                    on_reload: Box::new(move |_, cfg| {
                        let s = crate::local::Settings::from_config(&cfg, &name);
                        if let Ok(mut g) = settings.write() {
                            *g = Arc::new(s);
                        }
                    }),
                    on_stop: Box::new(|_| {}),
                }))
            }
            "smtpd" => {
                let addrs = listen_addrs(&spec.name, &cfg)?;
                let (policy, warnings) =
                    crate::smtpd::policy::Policy::from_config(&cfg, sh.rewriter())
                        .map_err(|e| e.to_string())?;
                let policy = policy.with_dns(sh.dns.clone());
                let span = crate::log::service_span!(tag);
                for w in warnings {
                    span.in_scope(|| tracing::warn!("service {}: {w}", spec.id()));
                }
                let sh2 = sh.clone();
                let backend = Arc::new(crate::smtpd::backend::QueueBackend {
                    queue: sh.queue.clone(),
                    queue_directory: super::queue_dir(&cfg),
                    policy: RwLock::new(Arc::new(policy)),
                    cleanup: Arc::new(move || {
                        sh2.registry.cleanup.read().ok().and_then(|g| g.clone())
                    }),
                });
                let reg = sh.registry.clone();
                let anvil = crate::anvil::AnvilClient::actor(Arc::new(move || {
                    reg.anvil.read().ok().and_then(|g| g.clone())
                }));
                let mut started = Vec::new();
                for a in addrs {
                    let l = std::net::TcpListener::bind(a).map_err(|e| format!("bind {a}: {e}"))?;
                    let b: Arc<dyn crate::smtpd::Backend> = backend.clone();
                    started.push(
                        crate::smtpd::server::Smtpd::new(l, &cfg, &spec.name, b)
                            .with_anvil(anvil.clone())
                            .start(),
                    );
                }
                let sh3 = sh.clone();
                Ok(Box::new(SmtpdService {
                    addrs: started,
                    backend,
                    rewriter: Arc::new(move || sh3.rewriter()),
                    dns: Some(sh.dns.clone()),
                }))
            }
            "smtp" | "lmtp" => {
                let client = crate::smtp::Client::new(&cfg, sh.dns.clone()).with_tag(tag);
                let t = crate::smtp::transport::SmtpTransport {
                    client,
                    lmtp: spec.command == "lmtp",
                };
                Ok(agent(&sh, spec, &cfg, Arc::new(t)))
            }
            "error" => Ok(agent(
                &sh,
                spec,
                &cfg,
                Arc::new(crate::error::ErrorTransport {
                    temporary: spec.name == "retry",
                }),
            )),
            "discard" => Ok(agent(
                &sh,
                spec,
                &cfg,
                Arc::new(crate::discard::DiscardTransport),
            )),
            other => Err(format!("command {other} is not implemented")),
        }
    })
}
