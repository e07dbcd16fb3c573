//! NAME
//!   virtual - deliver into Maildir mailboxes
//!
//! SUMMARY
//!   Local delivery for virtual_mailbox_domains (and the default conf/'s local domain).
//!
//! DESCRIPTION
//!   The mailbox path is virtual_mailbox_base joined with the virtual_mailbox_maps result for
//!   the recipient; a result ending in `/` is a Maildir (the only format relais writes).
//!   Return-Path: and Delivered-To: are added; a message that already carries
//!   `Delivered-To: <recipient>` bounces as a forwarding loop.
//!
//! QUEUES
//!   None: qmgr hands it recipients of active messages and records the outcome.
//!
//! SECURITY
//!   Mailbox paths come from the administrator's tables, never from the message; a result
//!   containing `..` is refused.
//!
//! CONFIGURATION PARAMETERS
//!   virtual_mailbox_base (), virtual_mailbox_maps ()

pub mod maildir;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::delivery::{log_outcome, BoxFuture, Job, Outcome, Transport};
use crate::trivial_rewrite::Rewriter;

/// The `virtual` delivery agent.
pub struct VirtualTransport {
    pub base: PathBuf,
    /// The current tables (they change on reload).
    pub rewriter: Arc<dyn Fn() -> Arc<Rewriter> + Send + Sync>,
    pub hostname: String,
}

/// The mailbox path for a map result, refusing anything that could leave the base.
fn mailbox_path(base: &Path, result: &str) -> Option<PathBuf> {
    let rel = Path::new(result.trim());
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    Some(base.join(rel))
}

impl Transport for VirtualTransport {
    fn deliver(&self, job: Job) -> BoxFuture<Vec<(usize, Outcome)>> {
        let base = self.base.clone();
        let rewriter = (self.rewriter)();
        let hostname = self.hostname.clone();
        Box::pin(async move {
            // File system work is blocking: keep it off the async workers.
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _g = span.enter();
                let mut out = Vec::with_capacity(job.recipients.len());
                for r in &job.recipients {
                    let started = std::time::SystemTime::now();
                    let o = match rewriter.mailbox_of(&r.address) {
                        Err(e) => Outcome::deferred("4.3.0", format!("mailbox lookup failed: {e}")),
                        // Postfix's virtual(8) words, the address lowercased as it looks it up.
                        Ok(None) => Outcome::bounced(
                            "5.1.1",
                            format!("unknown user: \"{}\"", r.address.to_lowercase()),
                        ),
                        Ok(Some(res)) if !res.trim().ends_with('/') => {
                            Outcome::bounced("5.3.5", format!("mailbox format of {} is not supported: relais writes Maildir only (end the path with /)", res.trim()))
                        }
                        Ok(Some(res)) => match mailbox_path(&base, &res) {
                            None => Outcome::bounced("5.3.5", format!("unsafe mailbox path {res}")),
                            Some(path) => maildir::deliver(&maildir::Delivery {
                                maildir: &path,
                                sender: &job.sender,
                                recipient: &r.address,
                                content: &job.content,
                                hostname: &hostname,
                                owner: None,
                            }),
                        },
                    };
                    log_outcome(&job, r, "virtual", started, &o);
                    out.push((r.index, o));
                }
                out
            })
            .await
            // A panicked task reports nothing; qmgr defers every recipient without an outcome.
            .unwrap_or_default()
        })
    }
}
