//! The queue manager actor.

use actix::prelude::*;
use chrono::{Local, TimeZone};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

use super::dest::{DestKey, Dests, Feedback, Feedback2, Policy};
use crate::bounce::notice::{self, Kind, Notice, Rcpt as NoticeRcpt};
use crate::config::Config;
use crate::delivery::agent::{AgentTable, Deliver, DeliveryAgent};
use crate::delivery::{Failed, Job, JobRcpt, Outcome};
use crate::envelope::{Envelope, Origin, RcptStatus, Recipient};
use crate::queue::{Meta, Queue, QueueEvent, QueueName, Record};
use crate::trivial_rewrite::Rewriter;

/// A queue event forwarded to qmgr.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Event(pub QueueEvent);

/// New settings, tables and agents after `relais reload`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload {
    pub settings: Settings,
    pub rewriter: Arc<Rewriter>,
}

/// qmgr's view of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub active_limit: usize,
    pub queue_run_delay: Duration,
    pub minimal_backoff: Duration,
    pub maximal_backoff: Duration,
    pub maximal_queue_lifetime: Duration,
    pub bounce_queue_lifetime: Duration,
    pub delay_warning_time: Duration,
    pub initial_concurrency: usize,
    pub default_concurrency_limit: usize,
    pub default_recipient_limit: usize,
    /// `<transport>_destination_concurrency_limit` / `_recipient_limit` set in main.cf.
    pub per_transport: HashMap<String, (Option<usize>, Option<usize>)>,
    /// Concurrency feedback per transport (`<transport>_…` overrides over `default_…`).
    pub policies: HashMap<String, Policy>,
    pub default_policy: Policy,
    pub myhostname: String,
    pub mail_name: String,
    pub bounce_size_limit: usize,
    /// notify_classes, lower case.
    pub notify_classes: Vec<String>,
    /// double_bounce_sender@$myorigin: the sender of postmaster notices.
    pub double_bounce: String,
    pub double_bounce_local: String,
    /// 2bounce_notice_recipient and bounce_notice_recipient, qualified with @$myorigin.
    pub two_bounce_rcpt: String,
    pub bounce_rcpt: String,
}

impl Settings {
    pub fn from_config(cfg: &Config, transports: &[String]) -> Settings {
        let mut per_transport = HashMap::new();
        let mut policies = HashMap::new();
        let fb = |name: &str, fallback: &str| {
            let v = cfg
                .raw(name)
                .and_then(|v| cfg.expand(&v).ok())
                .unwrap_or_else(|| fallback.to_string());
            Feedback::parse(&v).unwrap_or_else(|| {
                tracing::warn!(
                    "{name} = {v}: expected 1/concurrency or a number; using 1/concurrency"
                );
                Feedback::PerWindow(1.0)
            })
        };
        let minimal_backoff = cfg.get_time("minimal_backoff_time");
        let default_policy = Policy {
            initial: cfg.get_int("initial_destination_concurrency").max(1) as usize,
            limit: cfg.get_int("default_destination_concurrency_limit").max(1) as usize,
            positive: fb(
                "default_destination_concurrency_positive_feedback",
                &cfg.get("default_destination_concurrency_positive_feedback"),
            ),
            negative: fb(
                "default_destination_concurrency_negative_feedback",
                &cfg.get("default_destination_concurrency_negative_feedback"),
            ),
            failed_cohort_limit: cfg
                .get_int("default_destination_concurrency_failed_cohort_limit")
                .max(0) as usize,
            suspend: minimal_backoff,
        };
        for t in transports {
            let raw = |suffix: &str| {
                cfg.raw(&format!("{t}_{suffix}"))
                    .and_then(|v| cfg.expand(&v).ok())
            };
            let mut p = default_policy.clone();
            if let Some(v) =
                raw("initial_destination_concurrency").and_then(|v| v.trim().parse::<usize>().ok())
            {
                p.initial = v.max(1);
            }
            if let Some(v) =
                raw("destination_concurrency_limit").and_then(|v| v.trim().parse::<usize>().ok())
            {
                p.limit = v.max(1);
            }
            if raw("destination_concurrency_positive_feedback").is_some() {
                p.positive = fb(
                    &format!("{t}_destination_concurrency_positive_feedback"),
                    "1/concurrency",
                );
            }
            if raw("destination_concurrency_negative_feedback").is_some() {
                p.negative = fb(
                    &format!("{t}_destination_concurrency_negative_feedback"),
                    "1/concurrency",
                );
            }
            if let Some(v) = raw("destination_concurrency_failed_cohort_limit")
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                p.failed_cohort_limit = v;
            }
            policies.insert(t.clone(), p);
            let get = |suffix: &str| {
                cfg.raw(&format!("{t}_{suffix}"))
                    .and_then(|v| cfg.expand(&v).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
            };
            per_transport.insert(
                t.clone(),
                (
                    get("destination_concurrency_limit"),
                    get("destination_recipient_limit"),
                ),
            );
        }
        Settings {
            active_limit: cfg.get_int("qmgr_message_active_limit").max(1) as usize,
            queue_run_delay: cfg.get_time("queue_run_delay"),
            minimal_backoff: cfg.get_time("minimal_backoff_time"),
            maximal_backoff: cfg.get_time("maximal_backoff_time"),
            maximal_queue_lifetime: cfg.get_time("maximal_queue_lifetime"),
            bounce_queue_lifetime: cfg
                .get_time("bounce_queue_lifetime")
                .min(cfg.get_time("maximal_queue_lifetime")),
            delay_warning_time: cfg.get_time("delay_warning_time"),
            initial_concurrency: cfg.get_int("initial_destination_concurrency").max(1) as usize,
            default_concurrency_limit: cfg.get_int("default_destination_concurrency_limit").max(1)
                as usize,
            default_recipient_limit: cfg.get_int("default_destination_recipient_limit").max(1)
                as usize,
            per_transport,
            policies,
            default_policy,
            myhostname: cfg.get("myhostname"),
            mail_name: cfg.get("mail_name"),
            bounce_size_limit: cfg.get_size("bounce_size_limit") as usize,
            notify_classes: cfg
                .get_list("notify_classes")
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            double_bounce: qualify(&cfg.get("double_bounce_sender"), &cfg.get("myorigin")),
            double_bounce_local: cfg.get("double_bounce_sender").to_ascii_lowercase(),
            two_bounce_rcpt: qualify(&cfg.get("2bounce_notice_recipient"), &cfg.get("myorigin")),
            bounce_rcpt: qualify(&cfg.get("bounce_notice_recipient"), &cfg.get("myorigin")),
        }
    }

