//! smtpd's link to the rest of the mail system: queue IDs from the queue, the access policy
//! from [`super::policy`], and complete messages to cleanup (whose answer comes only after the
//! message is on disk).

use std::sync::{Arc, RwLock};

use super::policy::{Ctx, Policy};
use super::reply::Reply;
use super::session::SessionInfo;
use super::{Backend, BoxFuture, CheckPoint, Checked, ClientNames};
use crate::cleanup::cleanup::{Cleanup, Enqueue};
use crate::cleanup::message::Submission;
use crate::envelope::{Envelope, Origin};
use crate::queue::Queue;

/// Where cleanup is right now (it may have been restarted).
pub type CleanupLocator = Arc<dyn Fn() -> Option<actix::Addr<Cleanup>> + Send + Sync>;

pub struct QueueBackend {
    pub queue: Queue,
    /// queue_directory, whose file system smtpd measures at MAIL FROM.
    pub queue_directory: std::path::PathBuf,
    pub policy: RwLock<Arc<Policy>>,
    pub cleanup: CleanupLocator,
}

fn reply_of(text: &str) -> Reply {
    super::policy::reply_of(text)
}

impl QueueBackend {
    fn current(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// The policy's view of a session (plus the recipient or ETRN domain).
pub fn ctx<'a>(s: &'a SessionInfo, rcpt: &'a str, etrn: &'a str) -> Ctx<'a> {
    Ctx {
        client_addr: &s.client_addr,
        client_name: &s.client_name,
        reverse_name: &s.reverse_name,
        name_status: s.name_status,
        reverse_status: s.reverse_status,
        helo: s.helo.as_deref(),
        sender: s.sender.as_deref(),
        rcpt,
        // Postfix's permit_sasl_authenticated: any method but ANONYMOUS.
        sasl: s.sasl_user.is_some()
            && !s
                .sasl_method
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case("ANONYMOUS")),
        sasl_user: s.sasl_user.as_deref(),
        ill_pipelining: s.ill_pipelining,
        ccert: s.ccert.as_ref(),
        protocol: &s.protocol,
        queue_id: s.queue_id.as_deref().unwrap_or(""),
        recipient_count: s.recipient_count,
        size: s.size,
        etrn_domain: etrn,
    }
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

    fn check_recipient(&self, s: &SessionInfo, rcpt: &str) -> BoxFuture<'static, Checked> {
        let policy = self.current();
        let s = s.clone();
        let rcpt = rcpt.to_string();
        Box::pin(async move { policy.check(&ctx(&s, &rcpt, "")).await })
    }

    fn check(&self, at: CheckPoint, s: &SessionInfo, arg: &str) -> BoxFuture<'static, Checked> {
        let policy = self.current();
        let s = s.clone();
        let arg = arg.to_string();
        Box::pin(async move { policy.check_at(at, &ctx(&s, "", &arg)).await })
    }

    fn delay_reject(&self) -> bool {
        self.current().delay_reject()
    }

    fn lookup_client(&self, addr: std::net::IpAddr) -> BoxFuture<'static, ClientNames> {
        let policy = self.current();
        Box::pin(async move { policy.client_names(addr).await })
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

    fn queue_space(&self) -> Option<Result<super::storage::FsSpace, super::storage::StorageError>> {
        Some(super::storage::fsspace(&self.queue_directory))
    }

    fn flush_site(&self, site: &str) {
        self.queue
            .notify(crate::queue::QueueEvent::FlushSite(site.to_string()));
    }
}
