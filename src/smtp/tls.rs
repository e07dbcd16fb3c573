//! Client-side TLS for smtp and lmtp: the security level of a destination (global setting,
//! legacy smtp_use_tls/smtp_enforce_tls, smtp_tls_policy_maps), the rustls client
//! configuration (CA file/path, protocol versions, client certificate, in-memory session
//! resumption) and the certificate checks Postfix makes after the handshake: trusted (the
//! chain ends at a CA we know) and matched (a name from the match list is in the certificate).
//!
//! The handshake itself accepts any certificate whose handshake signature is valid; trust and
//! name are judged afterwards, before a single command of the mail transaction is sent, so
//! that `may` and `encrypt` can log `Untrusted`/`Trusted` and `verify`/`secure` can defer with
//! Postfix's reasons (`Server certificate not trusted`, `Server certificate not verified`).

use crate::config::Config;
use crate::table::Maps;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientTlsError {
    #[error("{0}")]
    Policy(String),
    #[error("{0}")]
    Lookup(String),
}

/// smtp_tls_security_level (and a policy table's level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    None,
    May,
    Encrypt,
    Verify,
    Secure,
}

impl Level {
    /// Parses a level name. DANE and fingerprint levels are not implemented: `dane` falls back
    /// to `may` (what Postfix does without DNSSEC-validated TLSA records); `dane-only` and
    /// `fingerprint` become `secure`, which is never weaker than what was asked for.
    pub fn parse(s: &str) -> Option<(Level, Option<&'static str>)> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => (Level::None, None),
            "may" => (Level::May, None),
            "encrypt" => (Level::Encrypt, None),
            "verify" => (Level::Verify, None),
            "secure" => (Level::Secure, None),
            "dane" => (Level::May, Some("dane is not implemented by relais: using may (opportunistic TLS)")),
            "dane-only" => (Level::Secure, Some("dane-only is not implemented by relais: using secure (CA-verified TLS), never plaintext")),
            "fingerprint" => (Level::Secure, Some("fingerprint is not implemented by relais: using secure (CA-verified TLS), never plaintext")),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::May => "may",
            Level::Encrypt => "encrypt",
            Level::Verify => "verify",
            Level::Secure => "secure",
        }
    }

    /// TLS is mandatory: no STARTTLS or a failed handshake defers instead of falling back.
    pub fn required(self) -> bool {
        self >= Level::Encrypt
    }
}

/// The TLS policy for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    /// Certificate match patterns (`hostname`, `nexthop`, `dot-nexthop`, names, `.domain`).
    pub matches: Vec<String>,
    /// Protocol list from the policy table (`protocols=`), overriding the parameters.
    pub protocols: Option<Vec<String>>,
    /// SNI name rule (smtp_tls_servername or `servername=`): empty means no SNI.
    pub servername: String,
}

/// What the certificate check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCheck {
    pub trusted: bool,
    pub matched: bool,
}

impl PeerCheck {
    /// Postfix's adjective in `… TLS connection established to …`.
    pub fn word(self, level: Level) -> &'static str {
        if self.matched && level >= Level::Verify {
            "Verified"
        } else if self.trusted {
            "Trusted"
        } else {
            "Untrusted"
        }
    }
}

/// The parameter names for smtp or lmtp (Postfix's lmtp reads lmtp_* twins).
struct Names {
    lmtp: bool,
}

impl Names {
    fn n(&self, smtp: &'static str, lmtp: &'static str) -> &'static str {
        if self.lmtp {
            lmtp
        } else {
            smtp
        }
    }
}

