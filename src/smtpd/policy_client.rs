//! check_policy_service: Postfix's policy delegation protocol (SMTPD_POLICY_README).
//!
//! A request is `name=value` lines and an empty line; the server answers the same way with an
//! `action=…` attribute, an access(5) result. Connections are kept per service and reused
//! (smtpd_policy_service_max_idle, _max_ttl, _request_limit); every connect, write and read
//! is bounded by smtpd_policy_service_timeout; a failed exchange is retried up to
//! smtpd_policy_service_try_limit times, smtpd_policy_service_retry_delay apart, and then
//! smtpd_policy_service_default_action applies (`451 4.3.5 Server configuration problem`),
//! so a dead or hung policy server never hangs a session.
//!
//! Per-use settings override main.cf as in Postfix:
//! `check_policy_service { inet:127.0.0.1:10023, timeout=10s, default_action=DUNNO }`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum PolicyClientError {
    #[error("bad policy service endpoint \"{0}\" (want inet:host:port or unix:path)")]
    Endpoint(String),
    #[error("bad policy service setting \"{0}\"")]
    Setting(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("Connection timed out")]
    Timeout,
    #[error("malformed response: {0}")]
    Protocol(String),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One open connection to the policy server.
struct Conn {
    io: BufReader<Box<dyn Stream>>,
    opened: Instant,
    last_used: Instant,
    requests: u32,
}

#[derive(Debug, Clone)]
enum Endpoint {
    Inet(String),
    Unix(PathBuf),
}

/// The longest response line and the most lines read from a policy server.
const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 100;
/// Idle connections kept per service.
const POOL: usize = 16;

pub struct PolicyClient {
    name: String,
    endpoint: Endpoint,
    timeout: Duration,
    max_idle: Duration,
    max_ttl: Duration,
    try_limit: u32,
    retry_delay: Duration,
    request_limit: u32,
    default_action: String,
    context: String,
    idle: Mutex<Vec<Conn>>,
}

impl PolicyClient {
    /// `spec` is the check_policy_service argument: an endpoint, or `{ endpoint, name=value… }`.
    pub fn from_config(cfg: &Config, spec: &str) -> Result<PolicyClient, PolicyClientError> {
        let inner = spec
            .trim()
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(spec);
        let items = crate::config::split_list(inner);
        let Some(first) = items.first() else {
            return Err(PolicyClientError::Endpoint(spec.to_string()));
        };
        let endpoint = if let Some(p) = first.strip_prefix("unix:") {
            let p = PathBuf::from(p);
            Endpoint::Unix(if p.is_absolute() {
                p
            } else {
                PathBuf::from(cfg.get("queue_directory")).join(p)
            })
        } else {
            let hp = first.strip_prefix("inet:").unwrap_or(first);
            if !hp.contains(':') {
                return Err(PolicyClientError::Endpoint(first.clone()));
            }
            Endpoint::Inet(hp.trim_start_matches('[').replacen("]:", ":", 1))
        };
        let mut c = PolicyClient {
            name: first.clone(),
            endpoint,
            timeout: cfg.get_time("smtpd_policy_service_timeout"),
            max_idle: cfg.get_time("smtpd_policy_service_max_idle"),
            max_ttl: cfg.get_time("smtpd_policy_service_max_ttl"),
            try_limit: cfg.get_int("smtpd_policy_service_try_limit").max(1) as u32,
            retry_delay: cfg.get_time("smtpd_policy_service_retry_delay"),
            request_limit: cfg.get_int("smtpd_policy_service_request_limit").max(0) as u32,
            default_action: cfg.get("smtpd_policy_service_default_action"),
            context: cfg.get("smtpd_policy_service_policy_context"),
            idle: Mutex::new(Vec::new()),
        };
        for it in items.iter().skip(1) {
            let it = it.trim_start_matches('{').trim_end_matches('}').trim();
            let (k, v) = it
                .split_once('=')
                .ok_or_else(|| PolicyClientError::Setting(it.to_string()))?;
            let time = |v: &str| {
                crate::config::parse_time(v, 's')
                    .map(|s| Duration::from_secs(s.max(0) as u64))
                    .ok_or_else(|| PolicyClientError::Setting(it.to_string()))
            };
            match k.trim() {
                "timeout" => c.timeout = time(v)?,
                "max_idle" => c.max_idle = time(v)?,
                "max_ttl" => c.max_ttl = time(v)?,
                "retry_delay" => c.retry_delay = time(v)?,
                "try_limit" => {
                    c.try_limit = v
                        .parse::<u32>()
                        .map_err(|_| PolicyClientError::Setting(it.to_string()))?
                        .max(1)
                }
                "request_limit" => {
                    c.request_limit = v
                        .parse()
                        .map_err(|_| PolicyClientError::Setting(it.to_string()))?
                }
                "default_action" => c.default_action = v.to_string(),
                "policy_context" => c.context = v.to_string(),
                _ => return Err(PolicyClientError::Setting(it.to_string())),
            }
        }
        Ok(c)
    }

