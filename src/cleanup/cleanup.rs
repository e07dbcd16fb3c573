//! The cleanup actor: runs [`message::process`] off the actor, expands virtual aliases, and
//! commits the queue record durably before answering.

use actix::prelude::*;
use std::sync::Arc;

use super::message::{self, Settings, Submission};
use crate::envelope::{Envelope, Recipient};
use crate::queue::{Meta, Queue, QueueName, Record};
use crate::trivial_rewrite::Rewriter;

/// Queue one message; answers only after it is on disk (or refused).
#[derive(Message)]
#[rtype(result = "Result<Disposition, CleanupError>")]
pub struct Enqueue(pub Submission);

/// New settings after a reload.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload {
    pub settings: Arc<Settings>,
    pub rewriter: Arc<Rewriter>,
}

/// What became of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Queued,
    Held,
    /// DISCARD action: accepted and dropped, as Postfix does (the client still sees 250).
    Discarded,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Content checks refused it; the text is the SMTP reply.
    #[error("{0}")]
    Rejected(String),
    /// The queue could not take it; try again later.
    #[error("queue file write error: {0}")]
    Queue(String),
    #[error("{0}")]
    Temporary(String),
}

impl CleanupError {
    /// The SMTP reply for this error.
    pub fn reply(&self) -> String {
        match self {
            CleanupError::Rejected(r) => r.clone(),
            CleanupError::Queue(_) => "451 4.3.0 Error: queue file write error".into(),
            CleanupError::Temporary(t) => format!("451 4.3.0 {t}"),
        }
    }
}

/// A message the queue could not store or make durable: Postfix's cleanup line
/// (`warning: ID: write queue file: No space left on device`, cleanup_final.c), with the
/// whole error text when it names no OS error; smtpd then answers
/// `451 4.3.0 Error: queue file write error`.
fn write_failed(id: &str, e: crate::queue::QueueError) -> CleanupError {
    let text = e.to_string();
    tracing::warn!("{id}: write queue file: {}", crate::log::os_reason(&text));
    // Which file and layer failed, for `relais -v`.
    tracing::debug!("{id}: write queue file: {text}");
    CleanupError::Queue(text)
}

pub struct Cleanup {
    queue: Queue,
    settings: Arc<Settings>,
    rewriter: Arc<Rewriter>,
    tag: String,
}

impl Cleanup {
    pub fn new(
        queue: Queue,
        settings: Arc<Settings>,
        rewriter: Arc<Rewriter>,
        tag: String,
    ) -> Self {
        Cleanup {
            queue,
            settings,
            rewriter,
            tag,
        }
    }
}

/// Automatic BCC recipients, as Postfix's cleanup adds them: sender_bcc_maps for a non-null
/// sender, recipient_bcc_maps for each recipient, always_bcc. Each is added once, as if given
/// with NOTIFY=NEVER (the sender hears nothing of a BCC copy), before virtual alias expansion.
fn add_bcc(s: &Settings, rw: &Rewriter, env: &mut Envelope) -> Result<(), CleanupError> {
    if env.recipients.is_empty() {
        return Ok(());
    }
    let lookup = |maps: &crate::table::Maps, addr: &str| {
        rw.find(maps, addr)
            .map(|f| f.map(|(v, _)| v))
            .map_err(|e| CleanupError::Temporary(format!("BCC table lookup failed: {e}")))
    };
    let mut bcc: Vec<String> = Vec::new();
    if !env.sender.is_empty() {
        bcc.extend(lookup(&s.sender_bcc_maps, &env.sender)?);
    }
    for r in &env.recipients {
        bcc.extend(lookup(&s.recipient_bcc_maps, &r.address)?);
    }
    if !s.always_bcc.is_empty() {
        bcc.push(s.always_bcc.clone());
    }
    for b in bcc {
        let b = rw.canonicalize(b.trim());
        if b.is_empty()
            || env
                .recipients
                .iter()
                .any(|r| r.address.eq_ignore_ascii_case(&b))
        {
            continue;
        }
        let mut r = Recipient::new(b);
        r.notify = crate::envelope::Notify {
            never: true,
            explicit: true,
            ..Default::default()
        };
        env.recipients.push(r);
    }
    Ok(())
}

