//! The pickup actor.

use actix::prelude::*;
use std::collections::HashSet;
use std::time::Duration;
use tracing::Instrument;

use crate::cleanup::cleanup::{Cleanup, Enqueue};
use crate::cleanup::message::Submission;
use crate::queue::{Queue, QueueName};

/// Look at the maildrop queue now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Scan;

pub struct Pickup {
    queue: Queue,
    cleanup: Addr<Cleanup>,
    wakeup: Duration,
    busy: HashSet<String>,
    span: tracing::Span,
}

impl Pickup {
    pub fn new(queue: Queue, cleanup: Addr<Cleanup>, wakeup: Duration, tag: &str) -> Self {
        Pickup {
            queue,
            cleanup,
            wakeup,
            busy: HashSet::new(),
            span: crate::log::service_span!(tag),
        }
    }

    fn pick(&mut self, ctx: &mut Context<Self>, old: String) {
        if !self.busy.insert(old.clone()) {
            return;
        }
        let q = self.queue.clone();
        let cleanup = self.cleanup.clone();
        let o2 = old.clone();
        let fut = async move {
            let Some(msg) = q.get(&o2).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if msg.queue != QueueName::Maildrop {
                return Ok(());
            }
            let rec = msg.record;
            let uid = rec.origin.uid.unwrap_or(0);
            if rec.origin.service != super::SENDMAIL {
                // Requeued by postsuper -r: already cleaned; move it under a new ID, atomically.
                let sender = rec.envelope.sender.clone();
                match q
                    .reinject(&o2, &[QueueName::Maildrop], QueueName::Incoming, |r| {
                        r.meta.next_attempt = 0
                    })
                    .await
                {
                    Ok(Some(new)) => {
                        tracing::info!("{new}: uid={uid} from=<{sender}> orig_id={o2}")
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("{o2}: cannot re-inject: {e}")),
                }
                return Ok(());
            }
            let content = q
                .content(&o2)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let new = q.new_id().await.map_err(|e| e.to_string())?;
            tracing::info!("{new}: uid={uid} from=<{}>", rec.envelope.sender);
            let mut origin = rec.origin.clone();
            origin.service = "pickup".into();
            let sub = Submission {
                queue_id: new.clone(),
                envelope: rec.envelope,
                origin,
                content,
            };
            match cleanup.send(Enqueue(sub)).await {
                Ok(Ok(_)) => {}
                // Refused by content checks: kept in maildrop for the operator rather than lost.
                Ok(Err(e)) => {
                    return Err(format!(
                        "{o2}: cleanup refused the message: {e}; left in maildrop"
                    ))
                }
                Err(e) => return Err(format!("{o2}: cleanup unavailable: {e}")),
            }
            q.delete(&o2, &[QueueName::Maildrop])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        };
        ctx.spawn(
            fut.instrument(self.span.clone())
                .into_actor(self)
                .map(move |r, act, _| {
                    let _g = act.span.clone().entered();
                    act.busy.remove(&old);
                    if let Err(e) = r {
                        tracing::warn!("{e}");
                    }
                }),
        );
    }
}

impl Actor for Pickup {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Scan);
        ctx.run_interval(self.wakeup.max(Duration::from_secs(1)), |_, ctx| {
            ctx.notify(Scan)
        });
    }
}

impl Handler<Scan> for Pickup {
    type Result = ();

    fn handle(&mut self, _: Scan, ctx: &mut Self::Context) {
        let q = self.queue.clone();
        ctx.spawn(
            async move { q.ids(QueueName::Maildrop).await.unwrap_or_default() }
                .into_actor(self)
                .map(|ids, act, ctx| {
                    let _g = act.span.clone().entered();
                    for id in ids {
                        act.pick(ctx, id);
                    }
                }),
        );
    }
}
