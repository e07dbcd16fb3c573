//! The anvil actor: owns the [`Table`] of one mail system, answers the servers' connect,
//! disconnect and event requests, sweeps idle entries and logs the statistics lines every
//! anvil_status_update_time and when it stops.

use super::table::{Event, Table};
use actix::prelude::*;
use std::time::{Duration, Instant};
use tracing::info;

/// A new session from `ident` (`service:addr`); answers (sessions now, connections in the
/// current time unit).
#[derive(Message)]
#[rtype(result = "(u32, u32)")]
pub struct Connect(pub String);

/// A session from `ident` ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect(pub String);

/// One more event from `ident`; answers the events of that kind in the current time unit.
#[derive(Message)]
#[rtype(result = "u32")]
pub struct Count(pub String, pub Event);

/// The events of that kind from `ident` in the current time unit, without counting one.
#[derive(Message)]
#[rtype(result = "u32")]
pub struct Peek(pub String, pub Event);

/// Log the statistics lines now (and start the peaks over), as the periodic update does.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Statistics;

/// How many entries the table holds (for tests and the memory bound).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Size;

pub struct Anvil {
    table: Table,
    status_every: Duration,
    tag: String,
}

impl Anvil {
    /// `unit`: anvil_rate_time_unit; `status_every`: anvil_status_update_time; `tag`: the log
    /// tag (`postfix/anvil`).
    pub fn new(unit: Duration, status_every: Duration, tag: &str) -> Anvil {
        Anvil {
            table: Table::new(unit),
            status_every: status_every.max(Duration::from_secs(1)),
            tag: tag.to_string(),
        }
    }

    fn log_statistics(&mut self) {
        let lines = self.table.take_statistics();
        if lines.is_empty() {
            return;
        }
        let span = crate::log::service_span!(self.tag.clone());
        let _g = span.enter();
        for l in lines {
            info!("{l}");
        }
    }
}

impl Actor for Anvil {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Idle entries leave within one time unit and a half, whatever the traffic.
        let sweep = (self.table.unit() / 2).max(Duration::from_millis(500));
        ctx.run_interval(sweep, |a, _| {
            a.table.expire(Instant::now());
        });
        ctx.run_interval(self.status_every, |a, _| a.log_statistics());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.log_statistics();
    }
}

impl Handler<Connect> for Anvil {
    type Result = MessageResult<Connect>;

    fn handle(&mut self, m: Connect, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.table.connect(&m.0, Instant::now()))
    }
}

impl Handler<Disconnect> for Anvil {
    type Result = ();

    fn handle(&mut self, m: Disconnect, _: &mut Context<Self>) {
        self.table.disconnect(&m.0, Instant::now());
    }
}

impl Handler<Count> for Anvil {
    type Result = u32;

    fn handle(&mut self, m: Count, _: &mut Context<Self>) -> u32 {
        self.table.event(&m.0, m.1, Instant::now())
    }
}

impl Handler<Peek> for Anvil {
    type Result = u32;

    fn handle(&mut self, m: Peek, _: &mut Context<Self>) -> u32 {
        self.table.peek(&m.0, m.1, Instant::now())
    }
}

impl Handler<Statistics> for Anvil {
    type Result = ();

    fn handle(&mut self, _: Statistics, _: &mut Context<Self>) {
        self.log_statistics();
    }
}

impl Handler<Size> for Anvil {
    type Result = usize;

    fn handle(&mut self, _: Size, _: &mut Context<Self>) -> usize {
        self.table.len()
    }
}
