//! Delivery: the job qmgr hands an agent, the agent actor, and what an attempt says about one recipient: sent, deferred or bounced, with the
//! enhanced status code and the text that goes into logs, queue listings and notices.

pub mod agent;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Delivered; `detail` is the peer's reply or a local description (`delivered to maildir`).
    Sent { dsn: String, detail: String },
    /// Try again later.
    Deferred { dsn: String, reason: String },
    /// Permanent failure: the sender gets a notice. `failed`: the addresses that failed when
    /// they are not just the queue's recipient (alias members local(8) expanded it to), each
    /// reported in the notice as Postfix does: `<member> (expanded from <recipient>)`. Empty:
    /// the notice reports the recipient with `dsn` and `reason`.
    Bounced {
        dsn: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<Failed>,
    },
}

/// One address that failed for a bounced recipient: what its notice entry reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub address: String,
    pub dsn: String,
    pub reason: String,
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
            failed: Vec::new(),
        }
    }

    /// The same outcome, a bounce naming `addr` as the address that failed (other outcomes
    /// are about the queue's recipient and stay as they are).
    pub fn for_final_rcpt(self, addr: &str) -> Self {
        match self {
            Outcome::Bounced { dsn, reason, .. } => Outcome::Bounced {
                failed: vec![Failed {
                    address: addr.to_string(),
                    dsn: dsn.clone(),
                    reason: reason.clone(),
                }],
                dsn,
                reason,
            },
            other => other,
        }
    }

    /// The addresses a bounce is about when they are not just the queue's recipient.
    pub fn failed(&self) -> &[Failed] {
        match self {
            Outcome::Bounced { failed, .. } => failed,
            _ => &[],
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

/// One recipient of a delivery job, with its index in the queue record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRcpt {
    pub index: usize,
    pub address: String,
    pub original: String,
    pub orcpt: Option<String>,
    pub notify: crate::envelope::Notify,
}

/// What qmgr hands a delivery agent: one message, one next hop, some of its recipients.
#[derive(Debug, Clone)]
pub struct Job {
    pub queue_id: String,
    pub transport: String,
    pub nexthop: String,
    pub sender: String,
    pub recipients: Vec<JobRcpt>,
    /// Content with CRLF line ends.
    pub content: std::sync::Arc<Vec<u8>>,
    pub ret: Option<crate::envelope::Ret>,
    pub envid: Option<String>,
    pub body_type: crate::envelope::BodyType,
    pub smtputf8: bool,
    pub arrival: std::time::SystemTime,
    /// When qmgr activated the message (for the first of the `delays=` figures).
    pub activated: std::time::SystemTime,
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// A delivery agent's work: every recipient of the job gets exactly one outcome.
pub trait Transport: Send + Sync + 'static {
    fn deliver(&self, job: Job) -> BoxFuture<Vec<(usize, Outcome)>>;
}

/// Postfix's compact delay figures: `0.02`, `1.2`, `15`.
pub fn fmt_delay(secs: f64) -> String {
    if secs >= 10.0 {
        format!("{}", secs.round() as u64)
    } else if secs >= 1.0 {
        format!("{:.1}", (secs * 10.0).floor() / 10.0)
    } else if secs >= 0.01 {
        let s = format!("{:.2}", (secs * 100.0).floor() / 100.0);
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        "0".to_string()
    }
}

/// Logs one recipient's outcome in Postfix's format (the line pflogsumm counts):
/// `ID: to=<a>, relay=r, delay=d, delays=a/b/c/d, dsn=x.y.z, status=sent (text)`.
pub fn log_outcome(
    job: &Job,
    rcpt: &JobRcpt,
    relay: &str,
    started: std::time::SystemTime,
    out: &Outcome,
) {
    let now = std::time::SystemTime::now();
    let secs = |a: std::time::SystemTime, b: std::time::SystemTime| {
        b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    };
    let total = secs(job.arrival, now);
    let orig = if !rcpt.original.is_empty() && !rcpt.original.eq_ignore_ascii_case(&rcpt.address) {
        format!(" orig_to=<{}>,", rcpt.original)
    } else {
        String::new()
    };
    tracing::info!(
        "{}: to=<{}>,{orig} relay={relay}, delay={}, delays={}/{}/0/{}, dsn={}, status={} ({})",
        job.queue_id,
        rcpt.address,
        fmt_delay(total),
        fmt_delay(secs(job.arrival, job.activated)),
        fmt_delay(secs(job.activated, started)),
        fmt_delay(secs(started, now)),
        out.dsn(),
        out.status_word(),
        out.text()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_look_like_postfix() {
        assert_eq!(fmt_delay(0.0), "0");
        assert_eq!(fmt_delay(0.004), "0");
        assert_eq!(fmt_delay(0.02), "0.02");
        assert_eq!(fmt_delay(0.1), "0.1");
        assert_eq!(fmt_delay(1.25), "1.2");
        assert_eq!(fmt_delay(15.4), "15");
    }
}