/// Virtual alias expansion of the envelope: each result keeps the original recipient and its
/// DSN parameters; duplicates collapse, as in Postfix.
fn expand_recipients(rw: &Rewriter, rcpts: Vec<Recipient>) -> Result<Vec<Recipient>, CleanupError> {
    let mut out: Vec<Recipient> = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        let targets = rw
            .expand(&r.address)
            .map_err(|e| CleanupError::Temporary(format!("alias lookup failed: {e}")))?;
        for t in targets {
            if out.iter().any(|o| o.address.eq_ignore_ascii_case(&t)) {
                continue;
            }
            let mut n = r.clone();
            n.address = t;
            out.push(n);
        }
    }
    Ok(out)
}

impl Actor for Cleanup {
    type Context = Context<Self>;
}

impl Handler<Enqueue> for Cleanup {
    type Result = ResponseFuture<Result<Disposition, CleanupError>>;

    fn handle(&mut self, Enqueue(sub): Enqueue, _: &mut Self::Context) -> Self::Result {
        let queue = self.queue.clone();
        let settings = self.settings.clone();
        let rewriter = self.rewriter.clone();
        let span = crate::log::service_span!(self.tag);
        Box::pin(async move {
            let id = sub.queue_id.clone();
            let sp = span.clone();
            let (queue_w, id_w) = (queue.clone(), id.clone());
            // Header work, checks and table lookups (SQLite, files) are blocking CPU/IO work.
            let prepared = tokio::task::spawn_blocking(move || {
                let _e = sp.enter();
                let cleaned =
                    message::process(&sub, &settings).map_err(|r| CleanupError::Rejected(r.0))?;
                let mut env = sub.envelope;
                if let Some(to) = &cleaned.redirect {
                    let mut r = Recipient::new(to.clone());
                    r.original = to.clone();
                    env.recipients = vec![r];
                }
                for b in &cleaned.bcc {
                    env.recipients.push(Recipient::new(b.clone()));
                }
                // Applied: only the content filter stays with the message (qmgr routes by it).
                env.actions = crate::envelope::Actions {
                    filter: cleaned.filter.clone(),
                    ..Default::default()
                };
                env.sender = rewriter.canonicalize(&env.sender);
                for r in &mut env.recipients {
                    r.address = rewriter.canonicalize(&r.address);
                }
                // A REDIRECT sends everything, copies included, to its one address.
                if cleaned.redirect.is_none() {
                    add_bcc(&settings, &rewriter, &mut env)?;
                }
                for r in &mut env.recipients {
                    // As Postfix records dsn_orig_rcpt for every recipient: the ORCPT the
                    // client gave, else the address as received. Alias expansions inherit it,
                    // and notices and next hops see the address the sender used.
                    if r.orcpt.is_none() {
                        r.orcpt = Some(format!("rfc822;{}", r.address));
                    }
                }
                env.recipients = expand_recipients(&rewriter, env.recipients)?;
                if cleaned.discard.is_some() {
                    return Ok((Disposition::Discarded, QueueName::Incoming));
                }
                let (state, disp) = if cleaned.hold.is_some() {
                    (QueueName::Hold, Disposition::Held)
                } else {
                    (QueueName::Incoming, Disposition::Queued)
                };
                let record = Record {
                    envelope: env,
                    origin: sub.origin,
                    meta: Meta::default(),
                };
                // Written here, on this blocking thread, to save a second hop; durable
                // only after `committed` below.
                queue_w
                    .store_blocking(&id_w, state, record, &cleaned.content)
                    .map_err(|e| write_failed(&id_w, e))?;
                Ok::<_, CleanupError>((disp, state))
            })
            .await
            .map_err(|e| CleanupError::Temporary(format!("cleanup task failed: {e}")))??;
            let (disp, state) = prepared;
            if disp == Disposition::Discarded {
                return Ok(disp);
            }
            queue.committed(&id, state).await.map_err(|e| {
                let _e = span.enter();
                write_failed(&id, e)
            })?;
            Ok(disp)
        })
    }
}

impl Handler<Reload> for Cleanup {
    type Result = ();

    fn handle(&mut self, msg: Reload, _: &mut Self::Context) {
        self.settings = msg.settings;
        self.rewriter = msg.rewriter;
    }
}
