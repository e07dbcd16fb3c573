//! NAME
//!   tlsmgr - TLS keys and certificates for smtpd
//!
//! SUMMARY
//!   Builds the rustls server configuration smtpd uses for STARTTLS and wrapper mode.
//!
//! DESCRIPTION
//!   Loads the server's keys every time smtpd's settings are (re)built, so `relais reload`
//!   picks up renewed certificates without cutting sessions (sessions in progress keep the
//!   configuration they started with). Keys come from smtpd_tls_chain_files (PEM files where
//!   each private key is followed by its chain; several keys, e.g. RSA and ECDSA, may be
//!   listed) or else from smtpd_tls_cert_file/smtpd_tls_key_file plus
//!   smtpd_tls_eccert_file/smtpd_tls_eckey_file. Among several keys the first whose signature
//!   schemes the client accepts is used. tls_server_sni_maps maps an SNI name (then its parent
//!   domains as `.domain`) to a list of PEM files (key then chain, in one file or several);
//!   unknown names get the default keys. When the relais-specific parameter
//!   relais_tls_self_signed is yes and the files do not exist yet, it generates a self-signed
//!   certificate for $myhostname (rcgen) first, so that the default configuration offers
//!   STARTTLS out of the box. Protocol versions follow smtpd_tls_protocols (rustls speaks TLS
//!   1.2 and 1.3 only; `relais check` names older versions a list asks for). Session tickets
//!   are rotated by rustls's ticketer.
//!
//!   Client certificates: with smtpd_tls_ask_ccert (or smtpd_tls_req_ccert) the client is
//!   asked for one; after the handshake its fingerprint (smtpd_tls_fingerprint_digest over the
//!   certificate, then over its public key) is looked up in relay_clientcerts for
//!   permit_tls_clientcerts, and its chain checked against smtpd_tls_CAfile/smtpd_tls_CApath
//!   for permit_tls_all_clientcerts. smtpd_tls_req_ccert (honoured, as in Postfix,
//!   only at smtpd_tls_security_level = encrypt and not in wrapper mode) answers the client's
//!   next command with 421 and ends a session whose certificate is missing or not trusted.
//!
//! MESSAGES
//!   `Anonymous|Untrusted|Trusted TLS connection established from host[addr]: TLSv1.3 with
//!   cipher … (256/256 bits)` (smtpd_tls_loglevel >= 1); `tls_server_sni_maps: name: …` when an
//!   SNI entry's files cannot be loaded (the default keys are served).
//!
//! SECURITY
//!   The private key file is created with mode 0600. A key that does not match its
//!   certificate is refused. Cipher suites are rustls's defaults (AEAD with forward secrecy);
//!   OpenSSL cipher strings are reported by `relais check`. md5 fingerprints are not
//!   available (sha256 is used, with a warning).
//!
//! CONFIGURATION PARAMETERS
//!   smtpd_tls_security_level (), smtpd_tls_cert_file (), smtpd_tls_key_file
//!   ($smtpd_tls_cert_file), smtpd_tls_eccert_file (), smtpd_tls_eckey_file
//!   ($smtpd_tls_eccert_file), smtpd_tls_chain_files (), tls_server_sni_maps (),
//!   smtpd_tls_protocols, relais_tls_self_signed (no), smtpd_tls_loglevel (0),
//!   smtpd_tls_received_header (no), smtpd_tls_ask_ccert (no), smtpd_tls_req_ccert (no),
//!   smtpd_tls_CAfile (), smtpd_tls_CApath (), relay_clientcerts (),
//!   smtpd_tls_fingerprint_digest (sha256 at compatibility_level 3.6)

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

pub mod ccert;
pub mod certs;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
    #[error("{file}: {why}")]
    File { file: String, why: String },
}

/// smtpd_tls_security_level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    None,
    May,
    Encrypt,
}

impl Level {
    pub fn from_config(cfg: &Config) -> Level {
        match cfg.get("smtpd_tls_security_level").trim() {
            "may" => Level::May,
            "encrypt" => Level::Encrypt,
            _ => Level::None,
        }
    }
}

fn file_err(file: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        file: file.display().to_string(),
        why: why.to_string(),
    }
}

/// Writes a self-signed certificate and key for `host` unless the files exist.
fn ensure_self_signed(cert: &Path, key: &Path, host: &str) -> Result<(), TlsError> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec![host.to_string(), "localhost".to_string()];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::Config(format!("self-signed certificate: {e}")))?;
    for p in [cert, key] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| file_err(d, e))?;
        }
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(key)
            .map_err(|e| file_err(key, e))?;
        f.write_all(ck.key_pair.serialize_pem().as_bytes())
            .map_err(|e| file_err(key, e))?;
        f.sync_all().map_err(|e| file_err(key, e))?;
    }
    std::fs::write(cert, ck.cert.pem()).map_err(|e| file_err(cert, e))?;
    tracing::info!(
        "generated a self-signed certificate for {host} in {}",
        cert.display()
    );
    Ok(())
}

