//! Address classes, alias expansion and transport resolution.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::Config;
use crate::table::{Maps, TableError};

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}: {1}")]
    Table(String, TableError),
    /// A lookup failed for now (e.g. a database is down): the caller defers.
    #[error("{0}")]
    Temporary(String),
}

/// Postfix's address classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Local,
    VirtualAlias,
    VirtualMailbox,
    Relay,
    Default,
}

/// Where one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub class: Class,
    /// master.cf transport name (`smtp`, `relay`, `lmtp`, `virtual`, `local`, `error`…).
    pub transport: String,
    /// Next hop for that transport (`example.com`, `[10.0.0.1]:25`, `unix:private/x`, or the
    /// error text for the error transport).
    pub nexthop: String,
    /// The address after rewriting.
    pub address: String,
}

/// A Postfix domain list: names, `.sub` wildcards, `!negation`, and type:table entries.
#[derive(Debug, Default)]
struct DomainList {
    entries: Vec<(bool, Entry)>,
}

#[derive(Debug)]
enum Entry {
    Exact(String),
    /// `.example.com`: any subdomain.
    Sub(String),
    Table(Maps),
}

impl DomainList {
    fn parse(items: &[String], parent_matches_sub: bool) -> Result<DomainList, RewriteError> {
        let mut entries = Vec::new();
        for it in items {
            let (neg, it) = match it.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, it.as_str()),
            };
            if it.contains(':') && !it.starts_with('[') {
                let maps = Maps::open(&[it.to_string()])
                    .map_err(|e| RewriteError::Table(it.to_string(), e))?;
                entries.push((neg, Entry::Table(maps)));
            } else if let Some(d) = it.strip_prefix('.') {
                entries.push((neg, Entry::Sub(d.to_ascii_lowercase())));
            } else {
                let d = it.to_ascii_lowercase();
                if parent_matches_sub {
                    entries.push((neg, Entry::Sub(d.clone())));
                }
                entries.push((neg, Entry::Exact(d)));
            }
        }
        Ok(DomainList { entries })
    }

    fn matches(&self, domain: &str) -> Result<bool, RewriteError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        for (neg, e) in &self.entries {
            let hit = match e {
                Entry::Exact(d) => *d == domain,
                Entry::Sub(d) => {
                    domain.len() > d.len()
                        && domain.ends_with(d.as_str())
                        && domain.as_bytes()[domain.len() - d.len() - 1] == b'.'
                }
                Entry::Table(m) => m
                    .lookup(&domain)
                    .map_err(|e| RewriteError::Temporary(e.to_string()))?
                    .is_some(),
            };
            if hit {
                return Ok(!neg);
            }
        }
        Ok(false)
    }
}

/// The resolver, built from one configuration; cheap to share behind an Arc.
#[derive(Debug)]
pub struct Rewriter {
    myorigin: String,
    mydomain: String,
    append_at_myorigin: bool,
    append_dot_mydomain: bool,
    delimiters: String,
    mydestination: DomainList,
    own_addrs: Vec<IpAddr>,
    alias_domains: DomainList,
    mailbox_domains: DomainList,
    relay_domains: DomainList,
    virtual_alias_maps: Maps,
    /// relocated_maps: users who moved (5.1.6 "User has moved to …").
    relocated_maps: Maps,
    virtual_mailbox_maps: Maps,
    transport_maps: Maps,
    local_transport: (String, String),
    virtual_transport: (String, String),
    relay_transport: (String, String),
    default_transport: (String, String),
    relayhost: String,
    recursion_limit: usize,
    expansion_limit: usize,
    /// local_recipient_maps split into its alias part (aliases(5) files) and its user part;
    /// None when the list is empty (every local user is accepted).
    local_users: Option<(
        crate::local::aliases::Sources,
        crate::local::aliases::Sources,
    )>,
}

fn split_transport(s: &str) -> (String, String) {
    match s.split_once(':') {
        Some((t, n)) => (t.to_string(), n.to_string()),
        None => (s.to_string(), String::new()),
    }
}

fn maps(cfg: &Config, name: &str) -> Result<Maps, RewriteError> {
    let list = cfg.get_list(name);
    Maps::open(&list).map_err(|e| RewriteError::Table(name.to_string(), e))
}

