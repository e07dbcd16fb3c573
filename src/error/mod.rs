//! NAME
//!   error - the error and retry delivery agents
//!
//! SUMMARY
//!   Fails every recipient of a job with the next hop's text: permanently for `error`,
//!   temporarily for `retry` (master.cf `retry unix … error`).
//!
//! DESCRIPTION
//!   trivial-rewrite routes unknown users and configured refusals here with a next hop of the
//!   form `[d.d.d ]text` (`5.1.1 User unknown in virtual mailbox table`); a missing status
//!   defaults to 5.0.0 (4.0.0 for retry).
//!
//! QUEUES
//!   None: qmgr records the outcome.
//!
//! CONFIGURATION PARAMETERS
//!   None.

use crate::delivery::{log_outcome, BoxFuture, Job, Outcome, Transport};

/// `error` (permanent) or `retry` (temporary).
pub struct ErrorTransport {
    pub temporary: bool,
}

fn split_dsn(text: &str, default: &str) -> (String, String) {
    let mut it = text.splitn(2, ' ');
    let first = it.next().unwrap_or("");
    let is_dsn = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if is_dsn {
        (first.to_string(), it.next().unwrap_or("").to_string())
    } else {
        (default.to_string(), text.to_string())
    }
}

impl Transport for ErrorTransport {
    fn deliver(&self, job: Job) -> BoxFuture<Vec<(usize, Outcome)>> {
        let temporary = self.temporary;
        Box::pin(async move {
            let started = std::time::SystemTime::now();
            let (dsn, text) = split_dsn(&job.nexthop, if temporary { "4.0.0" } else { "5.0.0" });
            let text = if text.is_empty() {
                "delivery failed".to_string()
            } else {
                text
            };
            let mut out = Vec::with_capacity(job.recipients.len());
            for r in &job.recipients {
                let o = if temporary || dsn.starts_with('4') {
                    Outcome::deferred(&dsn.replacen('5', "4", 1), text.clone())
                } else {
                    Outcome::bounced(&dsn, text.clone())
                };
                log_outcome(&job, r, "none", started, &o);
                out.push((r.index, o));
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_nexthop() {
        assert_eq!(
            split_dsn("5.1.1 User unknown", "5.0.0"),
            ("5.1.1".into(), "User unknown".into())
        );
        assert_eq!(
            split_dsn("mail for x loops back", "5.0.0"),
            ("5.0.0".into(), "mail for x loops back".into())
        );
    }
}
