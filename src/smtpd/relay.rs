//! Relay control and recipient validation at RCPT TO: the part of Postfix's restriction
//! lists that keeps relais from being an open relay, and refuses unknown users at the door.
//!
//! Evaluated in Postfix's order: smtpd_relay_restrictions, then smtpd_recipient_restrictions;
//! the first restriction that decides wins. Recognised here: permit, reject, defer,
//! permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination,
//! defer_unauth_destination, reject_non_fqdn_recipient, reject_unlisted_recipient. Other
//! restrictions are reported once at start (by name) and skipped, so `relais check` can say so.
//! After the lists, smtpd_reject_unlisted_recipient refuses unknown users of local and
//! virtual mailbox domains, as Postfix does.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::trivial_rewrite::{Class, Rewriter};

/// One evaluated restriction's verdict, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    /// A complete SMTP reply (`554 5.7.1 <a@b>: Relay access denied`).
    Reject(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Config(String),
}

/// mynetworks as a list of networks (CIDR, bare addresses, `[v6]/n`).
#[derive(Debug, Clone, Default)]
pub struct Networks(Vec<ipnet::IpNet>);

impl Networks {
    pub fn parse(items: &[String]) -> (Networks, Vec<String>) {
        let mut nets = Vec::new();
        let mut bad = Vec::new();
        for it in items {
            let t = it.replace(['[', ']'], "");
            if let Ok(n) = t.parse::<ipnet::IpNet>() {
                nets.push(n.trunc());
            } else if let Ok(a) = t.parse::<IpAddr>() {
                nets.push(ipnet::IpNet::from(a));
            } else {
                bad.push(it.clone());
            }
        }
        (Networks(nets), bad)
    }

    pub fn contains(&self, addr: &str) -> bool {
        let a = addr.strip_prefix("IPv6:").unwrap_or(addr);
        match a.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                    v4 => v4,
                };
                self.0.iter().any(|n| n.contains(&ip))
            }
            Err(_) => false,
        }
    }
}

const KNOWN: &[&str] = &[
    "permit",
    "reject",
    "defer",
    "permit_mynetworks",
    "permit_sasl_authenticated",
    "reject_unauth_destination",
    "defer_unauth_destination",
    "reject_non_fqdn_recipient",
    "reject_unlisted_recipient",
];

/// The relay policy of one smtpd service.
#[derive(Debug)]
pub struct RelayPolicy {
    lists: Vec<String>,
    mynetworks: Networks,
    rewriter: Arc<Rewriter>,
    reject_unlisted: bool,
}

impl RelayPolicy {
    /// Builds the policy; refuses (as Postfix's smtpd does) a configuration whose lists have no
    /// restriction that stops relaying, because that would be an open relay.
    pub fn from_config(
        cfg: &Config,
        rewriter: Arc<Rewriter>,
    ) -> Result<(RelayPolicy, Vec<String>), RelayError> {
        let mut lists = cfg.get_list("smtpd_relay_restrictions");
        lists.extend(cfg.get_list("smtpd_recipient_restrictions"));
        let mut warnings = Vec::new();
        let stops = lists.iter().any(|r| {
            matches!(
                r.as_str(),
                "reject_unauth_destination" | "defer_unauth_destination" | "reject" | "defer"
            )
        });
        if !stops {
            return Err(RelayError::Config(
                "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, specify at least one working instance of: reject_unauth_destination, defer_unauth_destination, reject, defer".into(),
            ));
        }
        // Arguments of table-driven restrictions come as the next list item.
        let mut skip_next = false;
        for r in &lists {
            if skip_next {
                skip_next = false;
                continue;
            }
            if !KNOWN.contains(&r.as_str()) {
                if r.starts_with("check_")
                    || r.contains("rbl")
                    || r.contains("rhsbl")
                    || r.contains("dnswl")
                {
                    skip_next = true;
                }
                warnings.push(format!(
                    "restriction {r} is not implemented by relais yet and is skipped"
                ));
            }
        }
        let (mynetworks, bad) = Networks::parse(&cfg.get_list("mynetworks"));
        for b in bad {
            warnings.push(format!(
                "mynetworks: {b}: only addresses and networks are supported; entry ignored"
            ));
        }
        let reject_unlisted = cfg.get_bool("smtpd_reject_unlisted_recipient");
        Ok((
            RelayPolicy {
                lists,
                mynetworks,
                rewriter,
                reject_unlisted,
            },
            warnings,
        ))
    }

