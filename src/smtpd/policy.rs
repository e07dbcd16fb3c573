//! The SMTP access policy: Postfix's restriction lists, evaluated at RCPT TO.
//!
//! As with Postfix's default `smtpd_delay_reject = yes`, the client, HELO and sender lists are
//! evaluated when the first recipient is given, then smtpd_relay_restrictions and
//! smtpd_recipient_restrictions. Each list ends at its first PERMIT (OK) or REJECT/DEFER;
//! DUNNO goes on; a REJECT or DEFER in any list refuses the recipient. Supported: permit,
//! reject, defer, warn_if_reject, permit_mynetworks, permit_inet_interfaces,
//! permit_sasl_authenticated, reject_unauth_destination, defer_unauth_destination,
//! reject_non_fqdn_{recipient,sender,helo_hostname}, reject_invalid_helo_hostname,
//! reject_unlisted_recipient, check_{client,reverse_client_hostname,helo,sender,recipient}_access
//! with access(5) results, and smtpd_restriction_classes. Other restrictions are named in a
//! warning when the service starts and skipped. After the lists,
//! smtpd_reject_unlisted_recipient refuses unknown users of local and virtual domains.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::table::Maps;
use crate::trivial_rewrite::{Class, Rewriter};

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    /// A complete SMTP reply (`554 5.7.1 <a@b>: Relay access denied`).
    Reject(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Config(String),
}

/// What the session knows when a recipient is checked.
pub struct Ctx<'a> {
    pub client_addr: &'a str,
    pub client_name: &'a str,
    pub helo: Option<&'a str>,
    /// Envelope sender; empty for `<>`.
    pub sender: Option<&'a str>,
    pub rcpt: &'a str,
    pub sasl: bool,
    /// The client's TLS certificate (permit_tls_clientcerts, permit_tls_all_clientcerts).
    pub ccert: Option<&'a crate::tlsmgr::ccert::PeerCert>,
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
        match parse_ip(addr) {
            Some(ip) => self.0.iter().any(|n| n.contains(&ip)),
            None => false,
        }
    }
}

fn parse_ip(addr: &str) -> Option<IpAddr> {
    let a = addr.strip_prefix("IPv6:").unwrap_or(addr);
    let ip = a.parse::<IpAddr>().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    })
}

/// Restrictions that take the next list item as their argument.
fn takes_argument(r: &str) -> bool {
    r.starts_with("check_")
        || matches!(
            r,
            "reject_rbl_client"
                | "reject_rhsbl_client"
                | "reject_rhsbl_sender"
                | "reject_rhsbl_helo"
                | "reject_rhsbl_recipient"
                | "reject_rhsbl_reverse_client"
                | "permit_dnswl_client"
                | "permit_rhswl_client"
        )
}

const BUILTIN: &[&str] = &[
    "permit",
    "reject",
    "defer",
    "dunno",
    "warn_if_reject",
    "permit_mynetworks",
    "permit_inet_interfaces",
    "permit_sasl_authenticated",
    "permit_tls_clientcerts",
    "permit_tls_all_clientcerts",
    "reject_unauth_destination",
    "defer_unauth_destination",
    "reject_non_fqdn_recipient",
    "reject_non_fqdn_sender",
    "reject_non_fqdn_helo_hostname",
    "reject_invalid_helo_hostname",
    "reject_unlisted_recipient",
    "check_client_access",
    "check_reverse_client_hostname_access",
    "check_helo_access",
    "check_sender_access",
    "check_recipient_access",
];

/// Which restriction list is being evaluated: what a refusal names.
#[derive(Clone, Copy)]
enum Stage {
    Client,
    Helo,
    Sender,
    Recipient,
}

enum Decision {
    Permit,
    Dunno,
    Reject(String),
}

