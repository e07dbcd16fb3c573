//! NAME
//!     sasl - relais's SASL authentication server side, for smtpd's AUTH command
//!
//! SUMMARY
//!     `smtpd_sasl_type = dovecot` (Dovecot's authentication protocol) or
//!     `smtpd_sasl_type = passwd-file` (relais-specific: a file of `doveadm pw` hashes)
//!
//! DESCRIPTION
//!     An [`Authenticator`] is built per smtpd service from its settings (master.cf `-o`
//!     overrides included). smtpd asks it which mechanisms to offer (filtered by
//!     smtpd_sasl_security_options, or smtpd_sasl_tls_security_options once TLS is active)
//!     and runs one [`Exchange`] per AUTH command: challenges go out as `334` lines, client
//!     responses come back base64-encoded, and the exchange ends in success (the user name)
//!     or failure (a reason that smtpd logs and puts in its 535/454 reply).
//!
//!     dovecot: relais is a client of Dovecot's auth-client protocol (VERSION, MECH, CPID,
//!     AUTH, CONT, OK, FAIL, one tab-separated line each). smtpd_sasl_path is a unix socket
//!     path, relative to queue_directory as in Postfix (`private/auth`), `unix:PATH`, or
//!     `inet:host:port`. Each AUTH command opens its own connection, so a restarted Dovecot
//!     costs no session anything. Mechanisms are those Dovecot announces, as Postfix does;
//!     the list is cached after each handshake.
//!
//!     passwd-file (relais-specific): smtpd_sasl_path names a file of `user:{SCHEME}hash`
//!     lines, the format of Dovecot's passwd-file and of `doveadm pw` output; fields after the
//!     second are ignored, `#` starts a comment. Schemes: {SHA512-CRYPT}, {SHA256-CRYPT},
//!     {BLF-CRYPT}, {ARGON2ID}, {ARGON2I}, {PLAIN}/{CLEARTEXT} (tests only), and bare `$6$`,
//!     `$5$`, `$2y$`, `$argon2id$` hashes. User names compare case-insensitively (Dovecot's
//!     default auth_username_format %Lu). The file is read at each authentication, so edits
//!     apply at once. Mechanisms: PLAIN and LOGIN. smtpd_sasl_local_domain is appended to a
//!     user name without `@` before the lookup.
//!
//! MESSAGES
//!     `warning: SASL: Connect to PATH failed: …` when Dovecot cannot be reached;
//!     `warning: SASL: PATH: unsupported password scheme … for user …`.
//!
//! SECURITY
//!     Password hashes are checked on tokio's blocking pool (spawn_blocking): they are CPU
//!     work by design and must not stall other sessions. An unknown user costs the same hash
//!     work as a known one, so timing does not tell which users exist. Every exchange with
//!     Dovecot is bounded in time (30 s per step) and size (lines of at most 16 KiB, at most
//!     256 handshake lines). User names and reasons from the auth server are made printable
//!     before smtpd logs or sends them.
//!
//! CONFIGURATION PARAMETERS
//!     smtpd_sasl_type (cyrus; relais supports dovecot and passwd-file)
//!     smtpd_sasl_path (smtpd)
//!     smtpd_sasl_service (smtp)
//!     smtpd_sasl_local_domain (empty)
//!     smtpd_sasl_security_options (noanonymous)
//!     smtpd_sasl_tls_security_options ($smtpd_sasl_security_options)
//!     queue_directory (for relative Dovecot socket paths)

pub mod dovecot;
pub mod passwd;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    #[error(
        "unsupported SASL server implementation: {0} (relais supports dovecot and passwd-file)"
    )]
    UnsupportedType(String),
    #[error("Connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("{0}: {1}")]
    Protocol(String, String),
    #[error("timeout talking to {0}")]
    Timeout(String),
    #[error("{0}: {1}")]
    File(String, String),
}

/// smtpd_sasl_security_options: the properties a mechanism must (not) have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityOptions {
    pub noplaintext: bool,
    pub noactive: bool,
    pub nodictionary: bool,
    pub noanonymous: bool,
    pub forward_secrecy: bool,
    pub mutual_auth: bool,
}

