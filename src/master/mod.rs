//! NAME
//!   master - the relais resident process
//!
//! SUMMARY
//!   `relais start-fg` runs it in the foreground; `relais start` runs it in the background.
//!
//! DESCRIPTION
//!   The master reads main.cf and master.cf, takes the queue directory's lock (a second master
//!   on the same queue refuses to start), opens the queue, binds the control socket, and starts
//!   one supervised actor (or pool sized by maxproc) per master.cf row whose command relais
//!   implements. A service whose actor dies is restarted with exponential backoff (1 s to 60 s).
//!   SIGHUP re-reads the configuration: unchanged rows keep their actors and sockets and get the
//!   new settings; established sessions are not cut. SIGTERM/SIGINT stop listening, let sessions
//!   finish (bounded), flush the queue and exit. Only this module starts actors and hands out
//!   their addresses.
//!
//!   As Postfix's master, it binds every smtpd inet address before it starts anything: a port
//!   it cannot have is fatal at start (a service restarted later retries instead). Every
//!   reason it gives up once its log is open (lock held, queue that cannot be opened, port in
//!   use) is logged as `postfix/master[pid]: fatal: …`, so the maillog says why the mail
//!   system is down. On SIGTERM it writes `pid/master.stopping` (its pid) and, last of all,
//!   after the actors and the queue (sled's own lock) are gone, releases
//!   `pid/master.pid`: `relais stop` returns only then, and a `relais start` meanwhile waits
//!   for it instead of finding the database locked.
//!
//! QUEUES
//!   None directly; at start the queue's own recovery moves `active` back to `incoming`.
//!
//! MESSAGES
//!   Supervisor: `Reload`, `Shutdown`, `Status`.
//!
//! SECURITY
//!   Runs unprivileged; never needs root for the default configuration (ports above 1024).
//!
//! CONFIGURATION PARAMETERS
//!   queue_directory (/var/spool/postfix), maillog_file (), syslog_name (postfix),
//!   default_process_limit (100), myhostname (system name)

pub mod daemon;
pub mod lock;
pub mod services;
pub mod supervisor;

pub use supervisor::{ServiceHandle, ServiceSpec, Starter, Supervisor};

use crate::config::{Config, Problem};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MasterError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("{0}")]
    Setup(String),
}

/// The queue directory named by the configuration, relative paths taken from the current
/// directory (so the default conf/ can say `queue_directory = spool`).
pub fn queue_dir(cfg: &Config) -> PathBuf {
    PathBuf::from(cfg.get("queue_directory"))
}

/// Everything `relais check` reports, in file order; `fatal` ones make it exit non-zero.
pub fn check(cfg: &Config) -> Vec<Problem> {
    let mut out = cfg.check();
    out.extend(crate::config::master_cf::check_file(
        &cfg.dir.join("master.cf"),
        cfg,
    ));
    out.extend(tls_problems(cfg));
    out.extend(client_tls_problems(cfg));
    let q = queue_dir(cfg);
    if let Err(e) = std::fs::create_dir_all(&q) {
        out.push(Problem {
            fatal: true,
            text: format!("queue_directory {}: cannot create: {e}", q.display()),
        });
    } else if let Err(e) = tempfile_probe(&q) {
        out.push(Problem {
            fatal: true,
            text: format!("queue_directory {}: not writable: {e}", q.display()),
        });
    }
    out
}

/// smtpd services whose TLS keys cannot be loaded: they will not start if they require TLS,
/// and will not offer STARTTLS otherwise.
fn tls_problems(cfg: &Config) -> Vec<Problem> {
    let path = cfg.dir.join("master.cf");
    let Ok(m) = crate::config::master_cf::MasterCf::read(&path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in m.services(cfg).into_iter().filter(|s| s.command == "smtpd") {
        let mut ov: Vec<(&str, &str)> = vec![("service_name", s.name.as_str())];
        ov.extend(s.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let c = cfg.with_overrides(ov);
        if let Err(e) = crate::tlsmgr::server_config(&c) {
            let required = c.get_bool("smtpd_tls_wrappermode")
                || crate::tlsmgr::Level::from_config(&c) == crate::tlsmgr::Level::Encrypt;
            let what = if required {
                "the service will not be started rather than accept mail in plaintext"
            } else {
                "STARTTLS will not be offered"
            };
            out.push(Problem {
                fatal: false,
                text: format!(
                    "{}, line {}: service {}: TLS keys cannot be loaded ({e}); {what}",
                    path.display(),
                    s.line,
                    s.id()
                ),
            });
        }
    }
    out
}

/// What the smtp/lmtp client's TLS and SASL settings cannot do as written (protocols rustls
/// does not speak, unreadable CA files or tables, DANE levels…), and client-certificate
/// settings of smtpd.
fn client_tls_problems(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let tls = crate::smtp::tls::ClientTls::new(cfg, false);
    let ltls = crate::smtp::tls::ClientTls::new(cfg, true);
    let sasl = crate::smtp::sasl::SaslClient::new(cfg);
    let ccerts = crate::tlsmgr::client_certs(cfg);
    let file = cfg.main.path.display().to_string();
    let all = tls
        .warnings
        .iter()
        .chain(&ltls.warnings)
        .chain(&sasl.warnings)
        .chain(&ccerts.warnings);
    for (names, w) in all {
        // Named at the main.cf line that set the parameter; a problem that comes from
        // defaults alone has no line to name and is logged at start instead.
        let Some((name, line)) = names
            .split('|')
            .find_map(|n| cfg.main.settings.get(n).map(|s| (n, s.line)))
        else {
            continue;
        };
        let text = format!("{file}, line {line}: {name}: {w}");
        if !out.iter().any(|p: &Problem| p.text == text) {
            out.push(Problem { fatal: false, text });
        }
    }
    if let Some(s) = cfg.main.settings.get("smtpd_tls_protocols") {
        let ((_, _), w) = crate::smtp::tls::protocol_versions(&cfg.get_list("smtpd_tls_protocols"));
        for w in w {
            out.push(Problem {
                fatal: false,
                text: format!("{file}, line {}: smtpd_tls_protocols: {w}", s.line),
            });
        }
    }
    out
}

fn tempfile_probe(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(format!(".relais-check-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(&p)
}