/// The access policy of one smtpd service.
pub struct Policy {
    lists: [Vec<String>; 5],
    classes: HashMap<String, Vec<String>>,
    tables: HashMap<String, Maps>,
    mynetworks: Networks,
    own_addrs: Vec<IpAddr>,
    rewriter: Arc<Rewriter>,
    reject_unlisted: bool,
    parent_matches_sub: bool,
    delimiters: String,
    access_reject_code: u16,
    access_defer_code: u16,
    relay_reject_code: u16,
    non_fqdn_code: u16,
    invalid_hostname_code: u16,
    unlisted_code: u16,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("lists", &self.lists)
            .finish()
    }
}

/// SMTP replies are ASCII unless SMTPUTF8 is in use: other bytes become spaces, as Postfix
/// does (the seed's French blacklist text goes out that way).
fn ascii(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii() && b != b'\r' && b != b'\n' {
                b as char
            } else {
                ' '
            }
        })
        .collect()
}

fn reject_text(code: u16, dsn: Option<&str>, what: &str, class: &str, text: &str) -> String {
    let dsn = dsn
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}.7.1", code / 100));
    ascii(&format!("{code} {dsn} {what}: {class} rejected: {text}"))
}

impl Policy {
    /// Builds the policy; refuses (as Postfix's smtpd does) lists that cannot stop relaying.
    pub fn from_config(
        cfg: &Config,
        rewriter: Arc<Rewriter>,
    ) -> Result<(Policy, Vec<String>), PolicyError> {
        let lists = [
            cfg.get_list("smtpd_client_restrictions"),
            cfg.get_list("smtpd_helo_restrictions"),
            cfg.get_list("smtpd_sender_restrictions"),
            cfg.get_list("smtpd_relay_restrictions"),
            cfg.get_list("smtpd_recipient_restrictions"),
        ];
        let stops = lists[3..].iter().flatten().any(|r| {
            matches!(
                r.as_str(),
                "reject_unauth_destination" | "defer_unauth_destination" | "reject" | "defer"
            )
        });
        if !stops {
            return Err(PolicyError::Config(
                "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, specify at least one working instance of: reject_unauth_destination, defer_unauth_destination, reject, defer".into(),
            ));
        }
        let mut classes = HashMap::new();
        for name in cfg.get_list("smtpd_restriction_classes") {
            let list = cfg
                .raw(&name)
                .map(|v| crate::config::split_list(&cfg.expand(&v).unwrap_or(v)))
                .unwrap_or_default();
            classes.insert(name, list);
        }
        let mut warnings = Vec::new();
        let mut tables = HashMap::new();
        let all: Vec<&Vec<String>> = lists.iter().chain(classes.values()).collect();
        for list in all {
            let mut it = list.iter();
            while let Some(r) = it.next() {
                let known = BUILTIN.contains(&r.as_str()) || classes.contains_key(r);
                if takes_argument(r) {
                    let Some(arg) = it.next() else {
                        return Err(PolicyError::Config(format!(
                            "restriction {r} needs an argument"
                        )));
                    };
                    if known && r.ends_with("_access") && !tables.contains_key(arg) {
                        let maps = Maps::open(&[arg.clone()])
                            .map_err(|e| PolicyError::Config(format!("{r} {arg}: {e}")))?;
                        tables.insert(arg.clone(), maps);
                    }
                }
                if !known
                    && !warnings
                        .iter()
                        .any(|w: &String| w.contains(&format!("restriction {r} ")))
                {
                    warnings.push(format!(
                        "restriction {r} is not implemented by relais yet and is skipped"
                    ));
                }
            }
        }
        let (mynetworks, bad) = Networks::parse(&cfg.get_list("mynetworks"));
        for b in bad {
            warnings.push(format!(
                "mynetworks: {b}: only addresses and networks are supported; entry ignored"
            ));
        }
        let code = |n: &str, d: u16| u16::try_from(cfg.get_int(n)).unwrap_or(d);
        let policy = Policy {
            lists,
            classes,
            tables,
            mynetworks,
            own_addrs: crate::config::interface_networks()
                .iter()
                .map(|n| n.addr())
                .collect(),
            rewriter,
            reject_unlisted: cfg.get_bool("smtpd_reject_unlisted_recipient"),
            parent_matches_sub: cfg
                .get_list("parent_domain_matches_subdomains")
                .iter()
                .any(|p| p == "smtpd_access_maps"),
            delimiters: cfg.get("recipient_delimiter"),
            access_reject_code: code("access_map_reject_code", 554),
            access_defer_code: code("access_map_defer_code", 450),
            relay_reject_code: code("relay_domains_reject_code", 554),
            non_fqdn_code: code("non_fqdn_reject_code", 504),
            invalid_hostname_code: code("invalid_hostname_reject_code", 501),
            unlisted_code: code("unknown_virtual_mailbox_reject_code", 550),
        };
        Ok((policy, warnings))
    }

