//! DNS for the delivery agents: MX and address lookups over hickory-resolver, with the
//! answers sorted into what an MTA must tell apart (RFC 5321 section 5.1, RFC 7505):
//! MX records, no MX (deliver to the domain's own address), a null MX (the domain takes no
//! mail), a name that does not exist, and a failure that may clear up later.
//!
//! The name servers are the system's (`/etc/resolv.conf`) unless the relais-specific parameter
//! `relais_dns_servers` lists others (`ip`, `ip:port` or `[ipv6]:port`), which tests use to
//! point relais at a DNS server on loopback. `inet_protocols` decides which address families
//! [`Dns::addrs`] asks for.

use crate::config::Config;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist. Permanent.
    #[error("Name service error for name={name} type={rtype}: Host not found")]
    NotFound { name: String, rtype: &'static str },
    /// The name exists but has no record of the asked type. Permanent.
    #[error(
        "Name service error for name={name} type={rtype}: Host found but no data record of requested type"
    )]
    NoData { name: String, rtype: &'static str },
    /// Time-out, SERVFAIL, network trouble: try again later.
    #[error("Name service error for name={name} type={rtype}: Host not found, try again")]
    Temporary { name: String, rtype: &'static str },
    /// relais_dns_servers or resolv.conf could not be used.
    #[error("bad resolver configuration: {0}")]
    Config(String),
}

impl DnsError {
    /// Whether retrying later may help (Postfix defers these, bounces the others).
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary { .. } | DnsError::Config(_))
    }
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Exchange host name, without the trailing dot.
    pub host: String,
}

/// What the MX lookup of a domain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mx {
    /// MX records, in the order the server gave them (the caller sorts and shuffles).
    Records(Vec<MxRecord>),
    /// The domain exists but has no MX: mail goes to its own A/AAAA (RFC 5321 5.1).
    NoMx,
    /// RFC 7505 `MX 0 .`: the domain accepts no mail.
    NullMx,
}

/// A shared resolver. Cheap to put in an `Arc`; hickory caches answers inside.
pub struct Dns {
    resolver: TokioResolver,
    ipv4: bool,
    ipv6: bool,
}

/// Parses one `relais_dns_servers` entry: `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`.
fn parse_server(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// Which families `inet_protocols` allows: (ipv4, ipv6).
pub fn inet_families(cfg: &Config) -> (bool, bool) {
    let list = cfg.get_list("inet_protocols");
    let mut v4 = false;
    let mut v6 = false;
    for p in &list {
        match p.to_ascii_lowercase().as_str() {
            "all" => {
                v4 = true;
                v6 = true;
            }
            "ipv4" => v4 = true,
            "ipv6" => v6 = true,
            other => tracing::warn!("inet_protocols: unknown protocol \"{other}\" ignored"),
        }
    }
    if !v4 && !v6 {
        // Postfix refuses to run without a protocol; relais falls back to IPv4 rather than
        // resolving nothing at all.
        v4 = true;
    }
    (v4, v6)
}

impl Dns {
    /// A resolver from `relais_dns_servers` (empty: the system's resolv.conf).
    pub fn from_config(cfg: &Config) -> Result<Dns, DnsError> {
        let servers = cfg.get_list("relais_dns_servers");
        let (ipv4, ipv6) = inet_families(cfg);
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::Config(e.to_string()))?
        } else {
            let mut ns = Vec::with_capacity(servers.len());
            for s in &servers {
                let sa = parse_server(s).ok_or_else(|| {
                    DnsError::Config(format!("relais_dns_servers: bad server \"{s}\""))
                })?;
                let mut c = NameServerConfig::udp_and_tcp(sa.ip());
                for conn in &mut c.connections {
                    conn.port = sa.port();
                }
                ns.push(c);
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(ns),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Config(e.to_string()))?;
        Ok(Dns {
            resolver,
            ipv4,
            ipv6,
        })
    }

    /// The MX records of `domain`.
    pub async fn mx(&self, domain: &str) -> Result<Mx, DnsError> {
        let name = domain.trim_end_matches('.');
        let fqdn = format!("{name}.");
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut recs = Vec::new();
                for r in lookup.answers() {
                    if let RData::MX(mx) = &r.data {
                        let host = mx.exchange.to_ascii();
                        recs.push(MxRecord {
                            preference: mx.preference,
                            host: host.trim_end_matches('.').to_string(),
                        });
                    }
                }
                // RFC 7505: a single MX with an empty (root) exchange means "no mail".
                if recs.iter().any(|r| r.host.is_empty()) {
                    return Ok(Mx::NullMx);
                }
                if recs.is_empty() {
                    return Ok(Mx::NoMx);
                }
                Ok(Mx::Records(recs))
            }
            Err(e) => match classify(&e, name, "MX") {
                DnsError::NoData { .. } => Ok(Mx::NoMx),
                other => Err(other),
            },
        }
    }

    /// The addresses of `host` in the families `inet_protocols` allows (IPv6 first when both,
    /// as Postfix's default smtp_address_preference = any leaves it to the resolver order).
    /// An IP literal is returned as it is.
    pub async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        let h = h.strip_prefix("IPv6:").unwrap_or(h);
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = host.trim_end_matches('.');
        let fqdn = format!("{name}.");
        let mut out = Vec::new();
        let mut errors = Vec::new();
        if self.ipv4 {
            match self.resolver.ipv4_lookup(fqdn.as_str()).await {
                Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })),
                Err(e) => errors.push(classify(&e, name, "A")),
            }
        }
        if self.ipv6 {
            match self.resolver.ipv6_lookup(fqdn.as_str()).await {
                Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => errors.push(classify(&e, name, "AAAA")),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        // Nothing usable: a temporary error wins (retry later), then NXDOMAIN, then no data.
        if let Some(e) = errors.iter().find(|e| e.is_temporary()) {
            return Err(e.clone());
        }
        if let Some(e) = errors
            .iter()
            .find(|e| matches!(e, DnsError::NotFound { .. }))
        {
            return Err(e.clone());
        }
        Err(errors.pop().unwrap_or(DnsError::NoData {
            name: name.to_string(),
            rtype: if self.ipv4 { "A" } else { "AAAA" },
        }))
    }
}