/// Which TLS versions smtpd_tls_protocols allows (`!TLSv1.2` exclusions, a list, or
/// `>=TLSv1.2` bounds; see [`crate::smtp::tls::protocol_versions`]).
fn versions(cfg: &Config) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let ((t12, t13), _) = crate::smtp::tls::protocol_versions(&cfg.get_list("smtpd_tls_protocols"));
    let mut out = Vec::new();
    if t13 {
        out.push(&rustls::version::TLS13);
    }
    if t12 {
        out.push(&rustls::version::TLS12);
    }
    out
}

/// The server configuration for smtpd, or None when TLS is off for this service.
pub fn server_config(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let wrapper = cfg.get_bool("smtpd_tls_wrappermode");
    if Level::from_config(cfg) == Level::None && !wrapper {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain_files = cfg.get_list("smtpd_tls_chain_files");
    let mut keys = Vec::new();
    if !chain_files.is_empty() {
        // Postfix: smtpd_tls_chain_files wins over the cert/key parameter pairs.
        let groups = certs::load_groups(&chain_files).map_err(TlsError::Config)?;
        keys = certs::certified(groups, &provider, &chain_files.join(" "))
            .map_err(TlsError::Config)?;
    } else {
        let cert = cfg.get("smtpd_tls_cert_file");
        let eccert = cfg.get("smtpd_tls_eccert_file");
        if cert.trim().is_empty() && eccert.trim().is_empty() {
            return Err(TlsError::Config(
                "TLS is required or offered but smtpd_tls_cert_file is empty".into(),
            ));
        }
        let pairs = [
            (cert, cfg.get("smtpd_tls_key_file"), true),
            (eccert, cfg.get("smtpd_tls_eckey_file"), false),
        ];
        for (cert, key, first) in pairs {
            if cert.trim().is_empty() {
                continue;
            }
            let key = if key.trim().is_empty() {
                cert.clone()
            } else {
                key
            };
            let (cert, key) = (
                Path::new(cert.trim()).to_path_buf(),
                Path::new(key.trim()).to_path_buf(),
            );
            if first && cfg.get_bool("relais_tls_self_signed") {
                ensure_self_signed(&cert, &key, &cfg.get("myhostname"))?;
            }
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| file_err(&cert, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(&cert, e))?;
            if chain.is_empty() {
                return Err(file_err(&cert, "no certificate found"));
            }
            let pkey = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_err(&key, e))?;
            keys.extend(
                certs::certified(vec![(chain, pkey)], &provider, &cert.display().to_string())
                    .map_err(TlsError::Config)?,
            );
        }
    }
    let vers = versions(cfg);
    if vers.is_empty() {
        return Err(TlsError::Config("smtpd_tls_protocols excludes both TLSv1.2 and TLSv1.3, the only versions relais speaks".into()));
    }
    let sni_list = cfg.get_list("tls_server_sni_maps");
    let sni = if sni_list.is_empty() {
        None
    } else {
        Some(
            crate::table::Maps::open(&sni_list)
                .map_err(|e| TlsError::Config(format!("tls_server_sni_maps: {e}")))?,
        )
    };
    let ccerts = Arc::new(ccert::ClientCerts::from_config(cfg, &provider));
    let resolver = Arc::new(certs::Resolver::new(keys, sni, provider.clone()));
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&vers)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(ccerts.handshake_verifier())
        .with_cert_resolver(resolver);
    if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
        sc.ticketer = t;
    }
    Ok(Some(Arc::new(sc)))
}

/// The client-certificate checks of a service (fingerprints, trust), for smtpd's sessions.
pub fn client_certs(cfg: &Config) -> Arc<ccert::ClientCerts> {
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(ccert::ClientCerts::from_config(cfg, &provider))
}

/// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`, as Postfix logs and writes
/// into Received: headers.
pub fn describe(conn: &rustls::CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let (cipher, bits) = match conn.negotiated_cipher_suite() {
        Some(cs) => {
            // OpenSSL's names for the TLS 1.3 suites, as Postfix logs them.
            let name = cs
                .suite()
                .as_str()
                .unwrap_or("unknown")
                .replacen("TLS13_", "TLS_", 1);
            let bits = if name.contains("AES_128") { 128 } else { 256 };
            (name, bits)
        }
        None => ("unknown".to_string(), 0),
    };
    format!("{version} with cipher {cipher} ({bits}/{bits} bits)")
}
