//! Next-hop syntax, as in transport(5) and relayhost: `[host]:port` and `[addr]` skip the MX
//! lookup, `host:port` and `host` use it; LMTP adds `unix:/path` (relative to
//! queue_directory, like Postfix's `private/dovecot-lmtp`) and `inet:host:port`.

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NexthopError {
    #[error("bad next-hop \"{0}\": {1}")]
    Bad(String, &'static str),
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nexthop {
    /// A TCP destination. `mx` is false for `[host]` (and always for LMTP).
    Inet { host: String, port: u16, mx: bool },
    /// A unix-domain socket (LMTP).
    Unix { path: PathBuf },
}

impl Nexthop {
    /// Parses a next-hop. `default_port` is 25 for SMTP, 24 for LMTP.
    pub fn parse(
        s: &str,
        lmtp: bool,
        default_port: u16,
        queue_dir: &Path,
    ) -> Result<Nexthop, NexthopError> {
        let s = s.trim();
        let bad = |why| NexthopError::Bad(s.to_string(), why);
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let mut rest = s;
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad("empty socket path"));
            }
            let path = Path::new(p);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                queue_dir.join(path)
            };
            return Ok(Nexthop::Unix { path });
        }
        if let Some(p) = s.strip_prefix("inet:") {
            rest = p;
        }
        // LMTP never looks up MX records (Postfix's lmtp treats every host as [host]).
        let (host, port_text, mx) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(|| bad("missing ]"))?;
            let port = match after {
                "" => None,
                a => Some(a.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h, port, false)
        } else {
            match rest.rsplit_once(':') {
                // An unbracketed IPv6 literal has several colons: take it as a host.
                Some((h, p)) if !h.contains(':') => (h, Some(p), !lmtp),
                _ => (rest, None, !lmtp),
            }
        };
        let host = host.strip_prefix("IPv6:").unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("bad host name"));
        }
        let port = match port_text {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => service_port(p).ok_or_else(|| bad("bad port"))?,
            },
        };
        Ok(Nexthop::Inet {
            host: host.to_ascii_lowercase(),
            port,
            mx,
        })
    }
}

/// The few service names a next-hop may use instead of a number.
fn service_port(name: &str) -> Option<u16> {
    match name {
        "smtp" => Some(25),
        "lmtp" => Some(24),
        "submission" => Some(587),
        "smtps" | "submissions" => Some(465),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, lmtp: bool) -> Result<Nexthop, NexthopError> {
        Nexthop::parse(s, lmtp, if lmtp { 24 } else { 25 }, Path::new("/q"))
    }
    fn inet(h: &str, port: u16, mx: bool) -> Nexthop {
        Nexthop::Inet {
            host: h.into(),
            port,
            mx,
        }
    }

    #[test]
    fn smtp_forms() {
        assert_eq!(p("example.com", false), Ok(inet("example.com", 25, true)));
        assert_eq!(
            p("Example.com:2525", false),
            Ok(inet("example.com", 2525, true))
        );
        assert_eq!(
            p("[mail.example.com]", false),
            Ok(inet("mail.example.com", 25, false))
        );
        assert_eq!(
            p("[127.0.0.1]:10026", false),
            Ok(inet("127.0.0.1", 10026, false))
        );
        assert_eq!(p("[IPv6:::1]:26", false), Ok(inet("::1", 26, false)));
        assert_eq!(p("[::1]:26", false), Ok(inet("::1", 26, false)));
        assert_eq!(p("relay:submission", false), Ok(inet("relay", 587, true)));
        assert!(p("[x]junk", false).is_err());
        assert!(p("[x", false).is_err());
        assert!(p("x:0", false).is_err());
        assert!(p("x:99999", false).is_err());
        assert!(p("", false).is_err());
    }

    #[test]
    fn lmtp_forms() {
        assert_eq!(
            p("unix:private/dovecot-lmtp", true),
            Ok(Nexthop::Unix {
                path: "/q/private/dovecot-lmtp".into()
            })
        );
        assert_eq!(
            p("unix:/run/lmtp", true),
            Ok(Nexthop::Unix {
                path: "/run/lmtp".into()
            })
        );
        assert_eq!(
            p("inet:localhost:24", true),
            Ok(inet("localhost", 24, false))
        );
        assert_eq!(p("inet:[::1]:2424", true), Ok(inet("::1", 2424, false)));
        assert_eq!(p("mailhost", true), Ok(inet("mailhost", 24, false)));
        assert!(p("unix:", true).is_err());
    }
}