    pub fn is_mynetworks(&self, client_addr: &str) -> bool {
        self.mynetworks.contains(client_addr)
    }

    /// The decision for one recipient from one client.
    pub fn check(&self, client_addr: &str, rcpt: &str) -> Verdict {
        let rcpt_disp = format!("<{rcpt}>");
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        // A bare name is judged as the address cleanup will make of it (user@$myorigin), as
        // Postfix's smtpd does: otherwise `toto%tutu.org` from anywhere would be relayed to
        // $myorigin whenever $myorigin is not one of our domains.
        let canonical = if domain.is_empty() {
            self.rewriter.canonicalize(rcpt)
        } else {
            rcpt.to_string()
        };
        let unauth = || -> Result<bool, String> {
            let Some((local, domain)) = canonical.rsplit_once('@') else {
                // append_at_myorigin = no: the name stays local.
                return Ok(false);
            };
            // Sender-specified routing (percent hack, bang paths, nested @) never relays.
            if local.contains(['@', '%', '!']) {
                return Ok(true);
            }
            match self.rewriter.domain_class(domain) {
                Ok(Class::Default) => Ok(true),
                Ok(_) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        };
        let mut skip_next = false;
        for r in &self.lists {
            if skip_next {
                skip_next = false;
                continue;
            }
            match r.as_str() {
                "permit" => return Verdict::Permit,
                "reject" => {
                    return Verdict::Reject(format!(
                        "554 5.7.1 {rcpt_disp}: Recipient address rejected: Access denied"
                    ))
                }
                "defer" => {
                    return Verdict::Reject(format!(
                        "450 4.7.1 {rcpt_disp}: Recipient address rejected: Try again later"
                    ))
                }
                "permit_mynetworks" => {
                    if self.is_mynetworks(client_addr) {
                        return Verdict::Permit;
                    }
                }
                "permit_sasl_authenticated" => {}
                "reject_unauth_destination" | "defer_unauth_destination" => match unauth() {
                    Ok(true) => {
                        let code = if r.starts_with("reject") {
                            "554 5.7.1"
                        } else {
                            "454 4.7.1"
                        };
                        return Verdict::Reject(format!("{code} {rcpt_disp}: Relay access denied"));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        return Verdict::Reject(format!(
                            "451 4.3.0 {rcpt_disp}: Temporary lookup failure ({e})"
                        ))
                    }
                },
                "reject_non_fqdn_recipient" => {
                    if domain.is_empty() || (!domain.contains('.') && !domain.starts_with('[')) {
                        return Verdict::Reject(format!("504 5.5.2 {rcpt_disp}: Recipient address rejected: need fully-qualified address"));
                    }
                }
                "reject_unlisted_recipient" => {
                    if let Some(v) = self.unlisted(rcpt, &rcpt_disp) {
                        return v;
                    }
                }
                other => {
                    if other.starts_with("check_")
                        || other.contains("rbl")
                        || other.contains("rhsbl")
                        || other.contains("dnswl")
                    {
                        skip_next = true;
                    }
                }
            }
        }
        if self.reject_unlisted {
            if let Some(v) = self.unlisted(rcpt, &rcpt_disp) {
                return v;
            }
        }
        Verdict::Permit
    }

    /// Unknown users of virtual mailbox and virtual alias domains are refused at RCPT.
    fn unlisted(&self, rcpt: &str, disp: &str) -> Option<Verdict> {
        let expanded = match self.rewriter.expand(rcpt) {
            Ok(v) => v,
            Err(e) => {
                return Some(Verdict::Reject(format!(
                    "451 4.3.0 {disp}: Temporary lookup failure ({e})"
                )))
            }
        };
        for a in expanded {
            match self.rewriter.resolve(&a) {
                Ok(res) if res.transport == "error" && res.nexthop.starts_with("5.1.1 ") => {
                    let text = res.nexthop.trim_start_matches("5.1.1 ");
                    return Some(Verdict::Reject(format!(
                        "550 5.1.1 {disp}: Recipient address rejected: {text}"
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Some(Verdict::Reject(format!(
                        "451 4.3.0 {disp}: Temporary lookup failure ({e})"
                    )))
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(extra: &str) -> RelayPolicy {
        let text = format!("compatibility_level = 3.6\nmyhostname = mail.exemple.fr\nmydestination = $myhostname, localhost\nmynetworks = 127.0.0.0/8, [::1]/128\nvirtual_mailbox_domains = exemple.fr\nvirtual_mailbox_maps = inline:{{ test@exemple.fr=exemple.fr/test/ }}\nrelay_domains = relay.example\n{extra}");
        let cfg = Config::from_text(Path::new("/etc/postfix"), &text).unwrap();
        let rw = Arc::new(Rewriter::from_config(&cfg).unwrap());
        RelayPolicy::from_config(&cfg, rw).unwrap().0
    }

    #[test]
    fn no_open_relay_tricks() {
        let p = policy("");
        let outsider = "192.0.2.7";
        assert_eq!(p.check(outsider, "test@exemple.fr"), Verdict::Permit);
        assert_eq!(p.check(outsider, "a@relay.example"), Verdict::Permit);
        let denied = |r: &str| matches!(p.check(outsider, r), Verdict::Reject(t) if t.contains("Relay access denied") || t.contains("User unknown"));
        for trick in [
            "toto@tutu.org",
            "toto%tutu.org@exemple.fr",
            "toto%tutu.org@mail.exemple.fr",
            "tutu.org!toto@exemple.fr",
            "\"toto@tutu.org\"@exemple.fr",
            "\"toto%tutu.org\"@mail.exemple.fr",
            "toto@tutu.org@exemple.fr",
            "toto@[192.0.2.1]",
            "toto@tutu.org.",
            "toto@TUTU.ORG",
            "toto%tutu.org",
            "tutu.org!toto",
        ] {
            assert!(
                denied(trick),
                "{trick} was not refused: {:?}",
                p.check(outsider, trick)
            );
        }
        // The default relay restrictions defer (454); the message says why.
        assert!(
            matches!(p.check(outsider, "toto@tutu.org"), Verdict::Reject(t) if t.starts_with("454 4.7.1 <toto@tutu.org>: Relay access denied"))
        );
        // A bare name is judged as name@$myorigin: not ours here, so not relayed for outsiders.
        let p2 = policy("mydestination = localhost");
        assert!(
            matches!(p2.check(outsider, "toto"), Verdict::Reject(t) if t.starts_with("454 4.7.1 <toto>: Relay access denied"))
        );
        assert_eq!(p2.check("127.0.0.1", "toto"), Verdict::Permit);
        // Trusted networks relay.
        assert_eq!(p.check("127.0.0.1", "toto@tutu.org"), Verdict::Permit);
        assert_eq!(p.check("::1", "toto@tutu.org"), Verdict::Permit);
        // Unknown users of a virtual mailbox domain are refused at RCPT.
        assert!(
            matches!(p.check(outsider, "nobody@exemple.fr"), Verdict::Reject(t) if t.starts_with("550 5.1.1 <nobody@exemple.fr>: Recipient address rejected: User unknown in virtual mailbox table"))
        );
    }

    #[test]
    fn seed_style_lists_and_open_relay_refusal() {
        let p = policy("smtpd_relay_restrictions =\nsmtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_non_fqdn_recipient, reject_unauth_destination, check_recipient_access sqlite:/nonexistent.cf, reject_unknown_recipient_domain,");
        assert!(
            matches!(p.check("192.0.2.7", "toto@tutu.org"), Verdict::Reject(t) if t.starts_with("554 5.7.1 <toto@tutu.org>: Relay access denied"))
        );
        assert!(
            matches!(p.check("192.0.2.7", "root@localhost"), Verdict::Reject(t) if t.starts_with("504 5.5.2"))
        );
        let text = "myhostname = m.example\nsmtpd_relay_restrictions = permit_mynetworks\nsmtpd_recipient_restrictions = permit_mynetworks\n";
        let cfg = Config::from_text(Path::new("/etc/postfix"), text).unwrap();
        let rw = Arc::new(Rewriter::from_config(&cfg).unwrap());
        assert!(
            RelayPolicy::from_config(&cfg, rw).is_err(),
            "an open relay configuration must be refused"
        );
    }
}
