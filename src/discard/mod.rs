//! NAME
//!   discard - the discard delivery agent
//!
//! SUMMARY
//!   Reports every recipient as delivered without delivering anything.
//!
//! DESCRIPTION
//!   Used by transport_maps entries such as `example.com discard:` and by the DISCARD action.
//!   The next hop, if any, is logged as the reason.
//!
//! QUEUES
//!   None: qmgr records the outcome.
//!
//! CONFIGURATION PARAMETERS
//!   None.

use crate::delivery::{log_outcome, BoxFuture, Job, Outcome, Transport};

pub struct DiscardTransport;

impl Transport for DiscardTransport {
    fn deliver(&self, job: Job) -> BoxFuture<Vec<(usize, Outcome)>> {
        Box::pin(async move {
            let started = std::time::SystemTime::now();
            let text = if job.nexthop.is_empty() {
                "discarded".to_string()
            } else {
                job.nexthop.clone()
            };
            job.recipients
                .iter()
                .map(|r| {
                    let o = Outcome::sent("2.0.0", text.clone());
                    log_outcome(&job, r, "none", started, &o);
                    (r.index, o)
                })
                .collect()
        })
    }
}