    pub fn is_mynetworks(&self, client_addr: &str) -> bool {
        self.mynetworks.contains(client_addr)
    }

    /// The decision for one recipient.
    pub fn check(&self, ctx: &Ctx) -> Verdict {
        let stages = [
            Stage::Client,
            Stage::Helo,
            Stage::Sender,
            Stage::Recipient,
            Stage::Recipient,
        ];
        for (list, stage) in self.lists.iter().zip(stages) {
            if let Decision::Reject(r) = self.eval(list, stage, ctx, 0) {
                return Verdict::Reject(r);
            }
        }
        if self.reject_unlisted {
            if let Some(r) = self.unlisted(ctx.rcpt) {
                return Verdict::Reject(r);
            }
        }
        Verdict::Permit
    }

    fn subject(&self, stage: Stage, ctx: &Ctx) -> (String, &'static str) {
        match stage {
            Stage::Client => (
                format!("<{}[{}]>", ctx.client_name, ctx.client_addr),
                "Client host",
            ),
            Stage::Helo => (format!("<{}>", ctx.helo.unwrap_or("")), "Helo command"),
            Stage::Sender => (format!("<{}>", ctx.sender.unwrap_or("")), "Sender address"),
            Stage::Recipient => (format!("<{}>", ctx.rcpt), "Recipient address"),
        }
    }

    fn eval(&self, list: &[String], stage: Stage, ctx: &Ctx, depth: usize) -> Decision {
        if depth > 20 {
            tracing::warn!("restriction classes nest too deeply; ignoring the rest");
            return Decision::Dunno;
        }
        let mut warn_next = false;
        let mut it = list.iter();
        while let Some(r) = it.next() {
            let arg = if takes_argument(r) {
                it.next().map(String::as_str)
            } else {
                None
            };
            let d = self.one(r, arg, stage, ctx, depth);
            let d = match d {
                Decision::Reject(text) if warn_next => {
                    tracing::warn!("restriction {r} would reject {}: {text}", ctx.rcpt);
                    Decision::Dunno
                }
                other => other,
            };
            warn_next = r == "warn_if_reject";
            match d {
                Decision::Dunno => continue,
                decided => return decided,
            }
        }
        Decision::Dunno
    }