impl SecurityOptions {
    /// Parses the list; unknown words are returned for a warning.
    pub fn parse(words: &[String]) -> (SecurityOptions, Vec<String>) {
        let mut o = SecurityOptions::default();
        let mut bad = Vec::new();
        for w in words {
            match w.to_ascii_lowercase().as_str() {
                "noplaintext" => o.noplaintext = true,
                "noactive" => o.noactive = true,
                "nodictionary" => o.nodictionary = true,
                "noanonymous" => o.noanonymous = true,
                "forward_secrecy" => o.forward_secrecy = true,
                "mutual_auth" => o.mutual_auth = true,
                _ => bad.push(w.clone()),
            }
        }
        (o, bad)
    }
}

/// A mechanism and the security properties its server announces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mech {
    pub name: String,
    pub plaintext: bool,
    pub active: bool,
    pub dictionary: bool,
    pub anonymous: bool,
    pub forward_secrecy: bool,
    pub mutual_auth: bool,
    /// Not for general use (Dovecot's `private`): never offered.
    pub private: bool,
}

impl Mech {
    /// PLAIN or LOGIN: plaintext and open to dictionary attacks.
    pub fn plaintext(name: &str) -> Mech {
        Mech {
            name: name.to_string(),
            plaintext: true,
            dictionary: true,
            ..Default::default()
        }
    }

    pub fn allowed(&self, o: &SecurityOptions) -> bool {
        !self.private
            && !(o.noplaintext && self.plaintext)
            && !(o.noactive && self.active)
            && !(o.nodictionary && self.dictionary)
            && !(o.noanonymous && self.anonymous)
            && (!o.forward_secrecy || self.forward_secrecy)
            && (!o.mutual_auth || self.mutual_auth)
    }
}

/// Where the credentials are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dovecot(dovecot::Endpoint),
    PasswdFile(PathBuf),
}

/// The client as the auth server is told about it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub client_addr: String,
    pub local_addr: String,
    pub tls: bool,
}

/// The next move of an authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `334 <text>` (already base64) and wait for the client's response.
    Challenge(String),
    /// Authenticated as this user.
    Success(String),
    /// Refused (535): the reason, and the user name when the server named one.
    Failure(String, Option<String>),
    /// The auth server could not answer (454).
    TempFailure(String),
}

/// The SASL server of one smtpd service.
pub struct Authenticator {
    pub kind: Kind,
    plain_opts: SecurityOptions,
    tls_opts: SecurityOptions,
    local_domain: String,
    service: String,
    /// Dovecot's mechanism list as of the last handshake.
    dovecot_mechs: Mutex<Option<Vec<Mech>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("kind", &self.kind)
            .field("plain_opts", &self.plain_opts)
            .field("tls_opts", &self.tls_opts)
            .finish()
    }
}

impl Authenticator {
    /// The service's authenticator, and warnings about the settings.
    pub fn from_config(cfg: &Config) -> Result<(Authenticator, Vec<String>), SaslError> {
        let mut warnings = Vec::new();
        let path = cfg.get("smtpd_sasl_path");
        let kind = match cfg.get("smtpd_sasl_type").to_ascii_lowercase().as_str() {
            "dovecot" => Kind::Dovecot(dovecot::Endpoint::parse(
                &path,
                &PathBuf::from(cfg.get("queue_directory")),
            )),
            "passwd-file" => Kind::PasswdFile(PathBuf::from(&path)),
            other => return Err(SaslError::UnsupportedType(other.to_string())),
        };
        let (plain_opts, bad) =
            SecurityOptions::parse(&cfg.get_list("smtpd_sasl_security_options"));
        for b in bad {
            warnings.push(format!(
                "smtpd_sasl_security_options: unknown option \"{b}\" ignored"
            ));
        }
        let (tls_opts, bad) =
            SecurityOptions::parse(&cfg.get_list("smtpd_sasl_tls_security_options"));
        for b in bad {
            warnings.push(format!(
                "smtpd_sasl_tls_security_options: unknown option \"{b}\" ignored"
            ));
        }
        if let Kind::PasswdFile(p) = &kind {
            if let Err(e) = std::fs::metadata(p) {
                warnings.push(format!("SASL passwd-file {}: {e}", p.display()));
            }
        }
        Ok((
            Authenticator {
                kind,
                plain_opts,
                tls_opts,
                local_domain: cfg.get("smtpd_sasl_local_domain"),
                service: cfg.get("smtpd_sasl_service"),
                dovecot_mechs: Mutex::new(None),
            },
            warnings,
        ))
    }

