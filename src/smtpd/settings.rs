//! The smtpd settings one session uses, read once from the [`Config`] (with the service's
//! `-o` overrides already applied) when the listener starts or reloads.

use crate::config::Config;
use std::time::Duration;

/// smtpd_forbid_bare_newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewline {
    /// Accept a bare LF/CR as a line end (stored as CRLF), never as part of end-of-data.
    Normalize,
    /// Refuse it with 521 and disconnect.
    Reject,
    /// Postfix's `no`; relais treats it as `normalize`, because letting a bare LF end DATA is
    /// what SMTP smuggling exploits.
    No,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub myhostname: String,
    pub banner: String,
    /// master.cf service name (`smtp`, `submission`…).
    pub service: String,
    /// Log tag, `syslog_name/smtpd`.
    pub tag: String,
    pub line_length_limit: usize,
    /// 0 means no limit.
    pub message_size_limit: u64,
    /// Free bytes the queue file system must have for MAIL FROM to be accepted.
    pub queue_minfree: u64,
    pub recipient_limit: usize,
    pub timeout: Duration,
    pub hard_error_limit: u32,
    pub soft_error_limit: u32,
    pub error_sleep_time: Duration,
    pub junk_command_limit: u32,
    pub helo_required: bool,
    pub disable_vrfy: bool,
    pub smtputf8: bool,
    pub bare_newline: BareNewline,
    /// Lower-cased words; only plain command names are supported.
    pub forbidden_commands: Vec<String>,
    pub fast_flush_domains: Vec<String>,
    /// Simultaneous sessions per client address, 0 = unlimited.
    pub connection_count_limit: usize,
    /// Networks exempt from that limit (smtpd_client_event_limit_exceptions).
    pub limit_exceptions: Vec<ipnet::IpNet>,
    /// Per-client rates per anvil_rate_time_unit, 0 = unlimited: connections, MAIL FROM,
    /// RCPT TO, new TLS sessions, AUTH commands.
    pub connection_rate_limit: u32,
    pub message_rate_limit: u32,
    pub recipient_rate_limit: u32,
    pub new_tls_rate_limit: u32,
    pub auth_rate_limit: u32,
    /// anvil_rate_time_unit, for a listener that keeps its own counters.
    pub anvil_unit: Duration,
    /// smtpd_forbid_unauth_pipelining: end the session at improper pipelining.
    pub forbid_unauth_pipelining: bool,
    /// rustls server configuration when STARTTLS or wrapper mode is on.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub tls_level: crate::tlsmgr::Level,
    /// smtps: TLS from the first byte.
    pub tls_wrapper: bool,
    pub tls_loglevel: i64,
    /// Client-certificate checks (relay_clientcerts, smtpd_tls_CAfile, req_ccert).
    pub tls_ccerts: std::sync::Arc<crate::tlsmgr::ccert::ClientCerts>,
    /// smtpd_reject_footer with main.cf parameters expanded; the per-session macros
    /// ($client_address, $client_name, $client_port, $localtime, $service…) are left for
    /// [`Settings::footer`].
    pub reject_footer: String,
    /// The SASL server when smtpd_sasl_auth_enable = yes and its settings are usable.
    pub sasl: Option<std::sync::Arc<crate::sasl::Authenticator>>,
    /// smtpd_tls_auth_only (implied by smtpd_tls_security_level = encrypt).
    pub tls_auth_only: bool,
    /// broken_sasl_auth_clients: also advertise `AUTH=mechs`.
    pub broken_sasl_auth_clients: bool,
    /// smtpd_sasl_response_limit: longest AUTH response line.
    pub sasl_response_limit: usize,
}

/// The macros smtpd_reject_footer may use that belong to the session, not to main.cf.
const FOOTER_MACROS: &[&str] = &[
    "client_address",
    "client_name",
    "client_port",
    "localtime",
    "service",
    "reverse_client_name",
    "helo_name",
];

