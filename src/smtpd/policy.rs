//! The SMTP access policy: Postfix's restriction lists (SMTPD_ACCESS_README).
//!
//! With Postfix's default `smtpd_delay_reject = yes` the client, HELO and sender lists are
//! evaluated when a recipient is given, then smtpd_relay_restrictions and
//! smtpd_recipient_restrictions; with `no` each of the first three runs at its own command
//! (connect, HELO/EHLO, MAIL FROM). smtpd_data_restrictions run at DATA (or the first BDAT),
//! smtpd_end_of_data_restrictions after the content and before it is queued,
//! smtpd_etrn_restrictions at ETRN. Each list ends at its first PERMIT (OK) or REJECT/DEFER;
//! DUNNO goes on; a REJECT or DEFER in any list refuses.
//!
//! Restrictions: permit, reject, defer, warn_if_reject, permit_mynetworks,
//! permit_inet_interfaces, permit_sasl_authenticated, reject_unauth_destination,
//! defer_unauth_destination, reject_non_fqdn_{recipient,sender,helo_hostname},
//! reject_invalid_helo_hostname, reject_unknown_{helo_hostname,sender_domain,recipient_domain,
//! client_hostname,reverse_client_hostname}, reject_unlisted_{recipient,sender}, reject_rbl_client,
//! reject_rhsbl_{client,reverse_client,sender,helo,recipient}, permit_dnswl_client,
//! permit_rhswl_client, the reject_*_sender_login_mismatch family (in `login.rs`),
//! check_{client,reverse_client_hostname,helo,sender,recipient}_access,
//! check_{client,helo,sender,recipient}_{mx,ns}_access, check_policy_service, and
//! smtpd_restriction_classes. access(5) results: OK/RELAY, REJECT, DEFER, NNN text, DUNNO,
//! DEFER_IF_PERMIT, DEFER_IF_REJECT, DISCARD, HOLD, REDIRECT, FILTER, PREPEND, BCC, WARN, INFO,
//! and restriction names or classes. Other restrictions are named in a warning when the
//! service starts and skipped. smtpd_reject_unlisted_sender (after the sender list) and
//! smtpd_reject_unlisted_recipient (after the recipient lists) apply reject_unlisted_sender /
//! _recipient implicitly. As in Postfix's smtpd, an address that virtual_alias_maps lists is
//! accepted (its targets are not checked); otherwise one of a virtual alias domain, or one
//! that resolves to the error transport, is refused, and one of a local, virtual mailbox or
//! relay domain that a non-empty local_recipient_maps, virtual_mailbox_maps or
//! relay_recipient_maps does not list is refused with that class's unknown_*_reject_code. The
//! null sender is never refused this way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::policy_client::PolicyClient;
use super::reply::Reply;
use super::{BoxFuture, CheckPoint, Checked, ClientNames, Event, NameStatus};
use crate::config::Config;
use crate::dns::{Dns, DnsError};
use crate::envelope::Actions;
use crate::table::Maps;
use crate::trivial_rewrite::{Class, Rewriter};

/// The decision for one recipient (the reply text of a refusal).
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

/// What the session knows when a restriction list is evaluated.
#[derive(Default)]
pub struct Ctx<'a> {
    pub client_addr: &'a str,
    pub client_name: &'a str,
    /// PTR name, not forward-confirmed (`unknown` when there is none).
    pub reverse_name: &'a str,
    pub name_status: NameStatus,
    pub reverse_status: NameStatus,
    pub helo: Option<&'a str>,
    /// Envelope sender; empty for `<>`.
    pub sender: Option<&'a str>,
    pub rcpt: &'a str,
    pub sasl: bool,
    /// SMTP or ESMTP (policy service `protocol_name`).
    pub protocol: &'a str,
    pub queue_id: &'a str,
    pub recipient_count: usize,
    pub size: u64,
    /// The ETRN argument.
    pub etrn_domain: &'a str,
    /// The SASL login name, for the sender login checks.
    pub sasl_user: Option<&'a str>,
    /// The client pipelined improperly earlier in the session (reject_unauth_pipelining).
    pub ill_pipelining: bool,
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

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
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
    "defer_if_permit",
    "defer_if_reject",
    "permit_mynetworks",
    "permit_inet_interfaces",
    "permit_sasl_authenticated",
    "permit_tls_clientcerts",
    "permit_tls_all_clientcerts",
    "reject_unauth_destination",
    "defer_unauth_destination",
    "reject_unauth_pipelining",
    "reject_non_fqdn_recipient",
    "reject_non_fqdn_sender",
    "reject_non_fqdn_helo_hostname",
    "reject_invalid_helo_hostname",
    "reject_unknown_helo_hostname",
    "reject_unknown_sender_domain",
    "reject_unknown_recipient_domain",
    "reject_unknown_client_hostname",
    "reject_unknown_client",
    "reject_unknown_reverse_client_hostname",
    "reject_unlisted_recipient",
    "reject_unlisted_sender",
    "reject_rbl_client",
    "reject_rhsbl_client",
    "reject_rhsbl_reverse_client",
    "reject_rhsbl_sender",
    "reject_rhsbl_helo",
    "reject_rhsbl_recipient",
    "permit_dnswl_client",
    "permit_rhswl_client",
    "check_client_access",
    "check_reverse_client_hostname_access",
    "check_helo_access",
    "check_sender_access",
    "check_recipient_access",
    "check_client_mx_access",
    "check_client_ns_access",
    "check_helo_mx_access",
    "check_helo_ns_access",
    "check_sender_mx_access",
    "check_sender_ns_access",
    "check_recipient_mx_access",
    "check_recipient_ns_access",
    "check_policy_service",
    "reject_sender_login_mismatch",
    "reject_authenticated_sender_login_mismatch",
    "reject_known_sender_login_mismatch",
    "reject_unauthenticated_sender_login_mismatch",
];

/// Which restriction list is being evaluated: what a refusal names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Client,
    Helo,
    Sender,
    Recipient,
    Data,
    EndOfData,
    Etrn,
}

enum Decision {
    Permit,
    Dunno,
    Reject(String),
}

/// What to do when a DNS test fails temporarily (unknown_*_tempfail_action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tempfail {
    Defer,
    DeferIfPermit,
}

/// Side effects gathered while the lists of one check point are evaluated.
#[derive(Default)]
struct Eval {
    actions: Actions,
    events: Vec<Event>,
    /// A temporary refusal that applies if nothing else refuses (Postfix's defer_if_permit).
    defer_if_permit: Option<String>,
    /// A temporary refusal that replaces a later REJECT (defer_if_reject).
    defer_if_reject: Option<String>,
    /// DISCARD: the message is accepted and dropped; no further restriction matters.
    discard: bool,
}

impl Eval {
    fn event(&mut self, kind: &'static str, text: String) {
        self.events.push(Event { kind, text });
    }

    /// The answer once the lists are done.
    fn finish(self, refusal: Option<String>) -> Checked {
        let refusal = match refusal {
            Some(r) if r.starts_with('5') && self.defer_if_reject.is_some() => {
                self.defer_if_reject.clone()
            }
            Some(r) => Some(r),
            None if self.discard => None,
            None => self.defer_if_permit.clone(),
        };
        match refusal {
            Some(r) => Checked {
                reject: Some(reply_of(&r)),
                actions: Actions::default(),
                events: self.events,
            },
            None => Checked {
                reject: None,
                actions: self.actions,
                events: self.events,
            },
        }
    }
}

