//! smtpd's link to the rest of the mail system: queue IDs from the queue, the access policy
//! from [`super::policy`], and complete messages to cleanup (whose answer comes only after the
//! message is on disk).

use std::sync::{Arc, RwLock};

use super::policy::{Ctx, Policy, Verdict};
use super::reply::Reply;
use super::session::SessionInfo;
use super::{Backend, BoxFuture};
use crate::cleanup::cleanup::{Cleanup, Enqueue};
use crate::cleanup::message::Submission;
use crate::envelope::{Envelope, Origin};
use crate::queue::Queue;

/// Where cleanup is right now (it may have been restarted).
pub type CleanupLocator = Arc<dyn Fn() -> Option<actix::Addr<Cleanup>> + Send + Sync>;

pub struct QueueBackend {
    pub queue: Queue,
    pub policy: RwLock<Arc<Policy>>,
    pub cleanup: CleanupLocator,
}

/// Splits `"554 5.7.1 text"` into a Reply.
fn reply_of(text: &str) -> Reply {
    let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
    Reply::new(code.parse().unwrap_or(451), rest.to_string())
}

impl Backend for QueueBackend {
    fn new_queue_id(&self) -> String {
        match self.queue.new_id_now() {
            Ok(id) => id,
            Err(e) => {
                // The enqueue that follows fails with a clear 451; an ID is still needed to
                // log the attempt.
                tracing::warn!("queue ID generation failed: {e}");
                crate::queue::id::make(0, false)
            }
        }
    }

    fn check_recipient(&self, s: &SessionInfo, rcpt: &str) -> Result<(), Reply> {
        let policy = self
            .policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let ctx = Ctx {
            client_addr: &s.client_addr,
            client_name: &s.client_name,
            helo: s.helo.as_deref(),
            sender: s.sender.as_deref(),
            rcpt,
            sasl: false,
            ccert: s.ccert.as_ref(),
        };
        match policy.check(&ctx) {
            Verdict::Permit => Ok(()),
            Verdict::Reject(text) => Err(reply_of(&text)),
        }
    }

    fn enqueue(
        &self,
        id: String,
        env: Envelope,
        origin: Origin,
        content: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>> {
        let cleanup = (self.cleanup)();
        Box::pin(async move {
            let Some(cleanup) = cleanup else {
                return Err(Reply::new(451, "4.3.0 Error: queue file write error"));
            };
            match cleanup
                .send(Enqueue(Submission {
                    queue_id: id,
                    envelope: env,
                    origin,
                    content,
                }))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(reply_of(&e.reply())),
                Err(_) => Err(Reply::new(451, "4.3.0 Error: queue file write error")),
            }
        })
    }

    fn flush_site(&self, site: &str) {
        self.queue
            .notify(crate::queue::QueueEvent::FlushSite(site.to_string()));
    }
}