impl Settings {
    pub fn from_config(cfg: &Config, service: &str) -> Settings {
        let bare = match cfg
            .get("smtpd_forbid_bare_newline")
            .to_ascii_lowercase()
            .as_str()
        {
            "yes" | "true" | "1" | "reject" => BareNewline::Reject,
            "no" | "false" | "0" => BareNewline::No,
            "normalize" => BareNewline::Normalize,
            other => {
                tracing::warn!(
                    "smtpd_forbid_bare_newline: unknown value \"{other}\"; using \"normalize\""
                );
                BareNewline::Normalize
            }
        };
        let mut forbidden = Vec::new();
        for w in cfg.get_list("smtpd_forbidden_commands") {
            if w.contains(':') {
                tracing::warn!(
                    "smtpd_forbidden_commands: table \"{w}\" is not supported; header-like commands are always refused"
                );
            } else {
                forbidden.push(w.to_ascii_lowercase());
            }
        }
        let mut limit_exceptions = Vec::new();
        for e in cfg.get_list("smtpd_client_event_limit_exceptions") {
            match parse_net(&e) {
                Some(n) => limit_exceptions.push(n),
                None => tracing::warn!(
                    "smtpd_client_event_limit_exceptions: \"{e}\" is not an address or network; ignored"
                ),
            }
        }
        let tls = match crate::tlsmgr::server_config(cfg) {
            Ok(t) => t,
            Err(e) => {
                // The master refuses to start a service that requires TLS it cannot have; a
                // service that only offers it goes on without STARTTLS.
                tracing::warn!("TLS is not available for service {service}: {e}");
                None
            }
        };
        let sasl = if cfg.get_bool("smtpd_sasl_auth_enable") {
            match crate::sasl::Authenticator::from_config(cfg) {
                Ok((a, warnings)) => {
                    for w in warnings {
                        tracing::warn!("service {service}: {w}");
                    }
                    Some(std::sync::Arc::new(a))
                }
                Err(e) => {
                    // Postfix's smtpd would not start; AUTH is simply not offered here, which
                    // refuses nobody's mail that could otherwise come in.
                    tracing::warn!("service {service}: SASL is not available: {e}");
                    None
                }
            }
        } else {
            None
        };
        let message_size_limit = cfg.get_size("message_size_limit");
        let queue_minfree = cfg.get_size("queue_minfree");
        // Logged as each Postfix smtpd process logs it when it starts.
        if let Some(w) = super::storage::minfree_warning(queue_minfree, message_size_limit) {
            tracing::warn!("{w}");
        }
        let tls_level = crate::tlsmgr::Level::from_config(cfg);
        let tls_ccerts = crate::tlsmgr::client_certs(cfg);
        // Logged by each service as it starts, as Postfix's smtpd does (`relais check`
        // names the main.cf line as well).
        for (name, w) in &tls_ccerts.warnings {
            tracing::warn!("service {service}: {name}: {w}");
        }
        Settings {
            sasl,
            tls_auth_only: cfg.get_bool("smtpd_tls_auth_only")
                || tls_level == crate::tlsmgr::Level::Encrypt,
            broken_sasl_auth_clients: cfg.get_bool("broken_sasl_auth_clients"),
            sasl_response_limit: cfg.get_size("smtpd_sasl_response_limit").clamp(64, 1 << 24)
                as usize,
            tls,
            tls_level,
            tls_wrapper: cfg.get_bool("smtpd_tls_wrappermode"),
            tls_loglevel: cfg.get_int("smtpd_tls_loglevel"),
            tls_ccerts,
            reject_footer: {
                let raw = cfg.raw("smtpd_reject_footer").unwrap_or_default();
                crate::config::expand::expand(&raw, &|n| {
                    if FOOTER_MACROS.contains(&n) {
                        Some(format!("$${n}"))
                    } else {
                        cfg.raw(n)
                    }
                })
                .unwrap_or(raw)
            },
            limit_exceptions,
            myhostname: cfg.get("myhostname"),
            banner: cfg.get("smtpd_banner"),
            service: service.to_string(),
            tag: crate::log::tag(&cfg.get("syslog_name"), "smtpd"),
            line_length_limit: cfg.get_size("line_length_limit").clamp(1, 1 << 24) as usize,
            message_size_limit,
            queue_minfree,
            recipient_limit: cfg.get_int("smtpd_recipient_limit").max(1) as usize,
            timeout: cfg.get_time("smtpd_timeout"),
            hard_error_limit: cfg
                .get_int("smtpd_hard_error_limit")
                .clamp(1, u32::MAX as i64) as u32,
            soft_error_limit: cfg
                .get_int("smtpd_soft_error_limit")
                .clamp(1, u32::MAX as i64) as u32,
            error_sleep_time: cfg.get_time("smtpd_error_sleep_time"),
            junk_command_limit: cfg
                .get_int("smtpd_junk_command_limit")
                .clamp(1, u32::MAX as i64) as u32,
            helo_required: cfg.get_bool("smtpd_helo_required"),
            disable_vrfy: cfg.get_bool("disable_vrfy_command"),
            smtputf8: cfg.get_bool("smtputf8_enable"),
            bare_newline: bare,
            forbidden_commands: forbidden,
            fast_flush_domains: cfg
                .get_list("fast_flush_domains")
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            connection_count_limit: cfg.get_int("smtpd_client_connection_count_limit").max(0)
                as usize,
            connection_rate_limit: rate_limit(cfg, "smtpd_client_connection_rate_limit"),
            message_rate_limit: rate_limit(cfg, "smtpd_client_message_rate_limit"),
            recipient_rate_limit: rate_limit(cfg, "smtpd_client_recipient_rate_limit"),
            new_tls_rate_limit: rate_limit(cfg, "smtpd_client_new_tls_session_rate_limit"),
            auth_rate_limit: rate_limit(cfg, "smtpd_client_auth_rate_limit"),
            anvil_unit: cfg.get_time("anvil_rate_time_unit"),
            forbid_unauth_pipelining: cfg.get_bool("smtpd_forbid_unauth_pipelining"),
        }
    }