/// A certificate verifier that checks only the handshake signatures; trust and names are
/// judged after the handshake by [`ClientTls::check`] (see the module comment).
#[derive(Debug)]
struct SignatureOnly {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The client's TLS settings, read once per master.cf row.
pub struct ClientTls {
    pub level: Level,
    policy_maps: Option<Maps>,
    verify_match: Vec<String>,
    secure_match: Vec<String>,
    protocols: Vec<String>,
    mandatory_protocols: Vec<String>,
    servername: String,
    pub note_starttls_offer: bool,
    pub loglevel: i64,
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    provider: Arc<rustls::crypto::CryptoProvider>,
    resumption: rustls::client::Resumption,
    client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    /// rustls configurations by protocol set (built on first use).
    configs: Mutex<HashMap<(bool, bool, bool), Arc<rustls::ClientConfig>>>,
    /// Problems found while reading the settings, for `relais check` and the start log, with
    /// the parameter(s) they are about (`a|b` when either may be).
    pub warnings: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// Which of TLS 1.2 / 1.3 a Postfix protocol list allows: `!TLSv1.2` exclusions, a plain
/// list of versions, or Postfix 3.6's `>=TLSv1.2` / `<=TLSv1.3` bounds. Versions rustls cannot
/// speak (SSLv2, SSLv3, TLSv1, TLSv1.1) are reported when the list asks for them.
pub fn protocol_versions(spec: &[String]) -> ((bool, bool), Vec<String>) {
    const ORDER: [&str; 6] = ["SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];
    let rank = |v: &str| ORDER.iter().position(|o| o.eq_ignore_ascii_case(v));
    let mut warnings = Vec::new();
    let mut allowed = [true; 6];
    let mut listed = [false; 6];
    let mut any_listed = false;
    for item in spec.iter().flat_map(|s| s.split(':')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some(v) = item.strip_prefix(">=") {
            match rank(v) {
                Some(r) => (0..r).for_each(|i| allowed[i] = false),
                None => warnings.push(format!("unknown TLS protocol \"{v}\" ignored")),
            }
        } else if let Some(v) = item.strip_prefix("<=") {
            match rank(v) {
                Some(r) => (r + 1..6).for_each(|i| allowed[i] = false),
                None => warnings.push(format!("unknown TLS protocol \"{v}\" ignored")),
            }
        } else if let Some(v) = item.strip_prefix('!') {
            match rank(v) {
                Some(r) => allowed[r] = false,
                None => warnings.push(format!("unknown TLS protocol \"{v}\" ignored")),
            }
        } else {
            match rank(item) {
                Some(r) => {
                    listed[r] = true;
                    any_listed = true;
                }
                None => warnings.push(format!("unknown TLS protocol \"{item}\" ignored")),
            }
        }
    }
    if any_listed {
        for i in 0..6 {
            allowed[i] &= listed[i];
        }
    }
    let old: Vec<&str> = (0..4)
        .filter(|&i| allowed[i] && (any_listed || spec.iter().any(|s| s.contains(">="))))
        .map(|i| ORDER[i])
        .collect();
    if !old.is_empty() {
        warnings.push(format!(
            "{} cannot be spoken by rustls: relais uses TLSv1.2 and TLSv1.3 only",
            old.join(", ")
        ));
    }
    ((allowed[4], allowed[5]), warnings)
}

/// Reads PEM certificates and the first private key from `files` (key and chain in one file
/// or several, in any order).
pub fn load_key_and_chain(
    files: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let mut chain = Vec::new();
    let mut key = None;
    for f in files {
        let data = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
        for c in CertificateDer::pem_slice_iter(&data) {
            chain.push(c.map_err(|e| format!("{f}: {e}"))?);
        }
        if key.is_none() {
            if let Ok(k) = PrivateKeyDer::from_pem_slice(&data) {
                key = Some(k);
            }
        }
    }
    let key = key.ok_or_else(|| format!("{}: no private key found", files.join(" ")))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", files.join(" ")));
    }
    Ok((chain, key))
}

/// Loads CA certificates from a PEM file and/or every file of a directory.
fn load_roots(cafile: &str, capath: &str, warnings: &mut Vec<String>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let mut add_file = |p: &std::path::Path, warnings: &mut Vec<String>| {
        let Ok(data) = std::fs::read(p) else {
            warnings.push(format!("cannot read CA file {}", p.display()));
            return;
        };
        for c in CertificateDer::pem_slice_iter(&data).flatten() {
            // A CA certificate webpki cannot parse is skipped, as OpenSSL skips it.
            let _ = roots.add(c);
        }
    };
    if !cafile.trim().is_empty() {
        add_file(std::path::Path::new(cafile.trim()), warnings);
    }
    if !capath.trim().is_empty() {
        match std::fs::read_dir(capath.trim()) {
            Ok(rd) => {
                // Bounded by the directory's size; hashed links point at the same files.
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_file() {
                        add_file(&p, warnings);
                    }
                }
            }
            Err(e) => warnings.push(format!("cannot read CA directory {capath}: {e}")),
        }
    }
    roots
}

impl ClientTls {
    pub fn new(cfg: &Config, lmtp: bool) -> ClientTls {
        let nm = Names { lmtp };
        let mut warnings = Vec::new();
        let lvl_name = nm.n("smtp_tls_security_level", "lmtp_tls_security_level");
        let pol_name = nm.n("smtp_tls_policy_maps", "lmtp_tls_policy_maps");
        let cert_name = nm.n("smtp_tls_cert_file", "lmtp_tls_cert_file");
        let level_text = cfg.get(nm.n("smtp_tls_security_level", "lmtp_tls_security_level"));
        let level = if level_text.trim().is_empty() {
            // The pre-2.3 switches, still honoured by Postfix when the level is unset.
            let (use_tls, enforce, peername) = if lmtp {
                (
                    cfg.get_bool("lmtp_use_tls"),
                    cfg.get_bool("lmtp_enforce_tls"),
                    cfg.get_bool("lmtp_enforce_peername"),
                )
            } else {
                (
                    cfg.get_bool("smtp_use_tls"),
                    cfg.get_bool("smtp_enforce_tls"),
                    cfg.get_bool("smtp_enforce_peername"),
                )
            };
            match (enforce, peername, use_tls) {
                (true, true, _) => Level::Verify,
                (true, false, _) => Level::Encrypt,
                (false, _, true) => Level::May,
                _ => Level::None,
            }
        } else {
            match Level::parse(&level_text) {
                Some((l, w)) => {
                    if let Some(w) = w {
                        warnings.push((lvl_name, w.to_string()));
                    }
                    l
                }
                None => {
                    // Unknown level: refuse plaintext rather than guess weaker.
                    warnings.push((
                        lvl_name,
                        format!("unknown TLS security level \"{level_text}\": using encrypt"),
                    ));
                    Level::Encrypt
                }
            }
        };
        let policy_list = cfg.get_list(nm.n("smtp_tls_policy_maps", "lmtp_tls_policy_maps"));
        let policy_maps = if policy_list.is_empty() {
            None
        } else {
            match Maps::open(&policy_list) {
                Ok(m) => Some(m),
                Err(e) => {
                    warnings.push((pol_name, format!("TLS policy table: {e}")));
                    // An unreadable table must not weaken security: every lookup defers.
                    Some(Maps::from_tables(vec![Arc::new(Broken(e.to_string()))]))
                }
            }
        };
        let mut roots_w = Vec::new();
        let roots = load_roots(
            &cfg.get(nm.n("smtp_tls_CAfile", "lmtp_tls_CAfile")),
            &cfg.get(nm.n("smtp_tls_CApath", "lmtp_tls_CApath")),
            &mut roots_w,
        );
        let ca_names = nm.n(
            "smtp_tls_CAfile|smtp_tls_CApath",
            "lmtp_tls_CAfile|lmtp_tls_CApath",
        );
        warnings.extend(roots_w.into_iter().map(|w| (ca_names, w)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algs = provider.signature_verification_algorithms;
        let cert = cfg.get(nm.n("smtp_tls_cert_file", "lmtp_tls_cert_file"));
        let key = cfg.get(nm.n("smtp_tls_key_file", "lmtp_tls_key_file"));
        let mut client_cert = None;
        if !cert.trim().is_empty() {
            let key = if key.trim().is_empty() {
                cert.clone()
            } else {
                key
            };
            let files = vec![key.trim().to_string(), cert.trim().to_string()];
            match load_key_and_chain(&files) {
                Ok((chain, key)) => match provider.key_provider.load_private_key(key) {
                    Ok(k) => {
                        client_cert = Some(Arc::new(rustls::sign::CertifiedKey::new(chain, k)))
                    }
                    Err(e) => warnings.push((cert_name, format!("client certificate key: {e}"))),
                },
                Err(e) => warnings.push((cert_name, format!("client certificate: {e}"))),
            }
        }
        // smtp_tls_session_cache_database: the parameter table's warning says the file is
        // not used (sessions live in rustls's in-memory cache below).
        let _ = cfg.get_time(nm.n(
            "smtp_tls_session_cache_timeout",
            "lmtp_tls_session_cache_timeout",
        ));
        let protocols = cfg.get_list(nm.n("smtp_tls_protocols", "lmtp_tls_protocols"));
        let mandatory_protocols = cfg.get_list(nm.n(
            "smtp_tls_mandatory_protocols",
            "lmtp_tls_mandatory_protocols",
        ));
        let proto_names = [
            nm.n("smtp_tls_protocols", "lmtp_tls_protocols"),
            nm.n(
                "smtp_tls_mandatory_protocols",
                "lmtp_tls_mandatory_protocols",
            ),
        ];
        for (list, name) in [&protocols, &mandatory_protocols]
            .into_iter()
            .zip(proto_names)
        {
            let ((t12, t13), w) = protocol_versions(list);
            warnings.extend(w.into_iter().map(|w| (name, w)));
            if !t12 && !t13 {
                warnings.push((
                    name,
                    "excludes both TLSv1.2 and TLSv1.3: TLS sessions that use it will fail".into(),
                ));
            }
        }
        ClientTls {
            level,
            policy_maps,
            verify_match: split_match(
                &cfg.get_list(nm.n("smtp_tls_verify_cert_match", "lmtp_tls_verify_cert_match")),
            ),
            secure_match: split_match(
                &cfg.get_list(nm.n("smtp_tls_secure_cert_match", "lmtp_tls_secure_cert_match")),
            ),
            protocols,
            mandatory_protocols,
            servername: cfg.get(nm.n("smtp_tls_servername", "lmtp_tls_servername")),
            note_starttls_offer: cfg.get_bool(nm.n(
                "smtp_tls_note_starttls_offer",
                "lmtp_tls_note_starttls_offer",
            )),
            loglevel: cfg.get_int(nm.n("smtp_tls_loglevel", "lmtp_tls_loglevel")),
            roots: Arc::new(roots),
            algs,
            provider,
            resumption: rustls::client::Resumption::in_memory_sessions(1024),
            client_cert,
            configs: Mutex::new(HashMap::new()),
            warnings,
        }
    }

    /// The policy for a next-hop: smtp_tls_policy_maps (`[host]:port`, `[host]`, `domain`,
    /// then `.parent` domains), else the global level.
    pub fn policy(
        &self,
        nexthop_text: &str,
        host: &str,
        port: u16,
        bracketed: bool,
        default_port: u16,
    ) -> Result<Policy, ClientTlsError> {
        let mut found = None;
        if let Some(maps) = &self.policy_maps {
            let mut keys = vec![nexthop_text.trim().to_ascii_lowercase()];
            if bracketed {
                keys.push(format!("[{host}]:{port}"));
                if port == default_port {
                    keys.push(format!("[{host}]"));
                }
            } else {
                keys.push(host.to_string());
                let mut rest = host;
                // Bounded by the number of labels.
                while let Some((_, parent)) = rest.split_once('.') {
                    keys.push(format!(".{parent}"));
                    rest = parent;
                }
            }
            let mut seen = Vec::new();
            for k in keys {
                if seen.contains(&k) {
                    continue;
                }
                match maps.lookup(&k) {
                    Ok(Some(v)) => {
                        found = Some(v);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(ClientTlsError::Lookup(format!(
                            "TLS policy lookup for {nexthop_text}: {e}"
                        )))
                    }
                }
                seen.push(k);
            }
        }
        let Some(v) = found else {
            return Ok(Policy {
                level: self.level,
                matches: self.default_matches(self.level),
                protocols: None,
                servername: self.servername.clone(),
            });
        };
        let mut words = v.split_whitespace();
        let lw = words.next().unwrap_or("");
        let Some((level, _)) = Level::parse(lw) else {
            return Err(ClientTlsError::Policy(format!(
                "TLS policy lookup for {nexthop_text}: invalid TLS security level: \"{lw}\""
            )));
        };
        let mut p = Policy {
            level,
            matches: self.default_matches(level),
            protocols: None,
            servername: self.servername.clone(),
        };
        for w in words {
            match w.split_once('=') {
                Some(("match", m)) => {
                    p.matches = m
                        .split(':')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                Some(("protocols", m)) => {
                    p.protocols = Some(m.split(':').map(str::to_string).collect())
                }
                Some(("servername", m)) => p.servername = m.to_string(),
                // Cipher grades and exclusions have no rustls equivalent (see relais check).
                Some(("ciphers" | "exclude" | "connection_reuse" | "tafile" | "enable_rpk", _)) => {
                }
                _ => {
                    return Err(ClientTlsError::Policy(format!(
                        "TLS policy lookup for {nexthop_text}: invalid attribute: \"{w}\""
                    )))
                }
            }
        }
        Ok(p)
    }

    fn default_matches(&self, level: Level) -> Vec<String> {
        match level {
            Level::Verify => self.verify_match.clone(),
            Level::Secure => self.secure_match.clone(),
            _ => Vec::new(),
        }
    }

    /// The rustls configuration for a policy (protocol versions per level).
    pub fn config(&self, p: &Policy, sni: bool) -> Result<Arc<rustls::ClientConfig>, String> {
        let spec = match &p.protocols {
            Some(s) => s,
            None if p.level.required() => &self.mandatory_protocols,
            None => &self.protocols,
        };
        let ((t12, t13), _) = protocol_versions(spec);
        let mut configs = self
            .configs
            .lock()
            .map_err(|_| "TLS configuration lock poisoned".to_string())?;
        if let Some(c) = configs.get(&(t12, t13, sni)) {
            return Ok(c.clone());
        }
        let mut vers = Vec::new();
        if t13 {
            vers.push(&rustls::version::TLS13);
        }
        if t12 {
            vers.push(&rustls::version::TLS12);
        }
        let vers: Vec<&'static SupportedProtocolVersion> = vers;
        if vers.is_empty() {
            return Err("no TLS protocol version left after the protocol exclusions".into());
        }
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&vers)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignatureOnly { algs: self.algs }));
        let mut c = match &self.client_cert {
            Some(ck) => builder.with_client_cert_resolver(Arc::new(
                rustls::sign::SingleCertAndKey::from(ck.clone()),
            )),
            None => builder.with_no_client_auth(),
        };
        c.resumption = self.resumption.clone();
        c.enable_sni = sni;
        let c = Arc::new(c);
        configs.insert((t12, t13, sni), c.clone());
        Ok(c)
    }