impl Rewriter {
    pub fn from_config(cfg: &Config) -> Result<Rewriter, RewriteError> {
        let parent = cfg.get_list("parent_domain_matches_subdomains");
        let pm = |n: &str| parent.iter().any(|p| p == n);
        // [address] literals are local when they name an interface we receive mail on:
        // every interface address for inet_interfaces = all, else the listed ones.
        let interfaces = cfg.get_list("inet_interfaces");
        let all_addrs: Vec<IpAddr> = crate::config::interface_networks()
            .iter()
            .map(|n| n.addr())
            .collect();
        let mut own_addrs: Vec<IpAddr> = Vec::new();
        for i in &interfaces {
            match i.as_str() {
                "all" => own_addrs.extend(all_addrs.iter().copied()),
                "loopback-only" => {
                    own_addrs.extend(all_addrs.iter().copied().filter(|a| a.is_loopback()))
                }
                a => {
                    if let Ok(ip) = a
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                    {
                        own_addrs.push(ip);
                    }
                }
            }
        }
        Ok(Rewriter {
            myorigin: cfg.get("myorigin").to_ascii_lowercase(),
            mydomain: cfg.get("mydomain").to_ascii_lowercase(),
            append_at_myorigin: cfg.get_bool("append_at_myorigin"),
            append_dot_mydomain: cfg.get_bool("append_dot_mydomain"),
            delimiters: cfg.get("recipient_delimiter"),
            mydestination: DomainList::parse(&cfg.get_list("mydestination"), false)?,
            own_addrs,
            alias_domains: DomainList::parse(&cfg.get_list("virtual_alias_domains"), false)?,
            mailbox_domains: DomainList::parse(&cfg.get_list("virtual_mailbox_domains"), false)?,
            relay_domains: DomainList::parse(&cfg.get_list("relay_domains"), pm("relay_domains"))?,
            virtual_alias_maps: maps(cfg, "virtual_alias_maps")?,
            relocated_maps: maps(cfg, "relocated_maps")?,
            virtual_mailbox_maps: maps(cfg, "virtual_mailbox_maps")?,
            transport_maps: maps(cfg, "transport_maps")?,
            local_transport: split_transport(&cfg.get("local_transport")),
            virtual_transport: split_transport(&cfg.get("virtual_transport")),
            relay_transport: split_transport(&cfg.get("relay_transport")),
            default_transport: split_transport(&cfg.get("default_transport")),
            relayhost: cfg.get("relayhost"),
            recursion_limit: cfg.get_int("virtual_alias_recursion_limit").max(1) as usize,
            expansion_limit: cfg.get_int("virtual_alias_expansion_limit").max(1) as usize,
            local_users: {
                let lrm = cfg.get_list("local_recipient_maps");
                let aliases = cfg.get_list("alias_maps");
                if lrm.is_empty() {
                    None
                } else {
                    // Tables that cannot be opened are left out; the local agent warns.
                    let (a, _) = crate::local::aliases::Sources::open(
                        &lrm.iter()
                            .filter(|m| aliases.contains(m))
                            .cloned()
                            .collect::<Vec<_>>(),
                        true,
                    );
                    let (u, _) = crate::local::aliases::Sources::open(
                        &lrm.iter()
                            .filter(|m| !aliases.contains(m))
                            .cloned()
                            .collect::<Vec<_>>(),
                        false,
                    );
                    Some((a, u))
                }
            },
        })
    }

    /// Canonical form: `user` → `user@$myorigin`, `user@host` → `user@host.$mydomain`.
    pub fn canonicalize(&self, addr: &str) -> String {
        if addr.is_empty() {
            return String::new();
        }
        match addr.rsplit_once('@') {
            None if self.append_at_myorigin => format!("{addr}@{}", self.myorigin),
            None => addr.to_string(),
            Some((local, domain)) => {
                if self.append_dot_mydomain
                    && !domain.contains('.')
                    && !domain.starts_with('[')
                    && !domain.is_empty()
                {
                    format!("{local}@{domain}.{}", self.mydomain)
                } else {
                    addr.to_string()
                }
            }
        }
    }