    fn one(&self, r: &str, arg: Option<&str>, stage: Stage, ctx: &Ctx, depth: usize) -> Decision {
        let (what, class) = self.subject(stage, ctx);
        match r {
            "permit" => Decision::Permit,
            "dunno" | "warn_if_reject" => Decision::Dunno,
            "reject" => Decision::Reject(reject_text(
                self.access_reject_code,
                None,
                &what,
                class,
                "Access denied",
            )),
            "defer" => Decision::Reject(reject_text(
                self.access_defer_code,
                None,
                &what,
                class,
                "Access denied",
            )),
            "permit_mynetworks" if self.is_mynetworks(ctx.client_addr) => Decision::Permit,
            "permit_inet_interfaces"
                if parse_ip(ctx.client_addr).is_some_and(|ip| self.own_addrs.contains(&ip)) =>
            {
                Decision::Permit
            }
            "permit_sasl_authenticated" if ctx.sasl => Decision::Permit,
            "permit_tls_clientcerts" if ctx.ccert.is_some_and(|c| c.listed) => Decision::Permit,
            "permit_tls_all_clientcerts" if ctx.ccert.is_some_and(|c| c.trusted) => {
                Decision::Permit
            }
            "reject_unauth_destination" | "defer_unauth_destination" => match self.unauth(ctx.rcpt)
            {
                Ok(true) => {
                    let code = if r.starts_with("reject") {
                        self.relay_reject_code
                    } else {
                        454
                    };
                    Decision::Reject(ascii(&format!(
                        "{code} {}.7.1 <{}>: Relay access denied",
                        code / 100,
                        ctx.rcpt
                    )))
                }
                Ok(false) => Decision::Dunno,
                Err(e) => Decision::Reject(format!(
                    "451 4.3.0 <{}>: Temporary lookup failure ({e})",
                    ctx.rcpt
                )),
            },
            "reject_non_fqdn_recipient" if !fqdn_address(ctx.rcpt) => {
                Decision::Reject(reject_text(
                    self.non_fqdn_code,
                    Some("5.5.2"),
                    &format!("<{}>", ctx.rcpt),
                    "Recipient address",
                    "need fully-qualified address",
                ))
            }
            "reject_non_fqdn_sender" => match ctx.sender {
                Some(s) if !s.is_empty() && !fqdn_address(s) => Decision::Reject(reject_text(
                    self.non_fqdn_code,
                    Some("5.5.2"),
                    &format!("<{s}>"),
                    "Sender address",
                    "need fully-qualified address",
                )),
                _ => Decision::Dunno,
            },
            "reject_non_fqdn_helo_hostname" => match ctx.helo {
                Some(h) if !is_fqdn(h) && !is_address_literal(h) => Decision::Reject(reject_text(
                    self.non_fqdn_code,
                    Some("5.5.2"),
                    &format!("<{h}>"),
                    "Helo command",
                    "need fully-qualified hostname",
                )),
                _ => Decision::Dunno,
            },
            "reject_invalid_helo_hostname" => match ctx.helo {
                Some(h) if !valid_hostname(h) && !is_address_literal(h) => {
                    Decision::Reject(reject_text(
                        self.invalid_hostname_code,
                        Some("5.5.2"),
                        &format!("<{h}>"),
                        "Helo command",
                        "Invalid name",
                    ))
                }
                _ => Decision::Dunno,
            },
            "reject_unlisted_recipient" => match self.unlisted(ctx.rcpt) {
                Some(t) => Decision::Reject(t),
                None => Decision::Dunno,
            },
            "check_recipient_access" => self.access(
                arg,
                &address_keys(ctx.rcpt, &self.delimiters, self.parent_matches_sub),
                stage,
                ctx,
                depth,
            ),
            "check_sender_access" => match ctx.sender {
                Some("") | None => self.access(arg, &["<>".to_string()], Stage::Sender, ctx, depth),
                Some(s) => self.access(
                    arg,
                    &address_keys(s, &self.delimiters, self.parent_matches_sub),
                    Stage::Sender,
                    ctx,
                    depth,
                ),
            },
            "check_client_access" => self.access(
                arg,
                &client_keys(ctx.client_name, ctx.client_addr, self.parent_matches_sub),
                Stage::Client,
                ctx,
                depth,
            ),
            "check_reverse_client_hostname_access" => self.access(
                arg,
                &domain_keys(ctx.client_name, self.parent_matches_sub),
                Stage::Client,
                ctx,
                depth,
            ),
            "check_helo_access" => match ctx.helo {
                Some(h) => self.access(
                    arg,
                    &domain_keys(h, self.parent_matches_sub),
                    Stage::Helo,
                    ctx,
                    depth,
                ),
                None => Decision::Dunno,
            },
            name => match self.classes.get(name) {
                Some(list) => self.eval(list, stage, ctx, depth + 1),
                // Unknown restrictions were named in a warning at start.
                None => Decision::Dunno,
            },
        }
    }