    /// The SNI name to send, or None (Postfix sends none unless smtp_tls_servername is set).
    pub fn sni(&self, p: &Policy, host: &str, nexthop: &str) -> Option<String> {
        match p.servername.trim() {
            "" => None,
            "hostname" => Some(host.to_string()),
            "nexthop" => Some(nexthop.to_string()),
            other => Some(other.to_string()),
        }
    }

    /// Judges the peer's certificate: trusted by our CAs, and matching one of the policy's
    /// names (`hostname` is the server's name, `nexthop` the destination, `dot-nexthop` any
    /// name under it; `.domain` any name under domain; anything else that exact name).
    pub fn check(
        &self,
        certs: &[CertificateDer<'_>],
        p: &Policy,
        host: &str,
        nexthop: &str,
    ) -> PeerCheck {
        let Some(ee) = certs.first() else {
            return PeerCheck {
                trusted: false,
                matched: false,
            };
        };
        let Ok(parsed) = rustls::server::ParsedCertificate::try_from(ee) else {
            return PeerCheck {
                trusted: false,
                matched: false,
            };
        };
        let trusted = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &certs[1..],
            UnixTime::now(),
            self.algs.all,
        )
        .is_ok();
        let exact = |name: &str| {
            ServerName::try_from(name.to_string())
                .map(|sn| rustls::client::verify_server_name(&parsed, &sn).is_ok())
                .unwrap_or(false)
        };
        let under = |domain: &str| {
            let suffix = format!(".{}", domain.trim_start_matches('.').to_ascii_lowercase());
            webpki::EndEntityCert::try_from(ee)
                .map(|c| {
                    c.valid_dns_names()
                        .any(|n| n.to_ascii_lowercase().ends_with(&suffix))
                })
                .unwrap_or(false)
        };
        let matched = trusted
            && p.matches.iter().any(|m| match m.as_str() {
                "hostname" => exact(host),
                "nexthop" => exact(nexthop),
                "dot-nexthop" => under(nexthop),
                d if d.starts_with('.') => under(d),
                name => exact(name),
            });
        PeerCheck { trusted, matched }
    }
}

/// Match lists may separate patterns with commas, spaces or colons.
fn split_match(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split(':'))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A table that could not be opened: every lookup fails, so mail waits instead of going out
/// under a weaker policy than the administrator wrote.
#[derive(Debug)]
struct Broken(String);

impl crate::table::Table for Broken {
    fn lookup(&self, _key: &str) -> Result<Option<String>, crate::table::TableError> {
        Err(crate::table::TableError::Lookup {
            spec: "smtp_tls_policy_maps".into(),
            msg: self.0.clone(),
        })
    }
    fn spec(&self) -> &str {
        "smtp_tls_policy_maps"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn protocols_map_to_rustls_versions() {
        assert_eq!(protocol_versions(&l(&["!SSLv2", "!SSLv3"])).0, (true, true));
        assert!(protocol_versions(&l(&["!SSLv2", "!SSLv3"])).1.is_empty());
        assert_eq!(protocol_versions(&l(&["!TLSv1.2"])).0, (false, true));
        assert_eq!(protocol_versions(&l(&[">=TLSv1.3"])).0, (false, true));
        assert_eq!(protocol_versions(&l(&["TLSv1.2"])).0, (true, false));
        let (v, w) = protocol_versions(&l(&["TLSv1", "TLSv1.2"]));
        assert_eq!(v, (true, false));
        assert!(w.iter().any(|w| w.contains("TLSv1 cannot")), "{w:?}");
        let (_, w) = protocol_versions(&l(&[">=TLSv1"]));
        assert!(w.iter().any(|w| w.contains("TLSv1, TLSv1.1")), "{w:?}");
        assert_eq!(
            protocol_versions(&l(&["!SSLv2:!SSLv3:!TLSv1.3"])).0,
            (true, false)
        );
    }

    #[test]
    fn levels() {
        assert_eq!(Level::parse("Encrypt").unwrap().0, Level::Encrypt);
        assert_eq!(Level::parse("dane-only").unwrap().0, Level::Secure);
        assert!(Level::parse("bogus").is_none());
        assert!(Level::Verify.required() && !Level::May.required());
    }

    fn client(extra: &str) -> ClientTls {
        let cfg = Config::from_text(std::path::Path::new("/nonexistent"), extra).unwrap();
        ClientTls::new(&cfg, false)
    }

    #[test]
    fn legacy_switches_map_to_levels() {
        assert_eq!(client("").level, Level::None);
        assert_eq!(client("smtp_use_tls = yes").level, Level::May);
        assert_eq!(client("smtp_enforce_tls = yes").level, Level::Verify);
        assert_eq!(
            client("smtp_enforce_tls = yes\nsmtp_enforce_peername = no").level,
            Level::Encrypt
        );
        // The level wins over the legacy switches.
        assert_eq!(
            client("smtp_enforce_tls = yes\nsmtp_tls_security_level = may").level,
            Level::May
        );
        assert_eq!(
            client("smtp_tls_security_level = bogus").level,
            Level::Encrypt
        );
    }

    #[test]
    fn policy_table_keys_and_attributes() {
        let c = client(
            "smtp_tls_security_level = may\nsmtp_tls_policy_maps = inline:{ { [relay.example]:587 = secure match=relay.example protocols=!TLSv1.2 }, { example.org = verify }, { .example.net = encrypt }, { bad.example = sometimes } }",
        );
        let p = c
            .policy("[relay.example]:587", "relay.example", 587, true, 25)
            .unwrap();
        assert_eq!(p.level, Level::Secure);
        assert_eq!(p.matches, vec!["relay.example"]);
        assert_eq!(p.protocols, Some(vec!["!TLSv1.2".to_string()]));
        let p = c
            .policy("example.org", "example.org", 25, false, 25)
            .unwrap();
        assert_eq!(
            (p.level, p.matches),
            (Level::Verify, vec!["hostname".to_string()])
        );
        // Sub-domains match `.domain`, the domain itself does not.
        assert_eq!(
            c.policy("a.b.example.net", "a.b.example.net", 25, false, 25)
                .unwrap()
                .level,
            Level::Encrypt
        );
        assert_eq!(
            c.policy("example.net", "example.net", 25, false, 25)
                .unwrap()
                .level,
            Level::May
        );
        assert!(c
            .policy("bad.example", "bad.example", 25, false, 25)
            .is_err());
        let s = c.policy("x.example", "x.example", 25, false, 25).unwrap();
        assert_eq!(s.level, Level::May);
    }
}