    pub fn policy(&self, transport: &str) -> &Policy {
        self.policies.get(transport).unwrap_or(&self.default_policy)
    }

    fn limits(&self, transport: &str) -> (usize, usize) {
        let (c, r) = self
            .per_transport
            .get(transport)
            .copied()
            .unwrap_or((None, None));
        (
            c.unwrap_or(self.default_concurrency_limit).max(1),
            r.unwrap_or(self.default_recipient_limit).max(1),
        )
    }
}

struct ActiveMsg {
    record: Record,
    /// The body while some job holds it. Jobs waiting for a slot carry none: a long active
    /// queue would otherwise hold every body in memory (Postfix's qmgr holds none; its
    /// agents read the queue file). A job reads the body when it starts, sharing it with the
    /// message's other jobs in flight.
    content: std::sync::Weak<Vec<u8>>,
    outstanding: usize,
    /// Outcomes of this round, by recipient index.
    outcomes: HashMap<usize, Outcome>,
}

/// Activations in flight at most (see [`Qmgr::budget`]).
const ACTIVATING_MAX: usize = 256;

/// Deferred records a run reads per blocking call.
const RUN_EXAMINE: usize = 1000;

/// What a deferred-queue run takes: the messages due now (the periodic run, `postsuper -H`
/// and `-r`), every message (`postqueue -f`), and those with a pending recipient at one of
/// `sites` (`postqueue -s`, ETRN). Runs asked for while one is going are merged: the union.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RunWant {
    due: bool,
    all: bool,
    sites: Vec<String>,
}

impl RunWant {
    fn due() -> RunWant {
        RunWant {
            due: true,
            ..Default::default()
        }
    }

    fn all() -> RunWant {
        RunWant {
            all: true,
            ..Default::default()
        }
    }

    fn site(site: String) -> RunWant {
        RunWant {
            sites: vec![site],
            ..Default::default()
        }
    }

    fn is_empty(&self) -> bool {
        !self.due && !self.all && self.sites.is_empty()
    }

    fn merge(&mut self, o: RunWant) {
        self.due |= o.due;
        self.all |= o.all;
        for s in o.sites {
            // Bounded: ETRN and postqueue -s name only fast_flush_domains sites.
            if !self.sites.iter().any(|x| x.eq_ignore_ascii_case(&s)) {
                self.sites.push(s);
            }
        }
    }

    fn takes(&self, rec: &Record, now: i64) -> bool {
        if self.all || (self.due && rec.meta.next_attempt <= now) {
            return true;
        }
        !self.sites.is_empty()
            && rec.envelope.recipients.iter().any(|r| {
                r.status == RcptStatus::Pending
                    && r.address
                        .rsplit_once('@')
                        .is_some_and(|(_, d)| self.sites.iter().any(|s| d.eq_ignore_ascii_case(s)))
            })
    }
}

/// A deferred-queue run in progress: where it is and what it takes.
#[derive(Debug)]
struct Run {
    want: RunWant,
    /// The last deferred ID examined ("" before the first).
    cursor: String,
    /// A batch is being read.
    reading: bool,
}

pub struct Qmgr {
    queue: Queue,
    settings: Settings,
    rewriter: Arc<Rewriter>,
    /// transport name → (agent, maxproc), kept current by the master.
    agents: AgentTable,
    active: HashMap<String, ActiveMsg>,
    activating: HashSet<String>,
    /// An incoming scan is in flight; `rescan` asks for another when it returns (or when
    /// an activation slot frees).
    scanning: bool,
    /// The deferred-queue run in progress, and what the next one is to take.
    run: Option<Run>,
    next_run: RunWant,
    /// A body-segment compaction is running (one at a time).
    compacting: bool,
    rescan: bool,
    dests: Dests,
    /// Log lines carry `syslog_name/qmgr`.
    span: tracing::Span,
}

fn secs_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_system(secs: i64, usec: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64) + Duration::from_micros(usec as u64)
}

/// `name` → `name@origin`, as cleanup does for locally posted mail.
fn qualify(name: &str, origin: &str) -> String {
    let name = name.trim();
    if name.contains('@') || origin.is_empty() {
        name.to_string()
    } else {
        format!("{name}@{origin}")
    }
}