    /// True for mydestination domains and this machine's own IP literals.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool, RewriteError> {
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let lit = lit.strip_prefix("IPv6:").unwrap_or(lit);
            return Ok(lit
                .parse::<IpAddr>()
                .is_ok_and(|ip| self.own_addrs.contains(&ip)));
        }
        self.mydestination.matches(domain)
    }

    /// Whether a local-domain recipient is known to local_recipient_maps (always true when
    /// the list is empty): `user+ext`, then `user`, lower case, in the alias and user tables.
    /// smtpd refuses unknown ones at RCPT ("User unknown in local recipient table").
    pub fn local_user_known(&self, addr: &str) -> Result<bool, RewriteError> {
        let Some((aliases, users)) = &self.local_users else {
            return Ok(true);
        };
        let local = addr
            .rsplit_once('@')
            .map(|(l, _)| l)
            .unwrap_or(addr)
            .to_lowercase();
        let (base, ext) = self.split_ext(&local);
        let mut keys = vec![local.as_str()];
        if ext.is_some() {
            keys.push(base);
        }
        for k in keys {
            for s in [aliases, users] {
                if s.lookup(k)
                    .map_err(|e| RewriteError::Temporary(e.to_string()))?
                    .is_some()
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The class of a domain, for relay control and resolution.
    pub fn domain_class(&self, domain: &str) -> Result<Class, RewriteError> {
        if self.is_local_domain(domain)? {
            Ok(Class::Local)
        } else if self.alias_domains.matches(domain)? {
            Ok(Class::VirtualAlias)
        } else if self.mailbox_domains.matches(domain)? {
            Ok(Class::VirtualMailbox)
        } else if self.relay_domains.matches(domain)? {
            Ok(Class::Relay)
        } else {
            Ok(Class::Default)
        }
    }

    /// `user+ext` → (`user`, Some(`+ext`)) with recipient_delimiter; for the local agent.
    pub fn split_extension<'a>(&self, local: &'a str) -> (&'a str, Option<&'a str>) {
        self.split_ext(local)
    }

    /// recipient_delimiter's characters.
    pub fn delimiters(&self) -> &str {
        &self.delimiters
    }

    fn split_ext<'a>(&self, local: &'a str) -> (&'a str, Option<&'a str>) {
        if self.delimiters.is_empty() {
            return (local, None);
        }
        match local.find(|c| self.delimiters.contains(c)) {
            Some(i) if i > 0 => (&local[..i], Some(&local[i..])),
            _ => (local, None),
        }
    }

    /// One virtual_alias_maps lookup in Postfix's order; the result list, with an unmatched
    /// address extension propagated to each result's local part.
    /// Looks `addr` up in `maps` in Postfix's order for address tables (mail_addr_find):
    /// `user+ext@domain`, `user@domain`, then for a local domain or $myorigin `user+ext` and
    /// `user`, then `@domain`. The flag says whether the entry matched without the
    /// extension (for propagate_unmatched_extensions).
    pub fn find(&self, maps: &Maps, addr: &str) -> Result<Option<(String, bool)>, RewriteError> {
        self.find_with(maps, addr, true)
    }

    /// [`find`](Self::find); `local_part` false skips the `user+ext` and `user` keys.
    fn find_with(
        &self,
        maps: &Maps,
        addr: &str,
        local_part: bool,
    ) -> Result<Option<(String, bool)>, RewriteError> {
        if maps.is_empty() {
            return Ok(None);
        }
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return Ok(None);
        };
        let (base, ext) = self.split_ext(local);
        let look = |k: &str| {
            maps.lookup(k)
                .map_err(|e| RewriteError::Temporary(e.to_string()))
        };
        let mut found: Option<(String, bool)> = None;
        if let Some(v) = look(addr)? {
            found = Some((v, false));
        } else if ext.is_some() {
            if let Some(v) = look(&format!("{base}@{domain}"))? {
                found = Some((v, true));
            }
        }
        if found.is_none()
            && local_part
            && (self.is_local_domain(domain)? || domain.eq_ignore_ascii_case(&self.myorigin))
        {
            if let Some(v) = look(local)? {
                found = Some((v, false));
            } else if ext.is_some() {
                if let Some(v) = look(base)? {
                    found = Some((v, true));
                }
            }
        }
        if found.is_none() {
            if let Some(v) = look(&format!("@{domain}"))? {
                found = Some((v, true));
            }
        }
        Ok(found)
    }

    fn alias_once(&self, addr: &str) -> Result<Option<Vec<String>>, RewriteError> {
        let found = self.find(&self.virtual_alias_maps, addr)?;
        let ext = addr
            .rsplit_once('@')
            .and_then(|(local, _)| self.split_ext(local).1);
        Ok(found.map(|(v, propagate)| {
            crate::config::split_list(&v)
                .into_iter()
                .map(|a| {
                    let a = self.canonicalize(&a);
                    match (propagate, ext, a.rsplit_once('@')) {
                        (true, Some(ext), Some((l, d)))
                            if !l.contains(|c| self.delimiters.contains(c)) =>
                        {
                            format!("{l}{ext}@{d}")
                        }
                        _ => a,
                    }
                })
                .collect()
        }))
    }

    /// Expands virtual aliases recursively. An address that maps to itself is kept (the
    /// common "keep a copy" idiom); loops end at the recursion limit with the addresses reached.
    pub fn expand(&self, addr: &str) -> Result<Vec<String>, RewriteError> {
        let mut out: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        self.expand_into(&self.canonicalize(addr), 0, &mut seen, &mut out)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        addr: &str,
        depth: usize,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), RewriteError> {
        if out.len() >= self.expansion_limit {
            tracing::warn!(
                "virtual alias expansion of {addr}: more than {} addresses; the rest is dropped",
                self.expansion_limit
            );
            return Ok(());
        }
        let key = addr.to_ascii_lowercase();
        if depth >= self.recursion_limit || !seen.insert(key.clone()) {
            if depth >= self.recursion_limit {
                tracing::warn!(
                    "virtual alias expansion of {addr}: recursion limit {} exceeded",
                    self.recursion_limit
                );
            }
            if !out.iter().any(|a| a.eq_ignore_ascii_case(addr)) {
                out.push(addr.to_string());
            }
            return Ok(());
        }
        match self.alias_once(addr)? {
            None => {
                if !out.iter().any(|a| a.eq_ignore_ascii_case(addr)) {
                    out.push(addr.to_string());
                }
            }
            Some(targets) => {
                for t in targets {
                    if t.eq_ignore_ascii_case(addr) {
                        if !out.iter().any(|a| a.eq_ignore_ascii_case(&t)) {
                            out.push(t);
                        }
                        continue;
                    }
                    self.expand_into(&t, depth + 1, seen, out)?;
                }
            }
        }
        Ok(())
    }

    /// Whether virtual_alias_maps has an entry for the address (the lookup order of the
    /// expansion), whatever its targets: Postfix's smtpd accepts such an address as listed.
    pub fn alias_listed(&self, addr: &str) -> Result<bool, RewriteError> {
        Ok(self.alias_once(addr)?.is_some())
    }

    /// False when virtual_mailbox_maps is empty: Postfix's smtpd then does not check the
    /// users of virtual mailbox domains.
    pub fn has_mailbox_maps(&self) -> bool {
        !self.virtual_mailbox_maps.is_empty()
    }

    /// Whether a virtual mailbox recipient exists (virtual_mailbox_maps, with the address
    /// extension stripped as a fallback, then `@domain`).
    pub fn mailbox_of(&self, addr: &str) -> Result<Option<String>, RewriteError> {
        self.find_address(&self.virtual_mailbox_maps, addr)
    }

    /// An address looked up in `maps` as Postfix does for non-local domains:
    /// `user+ext@domain`, then `user@domain`, then `@domain` (relay_recipient_maps too).
    pub fn find_address(&self, maps: &Maps, addr: &str) -> Result<Option<String>, RewriteError> {
        Ok(self.find_with(maps, addr, false)?.map(|(v, _)| v))
    }

    fn transport_lookup(
        &self,
        addr: &str,
        domain: &str,
    ) -> Result<Option<(String, String)>, RewriteError> {
        if self.transport_maps.is_empty() {
            return Ok(None);
        }
        let look = |k: &str| {
            self.transport_maps
                .lookup(k)
                .map_err(|e| RewriteError::Temporary(e.to_string()))
        };
        let mut keys = vec![addr.to_ascii_lowercase(), domain.to_ascii_lowercase()];
        let mut d = domain;
        while let Some((_, parent)) = d.split_once('.') {
            keys.push(format!(".{}", parent.to_ascii_lowercase()));
            d = parent;
        }
        for k in keys {
            if let Some(v) = look(&k)? {
                return Ok(Some(split_transport(v.trim())));
            }
        }
        Ok(None)
    }

    /// Resolves one (already alias-expanded) recipient as Postfix's trivial-rewrite does: a
    /// virtual mailbox address goes to virtual_transport (or its transport_maps entry)
    /// whether or not virtual_mailbox_maps lists it; smtpd's reject_unlisted_* checks that
    /// table itself (and skips it when empty), and the delivery agent says "unknown user".
    pub fn resolve(&self, addr: &str) -> Result<Resolved, RewriteError> {
        let address = self.canonicalize(addr);
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let class = self.domain_class(&domain)?;
        let (mut transport, mut nexthop) = match class {
            Class::Local => self.local_transport.clone(),
            Class::VirtualAlias => (
                "error".to_string(),
                "5.1.1 User unknown in virtual alias table".to_string(),
            ),
            Class::VirtualMailbox => self.virtual_transport.clone(),
            Class::Relay => self.relay_transport.clone(),
            Class::Default => self.default_transport.clone(),
        };
        if transport != "error" {
            if let Some((t, n)) = self.transport_lookup(&address, &domain)? {
                if !t.is_empty() {
                    transport = t;
                }
                if !n.is_empty() {
                    nexthop = n;
                }
            }
        }
        // As Postfix: whatever the class, and after transport_maps.
        if let Some((newloc, _)) = self.find(&self.relocated_maps, &address)? {
            transport = "error".to_string();
            nexthop = format!("5.1.6 User has moved to {}", newloc.trim());
        }
        if nexthop.is_empty() {
            nexthop = match class {
                Class::Default | Class::Relay if !self.relayhost.is_empty() => {
                    self.relayhost.clone()
                }
                _ => domain.clone(),
            };
        }
        Ok(Resolved {
            class,
            transport,
            nexthop,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rw(extra: &str, files: &[(&str, &str)]) -> (Rewriter, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        let text = format!(
            "myhostname = mail.exemple.fr\nmydomain = exemple.fr\n{}",
            extra.replace("@DIR@", &d.path().display().to_string())
        );
        let cfg = Config::from_text(Path::new("/etc/postfix"), &text).unwrap();
        (Rewriter::from_config(&cfg).unwrap(), d)
    }

    #[test]
    fn address_classes() {
        let (r, _d) = rw(
            "mydestination = $myhostname, localhost\nvirtual_alias_domains = alias.example\nvirtual_mailbox_domains = exemple.fr\nvirtual_mailbox_maps = inline:{ test@exemple.fr=exemple.fr/test/ }\nvirtual_transport = lmtp:unix:private/dovecot-lmtp\nrelay_domains = relay.example\n",
            &[],
        );
        let res = |a: &str| r.resolve(a).unwrap();
        assert_eq!(res("root@mail.exemple.fr").class, Class::Local);
        assert_eq!(res("root@mail.exemple.fr").transport, "local");
        assert_eq!(res("root@mail.exemple.fr").nexthop, "mail.exemple.fr");
        assert_eq!(res("x@alias.example").transport, "error");
        let v = res("test@exemple.fr");
        assert_eq!(
            (v.class, v.transport.as_str(), v.nexthop.as_str()),
            (Class::VirtualMailbox, "lmtp", "unix:private/dovecot-lmtp")
        );
        // As Postfix's trivial-rewrite: smtpd checks virtual_mailbox_maps itself.
        assert_eq!(res("nobody@exemple.fr").transport, "lmtp");
        assert!(r.has_mailbox_maps());
        let rel = res("a@relay.example");
        assert_eq!(
            (rel.class, rel.transport.as_str(), rel.nexthop.as_str()),
            (Class::Relay, "relay", "relay.example")
        );
        let def = res("a@tutu.org");
        assert_eq!(
            (def.class, def.transport.as_str(), def.nexthop.as_str()),
            (Class::Default, "smtp", "tutu.org")
        );
        assert_eq!(r.domain_class("[127.0.0.1]").unwrap(), Class::Local);
        assert_eq!(r.domain_class("[192.0.2.1]").unwrap(), Class::Default);
        assert_eq!(r.canonicalize("bob"), "bob@mail.exemple.fr");
    }

    #[test]
    fn relayhost_and_transport_maps() {
        let (r, _d) = rw(
            "relayhost = [127.0.0.1]:10126\ntransport_maps = inline:{ slow.example=smtp:[127.0.0.1]:10130, .sub.example=relay:, a@b.example=discard: }\n",
            &[],
        );
        assert_eq!(
            r.resolve("x@tutu.org").unwrap().nexthop,
            "[127.0.0.1]:10126"
        );
        let s = r.resolve("x@slow.example").unwrap();
        assert_eq!(
            (s.transport.as_str(), s.nexthop.as_str()),
            ("smtp", "[127.0.0.1]:10130")
        );
        let s = r.resolve("x@deep.sub.example").unwrap();
        assert_eq!(
            (s.transport.as_str(), s.nexthop.as_str()),
            ("relay", "[127.0.0.1]:10126")
        );
        assert_eq!(r.resolve("a@b.example").unwrap().transport, "discard");
    }

    #[test]
    fn recursive_aliases_with_extension_and_loop() {
        let (r, _d) = rw(
            "recipient_delimiter = +\nvirtual_alias_maps = texthash:@DIR@/valias\n",
            &[("valias", "team@x.example a@x.example, b@x.example\nb@x.example c@y.example\nloop1@x.example loop2@x.example\nloop2@x.example loop1@x.example\nself@x.example self@x.example, copy@y.example\n@catch.example sink@y.example\n")],
        );
        assert_eq!(
            r.expand("team@x.example").unwrap(),
            vec!["a@x.example", "c@y.example"]
        );
        assert_eq!(
            r.expand("team+tag@x.example").unwrap(),
            vec!["a+tag@x.example", "c+tag@y.example"]
        );
        let l = r.expand("loop1@x.example").unwrap();
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(
            r.expand("self@x.example").unwrap(),
            vec!["self@x.example", "copy@y.example"]
        );
        assert_eq!(
            r.expand("anyone@catch.example").unwrap(),
            vec!["sink@y.example"]
        );
        assert_eq!(
            r.expand("plain@z.example").unwrap(),
            vec!["plain@z.example"]
        );
        for (a, listed) in [
            ("team@x.example", true),
            ("team+tag@x.example", true),
            ("anyone@catch.example", true),
            ("plain@z.example", false),
        ] {
            assert_eq!(r.alias_listed(a).unwrap(), listed, "{a}");
        }
    }

    #[test]
    fn local_recipient_maps() {
        let (r, _d) = rw(
            "mydestination = localhost\nrecipient_delimiter = +\nalias_maps = texthash:@DIR@/aliases\nlocal_recipient_maps = texthash:@DIR@/users $alias_maps\n",
            &[("aliases", "postmaster: root\n"), ("users", "bob x\n")],
        );
        for (a, known) in [
            ("bob@localhost", true),
            ("Bob+x@localhost", true),
            ("postmaster@localhost", true),
            ("ghost@localhost", false),
        ] {
            assert_eq!(r.local_user_known(a).unwrap(), known, "{a}");
        }
        let (r, _d) = rw("mydestination = localhost\nlocal_recipient_maps =\n", &[]);
        assert!(r.local_user_known("anyone@localhost").unwrap());
    }

    #[test]
    fn address_literals_follow_inet_interfaces() {
        let (r, _d) = rw("inet_interfaces = 192.0.2.7\n", &[]);
        assert_eq!(r.domain_class("[192.0.2.7]").unwrap(), Class::Local);
        assert_eq!(r.domain_class("[127.0.0.1]").unwrap(), Class::Default);
        let (r, _d) = rw("inet_interfaces = loopback-only\n", &[]);
        assert_eq!(r.domain_class("[127.0.0.1]").unwrap(), Class::Local);
    }

    /// relocated_maps bounces a moved user whatever the address class, after transport_maps,
    /// with 5.1.6 (Postfix's resolve.c); the extension does not hide the user.
    #[test]
    fn relocated_users_go_to_the_error_transport() {
        let (r, _d) = rw(
            "mydestination = $myhostname\nrecipient_delimiter = +\nrelocated_maps = inline:{ { old@tutu.org = new@example.net }, { bob = bob@elsewhere.example } }\ntransport_maps = inline:{ { tutu.org = smtp:[relay.example] } }\n",
            &[],
        );
        let moved = r.resolve("old@tutu.org").unwrap();
        assert_eq!(moved.transport, "error");
        assert_eq!(moved.nexthop, "5.1.6 User has moved to new@example.net");
        let local = r.resolve("bob+x@mail.exemple.fr").unwrap();
        assert_eq!(
            (local.transport.as_str(), local.nexthop.as_str()),
            ("error", "5.1.6 User has moved to bob@elsewhere.example")
        );
        assert_eq!(r.resolve("other@tutu.org").unwrap().transport, "smtp");
    }
}