    /// A built-in passwd-file authenticator with the default options, for tests.
    pub fn passwd_file(path: impl Into<PathBuf>) -> Authenticator {
        let o = SecurityOptions {
            noanonymous: true,
            ..Default::default()
        };
        Authenticator {
            kind: Kind::PasswdFile(path.into()),
            plain_opts: o,
            tls_opts: o,
            local_domain: String::new(),
            service: "smtp".into(),
            dovecot_mechs: Mutex::new(None),
        }
    }

    /// Overrides the security options (tests).
    pub fn with_options(mut self, plain: SecurityOptions, tls: SecurityOptions) -> Self {
        self.plain_opts = plain;
        self.tls_opts = tls;
        self
    }

    fn options(&self, tls: bool) -> &SecurityOptions {
        if tls {
            &self.tls_opts
        } else {
            &self.plain_opts
        }
    }

    /// Every mechanism the backend has, before filtering. For Dovecot this asks the server
    /// when no list is cached yet; an unreachable server offers nothing.
    async fn all_mechanisms(&self) -> Vec<Mech> {
        match &self.kind {
            Kind::PasswdFile(_) => vec![Mech::plaintext("PLAIN"), Mech::plaintext("LOGIN")],
            Kind::Dovecot(ep) => {
                if let Some(m) = self.cached() {
                    return m;
                }
                match dovecot::Conn::connect(ep).await {
                    Ok(c) => {
                        self.remember(c.mechs.clone());
                        c.mechs
                    }
                    Err(e) => {
                        tracing::warn!("SASL: {e}");
                        Vec::new()
                    }
                }
            }
        }
    }

    fn cached(&self) -> Option<Vec<Mech>> {
        self.dovecot_mechs.lock().ok().and_then(|g| g.clone())
    }

    fn remember(&self, mechs: Vec<Mech>) {
        if let Ok(mut g) = self.dovecot_mechs.lock() {
            *g = Some(mechs);
        }
    }

    /// The mechanism names to offer, in the backend's order.
    pub async fn mechanisms(&self, tls: bool) -> Vec<String> {
        let o = *self.options(tls);
        self.all_mechanisms()
            .await
            .into_iter()
            .filter(|m| m.allowed(&o))
            .map(|m| m.name)
            .collect()
    }

    /// Starts an exchange for `mech` with an optional initial response (base64, `=` for an
    /// empty one). The first step is a challenge or an outcome.
    pub async fn start(
        self: &Arc<Self>,
        mech: &str,
        initial: Option<&str>,
        peer: &Peer,
    ) -> (Exchange, Step) {
        let mech_uc = mech.to_ascii_uppercase();
        let offered = self.mechanisms(peer.tls).await;
        let mut ex = Exchange {
            auth: self.clone(),
            mech: mech_uc.clone(),
            state: State::Done,
        };
        if !offered.contains(&mech_uc) {
            let shown: String = mech.chars().take(100).collect();
            return (
                ex,
                Step::Failure(
                    printable(&format!("Invalid authentication mechanism: '{shown}'")),
                    None,
                ),
            );
        }
        if let Some(i) = initial {
            if !is_base64(i) {
                return (
                    ex,
                    Step::Failure("Invalid base64 data in initial response".into(), None),
                );
            }
        }
        let step = match &self.kind {
            Kind::Dovecot(ep) => match dovecot::Conn::connect(ep).await {
                Ok(mut c) => {
                    self.remember(c.mechs.clone());
                    let step = c.auth(&mech_uc, &self.service, peer, initial).await;
                    ex.state = State::Dovecot(Box::new(c));
                    step
                }
                Err(e) => {
                    tracing::warn!("SASL: {e}");
                    Step::TempFailure("Can't connect to authentication server".into())
                }
            },
            Kind::PasswdFile(_) => {
                ex.state = if mech_uc == "PLAIN" {
                    State::Plain
                } else {
                    State::LoginUser
                };
                match initial {
                    // `=` is an empty initial response (RFC 4954).
                    Some(i) => ex.builtin(if i == "=" { "" } else { i }).await,
                    None if mech_uc == "PLAIN" => Step::Challenge(String::new()),
                    // "Username:"
                    None => Step::Challenge("VXNlcm5hbWU6".into()),
                }
            }
        };
        if !matches!(step, Step::Challenge(_)) {
            ex.state = State::Done;
        }
        (ex, step)
    }

    /// The user name with smtpd_sasl_local_domain appended when it has no domain.
    fn qualify(&self, user: &str) -> String {
        if self.local_domain.is_empty() || user.contains('@') {
            user.to_string()
        } else {
            format!("{user}@{}", self.local_domain)
        }
    }
}

