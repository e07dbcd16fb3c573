//! The smtp/lmtp client as a qmgr delivery agent.

use super::{Client, Job};
use crate::delivery::{self, BoxFuture, Outcome, Transport};

/// One master.cf `smtp` or `lmtp` row: its client (with its connection cache) and protocol.
pub struct SmtpTransport {
    pub client: Client,
    pub lmtp: bool,
}

impl Transport for SmtpTransport {
    fn deliver(&self, job: delivery::Job) -> BoxFuture<Vec<(usize, Outcome)>> {
        let client = self.client.clone();
        let j = Job {
            queue_id: job.queue_id,
            sender: job.sender,
            recipients: job.recipients,
            content: job.content,
            ret: job.ret,
            envid: job.envid,
            body_type: job.body_type,
            smtputf8: job.smtputf8,
            arrival: job.arrival,
            active_since: Some(job.activated),
            nexthop: job.nexthop,
            lmtp: self.lmtp,
        };
        Box::pin(async move { client.deliver(j).await })
    }
}