fn sender_text(s: &str) -> &str {
    s
}

impl Qmgr {
    pub fn new(
        queue: Queue,
        settings: Settings,
        rewriter: Arc<Rewriter>,
        agents: AgentTable,
        tag: &str,
    ) -> Self {
        Qmgr {
            queue,
            settings,
            rewriter,
            agents,
            active: HashMap::new(),
            activating: HashSet::new(),
            scanning: false,
            run: None,
            next_run: RunWant::default(),
            compacting: false,
            rescan: false,
            dests: Dests::default(),
            span: crate::log::service_span!(tag),
        }
    }

    fn room(&self) -> usize {
        self.settings
            .active_limit
            .saturating_sub(self.active.len() + self.activating.len())
    }

    /// How many more messages may be activated now: room in the active queue, and no more
    /// than ACTIVATING_MAX activations in flight (each holds a blocking thread and, once
    /// read, a record and body).
    fn budget(&self) -> usize {
        self.room()
            .min(ACTIVATING_MAX.saturating_sub(self.activating.len()))
    }

    /// Scans incoming, bounded by room. Incoming-only scans come after every finished
    /// message: one at a time, the latest request served when the running one returns, and
    /// never more IDs than there is room for (those being activated are still listed in
    /// incoming).
    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            self.rescan = true;
            return;
        }
        if self.budget() == 0 {
            // Asked again when an activation or a message finishes.
            self.rescan = true;
            return;
        }
        self.scanning = true;
        let limit = self.budget() + self.activating.len();
        let q = self.queue.clone();
        let fut = async move {
            q.ids_upto(QueueName::Incoming, limit)
                .await
                .unwrap_or_default()
        };
        ctx.spawn(
            fut.instrument(self.span.clone())
                .into_actor(self)
                .map(move |ids, act, ctx| {
                    let _g = act.span.clone().entered();
                    for id in ids {
                        if act.budget() == 0 {
                            act.rescan = true;
                            break;
                        }
                        act.activate(ctx, id);
                    }
                    act.scanning = false;
                    if std::mem::take(&mut act.rescan) {
                        act.scan(ctx);
                    }
                }),
        );
    }

    /// Asks for a deferred-queue run taking what `want` says; one already running finishes
    /// first, as Postfix's qmgr restarts a scan only when the current one completes.
    fn request_run(&mut self, ctx: &mut Context<Self>, want: RunWant) {
        match &self.run {
            Some(_) => self.next_run.merge(want),
            None => {
                self.run = Some(Run {
                    want,
                    cursor: String::new(),
                    reading: false,
                });
            }
        }
        self.advance_run(ctx);
    }

    /// Moves the deferred-queue run on: reads the next batch of the deferred queue (at most
    /// RUN_EXAMINE records, keeping only the IDs it takes, no more than there is budget
    /// for) and activates those. It pauses while the active queue is full and goes on when
    /// room frees, so that a run over 100,000 deferred messages attempts every due one while
    /// holding one batch at a time.
    fn advance_run(&mut self, ctx: &mut Context<Self>) {
        let budget = self.budget();
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if run.reading || budget == 0 {
            return;
        }
        run.reading = true;
        let want = run.want.clone();
        let cursor = run.cursor.clone();
        let q = self.queue.clone();
        let fut = async move {
            let now = secs_now();
            q.pick_after(
                QueueName::Deferred,
                cursor,
                RUN_EXAMINE,
                budget,
                move |rec| want.takes(rec, now),
            )
            .await
        };
        ctx.spawn(
            fut.instrument(self.span.clone())
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let _g = act.span.clone().entered();
                    let (ids, next) = match res {
                        Ok(r) => r,
                        Err(e) => {
                            // The next periodic run tries again.
                            tracing::warn!("deferred queue scan: {e}");
                            (Vec::new(), None)
                        }
                    };
                    // Room may have gone to new mail meanwhile: what does not fit now is read
                    // again from the last one activated, never skipped.
                    let mut taken = 0;
                    for id in &ids {
                        if act.room() == 0 {
                            break;
                        }
                        act.activate(ctx, id.clone());
                        taken += 1;
                    }
                    let Some(run) = act.run.as_mut() else {
                        return;
                    };
                    run.reading = false;
                    if taken < ids.len() {
                        if taken > 0 {
                            run.cursor = ids[taken - 1].clone();
                        }
                    } else if let Some(c) = next {
                        run.cursor = c;
                    } else {
                        // This run is over; a run asked for meanwhile starts now.
                        crate::queue::trim_heap();
                        let want = std::mem::take(&mut act.next_run);
                        act.run = (!want.is_empty()).then(|| Run {
                            want,
                            cursor: String::new(),
                            reading: false,
                        });
                    }
                    act.advance_run(ctx);
                }),
        );
    }

    fn activate(&mut self, ctx: &mut Context<Self>, id: String) {
        if self.active.contains_key(&id) || !self.activating.insert(id.clone()) {
            return;
        }
        let q = self.queue.clone();
        let idc = id.clone();
        let fut = async move {
            let got = q
                .activate(&idc, &[QueueName::Incoming, QueueName::Deferred])
                .await?;
            Ok::<_, crate::queue::QueueError>(got.map(|(msg, content)| (msg.record, content)))
        };
        ctx.spawn(
            fut.instrument(self.span.clone())
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let _g = act.span.clone().entered();
                    act.activating.remove(&id);
                    // An activation slot is free: go on with what waited for one.
                    if act.rescan && !act.scanning {
                        act.rescan = false;
                        act.scan(ctx);
                    }
                    act.advance_run(ctx);
                    match res {
                        Ok(Some((record, content))) => act.schedule(ctx, id, record, content),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("{id}: cannot activate: {e}"),
                    }
                }),
        );
    }

    /// Splits the pending recipients of a freshly activated message into jobs.
    fn schedule(&mut self, ctx: &mut Context<Self>, id: String, record: Record, content: Vec<u8>) {
        let _g = self.span.clone().entered();
        let env = &record.envelope;
        tracing::info!(
            "{id}: from=<{}>, size={}, nrcpt={} (queue active)",
            sender_text(&env.sender),
            record.meta.size,
            env.recipients.len()
        );
        let now = SystemTime::now();
        // Held until the jobs that can start at once have started (see `pump`).
        let content = Arc::new(content);
        let mut msg = ActiveMsg {
            record,
            content: Arc::downgrade(&content),
            outstanding: 0,
            outcomes: HashMap::new(),
        };
        if msg.record.meta.forced_expire {
            tracing::info!(
                "{id}: from=<{}>, status=force-expired, returned to sender",
                msg.record.envelope.sender
            );
            for (i, r) in msg.record.envelope.recipients.iter().enumerate() {
                if r.status == RcptStatus::Pending {
                    let reason = r
                        .reason
                        .clone()
                        .unwrap_or_else(|| "message is administratively expired".into());
                    msg.outcomes.insert(
                        i,
                        Outcome::bounced(r.dsn_status.as_deref().unwrap_or("4.7.0"), reason),
                    );
                }
            }
            self.active.insert(id.clone(), msg);
            self.finish(ctx, id);
            return;
        }
        let mut groups: HashMap<DestKey, Vec<JobRcpt>> = HashMap::new();
        let mut order: Vec<DestKey> = Vec::new();
        for (i, r) in msg.record.envelope.recipients.iter().enumerate() {
            if r.status != RcptStatus::Pending {
                continue;
            }
            // As Postfix's trivial-rewrite: an address of a virtual mailbox domain goes to
            // virtual_transport whether or not virtual_mailbox_maps lists it; the delivery
            // agent (virtual(8), or Dovecot over LMTP) says "unknown user".
            match self.rewriter.resolve(&r.address) {
                Ok(res)
                    if res.class == crate::trivial_rewrite::Class::Local
                        && res.address.rsplit_once('@').is_some_and(|(l, _)| {
                            l.eq_ignore_ascii_case(&self.settings.double_bounce_local)
                        }) =>
                {
                    // Mail to the local double-bounce address is dropped here, so that
                    // postmaster notices can never loop (and no local agent is needed).
                    tracing::warn!("{id}: undeliverable postmaster notification discarded");
                    msg.outcomes.insert(
                        i,
                        Outcome::sent("2.0.0", "undeliverable postmaster notification discarded"),
                    );
                }
                Ok(res) => {
                    // A content filter (access FILTER, header_checks FILTER) overrides the
                    // route of every recipient; an empty next hop keeps the recipient's domain.
                    let key = match content_filter(&msg.record.envelope.actions.filter, &res) {
                        Some(k) => k,
                        None => DestKey {
                            transport: res.transport,
                            nexthop: res.nexthop,
                        },
                    };
                    if !groups.contains_key(&key) {
                        order.push(key.clone());
                    }
                    groups.entry(key).or_default().push(JobRcpt {
                        index: i,
                        address: res.address,
                        original: r.original.clone(),
                        orcpt: r.orcpt.clone(),
                        notify: r.notify,
                    });
                }
                Err(e) => {
                    msg.outcomes.insert(
                        i,
                        Outcome::deferred("4.3.0", format!("address resolution failed: {e}")),
                    );
                }
            }
        }
        let arrival = to_system(msg.record.meta.arrival_time, msg.record.meta.arrival_usec);
        let mut suspended = Vec::new();
        for key in order {
            let rcpts = groups.remove(&key).unwrap_or_default();
            let (_, rlimit) = self.settings.limits(&key.transport);
            let policy = self.settings.policy(&key.transport).clone();
            for chunk in rcpts.chunks(rlimit) {
                let env = &msg.record.envelope;
                let job = Job {
                    queue_id: id.clone(),
                    transport: key.transport.clone(),
                    nexthop: key.nexthop.clone(),
                    sender: env.sender.clone(),
                    recipients: chunk.to_vec(),
                    content: Arc::default(),
                    ret: env.ret,
                    envid: env.envid.clone(),
                    body_type: env.body_type,
                    smtputf8: env.smtputf8,
                    arrival,
                    activated: now,
                };
                msg.outstanding += 1;
                if let Err((job, dsn, reason)) = self.dests.push(key.clone(), job, &policy) {
                    suspended.push((job, dsn, reason));
                }
            }
        }
        let nothing_to_do = msg.outstanding == 0;
        self.active.insert(id.clone(), msg);
        // Jobs for a dead destination: deferred without an attempt.
        for (job, dsn, reason) in suspended {
            self.defer_suspended(ctx, job, &dsn, &reason);
        }
        if nothing_to_do {
            self.finish(ctx, id);
        } else {
            self.pump(ctx);
        }
        drop(content);
    }

    /// Starts as many jobs as the windows and process limits allow.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let table: HashMap<String, (Addr<DeliveryAgent>, usize)> =
            self.agents.read().map(|t| t.clone()).unwrap_or_default();
        let limits: HashMap<String, usize> =
            table.iter().map(|(k, (_, m))| (k.clone(), *m)).collect();
        while let Some((key, job)) = self.dests.next(&|t| limits.get(t).copied().unwrap_or(0)) {
            let id = job.queue_id.clone();
            let indexes: Vec<usize> = job.recipients.iter().map(|r| r.index).collect();
            match table.get(&key.transport) {
                None => {
                    let out = indexes
                        .iter()
                        .map(|&i| {
                            (
                                i,
                                Outcome::deferred(
                                    "4.3.0",
                                    format!(
                                        "mail transport unavailable: no master.cf service {}",
                                        key.transport
                                    ),
                                ),
                            )
                        })
                        .collect();
                    self.job_done(ctx, Some(key), id, indexes, out);
                }
                Some((agent, _)) => {
                    let cached = self.active.get(&id).and_then(|m| m.content.upgrade());
                    let q = self.queue.clone();
                    let agent = agent.clone();
                    let fut = async move {
                        let mut job = job;
                        job.content = match cached {
                            Some(c) => c,
                            None => match q.content(&job.queue_id).await {
                                Ok(Some(c)) => Arc::new(c),
                                Ok(None) => return Err("queue file has no content".to_string()),
                                Err(e) => return Err(e.to_string()),
                            },
                        };
                        Ok(agent.send(Deliver(job)).await.unwrap_or_default())
                    };
                    ctx.spawn(fut.instrument(self.span.clone()).into_actor(self).map(
                        move |res, act, ctx| {
                            let _g = act.span.clone().entered();
                            let out = match res {
                                Ok(out) => out,
                                Err(e) => {
                                    tracing::warn!("{id}: cannot read queue file: {e}");
                                    indexes
                                        .iter()
                                        .map(|&i| {
                                            (i, Outcome::deferred("4.3.0", "queue file read error"))
                                        })
                                        .collect()
                                }
                            };
                            act.job_done(ctx, Some(key), id, indexes, out);
                        },
                    ));
                }
            }
        }
    }

    /// Defers a job of a dead destination without trying it, with Postfix's log line
    /// `status=deferred (delivery temporarily suspended: …)`.
    fn defer_suspended(&mut self, ctx: &mut Context<Self>, job: Job, dsn: &str, reason: &str) {
        let now = SystemTime::now();
        let o = Outcome::deferred(dsn, reason);
        let mut out = Vec::new();
        for r in &job.recipients {
            crate::delivery::log_outcome(&job, r, "none", now, &o);
            out.push((r.index, o.clone()));
        }
        let indexes = job.recipients.iter().map(|r| r.index).collect();
        self.job_done(ctx, None, job.queue_id.clone(), indexes, out);
    }

    /// A job's outcomes; `key` is the destination whose window it used (None: never started).
    fn job_done(
        &mut self,
        ctx: &mut Context<Self>,
        key: Option<DestKey>,
        id: String,
        indexes: Vec<usize>,
        out: Vec<(usize, Outcome)>,
    ) {
        let _g = self.span.clone().entered();
        if let Some(key) = key {
            let drained = self.dests.done(&key, site_feedback(&out));
            for (job, dsn, reason) in drained {
                self.defer_suspended(ctx, job, &dsn, &reason);
            }
        }
        if let Some(msg) = self.active.get_mut(&id) {
            let got: HashMap<usize, Outcome> = out.into_iter().collect();
            for i in indexes {
                let o = got.get(&i).cloned().unwrap_or_else(|| {
                    Outcome::deferred("4.3.0", "delivery agent reported no result")
                });
                msg.outcomes.insert(i, o);
            }
            msg.outstanding = msg.outstanding.saturating_sub(1);
            let done = msg.outstanding == 0;
            if done && all_sent_quietly(&msg.record, &msg.outcomes) {
                // The common case: every recipient delivered, no notice to send. `finish`
                // removes the message with one flushed change; recording the outcomes
                // first would only add a flush.
                self.finish(ctx, id);
                self.pump(ctx);
                return;
            }
            // Record outcomes as they come, so a restart does not deliver twice.
            let outcomes = msg.outcomes.clone();
            let q = self.queue.clone();
            let idc = id.clone();
            let fut = async move {
                let r = q
                    .update(&idc, QueueName::Active, move |rec| {
                        apply_outcomes(rec, &outcomes)
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!("{idc}: cannot record delivery status: {e}");
                }
                let _ = q.durable().await;
            };
            ctx.spawn(fut.instrument(self.span.clone()).into_actor(self).map(
                move |_, act, ctx| {
                    let _g = act.span.clone().entered();
                    if done {
                        act.finish(ctx, id);
                    }
                },
            ));
        }
        self.pump(ctx);
    }

    /// All jobs of a message are done: notices, then deferred or removed.
    fn finish(&mut self, ctx: &mut Context<Self>, id: String) {
        let _g = self.span.clone().entered();
        let Some(mut msg) = self.active.remove(&id) else {
            return;
        };
        apply_outcomes(&mut msg.record, &msg.outcomes);
        let s = self.settings.clone();
        let env = msg.record.envelope.clone();
        let now = secs_now();
        let age = Duration::from_secs((now - msg.record.meta.arrival_time).max(0) as u64);
        let lifetime = if env.sender.is_empty() {
            s.bounce_queue_lifetime
        } else {
            s.maximal_queue_lifetime
        };
        let mut pending: Vec<usize> = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RcptStatus::Pending)
            .map(|(i, _)| i)
            .collect();
        if !pending.is_empty() && age >= lifetime && !msg.record.meta.forced_expire {
            tracing::info!(
                "{id}: from=<{}>, status=expired, returned to sender",
                env.sender
            );
            for &i in &pending {
                let r = &msg.record.envelope.recipients[i];
                // Postfix keeps the last (temporary) status in the notice of an expired message.
                let o = Outcome::bounced(
                    r.dsn_status.as_deref().unwrap_or("4.4.7"),
                    r.reason.clone().unwrap_or_else(|| "message expired".into()),
                );
                msg.outcomes.insert(i, o);
            }
            apply_outcomes(&mut msg.record, &msg.outcomes);
            pending.clear();
        }
        // Recipients that bounced in this round, and successes that asked for a notice.
        let bounced: Vec<usize> = msg
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Bounced { .. }))
            .map(|(i, _)| *i)
            .collect();
        let success: Vec<usize> = msg
            .outcomes
            .iter()
            .filter(|(i, o)| {
                matches!(o, Outcome::Sent { .. })
                    && msg.record.envelope.recipients[**i].notify.success
            })
            .map(|(i, _)| *i)
            .collect();
        let warn_delay = !pending.is_empty()
            && !s.delay_warning_time.is_zero()
            && age >= s.delay_warning_time
            && !msg.record.meta.delay_warned
            && !env.sender.is_empty()
            && !env.sender.eq_ignore_ascii_case(&s.double_bounce);
        let delay_rcpts: Vec<usize> = if warn_delay {
            pending
                .iter()
                .copied()
                .filter(|&i| {
                    let n = msg.record.envelope.recipients[i].notify;
                    if n.explicit {
                        n.delay
                    } else {
                        true
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let q = self.queue.clone();
        let cached = msg.content.upgrade();
        let record = msg.record.clone();
        let outcomes = msg.outcomes.clone();
        let idc = id.clone();
        let fut = async move {
            // The body, for notices that return it (read before the message goes).
            let content = match cached {
                Some(c) => c,
                None if !bounced.is_empty() || !success.is_empty() || !delay_rcpts.is_empty() => {
                    Arc::new(q.content(&idc).await.ok().flatten().unwrap_or_default())
                }
                None => Arc::default(),
            };
            let notify_failure: Vec<usize> = bounced
                .iter()
                .copied()
                .filter(|&i| {
                    let n = record.envelope.recipients[i].notify;
                    !n.never && (!n.explicit || n.failure)
                })
                .collect();
            let classes = |c: &str| s.notify_classes.iter().any(|x| x == c);
            let from_double_bounce = env.sender.eq_ignore_ascii_case(&s.double_bounce);
            if env.sender.is_empty() && !bounced.is_empty() {
                // A bounce (or other null-sender mail) failed: a double bounce to the
                // postmaster when notify_classes asks for it, else it is dropped.
                if classes("2bounce") || classes("bounce") {
                    send_notice(
                        &q,
                        &s,
                        &idc,
                        &record,
                        &content,
                        Kind::Postmaster,
                        &bounced,
                        &outcomes,
                        "postmaster non-delivery notification",
                        Some((&s.two_bounce_rcpt, &s.double_bounce)),
                    )
                    .await;
                } else {
                    tracing::info!("{idc}: undeliverable bounce notification discarded (notify_classes has no 2bounce)");
                }
            } else if from_double_bounce && !bounced.is_empty() {
                // A postmaster notice failed: never a third notice.
                tracing::warn!("{idc}: undeliverable postmaster notification discarded");
            } else if !env.sender.is_empty() && !notify_failure.is_empty() {
                send_notice(
                    &q,
                    &s,
                    &idc,
                    &record,
                    &content,
                    Kind::Failure,
                    &notify_failure,
                    &outcomes,
                    "sender non-delivery notification",
                    None,
                )
                .await;
                if classes("bounce") {
                    send_notice(
                        &q,
                        &s,
                        &idc,
                        &record,
                        &content,
                        Kind::Postmaster,
                        &notify_failure,
                        &outcomes,
                        "postmaster non-delivery notification",
                        Some((&s.bounce_rcpt, &s.double_bounce)),
                    )
                    .await;
                }
            }
            if !env.sender.is_empty() && !from_double_bounce && !success.is_empty() {
                send_notice(
                    &q,
                    &s,
                    &idc,
                    &record,
                    &content,
                    Kind::Success,
                    &success,
                    &outcomes,
                    "sender delivery status notification",
                    None,
                )
                .await;
            }
            if !delay_rcpts.is_empty() {
                send_notice(
                    &q,
                    &s,
                    &idc,
                    &record,
                    &content,
                    Kind::Delay,
                    &delay_rcpts,
                    &outcomes,
                    "sender delay notification",
                    None,
                )
                .await;
            }
            if pending.is_empty() {
                match q.delete(&idc, &[QueueName::Active]).await {
                    Ok(Some(_)) => tracing::info!("{idc}: removed"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("{idc}: cannot remove: {e}"),
                }
            } else {
                let attempts = record.meta.attempts + 1;
                let shift = attempts.saturating_sub(1).min(20);
                let backoff = (s.minimal_backoff.as_secs().saturating_mul(1u64 << shift)).clamp(
                    s.minimal_backoff.as_secs(),
                    s.maximal_backoff.as_secs().max(s.minimal_backoff.as_secs()),
                );
                let last = pending
                    .iter()
                    .find_map(|&i| record.envelope.recipients[i].reason.clone());
                let warned = record.meta.delay_warned || !delay_rcpts.is_empty();
                let r = q
                    .transition(
                        &idc,
                        &[QueueName::Active],
                        QueueName::Deferred,
                        move |rec| {
                            apply_outcomes(rec, &outcomes);
                            rec.meta.attempts = attempts;
                            rec.meta.next_attempt = secs_now() + backoff as i64;
                            rec.meta.last_reason = last.clone();
                            rec.meta.delay_warned = warned;
                        },
                    )
                    .await;
                if let Err(e) = r {
                    tracing::warn!("{idc}: cannot defer: {e}");
                }
            }
            let _ = q.durable().await;
        };
        ctx.spawn(
            fut.instrument(self.span.clone())
                .into_actor(self)
                .map(|_, act, ctx| {
                    let _g = act.span.clone().entered();
                    // Room freed: pick up whatever waits in incoming, then the deferred run.
                    act.scan(ctx);
                    act.advance_run(ctx);
                }),
        );
    }

    /// Lets the spool reclaim the segments of delivered bodies, on a blocking thread.
    fn compact(&mut self, ctx: &mut Context<Self>) {
        if self.compacting {
            return;
        }
        self.compacting = true;
        let queue = self.queue.clone();
        ctx.spawn(
            async move { queue.compact().await }
                .into_actor(self)
                .map(|res, act, _| {
                    act.compacting = false;
                    match res {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!("queue compaction moved {n} bodies"),
                        Err(e) => tracing::warn!("queue compaction: {e}"),
                    }
                }),
        );
    }
}

/// What a job says about its site: reached when any recipient got a final answer or a
/// recipient-level deferral (a 4xx to RCPT TO or after DATA means the site works); failed
/// when every recipient was deferred for a site reason (connection, greeting, MAIL FROM,
/// transport unavailable…), which is what drives Postfix's negative feedback.
fn site_feedback(out: &[(usize, Outcome)]) -> Feedback2 {
    let mut first: Option<(&str, &str)> = None;
    for (_, o) in out {
        match o {
            Outcome::Deferred { dsn, reason } => {
                if reason.contains("in reply to RCPT TO")
                    || reason.contains("in reply to end of DATA")
                {
                    return Feedback2::Reached;
                }
                first.get_or_insert((dsn, reason));
            }
            _ => return Feedback2::Reached,
        }
    }
    match first {
        Some((dsn, reason)) => Feedback2::Failed {
            dsn: dsn.to_string(),
            reason: reason.to_string(),
        },
        // A job without recipients says nothing about the site.
        None => Feedback2::Reached,
    }
}

/// Writes this round's outcomes into the record's recipients.
/// True when, with `outcomes`, no recipient of `rec` is left pending and the round asks for
/// no notice: every recipient of this round was delivered without NOTIFY=SUCCESS.
fn all_sent_quietly(rec: &Record, outcomes: &HashMap<usize, Outcome>) -> bool {
    rec.envelope
        .recipients
        .iter()
        .enumerate()
        .all(|(i, r)| match outcomes.get(&i) {
            Some(Outcome::Sent { .. }) => !r.notify.success,
            Some(_) => false,
            None => r.status != RcptStatus::Pending,
        })
}

fn apply_outcomes(rec: &mut Record, outcomes: &HashMap<usize, Outcome>) {
    for (&i, o) in outcomes {
        let Some(r) = rec.envelope.recipients.get_mut(i) else {
            continue;
        };
        match o {
            Outcome::Sent { dsn, .. } => {
                r.status = RcptStatus::Delivered;
                r.dsn_status = Some(dsn.clone());
                r.reason = None;
            }
            Outcome::Deferred { dsn, reason } => {
                r.status = RcptStatus::Pending;
                r.dsn_status = Some(dsn.clone());
                r.reason = Some(reason.clone());
            }
            Outcome::Bounced { dsn, reason, .. } => {
                r.status = RcptStatus::Bounced;
                r.dsn_status = Some(dsn.clone());
                r.reason = Some(reason.clone());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_notice(
    q: &Queue,
    s: &Settings,
    id: &str,
    record: &Record,
    content: &[u8],
    kind: Kind,
    idx: &[usize],
    outcomes: &HashMap<usize, Outcome>,
    what: &str,
    // A postmaster notice: (to, envelope sender); None: to the original sender from <>.
    postmaster: Option<(&str, &str)>,
) {
    let notice_id = match q.new_id().await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("{id}: cannot create {what}: {e}");
            return;
        }
    };
    let rcpts: Vec<NoticeRcpt> = idx
        .iter()
        .filter_map(|&i| Some((record.envelope.recipients.get(i)?, outcomes.get(&i))))
        // The addresses that failed: alias members local(8) expanded the recipient to, one
        // entry each, or the recipient.
        .flat_map(|(r, o)| {
            let failed = match o {
                Some(o) if !o.failed().is_empty() => o.failed().to_vec(),
                Some(o) => vec![Failed {
                    address: r.address.clone(),
                    dsn: o.dsn().to_string(),
                    reason: o.text().to_string(),
                }],
                None => vec![Failed {
                    address: r.address.clone(),
                    dsn: r.dsn_status.clone().unwrap_or_else(|| "4.0.0".into()),
                    reason: r.reason.clone().unwrap_or_default(),
                }],
            };
            failed.into_iter().map(move |f| (r, f))
        })
        .map(|(r, f)| {
            let Failed {
                address,
                dsn: status,
                reason,
            } = f;
            let diagnostic = Some(match reason.split_once(" said: ") {
                Some((_, said)) => format!(
                    "smtp; {}",
                    said.split(" (in reply to").next().unwrap_or(said)
                ),
                None => format!("X-Postfix; {reason}"),
            });
            let remote_mta = reason
                .strip_prefix("host ")
                .and_then(|r| r.split_once('['))
                .map(|(h, _)| format!("dns; {h}"));
            // Its original is reported when it differs, as Postfix does.
            let original = if r.original.is_empty() {
                &r.address
            } else {
                &r.original
            };
            let original = (!original.eq_ignore_ascii_case(&address)).then(|| original.clone());
            NoticeRcpt {
                address,
                original,
                orcpt: r.orcpt.clone(),
                status,
                reason,
                remote_mta,
                diagnostic,
            }
        })
        .collect();
    let now = Local::now();
    let arrival = Local
        .timestamp_opt(record.meta.arrival_time, 0)
        .single()
        .unwrap_or(now);
    let body = notice::build(&Notice {
        kind,
        myhostname: &s.myhostname,
        mail_name: &s.mail_name,
        queue_id: id,
        notice_id: &notice_id,
        sender: &record.envelope.sender,
        to: postmaster.map(|(to, _)| to),
        arrival,
        now,
        recipients: &rcpts,
        original: content,
        ret: if postmaster.is_some() {
            Some(crate::envelope::Ret::Hdrs)
        } else {
            record.envelope.ret
        },
        envid: record.envelope.envid.as_deref(),
        size_limit: s.bounce_size_limit,
    });
    let (to, from) = match postmaster {
        Some((to, from)) => (to.to_string(), from.to_string()),
        None => (record.envelope.sender.clone(), String::new()),
    };
    let mut rcpt = Recipient::new(to);
    rcpt.notify.never = true;
    let rec = Record {
        envelope: Envelope {
            sender: from,
            recipients: vec![rcpt],
            ..Default::default()
        },
        origin: Origin {
            protocol: "local".into(),
            service: "bounce".into(),
            ..Default::default()
        },
        meta: Meta::default(),
    };
    let mid = format!(
        "<{}.{}@{}>",
        now.format("%Y%m%d%H%M%S"),
        notice_id,
        s.myhostname
    );
    match q.commit(&notice_id, QueueName::Incoming, rec, body).await {
        Ok(()) => {
            let cleanup_span = crate::log::service_span!(crate::log::tag("postfix", "cleanup"));
            cleanup_span.in_scope(|| tracing::info!("{notice_id}: message-id={mid}"));
            let bounce_span = crate::log::service_span!(crate::log::tag("postfix", "bounce"));
            bounce_span.in_scope(|| tracing::info!("{id}: {what}: {notice_id}"));
        }
        Err(e) => tracing::warn!("{id}: cannot queue {what}: {e}"),
    }
}

impl Actor for Qmgr {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.scan(ctx);
        self.request_run(ctx, RunWant::due());
        // Incoming is watched through events; this scan only catches what an event missed.
        ctx.run_interval(Duration::from_secs(2), |act, ctx| act.scan(ctx));
        let every = self.settings.queue_run_delay.max(Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| {
            act.request_run(ctx, RunWant::due());
            act.compact(ctx);
        });
    }
}

impl Handler<Event> for Qmgr {
    type Result = ();

    fn handle(&mut self, Event(ev): Event, ctx: &mut Self::Context) {
        match ev {
            QueueEvent::NewIncoming(id) => {
                if self.budget() > 0 {
                    self.activate(ctx, id);
                } else {
                    // Found by the scan that follows the next free slot.
                    self.rescan = true;
                }
            }
            QueueEvent::Flush => self.request_run(ctx, RunWant::all()),
            QueueEvent::FlushSite(site) => self.request_run(ctx, RunWant::site(site)),
            QueueEvent::DeliverOne(id) => self.activate(ctx, id),
            QueueEvent::Requeued => self.request_run(ctx, RunWant::due()),
            QueueEvent::NewMaildrop(_) => {}
        }
    }
}

impl Handler<Reload> for Qmgr {
    type Result = ();

    fn handle(&mut self, msg: Reload, ctx: &mut Self::Context) {
        self.settings = msg.settings;
        self.rewriter = msg.rewriter;
        self.pump(ctx);
    }
}

/// `transport:nexthop` of a content filter, as the destination of one resolved recipient.
fn content_filter(
    filter: &Option<String>,
    res: &crate::trivial_rewrite::Resolved,
) -> Option<DestKey> {
    let (transport, nexthop) = filter.as_deref()?.split_once(':')?;
    if transport.is_empty() {
        return None;
    }
    let nexthop = if nexthop.is_empty() {
        res.address
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_else(|| res.nexthop.clone())
    } else {
        nexthop.to_string()
    };
    Some(DestKey {
        transport: transport.to_string(),
        nexthop,
    })
}