enum State {
    Dovecot(Box<dovecot::Conn>),
    /// PLAIN, waiting for `authzid NUL authcid NUL password`.
    Plain,
    /// LOGIN, waiting for the user name.
    LoginUser,
    /// LOGIN, waiting for the password of this user.
    LoginPassword(String),
    Done,
}

/// One AUTH command in progress.
pub struct Exchange {
    auth: Arc<Authenticator>,
    pub mech: String,
    state: State,
}

impl Exchange {
    /// The client's response to the last challenge (base64, as received).
    pub async fn next(&mut self, response: &str) -> Step {
        if !is_base64(response) {
            self.state = State::Done;
            return Step::Failure("Invalid base64 data in continued response".into(), None);
        }
        let step = match &mut self.state {
            State::Dovecot(c) => c.cont(response).await,
            State::Done => Step::Failure("authentication exchange already ended".into(), None),
            _ => self.builtin(response).await,
        };
        if !matches!(step, Step::Challenge(_)) {
            self.state = State::Done;
        }
        step
    }

    /// PLAIN and LOGIN against the passwd file.
    async fn builtin(&mut self, b64: &str) -> Step {
        use base64::Engine;
        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return Step::Failure("Invalid base64 data in continued response".into(), None);
        };
        let (user, password) = match std::mem::replace(&mut self.state, State::Done) {
            State::Plain => {
                let mut parts = data.splitn(3, |b| *b == 0);
                let (Some(authz), Some(authc), Some(pw)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Step::Failure("Invalid authentication data".into(), None);
                };
                let authc = String::from_utf8_lossy(authc).into_owned();
                let authz = String::from_utf8_lossy(authz).into_owned();
                // Acting as another user needs master users, which the file has not.
                if !authz.is_empty() && authz != authc {
                    return Step::Failure("authorization denied".into(), Some(printable(&authc)));
                }
                (authc, pw.to_vec())
            }
            State::LoginUser => {
                let user = String::from_utf8_lossy(&data).into_owned();
                self.state = State::LoginPassword(user);
                // "Password:"
                return Step::Challenge("UGFzc3dvcmQ6".into());
            }
            State::LoginPassword(user) => (user, data),
            State::Dovecot(_) | State::Done => {
                return Step::Failure("authentication exchange already ended".into(), None)
            }
        };
        let Kind::PasswdFile(path) = &self.auth.kind else {
            return Step::Failure("Authentication backend error".into(), None);
        };
        let user = self.auth.qualify(&user);
        let path = path.clone();
        let u = user.clone();
        // Hash checks are CPU work by design: keep them off the session's runtime thread.
        let res =
            tokio::task::spawn_blocking(move || passwd::check_file(&path, &u, &password)).await;
        match res {
            Ok(Ok(Some(canonical))) => Step::Success(printable(&canonical)),
            Ok(Ok(None)) => Step::Failure("authentication failure".into(), Some(printable(&user))),
            Ok(Err(e)) => {
                tracing::warn!("SASL: {e}");
                Step::TempFailure("Authentication backend error".into())
            }
            Err(e) => {
                tracing::warn!("SASL: password check failed: {e}");
                Step::TempFailure("Authentication backend error".into())
            }
        }
    }
}

/// Base64 alphabet only (Postfix checks this before passing data on).
pub fn is_base64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// Non-printable characters become `?`, as Postfix's printable().
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_options_filter_mechanisms() {
        let (o, bad) =
            SecurityOptions::parse(&["noanonymous".into(), "noplaintext".into(), "bogus".into()]);
        assert_eq!(bad, vec!["bogus".to_string()]);
        assert!(!Mech::plaintext("PLAIN").allowed(&o));
        let anon = Mech {
            name: "ANONYMOUS".into(),
            anonymous: true,
            ..Default::default()
        };
        assert!(!anon.allowed(&o));
        let cram = Mech {
            name: "CRAM-MD5".into(),
            dictionary: true,
            ..Default::default()
        };
        assert!(cram.allowed(&o));
        let (o, _) = SecurityOptions::parse(&["noanonymous".into()]);
        assert!(Mech::plaintext("LOGIN").allowed(&o));
    }

    #[test]
    fn base64_alphabet() {
        assert!(is_base64("AHRlc3QAcGFzcw=="));
        assert!(!is_base64("not base64!"));
        assert_eq!(printable("a\tb\u{7}"), "a?b?");
    }
}