/// Splits `"554 5.7.1 text"` into a Reply.
pub fn reply_of(text: &str) -> Reply {
    let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
    Reply::new(code.parse().unwrap_or(451), rest.to_string())
}

/// One `reject_rbl_client` (and friends) argument: `domain` or `domain=filter`.
struct Rbl<'a> {
    domain: &'a str,
    filter: Option<&'a str>,
}

impl<'a> Rbl<'a> {
    fn parse(arg: &'a str) -> Rbl<'a> {
        match arg.split_once('=') {
            Some((d, f)) => Rbl {
                domain: d,
                filter: Some(f),
            },
            None => Rbl {
                domain: arg,
                filter: None,
            },
        }
    }

    /// Whether an answer matches the filter: each octet a number, `[a..b]` or `[a;b;c]`.
    fn matches(&self, a: std::net::Ipv4Addr) -> bool {
        let Some(f) = self.filter else {
            return true;
        };
        // Split on the dots outside `[…]` (ranges have dots of their own).
        let mut parts: Vec<&str> = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in f.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                '.' if depth == 0 => {
                    parts.push(&f[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&f[start..]);
        if parts.len() != 4 {
            return false;
        }
        parts.iter().zip(a.octets()).all(|(p, o)| {
            let p = p.trim();
            if let Some(inner) = p.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                if let Some((lo, hi)) = inner.split_once("..") {
                    matches!((lo.parse::<u8>(), hi.parse::<u8>()), (Ok(l), Ok(h)) if l <= o && o <= h)
                } else {
                    inner.split(';').any(|x| x.parse::<u8>() == Ok(o))
                }
            } else {
                p.parse::<u8>() == Ok(o)
            }
        })
    }
}

/// The access policy of one smtpd service.
pub struct Policy {
    client: Vec<String>,
    helo: Vec<String>,
    sender: Vec<String>,
    relay: Vec<String>,
    recipient: Vec<String>,
    data: Vec<String>,
    end_of_data: Vec<String>,
    etrn: Vec<String>,
    classes: HashMap<String, Vec<String>>,
    tables: HashMap<String, Maps>,
    services: HashMap<String, Arc<PolicyClient>>,
    mynetworks: Networks,
    own_addrs: Vec<IpAddr>,
    rewriter: Arc<Rewriter>,
    dns: Option<Arc<Dns>>,
    delay_reject: bool,
    reject_unlisted_recipient: bool,
    reject_unlisted_sender: bool,
    relay_recipient_maps: Maps,
    double_bounce_sender: String,
    parent_matches_sub: bool,
    delimiters: String,
    reject_code: u16,
    defer_code: u16,
    access_reject_code: u16,
    access_defer_code: u16,
    relay_reject_code: u16,
    non_fqdn_code: u16,
    invalid_hostname_code: u16,
    unknown_local_code: u16,
    unknown_virtual_alias_code: u16,
    unknown_virtual_mailbox_code: u16,
    unknown_relay_code: u16,
    unknown_client_code: u16,
    unknown_hostname_code: u16,
    unknown_address_code: u16,
    rbl_code: u16,
    unknown_address_tempfail: Tempfail,
    unknown_helo_tempfail: Tempfail,
    rbl_reply_maps: Option<Maps>,
    default_rbl_reply: String,
    login: super::login::LoginMaps,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("recipient", &self.recipient)
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

/// An enhanced status code whose class follows the reply code (Postfix's smtpd_dsn_fix).
fn fix_dsn(code: u16, dsn: &str) -> String {
    let class = (code / 100).to_string();
    match dsn.split_once('.') {
        Some((_, rest)) => format!("{class}.{rest}"),
        None => format!("{class}.7.1"),
    }
}

/// An address status code made to fit the address refused (Postfix's smtpd_dsn_fix): x.1.y
/// codes become their sender equivalent (x.1.7, x.1.8, x.1.0) when a sender is refused and
/// their recipient equivalent (x.1.1 to x.1.6, x.1.0) when a recipient is; others stay.
fn address_dsn(dsn: &str, sender: bool) -> String {
    let Some(detail) = dsn
        .strip_prefix(|c: char| c.is_ascii_digit())
        .and_then(|r| r.strip_prefix(".1."))
    else {
        return dsn.to_string();
    };
    let (for_sender, for_rcpt) = match detail {
        "1" | "4" | "6" => ("7", detail),
        "2" | "8" => ("8", "2"),
        "3" | "7" => ("7", "3"),
        "5" => ("0", "5"),
        _ => ("0", "0"),
    };
    format!(
        "{}.1.{}",
        &dsn[..1],
        if sender { for_sender } else { for_rcpt }
    )
}

fn is_dsn(d: &str) -> bool {
    let parts: Vec<&str> = d.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `4.7.1 text` → (Some("4.7.1"), "text").
fn dsn_split(text: &str) -> (Option<&str>, &str) {
    match text.split_once(' ') {
        Some((d, t)) if is_dsn(d) => (Some(d), t.trim_start()),
        None if is_dsn(text) => (Some(text), ""),
        _ => (None, text),
    }
}

fn reject_text(code: u16, dsn: Option<&str>, what: &str, class: &str, text: &str) -> String {
    let dsn = fix_dsn(code, dsn.unwrap_or("5.7.1"));
    ascii(&format!("{code} {dsn} {what}: {class} rejected: {text}"))
}

fn tempfail(cfg: &Config, name: &str) -> Tempfail {
    let mut v = cfg.get(name);
    if v.trim().is_empty() {
        v = cfg.get("reject_tempfail_action");
    }
    match v.trim().to_ascii_lowercase().as_str() {
        "defer" => Tempfail::Defer,
        "defer_if_permit" => Tempfail::DeferIfPermit,
        other => {
            tracing::warn!("{name}: unsupported value \"{other}\"; using defer_if_permit");
            Tempfail::DeferIfPermit
        }
    }
}

/// Bounds the client name lookups at connect: a slow DNS must not hold the greeting long.
const CLIENT_LOOKUP_TIME: Duration = Duration::from_secs(5);

impl Policy {
    /// Builds the policy; refuses (as Postfix's smtpd does) lists that cannot stop relaying.
    pub fn from_config(
        cfg: &Config,
        rewriter: Arc<Rewriter>,
    ) -> Result<(Policy, Vec<String>), PolicyError> {
        let relay = cfg.get_list("smtpd_relay_restrictions");
        let recipient = cfg.get_list("smtpd_recipient_restrictions");
        let stops = relay.iter().chain(recipient.iter()).any(|r| {
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
        let client = cfg.get_list("smtpd_client_restrictions");
        let helo = cfg.get_list("smtpd_helo_restrictions");
        let sender = cfg.get_list("smtpd_sender_restrictions");
        let data = cfg.get_list("smtpd_data_restrictions");
        let end_of_data = cfg.get_list("smtpd_end_of_data_restrictions");
        let etrn = cfg.get_list("smtpd_etrn_restrictions");
        let mut warnings = Vec::new();
        let mut tables = HashMap::new();
        let mut services = HashMap::new();
        let all: Vec<&Vec<String>> = [
            &client,
            &helo,
            &sender,
            &relay,
            &recipient,
            &data,
            &end_of_data,
            &etrn,
        ]
        .into_iter()
        .chain(classes.values())
        .collect();
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
                    if r == "check_policy_service" {
                        if !services.contains_key(arg) {
                            let c = PolicyClient::from_config(cfg, arg)
                                .map_err(|e| PolicyError::Config(format!("{r} {arg}: {e}")))?;
                            services.insert(arg.clone(), Arc::new(c));
                        }
                    } else if known && r.ends_with("_access") && !tables.contains_key(arg) {
                        let maps = Maps::open(std::slice::from_ref(arg))
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
        let rbl_maps = cfg.get_list("rbl_reply_maps");
        let rbl_reply_maps = if rbl_maps.is_empty() {
            None
        } else {
            Some(
                Maps::open(&rbl_maps)
                    .map_err(|e| PolicyError::Config(format!("rbl_reply_maps: {e}")))?,
            )
        };
        let relay_recipient_maps = Maps::open(&cfg.get_list("relay_recipient_maps"))
            .map_err(|e| PolicyError::Config(format!("relay_recipient_maps: {e}")))?;
        // The reply template keeps its $rbl_* macros for expansion at reply time.
        let default_rbl_reply = cfg.raw("default_rbl_reply").unwrap_or_default();
        let code = |n: &str, d: u16| u16::try_from(cfg.get_int(n)).unwrap_or(d);
        let policy = Policy {
            client,
            helo,
            sender,
            relay,
            recipient,
            data,
            end_of_data,
            etrn,
            classes,
            tables,
            services,
            mynetworks,
            own_addrs: crate::config::interface_networks()
                .iter()
                .map(|n| n.addr())
                .collect(),
            rewriter,
            dns: None,
            delay_reject: cfg.get_bool("smtpd_delay_reject"),
            reject_unlisted_recipient: cfg.get_bool("smtpd_reject_unlisted_recipient"),
            reject_unlisted_sender: cfg.get_bool("smtpd_reject_unlisted_sender"),
            relay_recipient_maps,
            double_bounce_sender: cfg.get("double_bounce_sender"),
            parent_matches_sub: cfg
                .get_list("parent_domain_matches_subdomains")
                .iter()
                .any(|p| p == "smtpd_access_maps"),
            delimiters: cfg.get("recipient_delimiter"),
            reject_code: code("reject_code", 554),
            defer_code: code("defer_code", 450),
            access_reject_code: code("access_map_reject_code", 554),
            access_defer_code: code("access_map_defer_code", 450),
            relay_reject_code: code("relay_domains_reject_code", 554),
            non_fqdn_code: code("non_fqdn_reject_code", 504),
            invalid_hostname_code: code("invalid_hostname_reject_code", 501),
            unknown_local_code: code("unknown_local_recipient_reject_code", 550),
            unknown_virtual_alias_code: code("unknown_virtual_alias_reject_code", 550),
            unknown_virtual_mailbox_code: code("unknown_virtual_mailbox_reject_code", 550),
            unknown_relay_code: code("unknown_relay_recipient_reject_code", 550),
            unknown_client_code: code("unknown_client_reject_code", 450),
            unknown_hostname_code: code("unknown_hostname_reject_code", 450),
            unknown_address_code: code("unknown_address_reject_code", 450),
            rbl_code: code("maps_rbl_reject_code", 554),
            unknown_address_tempfail: tempfail(cfg, "unknown_address_tempfail_action"),
            unknown_helo_tempfail: tempfail(cfg, "unknown_helo_hostname_tempfail_action"),
            rbl_reply_maps,
            default_rbl_reply,
            login: super::login::LoginMaps::from_config(cfg)
                .map_err(|e| PolicyError::Config(e.to_string()))?,
        };
        Ok((policy, warnings))
    }

    /// The resolver for the DNS-based restrictions and the client name lookup. Without one,
    /// those restrictions see a temporary DNS failure.
    pub fn with_dns(mut self, dns: Arc<Dns>) -> Policy {
        self.dns = Some(dns);
        self
    }

    pub fn delay_reject(&self) -> bool {
        self.delay_reject
    }

    pub fn is_mynetworks(&self, client_addr: &str) -> bool {
        self.mynetworks.contains(client_addr)
    }

    /// The client's names as Postfix's smtpd finds them: the PTR name, and that name again
    /// as the verified name when it resolves back to the address.
    pub async fn client_names(&self, ip: IpAddr) -> ClientNames {
        let Some(dns) = self.dns.clone() else {
            return ClientNames::unknown();
        };
        // Loopback clients are never in the public DNS: no lookup (and no wait on a resolver
        // that may be unreachable from a test box).
        if canonical_ip(ip).is_loopback() {
            return ClientNames::unknown();
        }
        let work = async move {
            let mut n = ClientNames::unknown();
            let names = match dns.ptr(ip).await {
                Ok(v) if !v.is_empty() => v,
                Ok(_) => return n,
                Err(e) => {
                    if e.is_temporary() {
                        n.name_status = NameStatus::Temp;
                        n.reverse_status = NameStatus::Temp;
                    }
                    return n;
                }
            };
            let name = names[0].to_ascii_lowercase();
            if !valid_hostname(&name) {
                return n;
            }
            n.reverse_name = name.clone();
            n.reverse_status = NameStatus::Ok;
            match dns.addrs(&name).await {
                Ok(addrs) if addrs.iter().any(|a| canonical_ip(*a) == canonical_ip(ip)) => {
                    n.name = name;
                    n.name_status = NameStatus::Ok;
                }
                Ok(_) => {
                    tracing::warn!("hostname {name} does not resolve to address {ip}");
                }
                Err(e) if e.is_temporary() => n.name_status = NameStatus::Temp,
                Err(_) => {
                    tracing::warn!("hostname {name} does not resolve to address {ip}: Name or service not known");
                }
            }
            n
        };
        match tokio::time::timeout(CLIENT_LOOKUP_TIME, work).await {
            Ok(n) => n,
            Err(_) => ClientNames {
                name_status: NameStatus::Temp,
                reverse_status: NameStatus::Temp,
                ..ClientNames::unknown()
            },
        }
    }

    /// Everything due at RCPT TO for one recipient.
    pub async fn check(&self, ctx: &Ctx<'_>) -> Checked {
        let mut ev = Eval::default();
        let mut lists: Vec<(&[String], Stage)> = Vec::new();
        if self.delay_reject {
            lists.push((&self.client, Stage::Client));
            lists.push((&self.helo, Stage::Helo));
            lists.push((&self.sender, Stage::Sender));
        }
        lists.push((&self.relay, Stage::Recipient));
        lists.push((&self.recipient, Stage::Recipient));
        for (list, stage) in lists {
            if let Decision::Reject(r) = self.eval(list, stage, ctx, &mut ev, 0).await {
                return ev.finish(Some(r));
            }
            if ev.discard {
                return ev.finish(None);
            }
            // As Postfix's smtpd_check_mail: the implicit sender check follows the sender
            // list, whatever that list decided short of a refusal.
            if stage == Stage::Sender {
                if let Some(r) = self.unlisted_sender(ctx) {
                    return ev.finish(Some(r));
                }
            }
        }
        if self.reject_unlisted_recipient {
            if let Some(r) = self.unlisted(ctx.rcpt, Stage::Recipient) {
                return ev.finish(Some(r));
            }
        }
        ev.finish(None)
    }

    /// smtpd_reject_unlisted_sender: reject_unlisted_sender after the sender restrictions,
    /// never for the null sender.
    fn unlisted_sender(&self, ctx: &Ctx<'_>) -> Option<String> {
        match ctx.sender {
            Some(s) if self.reject_unlisted_sender && !s.is_empty() => {
                self.unlisted(s, Stage::Sender)
            }
            _ => None,
        }
    }

    /// The decision for one recipient, as a verdict (tests, `relais check` style callers).
    pub async fn verdict(&self, ctx: &Ctx<'_>) -> Verdict {
        match self.check(ctx).await.reject {
            Some(r) => Verdict::Reject(r.one_line()),
            None => Verdict::Permit,
        }
    }

    /// The lists of the other check points.
    pub async fn check_at(&self, at: CheckPoint, ctx: &Ctx<'_>) -> Checked {
        let (list, stage) = match at {
            CheckPoint::Connect => (&self.client, Stage::Client),
            CheckPoint::Helo => (&self.helo, Stage::Helo),
            CheckPoint::Mail => (&self.sender, Stage::Sender),
            CheckPoint::Rcpt => return self.check(ctx).await,
            CheckPoint::Data => (&self.data, Stage::Data),
            CheckPoint::EndOfData => (&self.end_of_data, Stage::EndOfData),
            CheckPoint::Etrn => (&self.etrn, Stage::Etrn),
        };
        let mut ev = Eval::default();
        if let Decision::Reject(r) = self.eval(list, stage, ctx, &mut ev, 0).await {
            return ev.finish(Some(r));
        }
        if at == CheckPoint::Mail && !ev.discard {
            if let Some(r) = self.unlisted_sender(ctx) {
                return ev.finish(Some(r));
            }
        }
        ev.finish(None)
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
            Stage::Data => ("<DATA>".to_string(), "Data command"),
            Stage::EndOfData => ("<END-OF-MESSAGE>".to_string(), "End-of-data"),
            Stage::Etrn => (format!("<{}>", ctx.etrn_domain), "Etrn command"),
        }
    }

    fn eval<'a, 'b: 'a>(
        &'a self,
        list: &'a [String],
        stage: Stage,
        ctx: &'a Ctx<'b>,
        ev: &'a mut Eval,
        depth: usize,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
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
                let d = self.one(r, arg, stage, ctx, ev, depth).await;
                let d = match d {
                    Decision::Reject(text) if warn_next => {
                        ev.event("reject_warning", text);
                        Decision::Dunno
                    }
                    other => other,
                };
                warn_next = r == "warn_if_reject";
                match d {
                    Decision::Dunno if !ev.discard => continue,
                    Decision::Dunno => return Decision::Permit,
                    decided => return decided,
                }
            }
            Decision::Dunno
        })
    }

    /// A temporary DNS (or similar) failure: refuse now, or only if nothing else refuses.
    fn temp_failure(&self, how: Tempfail, text: String, ev: &mut Eval) -> Decision {
        match how {
            Tempfail::Defer => Decision::Reject(text),
            Tempfail::DeferIfPermit => {
                ev.defer_if_permit.get_or_insert(text);
                Decision::Dunno
            }
        }
    }

    fn one<'a, 'b: 'a>(
        &'a self,
        r: &'a str,
        arg: Option<&'a str>,
        stage: Stage,
        ctx: &'a Ctx<'b>,
        ev: &'a mut Eval,
        depth: usize,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let (what, class) = self.subject(stage, ctx);
            match r {
                "permit" => Decision::Permit,
                "dunno" | "warn_if_reject" => Decision::Dunno,
                "reject" => Decision::Reject(reject_text(
                    self.reject_code,
                    None,
                    &what,
                    class,
                    "Access denied",
                )),
                "defer" => Decision::Reject(reject_text(
                    self.defer_code,
                    None,
                    &what,
                    class,
                    "Access denied",
                )),
                "defer_if_permit" => {
                    let t = reject_text(self.defer_code, None, &what, class, "Service unavailable");
                    ev.defer_if_permit.get_or_insert(t);
                    Decision::Dunno
                }
                "defer_if_reject" => {
                    let t = reject_text(self.defer_code, None, &what, class, "Service unavailable");
                    ev.defer_if_reject.get_or_insert(t);
                    Decision::Dunno
                }
                "permit_mynetworks" if self.is_mynetworks(ctx.client_addr) => Decision::Permit,
                "permit_inet_interfaces"
                    if parse_ip(ctx.client_addr).is_some_and(|ip| self.own_addrs.contains(&ip)) =>
                {
                    Decision::Permit
                }
                "permit_sasl_authenticated" if ctx.sasl => Decision::Permit,
                // Postfix >= 2.6: the session's flag, set by smtpd whenever the client sent
                // commands ahead of time where that is not allowed (smtpd/limits.rs).
                "reject_unauth_pipelining" if ctx.ill_pipelining => Decision::Reject(reject_text(
                    503,
                    Some("5.5.0"),
                    &what,
                    class,
                    "Improper use of SMTP command pipelining",
                )),
                "permit_tls_clientcerts" if ctx.ccert.is_some_and(|c| c.listed) => Decision::Permit,
                "permit_tls_all_clientcerts" if ctx.ccert.is_some_and(|c| c.trusted) => {
                    Decision::Permit
                }
                r if super::login::RESTRICTIONS.contains(&r) => {
                    match self.login.check(r, ctx.sender, ctx.sasl_user) {
                        Some(t) => Decision::Reject(t),
                        None => Decision::Dunno,
                    }
                }
                "reject_unauth_destination" | "defer_unauth_destination" => {
                    if ctx.rcpt.is_empty() {
                        return Decision::Dunno;
                    }
                    match self.unauth(ctx.rcpt) {
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
                    }
                }
                "reject_non_fqdn_recipient" if !ctx.rcpt.is_empty() && !fqdn_address(ctx.rcpt) => {
                    Decision::Reject(reject_text(
                        self.non_fqdn_code,
                        Some("4.5.2"),
                        &format!("<{}>", ctx.rcpt),
                        "Recipient address",
                        "need fully-qualified address",
                    ))
                }
                "reject_non_fqdn_sender" => match ctx.sender {
                    Some(s) if !s.is_empty() && !fqdn_address(s) => Decision::Reject(reject_text(
                        self.non_fqdn_code,
                        Some("4.5.2"),
                        &format!("<{s}>"),
                        "Sender address",
                        "need fully-qualified address",
                    )),
                    _ => Decision::Dunno,
                },
                "reject_non_fqdn_helo_hostname" => match ctx.helo {
                    Some(h) if !is_fqdn(h) && !is_address_literal(h) => {
                        Decision::Reject(reject_text(
                            self.non_fqdn_code,
                            Some("4.5.2"),
                            &format!("<{h}>"),
                            "Helo command",
                            "need fully-qualified hostname",
                        ))
                    }
                    _ => Decision::Dunno,
                },
                "reject_invalid_helo_hostname" => match ctx.helo {
                    Some(h) if !valid_hostname(h) && !is_address_literal(h) => {
                        Decision::Reject(reject_text(
                            self.invalid_hostname_code,
                            Some("4.5.2"),
                            &format!("<{h}>"),
                            "Helo command",
                            "Invalid name",
                        ))
                    }
                    _ => Decision::Dunno,
                },
                "reject_unknown_helo_hostname" => match ctx.helo {
                    Some(h) if !is_address_literal(h) && !h.is_empty() => {
                        let what = format!("<{h}>");
                        match self.exists(h).await {
                            Ok(true) => Decision::Dunno,
                            Ok(false) => Decision::Reject(reject_text(
                                self.unknown_hostname_code,
                                Some("4.7.1"),
                                &what,
                                "Helo command",
                                "Host not found",
                            )),
                            Err(_) => self.temp_failure(
                                self.unknown_helo_tempfail,
                                reject_text(
                                    450,
                                    Some("4.7.1"),
                                    &what,
                                    "Helo command",
                                    "Host not found",
                                ),
                                ev,
                            ),
                        }
                    }
                    _ => Decision::Dunno,
                },
                "reject_unknown_sender_domain" => match ctx.sender {
                    Some(s) if !s.is_empty() => {
                        self.unknown_domain(s, "Sender address", "4.1.8", ev).await
                    }
                    _ => Decision::Dunno,
                },
                "reject_unknown_recipient_domain" if !ctx.rcpt.is_empty() => {
                    self.unknown_domain(ctx.rcpt, "Recipient address", "4.1.2", ev)
                        .await
                }
                "reject_unknown_client_hostname" | "reject_unknown_client" => {
                    match ctx.name_status {
                        NameStatus::Ok => Decision::Dunno,
                        st => {
                            let code = if st == NameStatus::Perm {
                                self.unknown_client_code
                            } else {
                                450
                            };
                            Decision::Reject(format!(
                                "{code} {} Client host rejected: cannot find your hostname, [{}]",
                                fix_dsn(code, "4.7.25"),
                                ctx.client_addr
                            ))
                        }
                    }
                }
                "reject_unknown_reverse_client_hostname" => match ctx.reverse_status {
                    NameStatus::Ok => Decision::Dunno,
                    st => {
                        let code = if st == NameStatus::Perm {
                            self.unknown_client_code
                        } else {
                            450
                        };
                        Decision::Reject(format!(
                            "{code} {} Client host rejected: cannot find your reverse hostname, [{}]",
                            fix_dsn(code, "4.7.25"),
                            ctx.client_addr
                        ))
                    }
                },
                "reject_unlisted_recipient" if !ctx.rcpt.is_empty() => {
                    match self.unlisted(ctx.rcpt, Stage::Recipient) {
                        Some(t) => Decision::Reject(t),
                        None => Decision::Dunno,
                    }
                }
                "reject_unlisted_sender" => match ctx.sender {
                    Some(s) if !s.is_empty() => match self.unlisted(s, Stage::Sender) {
                        Some(t) => Decision::Reject(t),
                        None => Decision::Dunno,
                    },
                    _ => Decision::Dunno,
                },
                "reject_rbl_client" | "permit_dnswl_client" => {
                    let Some(ip) = parse_ip(ctx.client_addr) else {
                        return Decision::Dunno;
                    };
                    let rbl = Rbl::parse(arg.unwrap_or(""));
                    let query = format!("{}.{}", crate::dns::reversed(ip), rbl.domain);
                    let permit = r == "permit_dnswl_client";
                    self.rbl(
                        &query,
                        &rbl,
                        permit,
                        "Client host",
                        ctx.client_addr,
                        arg,
                        ctx,
                    )
                    .await
                }
                "reject_rhsbl_client"
                | "reject_rhsbl_reverse_client"
                | "reject_rhsbl_sender"
                | "reject_rhsbl_helo"
                | "reject_rhsbl_recipient"
                | "permit_rhswl_client" => {
                    let (domain, class) = match r {
                        "reject_rhsbl_client" | "permit_rhswl_client" => {
                            (Some(ctx.client_name), "Client host")
                        }
                        "reject_rhsbl_reverse_client" => {
                            (Some(ctx.reverse_name), "Unverified Client host")
                        }
                        "reject_rhsbl_sender" => (
                            ctx.sender.and_then(|s| s.rsplit_once('@')).map(|(_, d)| d),
                            "Sender address",
                        ),
                        "reject_rhsbl_helo" => (ctx.helo, "Helo command"),
                        _ => (
                            ctx.rcpt.rsplit_once('@').map(|(_, d)| d),
                            "Recipient address",
                        ),
                    };
                    let Some(domain) = domain.map(|d| d.trim_end_matches('.')) else {
                        return Decision::Dunno;
                    };
                    if domain.is_empty()
                        || domain == "unknown"
                        || is_address_literal(domain)
                        || !valid_hostname(domain)
                    {
                        return Decision::Dunno;
                    }
                    let rbl = Rbl::parse(arg.unwrap_or(""));
                    let query = format!("{}.{}", domain.to_ascii_lowercase(), rbl.domain);
                    let permit = r == "permit_rhswl_client";
                    self.rbl(&query, &rbl, permit, class, domain, arg, ctx)
                        .await
                }
                "check_recipient_access" => {
                    self.access(
                        arg,
                        &address_keys(ctx.rcpt, &self.delimiters, self.parent_matches_sub),
                        stage,
                        ctx,
                        ev,
                        depth,
                    )
                    .await
                }
                "check_sender_access" => match ctx.sender {
                    Some("") | None => {
                        self.access(arg, &["<>".to_string()], Stage::Sender, ctx, ev, depth)
                            .await
                    }
                    Some(s) => {
                        self.access(
                            arg,
                            &address_keys(s, &self.delimiters, self.parent_matches_sub),
                            Stage::Sender,
                            ctx,
                            ev,
                            depth,
                        )
                        .await
                    }
                },
                "check_client_access" => {
                    self.access(
                        arg,
                        &client_keys(ctx.client_name, ctx.client_addr, self.parent_matches_sub),
                        Stage::Client,
                        ctx,
                        ev,
                        depth,
                    )
                    .await
                }
                "check_reverse_client_hostname_access" => {
                    self.access(
                        arg,
                        &client_keys(ctx.reverse_name, ctx.client_addr, self.parent_matches_sub),
                        Stage::Client,
                        ctx,
                        ev,
                        depth,
                    )
                    .await
                }
                "check_helo_access" => match ctx.helo {
                    Some(h) => {
                        self.access(
                            arg,
                            &domain_keys(h, self.parent_matches_sub),
                            Stage::Helo,
                            ctx,
                            ev,
                            depth,
                        )
                        .await
                    }
                    None => Decision::Dunno,
                },
                "check_client_mx_access"
                | "check_client_ns_access"
                | "check_helo_mx_access"
                | "check_helo_ns_access"
                | "check_sender_mx_access"
                | "check_sender_ns_access"
                | "check_recipient_mx_access"
                | "check_recipient_ns_access" => {
                    let (domain, st) = if r.starts_with("check_client") {
                        (Some(ctx.client_name), Stage::Client)
                    } else if r.starts_with("check_helo") {
                        (ctx.helo, Stage::Helo)
                    } else if r.starts_with("check_sender") {
                        (
                            ctx.sender.and_then(|s| s.rsplit_once('@')).map(|(_, d)| d),
                            Stage::Sender,
                        )
                    } else {
                        (ctx.rcpt.rsplit_once('@').map(|(_, d)| d), Stage::Recipient)
                    };
                    match domain {
                        Some(d) if !d.is_empty() && d != "unknown" && !is_address_literal(d) => {
                            self.server_access(
                                arg,
                                d,
                                r.ends_with("_mx_access"),
                                st,
                                ctx,
                                ev,
                                depth,
                            )
                            .await
                        }
                        _ => Decision::Dunno,
                    }
                }
                "check_policy_service" => {
                    let Some(client) = arg.and_then(|a| self.services.get(a)) else {
                        return Decision::Dunno;
                    };
                    let action = client.query(&self.policy_request(ctx)).await;
                    self.action(&action, stage, ctx, ev, depth).await
                }
                name => match self.classes.get(name) {
                    Some(list) => self.eval(list, stage, ctx, ev, depth + 1).await,
                    // Unknown restrictions were named in a warning at start.
                    None => Decision::Dunno,
                },
            }
        })
    }

    /// A, AAAA or MX for `name`; Err on a temporary failure (or no resolver).
    async fn exists(&self, name: &str) -> Result<bool, DnsError> {
        match &self.dns {
            Some(d) => d.has_address_or_mx(name.trim_end_matches('.')).await,
            None => Err(DnsError::Config("no resolver".into())),
        }
    }

    /// reject_unknown_sender_domain / _recipient_domain.
    async fn unknown_domain(&self, addr: &str, class: &str, dsn: &str, ev: &mut Eval) -> Decision {
        let Some((_, domain)) = addr.rsplit_once('@') else {
            return Decision::Dunno;
        };
        if domain.is_empty() || is_address_literal(domain) {
            return Decision::Dunno;
        }
        // Our own domains need no DNS.
        if !matches!(self.rewriter.domain_class(domain), Ok(Class::Default)) {
            return Decision::Dunno;
        }
        let what = format!("<{addr}>");
        match self.exists(domain).await {
            Ok(true) => Decision::Dunno,
            Ok(false) => Decision::Reject(reject_text(
                self.unknown_address_code,
                Some(dsn),
                &what,
                class,
                "Domain not found",
            )),
            Err(_) => self.temp_failure(
                self.unknown_address_tempfail,
                reject_text(450, Some(dsn), &what, class, "Domain not found"),
                ev,
            ),
        }
    }

    /// One DNSBL/DNSWL query. A listing refuses (or, for a whitelist, permits).
    #[allow(clippy::too_many_arguments)]
    async fn rbl(
        &self,
        query: &str,
        rbl: &Rbl<'_>,
        permit: bool,
        class: &str,
        what: &str,
        arg: Option<&str>,
        ctx: &Ctx<'_>,
    ) -> Decision {
        let Some(dns) = &self.dns else {
            return Decision::Dunno;
        };
        let answers = match dns.a(query).await {
            Ok(a) => a,
            Err(e) => {
                if e.is_temporary() {
                    tracing::warn!("{query}: RBL lookup error: {e}");
                }
                return Decision::Dunno;
            }
        };
        if !answers.iter().any(|a| rbl.matches(*a)) {
            return Decision::Dunno;
        }
        if permit {
            return Decision::Permit;
        }
        let reason = match dns.txt(query).await {
            Ok(t) => t.first().map(|s| ascii(s)).unwrap_or_default(),
            Err(_) => String::new(),
        };
        let template = self
            .rbl_reply_maps
            .as_ref()
            .and_then(|m| {
                arg.and_then(|a| m.lookup(a).ok().flatten())
                    .or_else(|| m.lookup(rbl.domain).ok().flatten())
            })
            .unwrap_or_else(|| self.default_rbl_reply.clone());
        let code = self.rbl_code.to_string();
        let lookup = |n: &str| -> Option<String> {
            let v = match n {
                "rbl_code" => code.clone(),
                "rbl_domain" => rbl.domain.to_string(),
                "rbl_reason" | "rbl_txt" => reason.clone(),
                "rbl_what" => what.to_string(),
                "rbl_class" => class.to_string(),
                "client" => format!("{}[{}]", ctx.client_name, ctx.client_addr),
                "client_address" => ctx.client_addr.to_string(),
                "client_name" => ctx.client_name.to_string(),
                "reverse_client_name" => ctx.reverse_name.to_string(),
                "helo_name" => ctx.helo.unwrap_or("").to_string(),
                "sender" => ctx.sender.unwrap_or("").to_string(),
                "recipient" => ctx.rcpt.to_string(),
                _ => return None,
            };
            // Values are data, never expanded again.
            Some(v.replace('$', "$$"))
        };
        let text = crate::config::expand::expand(&template, &lookup)
            .unwrap_or_else(|_| format!("{code} Service unavailable"));
        let text = ascii(text.trim());
        let (code_s, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let rcode = match code_s.parse::<u16>() {
            Ok(c) if (400..600).contains(&c) => c,
            _ => self.rbl_code,
        };
        let (dsn, rest) = dsn_split(rest);
        Decision::Reject(format!(
            "{rcode} {} {rest}",
            fix_dsn(rcode, dsn.unwrap_or("5.7.1"))
        ))
    }

    /// check_*_mx_access / check_*_ns_access: the domain's MX (or NS) hosts, by name and
    /// by address, against an access table.
    #[allow(clippy::too_many_arguments)]
    async fn server_access(
        &self,
        spec: Option<&str>,
        domain: &str,
        mx: bool,
        stage: Stage,
        ctx: &Ctx<'_>,
        ev: &mut Eval,
        depth: usize,
    ) -> Decision {
        let Some(dns) = self.dns.clone() else {
            return Decision::Dunno;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let hosts: Vec<String> = if mx {
            match dns.mx(&domain).await {
                Ok(crate::dns::Mx::Records(r)) => r.into_iter().map(|m| m.host).collect(),
                // No MX: the domain is its own mail host.
                Ok(crate::dns::Mx::NoMx) => vec![domain.clone()],
                Ok(crate::dns::Mx::NullMx) | Err(_) => return Decision::Dunno,
            }
        } else {
            // The zone's name servers: the domain's, or its nearest parent's.
            let mut d = domain.as_str();
            let mut found = Vec::new();
            for _ in 0..10 {
                match dns.ns(d).await {
                    Ok(v) if !v.is_empty() => {
                        found = v;
                        break;
                    }
                    Ok(_) | Err(DnsError::NoData { .. }) | Err(DnsError::NotFound { .. }) => {}
                    Err(_) => break,
                }
                match d.split_once('.') {
                    Some((_, parent)) if !parent.is_empty() => d = parent,
                    _ => break,
                }
            }
            found
        };
        for host in hosts.iter().take(10) {
            let d = self
                .access(
                    spec,
                    &domain_keys(host, self.parent_matches_sub),
                    stage,
                    ctx,
                    ev,
                    depth,
                )
                .await;
            if !matches!(d, Decision::Dunno) {
                return d;
            }
            let Ok(addrs) = dns.addrs(host).await else {
                continue;
            };
            for a in addrs {
                let keys = client_keys("", &a.to_string(), self.parent_matches_sub);
                let d = self.access(spec, &keys, stage, ctx, ev, depth).await;
                if !matches!(d, Decision::Dunno) {
                    return d;
                }
            }
        }
        Decision::Dunno
    }

    /// The attributes of a policy delegation request (SMTPD_POLICY_README).
    fn policy_request(&self, ctx: &Ctx) -> Vec<(&'static str, String)> {
        let state = if !ctx.etrn_domain.is_empty() {
            "ETRN"
        } else if ctx.rcpt.is_empty() {
            if ctx.size > 0 && !ctx.queue_id.is_empty() && ctx.recipient_count > 0 {
                "END-OF-MESSAGE"
            } else if ctx.recipient_count > 0 {
                "DATA"
            } else if ctx.sender.is_some() {
                "MAIL"
            } else if ctx.helo.is_some() {
                "HELO"
            } else {
                "CONNECT"
            }
        } else {
            "RCPT"
        };
        vec![
            ("request", "smtpd_access_policy".into()),
            ("protocol_state", state.into()),
            ("protocol_name", ctx.protocol.into()),
            ("helo_name", ctx.helo.unwrap_or("").into()),
            ("queue_id", ctx.queue_id.into()),
            ("sender", ctx.sender.unwrap_or("").into()),
            ("recipient", ctx.rcpt.into()),
            ("recipient_count", ctx.recipient_count.to_string()),
            ("client_address", ctx.client_addr.into()),
            ("client_name", ctx.client_name.into()),
            ("reverse_client_name", ctx.reverse_name.into()),
            ("instance", format!("{}.{}", ctx.client_addr, ctx.queue_id)),
            ("sasl_method", String::new()),
            ("sasl_username", String::new()),
            ("sasl_sender", String::new()),
            ("size", ctx.size.to_string()),
            ("etrn_domain", ctx.etrn_domain.into()),
            ("stress", String::new()),
        ]
    }

    /// An access(5) table: the first key that finds a result decides.
    fn access<'a, 'b: 'a>(
        &'a self,
        spec: Option<&'a str>,
        keys: &'a [String],
        stage: Stage,
        ctx: &'a Ctx<'b>,
        ev: &'a mut Eval,
        depth: usize,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let Some(maps) = spec.and_then(|s| self.tables.get(s)) else {
                return Decision::Dunno;
            };
            for k in keys {
                match maps.lookup(k) {
                    Ok(Some(v)) => return self.action(&v, stage, ctx, ev, depth).await,
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
        })
    }

    /// One access(5) result (or policy service action).
    fn action<'a, 'b: 'a>(
        &'a self,
        v: &'a str,
        stage: Stage,
        ctx: &'a Ctx<'b>,
        ev: &'a mut Eval,
        depth: usize,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let v = v.trim();
            let (word, text) = match v.split_once(char::is_whitespace) {
                Some((w, t)) => (w, t.trim()),
                None => (v, ""),
            };
            let (what, class) = self.subject(stage, ctx);
            let upper = word.to_ascii_uppercase();
            // Actions that change the message need one: not at ETRN, nor outside a mail
            // transaction (smtpd_delay_reject = no at connect or HELO).
            let in_mail = stage != Stage::Etrn && ctx.sender.is_some();
            let refuse = |code: u16, default_dsn: &str, default_text: &str| {
                let (dsn, t) = dsn_split(text);
                let t = if t.is_empty() { default_text } else { t };
                reject_text(code, Some(dsn.unwrap_or(default_dsn)), &what, class, t)
            };
            match upper.as_str() {
                "OK" | "PERMIT" | "RELAY" => Decision::Permit,
                "DUNNO" => Decision::Dunno,
                "REJECT" => {
                    Decision::Reject(refuse(self.access_reject_code, "5.7.1", "Access denied"))
                }
                "DEFER" => {
                    Decision::Reject(refuse(self.access_defer_code, "4.7.1", "Access denied"))
                }
                "DEFER_IF_PERMIT" => {
                    let t = refuse(self.access_defer_code, "4.7.1", "Service unavailable");
                    ev.defer_if_permit.get_or_insert(t);
                    Decision::Dunno
                }
                "DEFER_IF_REJECT" => {
                    let t = refuse(self.access_defer_code, "4.7.1", "Service unavailable");
                    ev.defer_if_reject.get_or_insert(t);
                    Decision::Dunno
                }
                "WARN" => {
                    ev.event("warn", ascii(text));
                    Decision::Dunno
                }
                "INFO" => {
                    ev.event("info", ascii(text));
                    Decision::Dunno
                }
                "HOLD" | "DISCARD" | "REDIRECT" | "FILTER" | "BCC" | "PREPEND" if !in_mail => {
                    tracing::warn!(
                        "access table result {upper} is unavailable outside a mail transaction; skipped"
                    );
                    Decision::Dunno
                }
                "HOLD" => {
                    if ev.actions.hold.is_none() {
                        let t = if text.is_empty() {
                            "triggers HOLD action"
                        } else {
                            text
                        };
                        let why = ascii(&format!("{what}: {class} {t}"));
                        ev.event("hold", why.clone());
                        ev.actions.hold = Some(why);
                    }
                    Decision::Dunno
                }
                "DISCARD" => {
                    let t = if text.is_empty() {
                        "triggers DISCARD action"
                    } else {
                        text
                    };
                    let why = ascii(&format!("{what}: {class} {t}"));
                    ev.event("discard", why.clone());
                    ev.actions.discard = Some(why);
                    ev.discard = true;
                    Decision::Permit
                }
                "REDIRECT" | "BCC" if !text.contains('@') => {
                    tracing::warn!(
                        "access table result {upper} requires a user@domain target: {v}"
                    );
                    Decision::Dunno
                }
                "REDIRECT" => {
                    ev.event(
                        "redirect",
                        ascii(&format!("{what}: {class} triggers REDIRECT {text}")),
                    );
                    ev.actions.redirect = Some(text.to_string());
                    Decision::Dunno
                }
                "BCC" => {
                    ev.event(
                        "bcc",
                        ascii(&format!("{what}: {class} triggers BCC {text}")),
                    );
                    if !ev.actions.bcc.iter().any(|b| b == text) {
                        ev.actions.bcc.push(text.to_string());
                    }
                    Decision::Dunno
                }
                "FILTER" if !text.contains(':') => {
                    tracing::warn!(
                        "access table result FILTER requires transport:destination: {v}"
                    );
                    Decision::Dunno
                }
                "FILTER" => {
                    ev.event(
                        "filter",
                        ascii(&format!("{what}: {class} triggers FILTER {text}")),
                    );
                    ev.actions.filter = Some(text.to_string());
                    Decision::Dunno
                }
                "PREPEND" => {
                    let is_header = text.split_once(':').is_some_and(|(n, _)| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic())
                    });
                    if stage == Stage::EndOfData || !is_header {
                        tracing::warn!("access table result PREPEND needs header: text, before end of data: {v}");
                    } else {
                        ev.actions.prepend.push(ascii(text));
                    }
                    Decision::Dunno
                }
                _ if word.len() == 3
                    && word.bytes().all(|b| b.is_ascii_digit())
                    && matches!(word.as_bytes()[0], b'4' | b'5') =>
                {
                    let code: u16 = word.parse().unwrap_or(554);
                    let default_dsn = if code >= 500 { "5.7.1" } else { "4.7.1" };
                    Decision::Reject(refuse(code, default_dsn, "Access denied"))
                }
                // All-numeric results mean OK (old Postfix convention).
                _ if word.bytes().all(|b| b.is_ascii_digit()) => Decision::Permit,
                // A restriction name or class as the result.
                _ => {
                    let list = crate::config::split_list(v);
                    self.eval(&list, stage, ctx, ev, depth + 1).await
                }
            }
        })
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

    /// reject_unlisted_recipient and reject_unlisted_sender (`stage` says which address is
    /// checked), in the order of Postfix's smtpd: an address that virtual_alias_maps lists is
    /// accepted whatever its targets (relais has no canonical maps, which Postfix consults
    /// there too); one that resolves to the error (retry) transport is refused with its text,
    /// as a virtual alias domain address without an entry is ("User unknown in virtual alias
    /// table"); otherwise a local, virtual mailbox or relay address must be listed in
    /// local_recipient_maps, virtual_mailbox_maps or relay_recipient_maps, and an empty table
    /// lists everyone. The enhanced code is x.1.1 for a recipient, x.1.0 for a sender (x.1.7
    /// for an unknown virtual alias sender, from the error transport's 5.1.1).
    fn unlisted(&self, addr: &str, stage: Stage) -> Option<String> {
        let sender = stage == Stage::Sender;
        let what = if sender {
            "Sender address"
        } else {
            "Recipient address"
        };
        let disp = format!("<{addr}>");
        let temp = |e: &dyn std::fmt::Display| {
            Some(format!("451 4.3.0 {disp}: Temporary lookup failure ({e})"))
        };
        let unknown = |code: u16, table: &str| {
            let dsn = fix_dsn(code, if sender { "5.1.0" } else { "5.1.1" });
            Some(ascii(&format!(
                "{code} {dsn} {disp}: {what} rejected: User unknown in {table}"
            )))
        };
        // Unchecked: the virtual mailbox table is looked up below, and only when not empty.
        let res = match self.rewriter.resolve(addr) {
            Ok(r) => r,
            Err(e) => return temp(&e),
        };
        match self.rewriter.alias_listed(&res.address) {
            Ok(true) => return None,
            Ok(false) => {}
            Err(e) => return temp(&e),
        }
        if res.transport == "error" || res.transport == "retry" {
            let retry = res.transport == "retry";
            let (dsn, text) = dsn_split(&res.nexthop);
            let default = match (retry, sender) {
                (false, false) => "5.1.1",
                (false, true) => "5.1.0",
                (true, false) => "4.1.1",
                (true, true) => "4.1.0",
            };
            let dsn = address_dsn(dsn.unwrap_or(default), sender);
            let code = if retry {
                450
            } else if res.class == Class::VirtualAlias {
                self.unknown_virtual_alias_code
            } else {
                550
            };
            return Some(ascii(&format!(
                "{code} {} {disp}: {what} rejected: {text}",
                fix_dsn(code, &dsn)
            )));
        }
        let resolved = &res.address;
        let (known, code, table) = match res.class {
            Class::Local if !self.always_local(resolved) => (
                self.rewriter.local_user_known(resolved),
                self.unknown_local_code,
                "local recipient table",
            ),
            Class::VirtualMailbox if self.rewriter.has_mailbox_maps() => (
                self.rewriter.mailbox_of(resolved).map(|m| m.is_some()),
                self.unknown_virtual_mailbox_code,
                "virtual mailbox table",
            ),
            Class::Relay if !self.relay_recipient_maps.is_empty() => (
                self.rewriter
                    .find_address(&self.relay_recipient_maps, resolved)
                    .map(|m| m.is_some()),
                self.unknown_relay_code,
                "relay recipient table",
            ),
            _ => return None,
        };
        match known {
            Ok(true) => None,
            Ok(false) => unknown(code, table),
            Err(e) => temp(&e),
        }
    }

    /// Local addresses Postfix's smtpd never refuses as unlisted: the double-bounce sender
    /// (bounces it generates are absorbed by qmgr), postmaster and MAILER-DAEMON.
    fn always_local(&self, addr: &str) -> bool {
        let local = addr.rsplit_once('@').map(|(l, _)| l).unwrap_or(addr);
        [
            self.double_bounce_sender.as_str(),
            "postmaster",
            "MAILER-DAEMON",
        ]
        .iter()
        .any(|n| local.eq_ignore_ascii_case(n))
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
            reverse_name: "unknown",
            helo: Some(helo),
            sender: Some(sender),
            rcpt,
            protocol: "ESMTP",
            ..Default::default()
        }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    impl Policy {
        /// The verdict, synchronously (tests only).
        fn verdict_now(&self, ctx: &Ctx) -> Verdict {
            block(self.verdict(ctx))
        }
    }

    fn check(p: &Policy, client: &str, rcpt: &str) -> Verdict {
        p.verdict_now(&ctx(client, "client.example.com", "a@example.com", rcpt))
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
        let v = p.verdict_now(&ctx(
            "203.0.113.5",
            "client.example.com",
            "tata@tata.fr",
            "test@exemple.fr",
        ));
        assert_eq!(v, Verdict::Reject("554 5.7.1 <tata@tata.fr>: Sender address rejected: Parle    ma main, ma t  te est malade.".into()));
        let v = p.verdict_now(&ctx(
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
            p.verdict_now(&ctx(
                "203.0.113.5",
                "client.example.com",
                "",
                "test@exemple.fr"
            )),
            Verdict::Permit
        );
        let v = p.verdict_now(&ctx(
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
        let v = p.verdict_now(&ctx(
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
            matches!(p.verdict_now(&ctx("203.0.113.5", "client.example.com", "a@b.example", "class@exemple.fr")), Verdict::Reject(t) if t.starts_with("554 5.7.1 <class@exemple.fr>"))
        );
        assert!(
            matches!(p.verdict_now(&ctx("203.0.113.5", "bad_helo!", "a@b.example", "test@exemple.fr")), Verdict::Reject(t) if t.starts_with("501 5.5.2 <bad_helo!>: Helo command rejected: Invalid name"))
        );
        assert!(
            matches!(p.verdict_now(&ctx("203.0.113.5", "localhost", "a@b.example", "test@exemple.fr")), Verdict::Reject(t) if t.starts_with("504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"))
        );
        assert!(
            matches!(p.verdict_now(&ctx("203.0.113.5", "client.example.com", "a@b", "test@exemple.fr")), Verdict::Reject(t) if t.starts_with("504 5.5.2 <a@b>: Sender address rejected"))
        );
        assert!(
            matches!(p.verdict_now(&ctx("192.0.2.9", "client.example.com", "a@b.example", "test@exemple.fr")), Verdict::Reject(t) if t == "554 5.7.1 <unknown[192.0.2.9]>: Client host rejected: go away")
        );
        // permit_mynetworks in the recipient list does not bypass the sender blacklist.
        assert!(matches!(
            p.verdict_now(&ctx(
                "127.0.0.1",
                "client.example.com",
                "tata@tata.fr",
                "test@exemple.fr"
            )),
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn reject_unauth_pipelining_follows_the_session_flag() {
        let p = policy("smtpd_data_restrictions = reject_unauth_pipelining, permit\n");
        let mut c = ctx("192.0.2.1", "client.example.com", "a@example.com", "");
        let ok = block(p.check_at(CheckPoint::Data, &c));
        assert!(ok.reject.is_none());
        c.ill_pipelining = true;
        let r = block(p.check_at(CheckPoint::Data, &c))
            .reject
            .expect("refused");
        assert_eq!(
            r.one_line(),
            "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining"
        );
    }
}
