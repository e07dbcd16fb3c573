//! SASL client for relayhosts and smarthosts: which username and password to use for a
//! destination (smtp_sasl_password_maps, by sender with smtp_sender_dependent_authentication)
//! and which mechanism (PLAIN or LOGIN) the security options allow. The AUTH dialogue itself
//! is [`super::Session::auth`].

use crate::config::Config;
use crate::table::Maps;

/// Credentials found for a destination. Debug never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub pass: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

pub struct SaslClient {
    pub enabled: bool,
    maps: Maps,
    sender_dependent: bool,
    options: Vec<String>,
    tls_options: Vec<String>,
    mech_filter: Vec<String>,
    /// Problems, with the parameter they are about.
    pub warnings: Vec<(&'static str, String)>,
}

impl SaslClient {
    pub fn new(cfg: &Config) -> SaslClient {
        let mut warnings = Vec::new();
        let enabled = cfg.get_bool("smtp_sasl_auth_enable");
        let list = cfg.get_list("smtp_sasl_password_maps");
        let maps = if enabled {
            match Maps::open(&list) {
                Ok(m) => m,
                Err(e) => {
                    warnings.push(("smtp_sasl_password_maps", e.to_string()));
                    Maps::default()
                }
            }
        } else {
            Maps::default()
        };
        let lower = |v: Vec<String>| v.into_iter().map(|s| s.to_ascii_lowercase()).collect();
        SaslClient {
            enabled,
            maps,
            sender_dependent: cfg.get_bool("smtp_sender_dependent_authentication"),
            options: lower(cfg.get_list("smtp_sasl_security_options")),
            tls_options: lower(cfg.get_list("smtp_sasl_tls_security_options")),
            mech_filter: cfg
                .get_list("smtp_sasl_mechanism_filter")
                .into_iter()
                .map(|s| s.to_ascii_uppercase())
                .collect(),
            warnings,
        }
    }

    /// The credentials for a delivery: by sender (`user@domain`, then `@domain`) when
    /// smtp_sender_dependent_authentication is on, then the next-hop as written
    /// (`[host]:port`), the server's host name, and the destination domain. Err is a lookup
    /// failure (the mail waits).
    pub fn credentials(
        &self,
        sender: &str,
        nexthop_text: &str,
        host: &str,
        domain: &str,
    ) -> Result<Option<Credentials>, String> {
        if !self.enabled || self.maps.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if self.sender_dependent && !sender.is_empty() {
            keys.push(sender.to_string());
            if let Some((_, d)) = sender.rsplit_once('@') {
                keys.push(format!("@{d}"));
            }
        }
        keys.push(nexthop_text.trim().to_string());
        keys.push(host.to_string());
        keys.push(domain.to_string());
        let mut seen: Vec<&String> = Vec::new();
        for k in &keys {
            if k.is_empty() || seen.contains(&k) {
                continue;
            }
            seen.push(k);
            match self.maps.lookup(k) {
                Ok(Some(v)) => {
                    let v = v.trim();
                    // `user:password`; a password may itself contain colons.
                    let (user, pass) = v.split_once(':').unwrap_or((v, ""));
                    return Ok(Some(Credentials {
                        user: user.to_string(),
                        pass: pass.to_string(),
                    }));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("smtp_sasl_password_maps lookup: {e}")),
            }
        }
        Ok(None)
    }

    /// The mechanism to use among those offered: PLAIN, then LOGIN, unless the security
    /// options (smtp_sasl_tls_security_options under TLS) or the mechanism filter forbid them.
    pub fn mechanism(&self, offered: &[String], tls: bool) -> Option<&'static str> {
        let opts = if tls {
            &self.tls_options
        } else {
            &self.options
        };
        // PLAIN and LOGIN send the password as it is: `noplaintext` rules both out.
        if opts.iter().any(|o| o == "noplaintext") {
            return None;
        }
        ["PLAIN", "LOGIN"].into_iter().find(|m| {
            offered.iter().any(|o| o == m)
                && (self.mech_filter.is_empty() || self.mech_filter.iter().any(|f| f == m))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(extra: &str) -> SaslClient {
        let cfg = Config::from_text(
            std::path::Path::new("/nonexistent"),
            &format!("smtp_sasl_auth_enable = yes\n{extra}\n"),
        )
        .unwrap();
        SaslClient::new(&cfg)
    }

    #[test]
    fn lookup_order() {
        let c = client(
            "smtp_sasl_password_maps = inline:{ [relay.example]:587=a:pw1, relay.example=b:pw2, @corp.example=c:p:w3 }\nsmtp_sender_dependent_authentication = yes\n",
        );
        let got = |s: &str, nh: &str| {
            c.credentials(s, nh, "relay.example", "relay.example")
                .unwrap()
                .map(|c| (c.user, c.pass))
        };
        assert_eq!(
            got("x@other", "[relay.example]:587"),
            Some(("a".into(), "pw1".into()))
        );
        assert_eq!(
            got("x@other", "[relay.example]"),
            Some(("b".into(), "pw2".into()))
        );
        assert_eq!(
            got("x@corp.example", "[relay.example]:587"),
            Some(("c".into(), "p:w3".into()))
        );
        let none = c.credentials("", "other.example", "mx.other.example", "other.example");
        assert_eq!(none.unwrap(), None);
        assert!(!format!(
            "{:?}",
            Credentials {
                user: "u".into(),
                pass: "secret".into()
            }
        )
        .contains("secret"));
    }

    #[test]
    fn mechanisms_follow_security_options() {
        let offered = vec!["LOGIN".to_string(), "PLAIN".to_string()];
        // Postfix's default noplaintext forbids both.
        assert_eq!(client("").mechanism(&offered, false), None);
        let c = client("smtp_sasl_security_options = noanonymous\nsmtp_sasl_tls_security_options = noplaintext\n");
        assert_eq!(c.mechanism(&offered, false), Some("PLAIN"));
        assert_eq!(c.mechanism(&offered, true), None);
        let c = client(
            "smtp_sasl_security_options = noanonymous\nsmtp_sasl_mechanism_filter = login\n",
        );
        assert_eq!(c.mechanism(&offered, true), Some("LOGIN"));
    }
}
