//! Server certificates: key+chain groups from PEM files (smtpd_tls_chain_files, the
//! cert/key and eccert/eckey pairs, tls_server_sni_maps results), and the rustls resolver that
//! picks one per handshake — by SNI name through tls_server_sni_maps, then by the key types
//! (RSA, ECDSA, Ed25519) the client can verify.

use crate::table::Maps;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// SNI names remembered (with their certificates) per settings generation; a reload starts a
/// fresh resolver, so renewed files are read again.
const SNI_CACHE_MAX: usize = 1024;

/// Reads `files` in order and splits their PEM sections into key+chain groups, as Postfix's
/// smtpd_tls_chain_files: each private key starts a group, the certificates after it are its
/// chain (leaf first). A lone chain before any key takes the first key found later (the
/// `cert.pem key.pem` order of the older parameters).
pub fn load_groups(
    files: &[String],
) -> Result<Vec<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    let mut groups: Vec<(Vec<CertificateDer<'static>>, Option<PrivateKeyDer<'static>>)> =
        Vec::new();
    let mut orphan: Vec<CertificateDer<'static>> = Vec::new();
    for f in files {
        let data = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
        for sec in <(SectionKind, Vec<u8>)>::pem_slice_iter(&data) {
            let (kind, der) = sec.map_err(|e| format!("{f}: {e}"))?;
            match kind {
                SectionKind::Certificate => match groups.last_mut() {
                    Some((chain, _)) => chain.push(CertificateDer::from(der)),
                    None => orphan.push(CertificateDer::from(der)),
                },
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => {
                    let key = match kind {
                        SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
                        SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
                        _ => PrivateKeyDer::Sec1(der.into()),
                    };
                    if !orphan.is_empty() && groups.is_empty() {
                        groups.push((std::mem::take(&mut orphan), Some(key)));
                    } else {
                        groups.push((Vec::new(), Some(key)));
                    }
                }
                _ => {}
            }
        }
    }
    let what = files.join(" ");
    if groups.is_empty() {
        return Err(format!("{what}: no private key found"));
    }
    let mut out = Vec::new();
    for (chain, key) in groups {
        let Some(key) = key else { continue };
        if chain.is_empty() {
            return Err(format!("{what}: a private key without its certificate"));
        }
        out.push((chain, key));
    }
    Ok(out)
}

/// Turns key+chain groups into rustls certified keys, refusing a key that does not belong to
/// its certificate.
pub fn certified(
    groups: Vec<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    provider: &rustls::crypto::CryptoProvider,
    what: &str,
) -> Result<Vec<Arc<CertifiedKey>>, String> {
    let mut out = Vec::new();
    for (chain, key) in groups {
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{what}: {e}"))?;
        let ck = CertifiedKey::new(chain, signer);
        if let Err(e) = ck.keys_match() {
            // Unknown means rustls could not compare (unusual key types): let the handshake
            // decide; a definite mismatch is a configuration error.
            if !matches!(
                e,
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)
            ) {
                return Err(format!(
                    "{what}: private key does not match the certificate: {e}"
                ));
            }
        }
        out.push(Arc::new(ck));
    }
    Ok(out)
}

/// The certificate of one handshake: SNI through tls_server_sni_maps, else the defaults; among
/// several keys the first whose signature schemes the client accepts.
pub struct Resolver {
    pub default: Vec<Arc<CertifiedKey>>,
    pub sni: Option<Maps>,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    cache: Mutex<HashMap<String, Option<Vec<Arc<CertifiedKey>>>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("default", &self.default.len())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(
        default: Vec<Arc<CertifiedKey>>,
        sni: Option<Maps>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Resolver {
        Resolver {
            default,
            sni,
            provider,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The keys for an SNI name: the name, then its parent domains as `.parent`. A name that
    /// is not in the table, or whose files cannot be loaded (logged), gets the defaults.
    fn by_name(&self, name: &str) -> Option<Vec<Arc<CertifiedKey>>> {
        let maps = self.sni.as_ref()?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(c) = self.cache.lock() {
            if let Some(hit) = c.get(&name) {
                return hit.clone();
            }
        }
        let mut keys = vec![name.clone()];
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            keys.push(format!(".{parent}"));
            rest = parent;
        }
        let mut found = None;
        for k in keys {
            match maps.lookup(&k) {
                Ok(Some(v)) => {
                    let files: Vec<String> = crate::config::split_list(&v);
                    match load_groups(&files)
                        .and_then(|g| certified(g, &self.provider, &files.join(" ")))
                    {
                        Ok(ck) => found = Some(ck),
                        Err(e) => tracing::warn!("tls_server_sni_maps: {name}: {e}"),
                    }
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("tls_server_sni_maps: lookup of {k}: {e}");
                    break;
                }
            }
        }
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= SNI_CACHE_MAX {
                c.clear();
            }
            c.insert(name, found.clone());
        }
        found
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = hello
            .server_name()
            .and_then(|n| self.by_name(n))
            .unwrap_or_else(|| self.default.clone());
        let schemes = hello.signature_schemes();
        set.iter()
            .find(|ck| ck.key.choose_scheme(schemes).is_some())
            .or(set.first())
            .cloned()
    }
}
