//! The built-in passwd-file backend: `user:{SCHEME}hash[:more fields]` lines as Dovecot's
//! passwd-file and `doveadm pw` write them, checked with RustCrypto's hash implementations.
//! Everything here is blocking (file read, hash work): call it from spawn_blocking.

use super::SaslError;
use std::path::Path;

/// The largest file read (a passwd file is small; a bigger one is a mistake, not input).
const MAX_FILE: u64 = 16 << 20;

/// A hash that never matches, checked for unknown users so that they cost as much time as
/// known ones (SHA512-CRYPT, 5000 rounds, like `doveadm pw -s SHA512-CRYPT`).
const DUMMY: &str = "{SHA512-CRYPT}$6$YocoFAb7KrRMa7BY$ZInf7dIEI3JOjUtx/.s1UvsNO/dIL3SOJTbAom8wPkem.t35JEqIyKXDg/aJIQIbA9HhD2vYGpNCCYtlK0x5B.";

/// Checks `user`'s password against the file. `Ok(Some(name))` is the user as the file spells
/// it; `Ok(None)` a wrong password or unknown user; `Err` a file that cannot be read.
pub fn check_file(path: &Path, user: &str, password: &[u8]) -> Result<Option<String>, SaslError> {
    let shown = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| SaslError::File(shown.clone(), e.to_string()))?;
    if meta.len() > MAX_FILE {
        return Err(SaslError::File(shown, "file too large".into()));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| SaslError::File(shown.clone(), e.to_string()))?;
    let Some((name, stored)) = lookup(&text, user) else {
        let _ = verify(DUMMY, password);
        return Ok(None);
    };
    match verify(stored, password) {
        Ok(true) => Ok(Some(name.to_string())),
        Ok(false) => Ok(None),
        Err(e) => {
            tracing::warn!("SASL: {shown}: {e} for user {name}");
            Ok(None)
        }
    }
}

/// The first line for `user` (case-insensitive): its spelling and its password field.
pub fn lookup<'a>(text: &'a str, user: &str) -> Option<(&'a str, &'a str)> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut f = line.splitn(3, ':');
        let (Some(name), Some(pw)) = (f.next(), f.next()) else {
            continue;
        };
        if name.eq_ignore_ascii_case(user) {
            return Some((name, pw));
        }
    }
    None
}

/// Whether `password` matches the stored `{SCHEME}hash`. Err names an unsupported scheme or
/// a malformed hash.
pub fn verify(stored: &str, password: &[u8]) -> Result<bool, String> {
    let (scheme, hash) = match stored.strip_prefix('{').and_then(|s| s.split_once('}')) {
        Some((s, h)) => (s.to_ascii_uppercase(), h),
        None => (implied_scheme(stored).to_string(), stored),
    };
    match scheme.as_str() {
        "SHA512-CRYPT" | "SHA256-CRYPT" => {
            use sha_crypt::PasswordVerifier;
            let want = if scheme == "SHA512-CRYPT" {
                "$6$"
            } else {
                "$5$"
            };
            if !hash.starts_with(want) {
                return Err(format!("malformed {scheme} hash"));
            }
            let parsed = sha_crypt::PasswordHashRef::new(hash)
                .map_err(|e| format!("malformed {scheme} hash: {e}"))?;
            let alg = if scheme == "SHA512-CRYPT" {
                sha_crypt::ShaCrypt::SHA512
            } else {
                sha_crypt::ShaCrypt::SHA256
            };
            match alg.verify_password(password, parsed) {
                Ok(()) => Ok(true),
                Err(sha_crypt::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(format!("malformed {scheme} hash: {e}")),
            }
        }
        "BLF-CRYPT" => {
            bcrypt::verify(password, hash).map_err(|e| format!("malformed BLF-CRYPT hash: {e}"))
        }
        "ARGON2ID" | "ARGON2I" => {
            use argon2::PasswordVerifier;
            match argon2::Argon2::default().verify_password(password, hash) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(format!("malformed {scheme} hash: {e}")),
            }
        }
        "PLAIN" | "CLEARTEXT" => Ok(constant_eq(hash.as_bytes(), password)),
        other => Err(format!("unsupported password scheme {{{other}}}")),
    }
}

/// The scheme of a hash written without `{SCHEME}`, from its crypt(3) prefix.
fn implied_scheme(hash: &str) -> &'static str {
    if hash.starts_with("$6$") {
        "SHA512-CRYPT"
    } else if hash.starts_with("$5$") {
        "SHA256-CRYPT"
    } else if hash.starts_with("$2") {
        "BLF-CRYPT"
    } else if hash.starts_with("$argon2id$") {
        "ARGON2ID"
    } else if hash.starts_with("$argon2i$") {
        "ARGON2I"
    } else {
        // Dovecot's default would be DES crypt, which relais does not support.
        "CRYPT"
    }
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        // Made with `doveadm pw -s SCHEME -p secret` (Dovecot 2.3).
        for h in [
            "{SHA512-CRYPT}$6$BwWIbTAbvtkwwmXc$eLcdo3mCSPbin1DM1TY8vPXw8CG7SZsA2ytloiRx/lW2RLma14FYdKuHq2Qxv/di8t9ZOO56k8x.tHqKxxJPl.",
            "{SHA256-CRYPT}$5$SmHAPymFDTk.nnsc$r7XstgA/ESma737AgDC6xxOt7izmgIhO/0N/6sB3iQ4",
            "{BLF-CRYPT}$2y$05$NHZoSCvlKcp0BQHsGHpoZOtB0hDfZttlKlfLXbWakPFGBWsqeudBW",
            "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$Dz/eeKFDYuAbm7ftJzr8Rg$UAYnakQnWEnkkkIqYR7FaAUB/ig8uMuf4OItjjRwzqU",
            "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$//fyE3/dcJ5/DmEDdlbMbw$hpNTxJ87wFH+c3qNkcpLSt0yId7wYe4XiKYmsTrNxKQ",
            "$6$BwWIbTAbvtkwwmXc$eLcdo3mCSPbin1DM1TY8vPXw8CG7SZsA2ytloiRx/lW2RLma14FYdKuHq2Qxv/di8t9ZOO56k8x.tHqKxxJPl.",
        ] {
            assert_eq!(verify(h, b"secret"), Ok(true), "{h}");
            assert_eq!(verify(h, b"wrong"), Ok(false), "{h}");
        }
        assert_eq!(verify(DUMMY, b""), Ok(false));
        assert_eq!(verify("{PLAIN}secret", b"secret"), Ok(true));
        assert_eq!(verify("{PLAIN}secret", b"Secret"), Ok(false));
        assert!(verify("{MD5-CRYPT}$1$x$y", b"secret").is_err());
        assert!(verify("{SHA512-CRYPT}garbage", b"secret").is_err());
    }

    #[test]
    fn lookup_is_case_insensitive_and_skips_comments() {
        let t = "# users\n\nTest@Exemple.fr:{PLAIN}a:1000:1000::/home::\nother:{PLAIN}b\n";
        assert_eq!(
            lookup(t, "test@exemple.fr"),
            Some(("Test@Exemple.fr", "{PLAIN}a"))
        );
        assert_eq!(lookup(t, "other"), Some(("other", "{PLAIN}b")));
        assert_eq!(lookup(t, "nobody"), None);
    }
}