    /// Asks the server; its `action`, or the default action when it cannot answer.
    pub async fn query(&self, attrs: &[(&'static str, String)]) -> String {
        let mut req = String::new();
        for (k, v) in attrs {
            // A value must not break the line protocol.
            let v: String = v.chars().filter(|c| *c != '\n' && *c != '\r').collect();
            req.push_str(&format!("{k}={v}\n"));
        }
        req.push_str(&format!("policy_context={}\n\n", self.context));
        for attempt in 0..self.try_limit {
            if attempt > 0 && !self.retry_delay.is_zero() {
                tokio::time::sleep(self.retry_delay).await;
            }
            match self.exchange(&req).await {
                Ok(action) => return action,
                Err(e) => tracing::warn!("problem talking to server {}: {e}", self.name),
            }
        }
        tracing::warn!(
            "policy server {} unavailable; using default action \"{}\"",
            self.name,
            self.default_action
        );
        self.default_action.clone()
    }

    /// An idle connection still fit for use, or a new one.
    async fn conn(&self) -> Result<Conn, PolicyClientError> {
        let now = Instant::now();
        let reused = self.idle.lock().ok().and_then(|mut pool| {
            pool.retain(|c| {
                now.duration_since(c.last_used) < self.max_idle
                    && now.duration_since(c.opened) < self.max_ttl
            });
            pool.pop()
        });
        if let Some(c) = reused {
            return Ok(c);
        }
        let io: Box<dyn Stream> = match &self.endpoint {
            Endpoint::Inet(hp) => Box::new(
                tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(hp.as_str()))
                    .await
                    .map_err(|_| PolicyClientError::Timeout)??,
            ),
            Endpoint::Unix(p) => Box::new(
                tokio::time::timeout(self.timeout, tokio::net::UnixStream::connect(p))
                    .await
                    .map_err(|_| PolicyClientError::Timeout)??,
            ),
        };
        Ok(Conn {
            io: BufReader::new(io),
            opened: now,
            last_used: now,
            requests: 0,
        })
    }

    async fn exchange(&self, req: &str) -> Result<String, PolicyClientError> {
        let mut c = self.conn().await?;
        let t = self.timeout;
        tokio::time::timeout(t, async {
            c.io.get_mut().write_all(req.as_bytes()).await?;
            c.io.get_mut().flush().await
        })
        .await
        .map_err(|_| PolicyClientError::Timeout)??;
        let mut action = None;
        let mut lines = 0;
        // Bounded: at most MAX_LINES lines of at most MAX_LINE bytes, each read timed.
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(t, read_line(&mut c.io, &mut line))
                .await
                .map_err(|_| PolicyClientError::Timeout)??;
            if n == 0 {
                return Err(PolicyClientError::Protocol("connection closed".into()));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                break;
            }
            lines += 1;
            if lines > MAX_LINES {
                return Err(PolicyClientError::Protocol("too many lines".into()));
            }
            if let Some(v) = text.strip_prefix("action=") {
                action = Some(v.trim().to_string());
            }
        }
        let action =
            action.ok_or_else(|| PolicyClientError::Protocol("missing action attribute".into()))?;
        c.requests += 1;
        c.last_used = Instant::now();
        if self.request_limit == 0 || c.requests < self.request_limit {
            if let Ok(mut pool) = self.idle.lock() {
                if pool.len() < POOL {
                    pool.push(c);
                }
            }
        }
        Ok(action)
    }
}

/// One line of at most MAX_LINE bytes (the rest of a longer line is an error).
async fn read_line(
    io: &mut BufReader<Box<dyn Stream>>,
    out: &mut Vec<u8>,
) -> Result<usize, PolicyClientError> {
    let mut total = 0;
    // Bounded by MAX_LINE: each round consumes buffered bytes or ends.
    loop {
        let buf = io.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                out.extend_from_slice(&buf[..=i]);
                io.consume(i + 1);
                return Ok(total + i + 1);
            }
            None => {
                let n = buf.len();
                out.extend_from_slice(buf);
                io.consume(n);
                total += n;
            }
        }
        if total > MAX_LINE {
            return Err(PolicyClientError::Protocol("line too long".into()));
        }
    }
}