/// The DNS name under which `ip` is listed in a DNSBL zone (or, with `in-addr.arpa` /
/// `ip6.arpa`, its PTR name): reversed octets, or reversed nibbles for IPv6.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut parts = Vec::with_capacity(32);
            for b in v6.octets().iter().rev() {
                parts.push(format!("{:x}", b & 0x0f));
                parts.push(format!("{:x}", b >> 4));
            }
            parts.join(".")
        }
    }
}

impl Dns {
    /// The names a PTR lookup of `ip` gives (without trailing dots).
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let zone = if ip.is_ipv4() {
            "in-addr.arpa"
        } else {
            "ip6.arpa"
        };
        let name = format!("{}.{zone}", reversed(ip));
        match self
            .resolver
            .reverse_lookup(format!("{name}.").as_str())
            .await
        {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_string()),
                    _ => None,
                })
                .collect()),
            Err(e) => Err(classify(&e, &name, "PTR")),
        }
    }

    /// The IPv4 addresses of `name` (DNSBL answers are A records, whatever inet_protocols
    /// says).
    pub async fn a(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
        let name = name.trim_end_matches('.');
        match self.resolver.ipv4_lookup(format!("{name}.").as_str()).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            Err(e) => Err(classify(&e, name, "A")),
        }
    }

    /// The TXT strings of `name`, each record's pieces joined.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let name = name.trim_end_matches('.');
        match self.resolver.txt_lookup(format!("{name}.").as_str()).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) => Err(classify(&e, name, "TXT")),
        }
    }

    /// The name servers of `domain`.
    pub async fn ns(&self, domain: &str) -> Result<Vec<String>, DnsError> {
        let name = domain.trim_end_matches('.');
        match self.resolver.ns_lookup(format!("{name}.").as_str()).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NS(n) => Some(n.0.to_ascii().trim_end_matches('.').to_string()),
                    _ => None,
                })
                .collect()),
            Err(e) => Err(classify(&e, name, "NS")),
        }
    }

    /// Whether `name` has an A, AAAA or MX record (Postfix's reject_unknown_* test): Ok(true)
    /// yes, Ok(false) definitely not (NXDOMAIN or no such records), Err a temporary failure.
    pub async fn has_address_or_mx(&self, name: &str) -> Result<bool, DnsError> {
        let mut temp = None;
        match self.mx(name).await {
            Ok(Mx::Records(_)) | Ok(Mx::NullMx) => return Ok(true),
            Ok(Mx::NoMx) => {}
            Err(DnsError::NotFound { .. }) => return Ok(false),
            Err(e) => temp = Some(e),
        }
        match self.addrs(name).await {
            Ok(v) if !v.is_empty() => Ok(true),
            Ok(_) | Err(DnsError::NotFound { .. }) | Err(DnsError::NoData { .. }) => match temp {
                Some(e) => Err(e),
                None => Ok(false),
            },
            Err(e) => Err(e),
        }
    }
}

/// Sorts a hickory error into the four cases an MTA acts on.
fn classify(e: &NetError, name: &str, rtype: &'static str) -> DnsError {
    let name = name.to_string();
    match e {
        NetError::Dns(HDnsError::NoRecordsFound(nr)) => {
            if nr.response_code == ResponseCode::NXDomain {
                DnsError::NotFound { name, rtype }
            } else {
                DnsError::NoData { name, rtype }
            }
        }
        NetError::Dns(HDnsError::ResponseCode(ResponseCode::NXDomain)) => {
            DnsError::NotFound { name, rtype }
        }
        _ => DnsError::Temporary { name, rtype },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_syntax() {
        assert_eq!(
            parse_server("127.0.0.1"),
            Some("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(parse_server("[::1]"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("ns.example"), None);
    }

    #[test]
    fn families() {
        let d = std::path::Path::new("/nonexistent");
        let c = Config::from_text(d, "inet_protocols = ipv4\n").unwrap();
        assert_eq!(inet_families(&c), (true, false));
        let c = Config::from_text(d, "inet_protocols = all\n").unwrap();
        assert_eq!(inet_families(&c), (true, true));
        let c = Config::from_text(d, "inet_protocols = ipv6, ipv4\n").unwrap();
        assert_eq!(inet_families(&c), (true, true));
    }
}
