//! Sender address ownership: smtpd_sender_login_maps and the restrictions
//! reject_sender_login_mismatch, reject_authenticated_sender_login_mismatch,
//! reject_known_sender_login_mismatch and reject_unauthenticated_sender_login_mismatch.
//!
//! The maps give, for a sender address, the SASL login names (separated by commas or
//! spaces) allowed to use it. Keys are tried as Postfix's mail_addr_find does: the address,
//! the address without its recipient_delimiter extension, then `@domain`.

use crate::config::Config;
use crate::table::Maps;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("smtpd_sender_login_maps: {0}")]
    Open(String),
}

/// The restriction names this module answers.
pub const RESTRICTIONS: &[&str] = &[
    "reject_sender_login_mismatch",
    "reject_authenticated_sender_login_mismatch",
    "reject_known_sender_login_mismatch",
    "reject_unauthenticated_sender_login_mismatch",
];

/// smtpd_sender_login_maps of one service.
#[derive(Default)]
pub struct LoginMaps {
    maps: Option<Maps>,
    delimiters: String,
    /// smtpd_sasl_auth_enable: without it the restrictions do nothing (Postfix warns).
    sasl_enabled: bool,
}

impl LoginMaps {
    pub fn from_config(cfg: &Config) -> Result<LoginMaps, LoginError> {
        let list = cfg.get_list("smtpd_sender_login_maps");
        let maps = if list.is_empty() {
            None
        } else {
            Some(Maps::open(&list).map_err(|e| LoginError::Open(e.to_string()))?)
        };
        Ok(LoginMaps {
            maps,
            delimiters: cfg.get("recipient_delimiter"),
            sasl_enabled: cfg.get_bool("smtpd_sasl_auth_enable"),
        })
    }

    /// The owners of `sender`, None when the maps do not list it.
    fn owners(&self, maps: &Maps, sender: &str) -> Result<Option<String>, String> {
        let lower = sender.to_ascii_lowercase();
        let mut keys = vec![lower.clone()];
        if let Some((local, domain)) = lower.rsplit_once('@') {
            if !self.delimiters.is_empty() {
                if let Some(i) = local
                    .find(|c| self.delimiters.contains(c))
                    .filter(|&i| i > 0)
                {
                    keys.push(format!("{}@{domain}", &local[..i]));
                }
            }
            keys.push(format!("@{domain}"));
        }
        for k in keys {
            match maps.lookup(&k) {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None)
    }

    /// The decision of `restriction` (one of [`RESTRICTIONS`]): a complete reject reply, or
    /// None to go on.
    pub fn check(
        &self,
        restriction: &str,
        sender: Option<&str>,
        sasl_user: Option<&str>,
    ) -> Option<String> {
        if !self.sasl_enabled {
            tracing::warn!("restriction `{restriction}' ignored: no SASL support");
            return None;
        }
        let maps = self.maps.as_ref()?;
        // The null sender belongs to nobody.
        let sender = sender.filter(|s| !s.is_empty())?;
        let (auth_check, allow_unknown, unauth_check) = match restriction {
            "reject_sender_login_mismatch" => (true, false, true),
            "reject_authenticated_sender_login_mismatch" => (true, false, false),
            "reject_known_sender_login_mismatch" => (true, true, true),
            "reject_unauthenticated_sender_login_mismatch" => (false, false, true),
            _ => return None,
        };
        let owners = match self.owners(maps, sender) {
            Ok(o) => o,
            Err(e) => {
                return Some(format!(
                    "451 4.3.0 <{sender}>: Sender address rejected: Temporary lookup failure ({e})"
                ))
            }
        };
        match sasl_user {
            Some(user) if auth_check => {
                let owned = owners.as_deref().is_some_and(|o| {
                    o.split([',', ' ', '\t'])
                        .filter(|n| !n.is_empty())
                        .any(|n| n.to_lowercase() == user.to_lowercase())
                });
                if owned || (owners.is_none() && allow_unknown) {
                    None
                } else {
                    Some(format!(
                        "553 5.7.1 <{sender}>: Sender address rejected: not owned by user {user}"
                    ))
                }
            }
            None if unauth_check && owners.is_some() => Some(format!(
                "553 5.7.1 <{sender}>: Sender address rejected: not logged in"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> LoginMaps {
        let cfg = Config::from_text(
            std::path::Path::new("/nonexistent"),
            "smtpd_sasl_auth_enable = yes\nrecipient_delimiter = +\nsmtpd_sender_login_maps = inline:{ test@exemple.fr=test@exemple.fr, { shared@exemple.fr = a@exemple.fr, b@exemple.fr }, @team.example=boss }\n",
        )
        .unwrap();
        LoginMaps::from_config(&cfg).unwrap()
    }

    #[test]
    fn postfix_semantics() {
        let m = maps();
        let r = "reject_sender_login_mismatch";
        assert_eq!(
            m.check(r, Some("test@exemple.fr"), Some("test@exemple.fr")),
            None
        );
        assert_eq!(
            m.check(r, Some("Test+tag@Exemple.fr"), Some("test@exemple.fr")),
            None
        );
        assert_eq!(
            m.check(r, Some("shared@exemple.fr"), Some("b@exemple.fr")),
            None
        );
        assert_eq!(m.check(r, Some("x@team.example"), Some("boss")), None);
        assert_eq!(
            m.check(r, Some("test@exemple.fr"), Some("a@exemple.fr")).as_deref(),
            Some("553 5.7.1 <test@exemple.fr>: Sender address rejected: not owned by user a@exemple.fr")
        );
        // Unknown sender: refused for a logged-in user, except with the "known" variant.
        assert!(m
            .check(r, Some("other@example.com"), Some("a@exemple.fr"))
            .is_some());
        assert_eq!(
            m.check(
                "reject_known_sender_login_mismatch",
                Some("other@example.com"),
                Some("a@exemple.fr")
            ),
            None
        );
        // Not logged in: an owned sender is refused, an unowned one passes.
        assert_eq!(
            m.check(r, Some("test@exemple.fr"), None).as_deref(),
            Some("553 5.7.1 <test@exemple.fr>: Sender address rejected: not logged in")
        );
        assert_eq!(m.check(r, Some("other@example.com"), None), None);
        assert_eq!(
            m.check(
                "reject_authenticated_sender_login_mismatch",
                Some("test@exemple.fr"),
                None
            ),
            None
        );
        assert!(m
            .check(
                "reject_unauthenticated_sender_login_mismatch",
                Some("test@exemple.fr"),
                None
            )
            .is_some());
        assert_eq!(m.check(r, Some(""), Some("a@exemple.fr")), None);
    }
}
