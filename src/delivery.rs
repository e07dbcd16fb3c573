//! What a delivery attempt says about one recipient: sent, deferred or bounced, with the
//! enhanced status code and the text that goes into logs, queue listings and notices.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Delivered; `detail` is the peer's reply or a local description (`delivered to maildir`).
    Sent { dsn: String, detail: String },
    /// Try again later.
    Deferred { dsn: String, reason: String },
    /// Permanent failure: the sender gets a notice.
    Bounced { dsn: String, reason: String },
}

impl Outcome {
    pub fn sent(dsn: &str, detail: impl Into<String>) -> Self {
        Outcome::Sent {
            dsn: dsn.into(),
            detail: detail.into(),
        }
    }
    pub fn deferred(dsn: &str, reason: impl Into<String>) -> Self {
        Outcome::Deferred {
            dsn: dsn.into(),
            reason: reason.into(),
        }
    }
    pub fn bounced(dsn: &str, reason: impl Into<String>) -> Self {
        Outcome::Bounced {
            dsn: dsn.into(),
            reason: reason.into(),
        }
    }

    /// Postfix's `status=` word.
    pub fn status_word(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Bounced { .. } => "bounced",
        }
    }

    pub fn dsn(&self) -> &str {
        match self {
            Outcome::Sent { dsn, .. }
            | Outcome::Deferred { dsn, .. }
            | Outcome::Bounced { dsn, .. } => dsn,
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Outcome::Sent { detail, .. } => detail,
            Outcome::Deferred { reason, .. } | Outcome::Bounced { reason, .. } => reason,
        }
    }
}
