//! NAME
//!     smtp, lmtp - relais SMTP and LMTP client
//!
//! SUMMARY
//!     master.cf rows `smtp unix - - n - - smtp`, `relay unix … smtp`, `lmtp unix … lmtp`
//!
//! DESCRIPTION
//!     The delivery agent for mail that leaves the host. qmgr hands it one [`Job`] at a time
//!     per connection slot: one message, the recipients that share a next-hop, and that
//!     next-hop. The client resolves the next-hop (`[host]:port` as given; `host` and
//!     `host:port` through MX records, lowest preference first and shuffled among equals,
//!     falling back to the domain's own A/AAAA records when it has no MX; RFC 7505 null MX
//!     bounces), connects to at most smtp_mx_address_limit addresses, holds at most
//!     smtp_mx_session_limit sessions, and speaks ESMTP: EHLO (HELO fallback; LHLO for
//!     LMTP), MAIL FROM with SIZE, BODY, SMTPUTF8 and DSN's RET/ENVID when offered, RCPT TO
//!     with NOTIFY/ORCPT, PIPELINING of MAIL+RCPT+DATA, DATA with dot-stuffing or BDAT when
//!     CHUNKING is offered. Each recipient gets a typed outcome: 2xx sent, 4xx deferred, 5xx
//!     bounced; LMTP gives one reply per recipient after the data. Recipients deferred by one
//!     server are tried on the next address. When every address fails with a temporary
//!     error, the smtp_fallback_relay hosts are tried.
//!
//!     After a clean transaction the session stays open for up to
//!     smtp_connection_cache_time_limit and smtp_connection_reuse_count_limit transactions, so
//!     the next job to the same next-hop skips the connect and the handshake (Postfix's
//!     scache); a session whose last transaction was left open gets RSET before reuse.
//!
//! QUEUES
//!     None: the client reads the message content qmgr gives it and returns outcomes; qmgr
//!     records them in the queue.
//!
//! MESSAGES
//!     One line per recipient, as Postfix writes it:
//!     `ID: to=<rcpt>, [orig_to=<addr>, ]relay=host[addr]:port, delay=…, delays=a/b/c/d,
//!     dsn=x.y.z, status=sent|deferred|bounced (text)`; `relay=none` when no session was
//!     made. Failed connections are logged as `connect to host[addr]:port: reason`. With
//!     smtp_tls_loglevel >= 1: `Untrusted|Trusted|Verified TLS connection established to
//!     host[addr]:port: TLSv1.3 with cipher … (256/256 bits)`; with
//!     smtp_tls_note_starttls_offer at level none: `Host offered STARTTLS: [host]`.
//!
//! SECURITY
//!     STARTTLS with rustls per smtp_tls_security_level, or per destination from
//!     smtp_tls_policy_maps (`[host]:port`, `[host]`, `domain`, then `.parent` keys; value
//!     `level [match=a:b] [protocols=…] [servername=…]`); when the level is empty the legacy
//!     smtp_use_tls / smtp_enforce_tls / smtp_enforce_peername decide. `may`: TLS when offered,
//!     any certificate; a failed handshake is retried once in plaintext. `encrypt`: TLS or
//!     nothing (`TLS is required, but was not offered by host …`). `verify`/`secure`: the
//!     chain must end at a CA of smtp_tls_CAfile/smtp_tls_CApath (`Server certificate not
//!     trusted`) and a name of smtp_tls_verify_cert_match (hostname) or
//!     smtp_tls_secure_cert_match (nexthop, dot-nexthop) must be in it (`Server certificate
//!     not verified`); both defer, and nothing of the mail is sent first. `dane` is treated as
//!     `may`, `dane-only` and `fingerprint` as `secure` (warned). rustls speaks TLS 1.2 and 1.3
//!     only: smtp_tls_protocols (may) and smtp_tls_mandatory_protocols (stronger levels) choose
//!     among them. No SNI is sent unless smtp_tls_servername says so. TLS sessions are resumed
//!     from rustls's in-memory cache (smtp_tls_session_cache_database is not used). Anything the
//!     server sends between its 220 to STARTTLS and the handshake is discarded. Cached sessions
//!     are keyed by destination, TLS level and SASL identity, so a plaintext session is never
//!     reused where TLS is required. LMTP reads the lmtp_tls_* twins (unix sockets: no TLS).
//!
//!     SASL (smtp only): with smtp_sasl_auth_enable, credentials `user:password` are looked up
//!     in smtp_sasl_password_maps by sender and `@domain` (smtp_sender_dependent_authentication),
//!     then the next-hop as written, the server's host name and the destination domain. AUTH
//!     PLAIN, else LOGIN, when the server offers them and smtp_sasl_security_options (under TLS
//!     smtp_sasl_tls_security_options) allow: Postfix's default `noplaintext` forbids both. A
//!     refused login defers with the server's reply (`SASL authentication failed; server …
//!     said: …`); credentials never appear in logs or reasons. A server that offers no AUTH
//!     gets the mail without it.
//!
//!     Replies are read into a bounded buffer (64 KiB); every stage has a time limit; nothing
//!     the peer sends can make the client panic.
//!
//! CONFIGURATION PARAMETERS
//!     relayhost (empty)
//!     smtp_fallback_relay ($fallback_relay)
//!     smtp_helo_name ($myhostname)
//!     smtp_connect_timeout (30s)
//!     smtp_helo_timeout (300s)
//!     smtp_mail_timeout (300s)
//!     smtp_rcpt_timeout (300s)
//!     smtp_data_init_timeout (120s)
//!     smtp_data_xfer_timeout (180s)
//!     smtp_data_done_timeout (600s)
//!     smtp_rset_timeout (20s)
//!     smtp_quit_timeout (300s)
//!     smtp_mx_address_limit (5)
//!     smtp_mx_session_limit (2)
//!     smtp_connection_cache_time_limit (2s)
//!     smtp_connection_reuse_count_limit (100)
//!     smtp_tls_security_level (empty), smtp_use_tls (no), smtp_enforce_tls (no),
//!     smtp_enforce_peername (yes), smtp_tls_policy_maps (empty), smtp_tls_CAfile (empty),
//!     smtp_tls_CApath (empty), smtp_tls_verify_cert_match (hostname),
//!     smtp_tls_secure_cert_match (nexthop, dot-nexthop), smtp_tls_servername (empty),
//!     smtp_tls_protocols (!SSLv2, !SSLv3), smtp_tls_mandatory_protocols (!SSLv2, !SSLv3,
//!     !TLSv1, !TLSv1.1), smtp_tls_cert_file (empty), smtp_tls_key_file ($smtp_tls_cert_file),
//!     smtp_tls_loglevel (0), smtp_tls_note_starttls_offer (no),
//!     smtp_tls_session_cache_timeout (3600s); lmtp_tls_* and lmtp_use_tls,
//!     lmtp_enforce_tls, lmtp_enforce_peername likewise for LMTP
//!     smtp_sasl_auth_enable (no), smtp_sasl_password_maps (empty),
//!     smtp_sasl_security_options (noplaintext, noanonymous),
//!     smtp_sasl_tls_security_options ($smtp_sasl_security_options),
//!     smtp_sasl_mechanism_filter (empty), smtp_sender_dependent_authentication (no)
//!     queue_directory (/var/spool/postfix)
//!     inet_protocols (all), relais_dns_servers (empty): see [`crate::dns`]