    /// An access(5) table: the first key that finds a result decides.
    fn access(
        &self,
        spec: Option<&str>,
        keys: &[String],
        stage: Stage,
        ctx: &Ctx,
        depth: usize,
    ) -> Decision {
        let Some(maps) = spec.and_then(|s| self.tables.get(s)) else {
            return Decision::Dunno;
        };
        for k in keys {
            match maps.lookup(k) {
                Ok(Some(v)) => return self.action(&v, stage, ctx, depth),
                Ok(None) => {}
                Err(e) => {
                    let (what, class) = self.subject(stage, ctx);
                    return Decision::Reject(ascii(&format!(
                        "451 4.3.0 {what}: {class} rejected: Temporary lookup failure ({e})"
                    )));
                }
            }
        }
        Decision::Dunno
    }

    fn action(&self, v: &str, stage: Stage, ctx: &Ctx, depth: usize) -> Decision {
        let v = v.trim();
        let (word, text) = match v.split_once(char::is_whitespace) {
            Some((w, t)) => (w, t.trim()),
            None => (v, ""),
        };
        let (what, class) = self.subject(stage, ctx);
        let shown = if text.is_empty() {
            "Access denied"
        } else {
            text
        };
        let upper = word.to_ascii_uppercase();
        match upper.as_str() {
            "OK" | "PERMIT" => Decision::Permit,
            "DUNNO" => Decision::Dunno,
            "REJECT" => Decision::Reject(reject_text(
                self.access_reject_code,
                None,
                &what,
                class,
                shown,
            )),
            "DEFER" => Decision::Reject(reject_text(
                self.access_defer_code,
                None,
                &what,
                class,
                shown,
            )),
            "WARN" => {
                tracing::warn!("access table: {what}: {class}: {text}");
                Decision::Dunno
            }
            "DEFER_IF_REJECT" | "DEFER_IF_PERMIT" | "HOLD" | "DISCARD" | "FILTER" | "REDIRECT"
            | "PREPEND" | "BCC" | "INFO" => {
                tracing::warn!(
                    "access table action {upper} is not implemented by relais; treated as DUNNO"
                );
                Decision::Dunno
            }
            _ if word.len() == 3
                && word.bytes().all(|b| b.is_ascii_digit())
                && matches!(word.as_bytes()[0], b'4' | b'5') =>
            {
                let code: u16 = word.parse().unwrap_or(554);
                let (dsn, text) = match text.split_once(' ') {
                    Some((d, t))
                        if d.split('.').count() == 3
                            && d.starts_with(&word[..1])
                            && d.split('.').all(|p| {
                                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                            }) =>
                    {
                        (Some(d), t)
                    }
                    _ => (None, text),
                };
                Decision::Reject(reject_text(
                    code,
                    dsn,
                    &what,
                    class,
                    if text.is_empty() {
                        "Access denied"
                    } else {
                        text
                    },
                ))
            }
            // All-numeric results mean OK (old Postfix convention).
            _ if word.bytes().all(|b| b.is_ascii_digit()) => Decision::Permit,
            // A restriction name or class as the result.
            _ => {
                let list = crate::config::split_list(v);
                self.eval(&list, stage, ctx, depth + 1)
            }
        }
    }