    /// Whether a client address is exempt from the connection count and rate limits.
    pub fn limit_exempt(&self, ip: std::net::IpAddr) -> bool {
        self.limit_exceptions.iter().any(|n| n.contains(&ip))
    }

    /// Whether any per-client limit is set, i.e. whether smtpd reports to anvil at all (as
    /// Postfix's smtpd, which talks to anvil only then).
    pub fn uses_anvil(&self) -> bool {
        self.connection_count_limit > 0
            || self.connection_rate_limit > 0
            || self.message_rate_limit > 0
            || self.recipient_rate_limit > 0
            || self.new_tls_rate_limit > 0
            || self.auth_rate_limit > 0
    }

    /// Settings with Postfix's defaults at the current compatibility level and a fixed host
    /// name, for tests.
    pub fn for_tests() -> Settings {
        let cfg = Config::from_text(
            std::path::Path::new("/nonexistent"),
            "compatibility_level = 3.6\nmyhostname = mail.example.com\nmail_name = relais\n",
        )
        .expect("the built-in test configuration parses");
        Settings::from_config(&cfg, "smtp")
    }
}

fn rate_limit(cfg: &Config, name: &str) -> u32 {
    cfg.get_int(name).clamp(0, u32::MAX as i64) as u32
}

/// `1.2.3.0/24`, `1.2.3.4`, `[::1]/128`, `[::1]` as Postfix writes networks.
fn parse_net(e: &str) -> Option<ipnet::IpNet> {
    let e = e.replacen('[', "", 1).replacen(']', "", 1);
    if let Ok(n) = e.parse::<ipnet::IpNet>() {
        return Some(n.trunc());
    }
    e.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
}

impl Settings {
    /// The reject footer for one session: `\n` starts a new reply line, a leading `\c`
    /// continues the last one. Empty when none is configured.
    pub fn footer(&self, info: &super::SessionInfo) -> Vec<String> {
        if self.reject_footer.is_empty() {
            return Vec::new();
        }
        let now = chrono::Local::now().format("%b %e %H:%M:%S").to_string();
        let text = crate::config::expand::expand(&self.reject_footer, &|n| {
            let v = match n {
                "client_address" => info.client_addr.clone(),
                "client_name" => info.client_name.clone(),
                "client_port" => info.client_port.to_string(),
                "localtime" => now.clone(),
                "service" => info.service.clone(),
                "reverse_client_name" => info.reverse_name.clone(),
                "helo_name" => info.helo.clone().unwrap_or_default(),
                _ => return None,
            };
            Some(v.replace('$', "$$"))
        })
        .unwrap_or_default();
        text.split("\\n").map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_text(std::path::Path::new("/nonexistent"), text).expect("parses")
    }

    #[test]
    fn postfix_defaults() {
        let s = Settings::from_config(&cfg("myhostname = mx.example.org\n"), "smtp");
        assert_eq!(s.banner, "mx.example.org ESMTP relais");
        assert_eq!(s.tag, "postfix/smtpd");
        assert_eq!(s.line_length_limit, 2048);
        assert_eq!(s.message_size_limit, 10240000);
        assert_eq!(s.recipient_limit, 1000);
        assert_eq!(s.timeout, Duration::from_secs(300));
        assert_eq!(s.hard_error_limit, 20);
        assert_eq!(s.soft_error_limit, 10);
        assert_eq!(s.junk_command_limit, 100);
        assert_eq!(s.error_sleep_time, Duration::from_secs(1));
        assert_eq!(s.connection_count_limit, 50);
        assert_eq!(
            (
                s.connection_rate_limit,
                s.message_rate_limit,
                s.recipient_rate_limit
            ),
            (0, 0, 0)
        );
        assert_eq!((s.new_tls_rate_limit, s.auth_rate_limit), (0, 0));
        assert_eq!(s.anvil_unit, Duration::from_secs(60));
        assert!(s.forbid_unauth_pipelining);
        assert_eq!(s.bare_newline, BareNewline::Normalize);
        assert_eq!(s.forbidden_commands, vec!["connect", "get", "post"]);
        assert!(!s.disable_vrfy && !s.helo_required);
    }

    #[test]
    fn limit_exceptions_default_to_mynetworks() {
        let s = Settings::from_config(
            &cfg("mynetworks = 127.0.0.0/8, [::1]/128, 192.0.2.7\n"),
            "smtp",
        );
        assert!(s.limit_exempt("127.0.0.2".parse().unwrap()));
        assert!(s.limit_exempt("::1".parse().unwrap()));
        assert!(s.limit_exempt("192.0.2.7".parse().unwrap()));
        assert!(!s.limit_exempt("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn overrides_apply() {
        let c = cfg("myhostname = mx.example.org\nsmtpd_forbid_bare_newline = yes\n")
            .with_overrides([
                ("smtpd_timeout", "10s"),
                ("syslog_name", "postfix/submission"),
            ]);
        let s = Settings::from_config(&c, "submission");
        assert_eq!(s.bare_newline, BareNewline::Reject);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.tag, "postfix/submission/smtpd");
        assert_eq!(s.service, "submission");
    }
}