pub mod nexthop;
pub mod sasl;
pub mod session;
pub mod tls;

pub use nexthop::{Nexthop, NexthopError};
pub use session::{Caps, Failure, Reply, Session, Stream, Tx, TxRcpt};

use crate::config::Config;
use crate::delivery::Outcome;
use crate::dns::{Dns, DnsError, Mx};
use crate::envelope::{BodyType, Notify, Ret};
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;
use tracing::Instrument;

#[derive(Debug, Error)]
pub enum SmtpError {
    #[error(transparent)]
    Nexthop(#[from] NexthopError),
    #[error(transparent)]
    Dns(#[from] DnsError),
}

/// Per-stage time limits (smtp_*_timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub helo: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data_init: Duration,
    pub data_xfer: Duration,
    pub data_done: Duration,
    pub rset: Duration,
    pub quit: Duration,
}

impl Timeouts {
    pub fn from_config(cfg: &Config) -> Self {
        // A zero time limit would make every stage fail at once; Postfix rejects it too.
        let t = |d: Duration| d.max(Duration::from_secs(1));
        Timeouts {
            connect: t(cfg.get_time("smtp_connect_timeout")),
            helo: t(cfg.get_time("smtp_helo_timeout")),
            mail: t(cfg.get_time("smtp_mail_timeout")),
            rcpt: t(cfg.get_time("smtp_rcpt_timeout")),
            data_init: t(cfg.get_time("smtp_data_init_timeout")),
            data_xfer: t(cfg.get_time("smtp_data_xfer_timeout")),
            data_done: t(cfg.get_time("smtp_data_done_timeout")),
            rset: t(cfg.get_time("smtp_rset_timeout")),
            quit: t(cfg.get_time("smtp_quit_timeout")),
        }
    }
}

pub use crate::delivery::JobRcpt;
pub mod transport;

/// One delivery request: a message, some of its recipients and where to send them.
#[derive(Debug, Clone)]
pub struct Job {
    pub queue_id: String,
    /// Envelope sender, empty for `<>`.
    pub sender: String,
    pub recipients: Vec<JobRcpt>,
    /// The message (headers and body), CRLF line ends.
    pub content: Arc<Vec<u8>>,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    pub arrival: SystemTime,
    /// When qmgr took the message into the active queue (the a/b split of delays=).
    pub active_since: Option<SystemTime>,
    /// transport(5) next-hop; empty means relayhost, else the first recipient's domain.
    pub nexthop: String,
    pub lmtp: bool,
}

/// Where one connection attempt goes.
#[derive(Debug, Clone)]
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
struct Target {
    host: String,
    addr: Addr,
    /// The destination this target serves (for TLS name checks and SASL lookups): the
    /// next-hop as written and its domain or host.
    dest_text: String,
    dest: String,
    policy: Arc<tls::Policy>,
}

/// Why a session could not be set up on one target.
enum SetupErr {
    /// No TCP connection (does not count against smtp_mx_session_limit).
    Connect(String),
    Failed(Done),
    /// A TLS handshake failed at level may: try the same server again without TLS.
    RetryPlain,
}

impl Target {
    /// `host[addr]` as in reasons.
    fn peer(&self) -> String {
        match &self.addr {
            Addr::Tcp(sa) => format!("{}[{}]", self.host, sa.ip()),
            Addr::Unix(p) => format!("{}[{}]", self.host, p.display()),
        }
    }
    /// `host[addr]:port` as in relay= and connect errors.
    fn relay(&self) -> String {
        match &self.addr {
            Addr::Tcp(sa) => format!("{}[{}]:{}", self.host, sa.ip(), sa.port()),
            Addr::Unix(p) => format!("{}[{}]", self.host, p.display()),
        }
    }
}

/// Settings read once from the configuration.
#[derive(Debug, Clone)]
struct Settings {
    timeouts: Timeouts,
    helo_name: String,
    myhostname: String,
    relayhost: String,
    fallback: Vec<String>,
    mx_address_limit: usize,
    mx_session_limit: usize,
    cache_time: Duration,
    reuse_limit: u32,
    queue_dir: PathBuf,
    syslog_name: String,
}

struct Cached {
    id: u64,
    session: Session<Box<dyn Stream>>,
    target: Target,
}

/// Idle sessions by next-hop (Postfix's scache).
#[derive(Default)]
struct Cache {
    map: Mutex<HashMap<String, Vec<Cached>>>,
    next_id: AtomicU64,
}

impl Cache {
    fn take(&self, key: &str) -> Option<Cached> {
        let mut m = self.map.lock().ok()?;
        let v = m.get_mut(key)?;
        let c = v.pop();
        if v.is_empty() {
            m.remove(key);
        }
        c
    }
    fn take_id(&self, key: &str, id: u64) -> Option<Cached> {
        let mut m = self.map.lock().ok()?;
        let v = m.get_mut(key)?;
        let pos = v.iter().position(|c| c.id == id)?;
        let c = v.swap_remove(pos);
        if v.is_empty() {
            m.remove(key);
        }
        Some(c)
    }
}

/// The smtp/lmtp client. Cheap to clone; clones share the connection cache.
#[derive(Clone)]
pub struct Client {
    settings: Arc<Settings>,
    dns: Arc<Dns>,
    cache: Arc<Cache>,
    tag: Option<String>,
    tls: Arc<tls::ClientTls>,
    /// lmtp_tls_* settings, for LMTP jobs.
    ltls: Arc<tls::ClientTls>,
    sasl: Arc<sasl::SaslClient>,
}

/// Postfix's delay format: two significant digits, at most two decimals (`0.02`, `1.2`, `44`).
pub fn format_delay(d: Duration) -> String {
    let v = d.as_secs_f64();
    let s = if v >= 10.0 {
        format!("{}", v.trunc() as u64)
    } else if v >= 1.0 {
        format!("{:.1}", (v * 10.0).trunc() / 10.0)
    } else {
        format!("{:.2}", (v * 100.0).trunc() / 100.0)
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An io::Error as Postfix words it (`Connection refused`), without Rust's `(os error N)`.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// How one recipient's delivery ended, for the log line.
#[derive(Clone)]
struct Done {
    outcome: Outcome,
    relay: Option<String>,
}

impl Client {
    pub fn new(cfg: &Config, dns: Arc<Dns>) -> Client {
        let settings = Settings {
            timeouts: Timeouts::from_config(cfg),
            helo_name: cfg.get("smtp_helo_name"),
            myhostname: cfg.get("myhostname"),
            relayhost: cfg.get("relayhost"),
            fallback: cfg.get_list("smtp_fallback_relay"),
            mx_address_limit: cfg.get_int("smtp_mx_address_limit").max(0) as usize,
            mx_session_limit: cfg.get_int("smtp_mx_session_limit").max(0) as usize,
            cache_time: cfg.get_time("smtp_connection_cache_time_limit"),
            reuse_limit: cfg.get_int("smtp_connection_reuse_count_limit").max(0) as u32,
            queue_dir: PathBuf::from(cfg.get("queue_directory")),
            syslog_name: cfg.get("syslog_name"),
        };
        let tls = tls::ClientTls::new(cfg, false);
        let ltls = tls::ClientTls::new(cfg, true);
        let sasl = sasl::SaslClient::new(cfg);
        for (name, w) in tls.warnings.iter().chain(&sasl.warnings) {
            tracing::warn!("smtp: {name}: {w}");
        }
        Client {
            settings: Arc::new(settings),
            dns,
            cache: Arc::new(Cache::default()),
            tag: None,
            tls: Arc::new(tls),
            ltls: Arc::new(ltls),
            sasl: Arc::new(sasl),
        }
    }

    /// Logs under `tag` (e.g. `postfix/relay/smtp`) instead of `syslog_name/smtp|lmtp`.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Client {
        self.tag = Some(tag.into());
        self
    }

    /// Number of idle sessions in the cache (for tests and status).
    pub fn cached_sessions(&self) -> usize {
        self.cache
            .map
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Delivers one job; returns each recipient's index with its outcome.
    pub async fn deliver(&self, job: Job) -> Vec<(usize, Outcome)> {
        let tag = self.tag.clone().unwrap_or_else(|| {
            crate::log::tag(
                &self.settings.syslog_name,
                if job.lmtp { "lmtp" } else { "smtp" },
            )
        });
        let span = crate::log::service_span!(tag);
        self.deliver_inner(job).instrument(span).await
    }

    async fn deliver_inner(&self, job: Job) -> Vec<(usize, Outcome)> {
        let start = Instant::now();
        let start_wall = SystemTime::now();
        let n = job.recipients.len();
        let mut done: Vec<Option<Done>> = vec![None; n];
        let mut setup = Duration::ZERO;
        let mut xfer = Duration::ZERO;

        self.run(&job, &mut done, &mut setup, &mut xfer, start)
            .await;

        // Log and return, in the job's order.
        let arrival = job.active_since.unwrap_or(start_wall);
        let a = arrival
            .duration_since(job.arrival)
            .unwrap_or(Duration::ZERO);
        let b = start_wall.duration_since(arrival).unwrap_or(Duration::ZERO);
        let total = start_wall
            .duration_since(job.arrival)
            .unwrap_or(Duration::ZERO)
            + start.elapsed();
        let mut out = Vec::with_capacity(n);
        for (r, d) in job.recipients.iter().zip(done) {
            let d = d.unwrap_or(Done {
                outcome: Outcome::deferred("4.3.0", "internal: no delivery attempt"),
                relay: None,
            });
            let orig = if !r.original.is_empty() && r.original != r.address {
                format!("orig_to=<{}>, ", r.original)
            } else {
                String::new()
            };
            tracing::info!(
                "{}: to=<{}>, {}relay={}, delay={}, delays={}/{}/{}/{}, dsn={}, status={} ({})",
                job.queue_id,
                r.address,
                orig,
                d.relay.as_deref().unwrap_or("none"),
                format_delay(total),
                format_delay(a),
                format_delay(b),
                format_delay(setup),
                format_delay(xfer),
                d.outcome.dsn(),
                d.outcome.status_word(),
                d.outcome.text()
            );
            out.push((r.index, d.outcome));
        }
        out
    }

    /// The next-hop text in effect for a job.
    fn nexthop_text(&self, job: &Job) -> String {
        if !job.nexthop.trim().is_empty() {
            return job.nexthop.trim().to_string();
        }
        if !job.lmtp && !self.settings.relayhost.trim().is_empty() {
            return self.settings.relayhost.trim().to_string();
        }
        job.recipients
            .first()
            .and_then(|r| r.address.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    }

    /// Resolves a next-hop into connection targets, or an outcome for every recipient.
    async fn targets(&self, nh: &Nexthop) -> Result<Vec<Target>, Outcome> {
        match nh {
            Nexthop::Unix { path } => Ok(vec![Target {
                host: self.settings.myhostname.clone(),
                addr: Addr::Unix(path.clone()),
                dest_text: String::new(),
                dest: String::new(),
                policy: Arc::new(tls::Policy {
                    level: tls::Level::None,
                    matches: Vec::new(),
                    protocols: None,
                    servername: String::new(),
                }),
            }]),
            Nexthop::Inet { host, port, mx } => {
                let limit = match self.settings.mx_address_limit {
                    0 => usize::MAX,
                    l => l,
                };
                let hosts: Vec<String> = if *mx {
                    match self.dns.mx(host).await {
                        Ok(Mx::Records(mut recs)) => {
                            // Lowest preference first, random order among equals (RFC 5321 5.1).
                            recs.shuffle(&mut rand::thread_rng());
                            recs.sort_by_key(|r| r.preference);
                            recs.into_iter().map(|r| r.host).collect()
                        }
                        Ok(Mx::NoMx) => vec![host.clone()],
                        Ok(Mx::NullMx) => {
                            return Err(Outcome::bounced(
                                "5.1.10",
                                format!("Domain {host} does not accept mail (nullMX)"),
                            ))
                        }
                        Err(e) => return Err(dns_outcome(&e)),
                    }
                } else {
                    vec![host.clone()]
                };
                let mut out = Vec::new();
                let mut errors = Vec::new();
                for h in hosts {
                    if out.len() >= limit {
                        break;
                    }
                    match self.dns.addrs(&h).await {
                        Ok(ips) => {
                            for ip in ips.into_iter().take(limit - out.len()) {
                                out.push(Target {
                                    host: h.clone(),
                                    addr: Addr::Tcp(SocketAddr::new(ip, *port)),
                                    dest_text: String::new(),
                                    dest: host.clone(),
                                    policy: Arc::new(tls::Policy {
                                        level: tls::Level::None,
                                        matches: Vec::new(),
                                        protocols: None,
                                        servername: String::new(),
                                    }),
                                });
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
                if out.is_empty() {
                    let e = errors
                        .iter()
                        .find(|e| e.is_temporary())
                        .or(errors.first())
                        .cloned()
                        .unwrap_or(DnsError::Temporary {
                            name: host.clone(),
                            rtype: "A",
                        });
                    return Err(dns_outcome(&e));
                }
                Ok(out)
            }
        }
    }

    async fn connect(&self, t: &Target) -> Result<Box<dyn Stream>, String> {
        let limit = self.settings.timeouts.connect;
        let res = match &t.addr {
            Addr::Tcp(sa) => tokio::time::timeout(limit, tokio::net::TcpStream::connect(sa))
                .await
                .map(|r| r.map(|s| Box::new(s) as Box<dyn Stream>)),
            Addr::Unix(p) => tokio::time::timeout(limit, tokio::net::UnixStream::connect(p))
                .await
                .map(|r| r.map(|s| Box::new(s) as Box<dyn Stream>)),
        };
        match res {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("connect to {}: {}", t.relay(), io_reason(&e))),
            Err(_) => Err(format!("connect to {}: Connection timed out", t.relay())),
        }
    }

    /// The delivery proper: cached session first, then each target in turn.
    async fn run(
        &self,
        job: &Job,
        done: &mut [Option<Done>],
        setup: &mut Duration,
        xfer: &mut Duration,
        start: Instant,
    ) {
        let text = self.nexthop_text(job);
        let default_port = if job.lmtp { 24 } else { 25 };
        let nh = match Nexthop::parse(&text, job.lmtp, default_port, &self.settings.queue_dir) {
            Ok(nh) => nh,
            Err(e) => {
                fill(
                    done,
                    Outcome::deferred("4.3.5", format!("mail transport unavailable: {e}")),
                    None,
                );
                return;
            }
        };
        let policy = match self.policy_for(&text, &nh, job.lmtp) {
            Ok(p) => p,
            Err(o) => {
                fill(done, o, None);
                return;
            }
        };
        // Sessions are cached per TLS level and SASL identity, so a plaintext session is
        // never reused where TLS is required, nor one login for another sender's mail.
        let dest_host = match &nh {
            Nexthop::Inet { host, .. } => host.clone(),
            Nexthop::Unix { .. } => String::new(),
        };
        let sasl_user = if job.lmtp {
            String::new()
        } else {
            self.sasl
                .credentials(&job.sender, &text, &dest_host, &dest_host)
                .ok()
                .flatten()
                .map(|c| {
                    // Two senders may share a login name with different passwords: key on
                    // both (hashed; the password itself is kept out of the key).
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    c.pass.hash(&mut h);
                    format!("{}#{:x}", c.user, h.finish())
                })
                .unwrap_or_default()
        };
        let key = format!(
            "{}:{}:{sasl_user}:{text}",
            if job.lmtp { "lmtp" } else { "smtp" },
            policy.level.name()
        );
        let mut last: Option<Done> = None;

        // A cached session skips DNS, connect and handshake.
        if let Some(c) = self.cached(&key).await {
            *setup = start.elapsed();
            let t0 = Instant::now();
            let reusable = self
                .attempt(job, done, c.session, &c.target, &key, &mut last)
                .await;
            *xfer += t0.elapsed();
            if reusable && done.iter().all(Option::is_some) {
                return;
            }
        }
        if done.iter().all(Option::is_some) {
            return;
        }

        let mut targets = match self.targets(&nh).await {
            Ok(mut t) => {
                for x in &mut t {
                    x.dest_text = text.clone();
                    x.policy = policy.clone();
                }
                t
            }
            Err(o) => {
                if matches!(o, Outcome::Bounced { .. }) || self.settings.fallback.is_empty() {
                    fill(done, o, None);
                    return;
                }
                last = Some(Done {
                    outcome: o,
                    relay: None,
                });
                Vec::new()
            }
        };
        if !job.lmtp {
            for f in &self.settings.fallback {
                if let Ok(fnh) = Nexthop::parse(f, false, 25, &self.settings.queue_dir) {
                    let Ok(fp) = self.policy_for(f, &fnh, false) else {
                        continue;
                    };
                    if let Ok(mut t) = self.targets(&fnh).await {
                        for x in &mut t {
                            x.dest_text = f.clone();
                            x.policy = fp.clone();
                        }
                        targets.extend(t);
                    }
                }
            }
        }
        let session_limit = match self.settings.mx_session_limit {
            0 => usize::MAX,
            l => l,
        };
        let mut sessions = 0usize;
        for t in &targets {
            if done.iter().all(Option::is_some) || sessions >= session_limit {
                break;
            }
            let s = match self.establish(job, t, false).await {
                Ok(s) => s,
                Err(SetupErr::Connect(reason)) => {
                    tracing::info!("{reason}");
                    last = Some(Done {
                        outcome: Outcome::deferred("4.4.1", reason),
                        relay: None,
                    });
                    continue;
                }
                Err(SetupErr::Failed(d)) => {
                    sessions += 1;
                    last = Some(d);
                    continue;
                }
                Err(SetupErr::RetryPlain) => match self.establish(job, t, true).await {
                    Ok(s) => s,
                    Err(SetupErr::Connect(reason)) => {
                        tracing::info!("{reason}");
                        last = Some(Done {
                            outcome: Outcome::deferred("4.4.1", reason),
                            relay: None,
                        });
                        continue;
                    }
                    Err(SetupErr::Failed(d)) => {
                        sessions += 1;
                        last = Some(d);
                        continue;
                    }
                    Err(SetupErr::RetryPlain) => continue,
                },
            };
            sessions += 1;
            *setup = start.elapsed();
            let t0 = Instant::now();
            self.attempt(job, done, s, t, &key, &mut last).await;
            *xfer += t0.elapsed();
        }
        let d = last.unwrap_or(Done {
            outcome: Outcome::deferred("4.4.1", "no route to destination"),
            relay: None,
        });
        fill(done, d.outcome, d.relay);
    }

    /// The TLS policy for a next-hop, or the outcome when it cannot be had (the mail waits).
    fn policy_for(
        &self,
        text: &str,
        nh: &Nexthop,
        lmtp: bool,
    ) -> Result<Arc<tls::Policy>, Outcome> {
        let (host, port, bracketed) = match nh {
            Nexthop::Inet { host, port, mx } => (host.as_str(), *port, !*mx),
            Nexthop::Unix { .. } => {
                return Ok(Arc::new(tls::Policy {
                    level: tls::Level::None,
                    matches: Vec::new(),
                    protocols: None,
                    servername: String::new(),
                }))
            }
        };
        let tlsc = if lmtp { &self.ltls } else { &self.tls };
        tlsc.policy(text, host, port, bracketed, if lmtp { 24 } else { 25 })
            .map(Arc::new)
            .map_err(|e| Outcome::deferred("4.7.5", e.to_string()))
    }

    /// Connect, greeting and EHLO, STARTTLS as the target's policy asks (`plain` after a failed
    /// handshake at level may), and SASL authentication when credentials exist.
    async fn establish(
        &self,
        job: &Job,
        t: &Target,
        plain: bool,
    ) -> Result<Session<Box<dyn Stream>>, SetupErr> {
        let io = self.connect(t).await.map_err(SetupErr::Connect)?;
        let timeouts = self.settings.timeouts;
        let helo = &self.settings.helo_name;
        let fail = |o: Outcome| {
            SetupErr::Failed(Done {
                outcome: o,
                relay: Some(t.relay()),
            })
        };
        let mut s = Session::new(io, t.peer(), job.lmtp, timeouts);
        match s.handshake(helo).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                s.quit().await;
                return Err(fail(Outcome::deferred("4.3.0", reason)));
            }
            Err(f) => return Err(fail(Outcome::deferred("4.4.2", f.reason(&t.peer())))),
        }
        let tlsc = if job.lmtp { &self.ltls } else { &self.tls };
        let p = &t.policy;
        let level = if plain { tls::Level::None } else { p.level };
        let mut tls_active = false;
        if level == tls::Level::None {
            if s.caps.starttls && tlsc.note_starttls_offer {
                tracing::info!("Host offered STARTTLS: [{}]", t.host);
            }
        } else if !s.caps.starttls {
            if level.required() {
                s.quit().await;
                return Err(fail(Outcome::deferred(
                    "4.7.4",
                    format!("TLS is required, but was not offered by host {}", t.peer()),
                )));
            }
        } else {
            match s.starttls().await {
                Err(f) => return Err(fail(Outcome::deferred("4.4.2", f.reason(&t.peer())))),
                Ok(Err(r)) => {
                    if level.required() {
                        s.quit().await;
                        return Err(fail(Outcome::deferred(
                            "4.7.4",
                            format!(
                                "TLS is required, but host {} refused to start TLS: {}",
                                t.peer(),
                                r.text
                            ),
                        )));
                    }
                }
                Ok(Ok(())) => {
                    let sni = tlsc.sni(p, &t.host, &t.dest);
                    let cfg = match tlsc.config(p, sni.is_some()) {
                        Ok(c) => c,
                        Err(e) => {
                            return Err(fail(Outcome::deferred(
                                "4.7.5",
                                format!("Cannot start TLS: {e}"),
                            )))
                        }
                    };
                    // The name also keys rustls's session resumption cache.
                    let name = sni.clone().unwrap_or_else(|| t.host.clone());
                    let name = rustls::pki_types::ServerName::try_from(name)
                        .or_else(|_| {
                            rustls::pki_types::ServerName::try_from("invalid.invalid".to_string())
                        })
                        .map_err(|e| {
                            fail(Outcome::deferred("4.7.5", format!("Cannot start TLS: {e}")))
                        })?;
                    let connector = tokio_rustls::TlsConnector::from(cfg);
                    let io = s.into_io();
                    let stream = match tokio::time::timeout(
                        timeouts.helo,
                        connector.connect(name, io),
                    )
                    .await
                    {
                        Ok(Ok(st)) => st,
                        res => {
                            let why = match res {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timeout".to_string(),
                            };
                            if level.required() {
                                tracing::info!("TLS handshake with {} failed: {why}", t.relay());
                                return Err(fail(Outcome::deferred(
                                    "4.7.5",
                                    "Cannot start TLS: handshake failure",
                                )));
                            }
                            tracing::info!(
                                "TLS handshake with {} failed: {why}; TLS is not required, retrying without TLS",
                                t.relay()
                            );
                            return Err(SetupErr::RetryPlain);
                        }
                    };
                    let (_, conn) = stream.get_ref();
                    let certs = conn.peer_certificates().unwrap_or(&[]);
                    let chk = tlsc.check(certs, p, &t.host, &t.dest);
                    let desc = crate::tlsmgr::describe(conn);
                    if tlsc.loglevel >= 1 {
                        tracing::info!(
                            "{} TLS connection established to {}: {desc}",
                            chk.word(level),
                            t.relay()
                        );
                    }
                    s = Session::new(
                        Box::new(stream) as Box<dyn Stream>,
                        t.peer(),
                        job.lmtp,
                        timeouts,
                    );
                    if level >= tls::Level::Verify && (!chk.trusted || !chk.matched) {
                        let why = if chk.trusted {
                            "Server certificate not verified"
                        } else {
                            "Server certificate not trusted"
                        };
                        s.quit().await;
                        return Err(fail(Outcome::deferred("4.7.5", why)));
                    }
                    match s.ehlo(helo).await {
                        Ok(Ok(())) => {}
                        Ok(Err(reason)) => {
                            s.quit().await;
                            return Err(fail(Outcome::deferred("4.3.0", reason)));
                        }
                        Err(f) => {
                            return Err(fail(Outcome::deferred("4.4.2", f.reason(&t.peer()))))
                        }
                    }
                    tls_active = true;
                }
            }
        }
        if !job.lmtp && self.sasl.enabled {
            let creds = match self
                .sasl
                .credentials(&job.sender, &t.dest_text, &t.host, &t.dest)
            {
                Ok(c) => c,
                Err(e) => {
                    s.quit().await;
                    return Err(fail(Outcome::deferred("4.3.0", e)));
                }
            };
            // A server that offers no AUTH gets the mail without it, as in Postfix.
            if let Some(c) = creds.filter(|_| !s.caps.auth.is_empty()) {
                let Some(mech) = self.sasl.mechanism(&s.caps.auth, tls_active) else {
                    s.quit().await;
                    return Err(fail(Outcome::deferred(
                        "4.7.0",
                        format!(
                            "SASL authentication failed; cannot authenticate to server {}: no mechanism available",
                            t.peer()
                        ),
                    )));
                };
                match s.auth(mech, &c.user, &c.pass).await {
                    Ok(Ok(())) => {}
                    Ok(Err(r)) => {
                        s.quit().await;
                        // smtp_sasl_auth_soft_bounce: a refused login waits for a fix.
                        let dsn = format!("4{}", r.dsn().get(1..).unwrap_or(".7.0"));
                        return Err(fail(Outcome::deferred(
                            &dsn,
                            format!(
                                "SASL authentication failed; server {} said: {}",
                                t.peer(),
                                r.text
                            ),
                        )));
                    }
                    Err(f) => return Err(fail(Outcome::deferred("4.4.2", f.reason(&t.peer())))),
                }
            }
        }
        Ok(s)
    }

    /// A usable cached session for `key`, after RSET if its last transaction was left open.
    async fn cached(&self, key: &str) -> Option<Cached> {
        // Bounded: at most the sessions present now are examined.
        for _ in 0..64 {
            let mut c = self.cache.take(key)?;
            if c.session.needs_rset {
                match c.session.rset().await {
                    Ok(true) => {}
                    _ => continue,
                }
            }
            return Some(c);
        }
        None
    }

    /// Runs the transaction for the recipients still open on `s`; records final outcomes and
    /// keeps deferred ones as the last reason so the next server gets a chance. Returns
    /// whether the session survived.
    async fn attempt(
        &self,
        job: &Job,
        done: &mut [Option<Done>],
        mut s: Session<Box<dyn Stream>>,
        t: &Target,
        key: &str,
        last: &mut Option<Done>,
    ) -> bool {
        let open: Vec<usize> = (0..done.len()).filter(|&i| done[i].is_none()).collect();
        let rcpts: Vec<TxRcpt> = open
            .iter()
            .map(|&i| {
                let r = &job.recipients[i];
                TxRcpt {
                    address: r.address.clone(),
                    notify: notify_param(&r.notify),
                    // Stored decoded (as smtpd got it), sent as xtext (RFC 3461): an
                    // address with `+` or `=` sent raw would reach the peer garbled.
                    orcpt: r.orcpt.as_deref().map(orcpt_param).or_else(|| {
                        let o = if r.original.is_empty() {
                            &r.address
                        } else {
                            &r.original
                        };
                        Some(format!("rfc822;{}", session::xtext(o)))
                    }),
                }
            })
            .collect();
        let tx = Tx {
            sender: &job.sender,
            rcpts: &rcpts,
            content: &job.content,
            ret: job.ret,
            envid: job.envid.as_deref(),
            body_type: job.body_type,
            smtputf8: job.smtputf8,
        };
        match s.transaction(&tx).await {
            Ok(res) => {
                for (&i, o) in open.iter().zip(res.outcomes) {
                    if matches!(o, Outcome::Deferred { .. }) {
                        *last = Some(Done {
                            outcome: o,
                            relay: Some(t.relay()),
                        });
                    } else {
                        done[i] = Some(Done {
                            outcome: o,
                            relay: Some(t.relay()),
                        });
                    }
                }
                self.release(s, t.clone(), key).await;
                true
            }
            Err(f) => {
                *last = Some(Done {
                    outcome: Outcome::deferred("4.4.2", f.reason(&t.peer())),
                    relay: Some(t.relay()),
                });
                false
            }
        }
    }

    /// Puts a session back in the cache, or ends it when it may not be reused.
    async fn release(&self, mut s: Session<Box<dyn Stream>>, target: Target, key: &str) {
        let limit = self.settings.cache_time;
        // reuse_limit 0 means no limit, as in Postfix.
        let worn = self.settings.reuse_limit != 0 && s.uses >= self.settings.reuse_limit;
        if limit.is_zero() || worn {
            s.quit().await;
            return;
        }
        let id = self.cache.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.cache.map.lock() {
            m.entry(key.to_string()).or_default().push(Cached {
                id,
                session: s,
                target,
            });
        } else {
            return;
        }
        // Close the session when it has idled for the time limit (if nobody took it).
        let cache = Arc::downgrade(&self.cache);
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let taken = cache.upgrade().and_then(|c| c.take_id(&key, id));
            if let Some(mut c) = taken {
                c.session.quit().await;
            }
        });
    }
}

fn fill(done: &mut [Option<Done>], o: Outcome, relay: Option<String>) {
    for d in done.iter_mut().filter(|d| d.is_none()) {
        *d = Some(Done {
            outcome: o.clone(),
            relay: relay.clone(),
        });
    }
}

/// RFC 3461 NOTIFY value, when the client gave one.
fn notify_param(n: &Notify) -> Option<String> {
    if !n.explicit {
        return None;
    }
    if n.never {
        return Some("NEVER".into());
    }
    let mut v = Vec::new();
    if n.success {
        v.push("SUCCESS");
    }
    if n.failure {
        v.push("FAILURE");
    }
    if n.delay {
        v.push("DELAY");
    }
    if v.is_empty() {
        return Some("NEVER".into());
    }
    Some(v.join(","))
}

/// What a DNS failure means for the recipients (Postfix's wording and codes).
fn dns_outcome(e: &DnsError) -> Outcome {
    let text = format!("Host or domain name not found. {e}");
    if e.is_temporary() {
        Outcome::deferred("4.4.3", text)
    } else {
        Outcome::bounced("5.4.4", text)
    }
}

/// `type;address` as stored → the ORCPT parameter, its address xtext-encoded.
fn orcpt_param(stored: &str) -> String {
    match stored.split_once(';') {
        Some((kind, addr)) => format!("{kind};{}", session::xtext(addr)),
        None => format!("rfc822;{}", session::xtext(stored)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orcpt_is_sent_as_xtext() {
        assert_eq!(orcpt_param("rfc822;a+b=c@x"), "rfc822;a+2Bb+3Dc@x");
        assert_eq!(orcpt_param("rfc822;plain@x"), "rfc822;plain@x");
    }

    #[test]
    fn delay_format() {
        assert_eq!(format_delay(Duration::from_millis(0)), "0");
        assert_eq!(format_delay(Duration::from_millis(4)), "0");
        assert_eq!(format_delay(Duration::from_millis(23)), "0.02");
        assert_eq!(format_delay(Duration::from_millis(1230)), "1.2");
        assert_eq!(format_delay(Duration::from_millis(44_900)), "44");
        assert_eq!(format_delay(Duration::from_millis(100)), "0.1");
    }

    #[test]
    fn notify_values() {
        let mut n = Notify::default();
        assert_eq!(notify_param(&n), None);
        n.explicit = true;
        n.success = true;
        n.failure = true;
        assert_eq!(notify_param(&n).as_deref(), Some("SUCCESS,FAILURE"));
        n.never = true;
        assert_eq!(notify_param(&n).as_deref(), Some("NEVER"));
    }
}