    /// Whether relaying to this recipient needs authorization.
    fn unauth(&self, rcpt: &str) -> Result<bool, String> {
        // A bare name is judged as the address cleanup will make of it (user@$myorigin), as
        // Postfix's smtpd does: otherwise `toto%tutu.org` would be relayed to $myorigin
        // whenever $myorigin is not one of our domains.
        let canonical = if rcpt.contains('@') {
            rcpt.to_string()
        } else {
            self.rewriter.canonicalize(rcpt)
        };
        let Some((local, domain)) = canonical.rsplit_once('@') else {
            // append_at_myorigin = no: the name stays local.
            return Ok(false);
        };
        // Sender-specified routing (percent hack, bang paths, nested @) never relays.
        if local.contains(['@', '%', '!']) || domain.is_empty() {
            return Ok(true);
        }
        match self.rewriter.domain_class(domain) {
            Ok(Class::Default) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Unknown users of virtual mailbox and virtual alias domains are refused at RCPT.
    fn unlisted(&self, rcpt: &str) -> Option<String> {
        let disp = format!("<{rcpt}>");
        let expanded = match self.rewriter.expand(rcpt) {
            Ok(v) => v,
            Err(e) => return Some(format!("451 4.3.0 {disp}: Temporary lookup failure ({e})")),
        };
        for a in expanded {
            match self.rewriter.resolve(&a) {
                Ok(res) if res.transport == "error" && res.nexthop.starts_with("5.1.1 ") => {
                    let text = res.nexthop.trim_start_matches("5.1.1 ");
                    return Some(format!(
                        "{} 5.1.1 {disp}: Recipient address rejected: {text}",
                        self.unlisted_code
                    ));
                }
                Ok(_) => {}
                Err(e) => return Some(format!("451 4.3.0 {disp}: Temporary lookup failure ({e})")),
            }
        }
        None
    }
}

fn is_address_literal(h: &str) -> bool {
    h.starts_with('[') && h.ends_with(']')
}

fn valid_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 255
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_fqdn(h: &str) -> bool {
    valid_hostname(h) && h.trim_end_matches('.').contains('.')
}

fn fqdn_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((_, d)) => is_fqdn(d) || is_address_literal(d),
        None => false,
    }
}

/// access(5) keys for a domain: the name, then its parents (`.parent` or plain `parent`).
fn domain_keys(domain: &str, parent_plain: bool) -> Vec<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut keys = vec![d.clone()];
    let mut rest = d.as_str();
    while let Some((_, parent)) = rest.split_once('.') {
        keys.push(if parent_plain {
            parent.to_string()
        } else {
            format!(".{parent}")
        });
        rest = parent;
    }
    keys
}

/// access(5) keys for an address: user+ext@domain, user@domain, the domain (and parents),
/// user+ext@, user@.
fn address_keys(addr: &str, delimiters: &str, parent_plain: bool) -> Vec<String> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return vec![addr.to_string()];
    };
    let base = if delimiters.is_empty() {
        None
    } else {
        local
            .find(|c| delimiters.contains(c))
            .filter(|&i| i > 0)
            .map(|i| &local[..i])
    };
    let mut keys = vec![addr.to_string()];
    if let Some(b) = base {
        keys.push(format!("{b}@{domain}"));
    }
    keys.extend(domain_keys(domain, parent_plain));
    keys.push(format!("{local}@"));
    if let Some(b) = base {
        keys.push(format!("{b}@"));
    }
    keys
}

