//! Client certificates on the server side: smtpd_tls_ask_ccert / smtpd_tls_req_ccert ask for
//! one; after the handshake its fingerprint (smtpd_tls_fingerprint_digest) is looked up in
//! relay_clientcerts (permit_tls_clientcerts) and its chain checked against smtpd_tls_CAfile /
//! smtpd_tls_CApath (permit_tls_all_clientcerts).

use crate::config::Config;
use crate::table::Maps;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

/// What smtpd knows about the client's certificate, for the restrictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// `AB:CD:…` with smtpd_tls_fingerprint_digest.
    pub fingerprint: String,
    /// The chain ends at a CA of smtpd_tls_CAfile/CApath.
    pub trusted: bool,
    /// The certificate or public-key fingerprint is in relay_clientcerts.
    pub listed: bool,
}

/// smtpd's client-certificate settings, built with the service's settings.
pub struct ClientCerts {
    pub ask: bool,
    pub require: bool,
    digest: &'static ring::digest::Algorithm,
    relay: Option<Maps>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    algs: WebPkiSupportedAlgorithms,
    /// Problems, with the parameter they are about.
    pub warnings: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCerts")
            .field("ask", &self.ask)
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

fn hex(d: &[u8]) -> String {
    d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl ClientCerts {
    pub fn from_config(cfg: &Config, provider: &rustls::crypto::CryptoProvider) -> ClientCerts {
        let mut warnings = Vec::new();
        let digest = match cfg
            .get("smtpd_tls_fingerprint_digest")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "sha1" => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            "sha256" | "" => &ring::digest::SHA256,
            "sha512" => &ring::digest::SHA512,
            other => {
                // Only worth a warning when fingerprints are looked up at all.
                if !cfg.get_list("relay_clientcerts").is_empty() {
                    warnings.push((
                        "smtpd_tls_fingerprint_digest|relay_clientcerts",
                        format!("smtpd_tls_fingerprint_digest {other} is not available: using sha256 (relay_clientcerts entries in {other} will not match)"),
                    ));
                }
                &ring::digest::SHA256
            }
        };
        let list = cfg.get_list("relay_clientcerts");
        let relay = if list.is_empty() {
            None
        } else {
            match Maps::open(&list) {
                Ok(m) => Some(m),
                Err(e) => {
                    warnings.push(("relay_clientcerts", e.to_string()));
                    None
                }
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        let cafile = cfg.get("smtpd_tls_CAfile");
        let capath = cfg.get("smtpd_tls_CApath");
        let mut files: Vec<std::path::PathBuf> = Vec::new();
        if !cafile.trim().is_empty() {
            files.push(cafile.trim().into());
        }
        if !capath.trim().is_empty() {
            if let Ok(rd) = std::fs::read_dir(capath.trim()) {
                files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
        for f in files {
            match std::fs::read(&f) {
                Ok(data) => {
                    for c in CertificateDer::pem_slice_iter(&data).flatten() {
                        let _ = roots.add(c);
                    }
                }
                Err(e) => warnings.push((
                    "smtpd_tls_CAfile|smtpd_tls_CApath",
                    format!("{}: {e}", f.display()),
                )),
            }
        }
        let verifier = if roots.is_empty() {
            None
        } else {
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(provider.clone()),
            )
            .build()
            .ok()
        };
        // As Postfix: a certificate can be required only where TLS is (security level
        // encrypt, and not in wrapper mode, where Postfix ignores the level).
        let mut require = cfg.get_bool("smtpd_tls_req_ccert");
        if require
            && (cfg.get_bool("smtpd_tls_wrappermode")
                || crate::tlsmgr::Level::from_config(cfg) != crate::tlsmgr::Level::Encrypt)
        {
            warnings.push((
                "smtpd_tls_req_ccert",
                "Can't require client certs unless TLS is required".to_string(),
            ));
            require = false;
        }
        ClientCerts {
            ask: cfg.get_bool("smtpd_tls_ask_ccert"),
            require,
            digest,
            relay,
            verifier,
            algs: provider.signature_verification_algorithms,
            warnings,
        }
    }

    /// The rustls verifier that asks for (or requires) a certificate and checks only the
    /// handshake signature; trust is judged afterwards by [`ClientCerts::peer`].
    pub fn handshake_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(AskOnly {
            ask: self.ask || self.require,
            algs: self.algs,
        })
    }

    /// The client certificate of a finished handshake, if it sent one.
    pub fn peer(&self, certs: Option<&[CertificateDer<'_>]>) -> Option<PeerCert> {
        let certs = certs?;
        let ee = certs.first()?;
        let fingerprint = hex(ring::digest::digest(self.digest, ee).as_ref());
        let trusted = self.verifier.as_ref().is_some_and(|v| {
            v.verify_client_cert(ee, &certs[1..], UnixTime::now())
                .is_ok()
        });
        let mut listed = false;
        if let Some(m) = &self.relay {
            listed = matches!(m.lookup(&fingerprint), Ok(Some(_)));
            if !listed {
                // Postfix also accepts the public key's fingerprint.
                if let Ok(c) = webpki::EndEntityCert::try_from(ee) {
                    let spki = c.subject_public_key_info();
                    let pk = hex(ring::digest::digest(self.digest, spki.as_ref()).as_ref());
                    listed = matches!(m.lookup(&pk), Ok(Some(_)));
                }
            }
        }
        Some(PeerCert {
            fingerprint,
            trusted,
            listed,
        })
    }
}

#[derive(Debug)]
struct AskOnly {
    ask: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AskOnly {
    fn offer_client_auth(&self) -> bool {
        self.ask
    }

    // Never mandatory in the handshake: as Postfix, the session completes and the client is
    // told why (421) over TLS; see the smtpd session.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

#[cfg(test)]
mod req_tests {
    use super::*;

    fn certs(main_cf: &str) -> ClientCerts {
        let cfg = Config::from_text(std::path::Path::new("/tmp"), main_cf).unwrap();
        ClientCerts::from_config(&cfg, &rustls::crypto::ring::default_provider())
    }

    /// smtpd_tls_req_ccert holds only where TLS is required, as in Postfix.
    #[test]
    fn required_only_at_encrypt() {
        let c = certs("smtpd_tls_req_ccert = yes\nsmtpd_tls_security_level = encrypt\n");
        assert!(c.require && c.warnings.is_empty());
        for other in [
            "smtpd_tls_security_level = may\n",
            "smtpd_tls_security_level = encrypt\nsmtpd_tls_wrappermode = yes\n",
        ] {
            let c = certs(&format!("smtpd_tls_req_ccert = yes\n{other}"));
            assert!(!c.require, "{other}");
            assert_eq!(c.warnings[0].0, "smtpd_tls_req_ccert");
        }
    }
}
