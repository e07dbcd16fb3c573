//! The delivery agent actor: one per master.cf transport row (smtp, relay, lmtp, virtual,
//! error, retry, discard). It runs jobs as tasks, at most maxproc at a time, so a slow peer
//! never blocks the actor and a row's process limit means what it means in Postfix.

use actix::prelude::*;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{Job, Outcome, Transport};

/// Delivery agents by transport name, with their maxproc: qmgr's view of master.cf, kept
/// current by the master as agents start and restart.
pub type AgentTable =
    Arc<std::sync::RwLock<std::collections::HashMap<String, (Addr<DeliveryAgent>, usize)>>>;

/// Deliver one job; answers one outcome per recipient (missing ones mean "deferred").
#[derive(Message)]
#[rtype(result = "Vec<(usize, Outcome)>")]
pub struct Deliver(pub Job);

pub struct DeliveryAgent {
    transport: Arc<dyn Transport>,
    slots: Arc<Semaphore>,
    tag: String,
}

impl DeliveryAgent {
    /// `maxproc` 0 means unlimited, as in master.cf.
    pub fn new(transport: Arc<dyn Transport>, maxproc: usize, tag: String) -> Self {
        let n = if maxproc == 0 {
            Semaphore::MAX_PERMITS
        } else {
            maxproc
        };
        DeliveryAgent {
            transport,
            slots: Arc::new(Semaphore::new(n)),
            tag,
        }
    }
}

impl Actor for DeliveryAgent {
    type Context = Context<Self>;
}

impl Handler<Deliver> for DeliveryAgent {
    type Result = ResponseFuture<Vec<(usize, Outcome)>>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        let transport = self.transport.clone();
        let slots = self.slots.clone();
        let span = crate::log::service_span!(self.tag);
        Box::pin(
            async move {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return Vec::new();
                };
                // Run on the multi-thread runtime so deliveries proceed in parallel.
                match tokio::spawn(transport.deliver(msg.0).in_current_span()).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("delivery agent task failed: {e}");
                        Vec::new()
                    }
                }
            }
            .instrument(span),
        )
    }
}