/// access(5) keys for a client: host name (and parents), then the address and its shorter
/// networks (1.2.3, 1.2, 1).
fn client_keys(name: &str, addr: &str, parent_plain: bool) -> Vec<String> {
    let mut keys = Vec::new();
    if name != "unknown" && !name.is_empty() {
        keys.extend(domain_keys(name, parent_plain));
    }
    keys.push(addr.to_string());
    if parse_ip(addr).is_some_and(|ip| ip.is_ipv4()) {
        let mut parts: Vec<&str> = addr.split('.').collect();
        while parts.len() > 1 {
            parts.pop();
            keys.push(parts.join("."));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(extra: &str) -> Policy {
        let text = format!("compatibility_level = 3.6\nmyhostname = mail.exemple.fr\nmydestination = $myhostname, localhost\nmynetworks = 127.0.0.0/8, [::1]/128\nvirtual_mailbox_domains = exemple.fr\nvirtual_mailbox_maps = inline:{{ test@exemple.fr=exemple.fr/test/ }}\nrelay_domains = relay.example\n{extra}");
        let cfg = Config::from_text(Path::new("/etc/postfix"), &text).unwrap();
        let rw = Arc::new(Rewriter::from_config(&cfg).unwrap());
        Policy::from_config(&cfg, rw).unwrap().0
    }

    fn ctx<'a>(client: &'a str, helo: &'a str, sender: &'a str, rcpt: &'a str) -> Ctx<'a> {
        Ctx {
            client_addr: client,
            client_name: "unknown",
            helo: Some(helo),
            sender: Some(sender),
            rcpt,
            sasl: false,
            ccert: None,
        }
    }

    fn check(p: &Policy, client: &str, rcpt: &str) -> Verdict {
        p.check(&ctx(client, "client.example.com", "a@example.com", rcpt))
    }

    #[test]
    fn no_open_relay_tricks() {
        let p = policy("");
        let outsider = "192.0.2.7";
        assert_eq!(check(&p, outsider, "test@exemple.fr"), Verdict::Permit);
        assert_eq!(check(&p, outsider, "a@relay.example"), Verdict::Permit);
        let denied = |r: &str| matches!(check(&p, outsider, r), Verdict::Reject(t) if t.contains("Relay access denied") || t.contains("User unknown"));
        for trick in [
            "toto@tutu.org",
            "toto%tutu.org@exemple.fr",
            "toto%tutu.org@mail.exemple.fr",
            "tutu.org!toto@exemple.fr",
            "\"toto@tutu.org\"@exemple.fr",
            "\"toto%tutu.org\"@mail.exemple.fr",
            "toto@tutu.org@exemple.fr",
            "@exemple.fr:toto@tutu.org",
            "toto@[192.0.2.1]",
            "toto@tutu.org.",
            "toto@TUTU.ORG",
            "toto@",
            "toto%tutu.org",
            "tutu.org!toto",
        ] {
            assert!(
                denied(trick),
                "{trick} was not refused: {:?}",
                check(&p, outsider, trick)
            );
        }
        assert!(
            matches!(check(&p, outsider, "toto@tutu.org"), Verdict::Reject(t) if t.starts_with("454 4.7.1 <toto@tutu.org>: Relay access denied"))
        );
        // A bare name is judged as name@$myorigin: not ours here, so not relayed for outsiders.
        let p2 = policy("mydestination = localhost");
        assert!(
            matches!(check(&p2, outsider, "toto"), Verdict::Reject(t) if t.starts_with("454 4.7.1 <toto>: Relay access denied"))
        );
        assert_eq!(check(&p2, "127.0.0.1", "toto"), Verdict::Permit);
        assert_eq!(check(&p, "127.0.0.1", "toto@tutu.org"), Verdict::Permit);
        assert_eq!(check(&p, "::1", "toto@tutu.org"), Verdict::Permit);
        assert!(
            matches!(check(&p, outsider, "nobody@exemple.fr"), Verdict::Reject(t) if t.starts_with("550 5.1.1 <nobody@exemple.fr>: Recipient address rejected: User unknown in virtual mailbox table"))
        );
    }

    #[test]
    fn open_relay_configuration_is_refused() {
        let text = "myhostname = m.example\nsmtpd_relay_restrictions = permit_mynetworks\nsmtpd_recipient_restrictions = permit_mynetworks\n";
        let cfg = Config::from_text(Path::new("/etc/postfix"), text).unwrap();
        let rw = Arc::new(Rewriter::from_config(&cfg).unwrap());
        assert!(Policy::from_config(&cfg, rw).is_err());
    }

    #[test]
    fn access_tables_and_their_actions() {
        let p = policy(
            "smtpd_sender_restrictions = reject_non_fqdn_sender, check_sender_access inline:{ { tata@tata.fr = 554 Parle à ma main, ma tête est malade. }, spam.example=REJECT, ok.example=OK, <>=DUNNO }\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject_non_fqdn_recipient, reject_unauth_destination, check_recipient_access inline:{ root@mail.exemple.fr=REJECT, { slow@exemple.fr = 450 4.2.1 try later }, class@exemple.fr=myclass }\n\
             smtpd_restriction_classes = myclass\nmyclass = reject\n\
             smtpd_helo_restrictions = reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname\n\
             smtpd_client_restrictions = check_client_access inline:{ { 192.0.2 = REJECT go away } }\n\
             virtual_mailbox_maps = inline:{ test@exemple.fr=x/, slow@exemple.fr=x/, class@exemple.fr=x/ }",
        );
        let v = p.check(&ctx(
            "203.0.113.5",
            "client.example.com",
            "tata@tata.fr",
            "test@exemple.fr",
        ));
        assert_eq!(v, Verdict::Reject("554 5.7.1 <tata@tata.fr>: Sender address rejected: Parle    ma main, ma t  te est malade.".into()));
        let v = p.check(&ctx(
            "203.0.113.5",
            "client.example.com",
            "x@spam.example",
            "test@exemple.fr",
        ));
        assert_eq!(
            v,
            Verdict::Reject(
                "554 5.7.1 <x@spam.example>: Sender address rejected: Access denied".into()
            )
        );
        assert_eq!(
            p.check(&ctx(
                "203.0.113.5",
                "client.example.com",
                "",
                "test@exemple.fr"
            )),
            Verdict::Permit
        );
        let v = p.check(&ctx(
            "203.0.113.5",
            "client.example.com",
            "a@b.example",
            "root@mail.exemple.fr",
        ));
        assert_eq!(
            v,
            Verdict::Reject(
                "554 5.7.1 <root@mail.exemple.fr>: Recipient address rejected: Access denied"
                    .into()
            )
        );
        let v = p.check(&ctx(
            "203.0.113.5",
            "client.example.com",
            "a@b.example",
            "slow@exemple.fr",
        ));
        assert_eq!(
            v,
            Verdict::Reject(
                "450 4.2.1 <slow@exemple.fr>: Recipient address rejected: try later".into()
            )
        );
        assert!(
            matches!(p.check(&ctx("203.0.113.5", "client.example.com", "a@b.example", "class@exemple.fr")), Verdict::Reject(t) if t.starts_with("554 5.7.1 <class@exemple.fr>"))
        );
        assert!(
            matches!(p.check(&ctx("203.0.113.5", "bad_helo!", "a@b.example", "test@exemple.fr")), Verdict::Reject(t) if t.starts_with("501 5.5.2 <bad_helo!>: Helo command rejected: Invalid name"))
        );
        assert!(
            matches!(p.check(&ctx("203.0.113.5", "localhost", "a@b.example", "test@exemple.fr")), Verdict::Reject(t) if t.starts_with("504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"))
        );
        assert!(
            matches!(p.check(&ctx("203.0.113.5", "client.example.com", "a@b", "test@exemple.fr")), Verdict::Reject(t) if t.starts_with("504 5.5.2 <a@b>: Sender address rejected"))
        );
        assert!(
            matches!(p.check(&ctx("192.0.2.9", "client.example.com", "a@b.example", "test@exemple.fr")), Verdict::Reject(t) if t == "554 5.7.1 <unknown[192.0.2.9]>: Client host rejected: go away")
        );
        // permit_mynetworks in the recipient list does not bypass the sender blacklist.
        assert!(matches!(
            p.check(&ctx(
                "127.0.0.1",
                "client.example.com",
                "tata@tata.fr",
                "test@exemple.fr"
            )),
            Verdict::Reject(_)
        ));
    }
}
