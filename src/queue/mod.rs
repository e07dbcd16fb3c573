//! NAME
//!   queue - the persistent mail queue (one sled database)
//!
//! SUMMARY
//!   `Queue::open($queue_directory)`; `commit`/`enqueue` a new message (durable on return);
//!   `transition` it between Postfix's queues; `list`, `get`, `content`; operator actions
//!   `hold`, `release`, `requeue`, `expire`, `delete`; `reinject` (pickup: maildrop →
//!   incoming under a new ID, atomically).
//!
//! DESCRIPTION
//!   Every message is one record (envelope, origin, metadata; bincode 2) plus its content.
//!   Every change is appended to the queue journal ([`journal`]: checksummed segment files
//!   beside the database) and then applied to sled, which serves reads and listings; the
//!   record's queue (state) is one of Postfix's queue names. Every state change goes through
//!   [`Queue::transition`], each one journal entry (see [`spool::SledSpool`]).
//!
//!   Durability: `commit` returns only after the journal's `fdatasync` that started after the
//!   write completed; `transition` and `delete` likewise. Concurrent committers share syncs
//!   (group commit): one of them at a time runs the sync on a blocking thread and wakes every
//!   waiter whose write preceded it.
//!
//!   Recovery at open: sled is made to agree with the journal (what it lost comes back, what
//!   cannot be read goes to `corrupt` with a warning); `active` goes back to `incoming` (the
//!   queue manager had it in memory only), `maildrop` stays for pickup, and a record that
//!   cannot be decoded moves to `corrupt` with a warning; nothing panics.
//!
//! QUEUES
//!   maildrop (local submissions, and `postsuper -r` as in Postfix), incoming, active,
//!   deferred, hold, corrupt.
//!
//! SECURITY
//!   Only the daemon opens the database while it runs (sled's lock); tools go through
//!   `crate::control`.
//!
//! CONFIGURATION PARAMETERS
//!   queue_directory (/var/spool/postfix): the database is `$queue_directory/db`, the
//!   journal `$queue_directory/db.bodies/`.
//!   enable_long_queue_ids (no): long, time-ordered queue IDs.
//!   relais_body_segment_size (33554432): a journal segment file takes no more after this.

pub mod id;
pub mod journal;
pub mod spool;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::envelope::{Envelope, Origin, RcptStatus};
pub use spool::{Change, MemSpool, SledSpool, Spool, SpoolError};

/// Postfix's queue names, used as the states of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueName {
    Maildrop,
    Incoming,
    Active,
    Deferred,
    Hold,
    Corrupt,
}

impl QueueName {
    pub const ALL: [QueueName; 6] = [
        QueueName::Maildrop,
        QueueName::Incoming,
        QueueName::Active,
        QueueName::Deferred,
        QueueName::Hold,
        QueueName::Corrupt,
    ];

    /// The order in which Postfix's showq lists the queues, then corrupt: Postfix's showq
    /// does not read its corrupt directory, but an operator must see what the queue could
    /// not read (marked `?`).
    pub const SHOWQ_ORDER: [QueueName; 6] = [
        QueueName::Maildrop,
        QueueName::Incoming,
        QueueName::Active,
        QueueName::Deferred,
        QueueName::Hold,
        QueueName::Corrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Maildrop => "maildrop",
            QueueName::Incoming => "incoming",
            QueueName::Active => "active",
            QueueName::Deferred => "deferred",
            QueueName::Hold => "hold",
            QueueName::Corrupt => "corrupt",
        }
    }

    pub fn parse(s: &str) -> Option<QueueName> {
        QueueName::ALL.into_iter().find(|q| q.as_str() == s)
    }

    /// The state byte stored in front of each record.
    pub fn byte(self) -> u8 {
        self as u8
    }

    pub fn from_byte(b: u8) -> Option<QueueName> {
        QueueName::ALL.get(usize::from(b)).copied()
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bookkeeping that is not part of the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Arrival time, seconds since the epoch (`message_arrival_time`).
    pub arrival_time: i64,
    /// Arrival time's microseconds (Postfix keeps them; kept for postcat).
    pub arrival_usec: u32,
    /// Content size in bytes (`message_size` in postqueue).
    pub size: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, seconds since the epoch (0: now).
    pub next_attempt: i64,
    /// Reason of the last deferral, for the whole message.
    pub last_reason: Option<String>,
    /// Set by `postsuper -f`: the next delivery attempt returns the message as expired.
    pub forced_expire: bool,
    /// A delay warning (delay_warning_time) has been sent; it is sent once.
    pub delay_warned: bool,
}

/// One queued message, without its content.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Record {
    pub envelope: Envelope,
    pub origin: Origin,
    pub meta: Meta,
}

/// A record with its queue ID and queue, as listing and `get` return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub queue: QueueName,
    pub record: Record,
}

/// Something the queue manager may want to act on. Sent best-effort: the queue is the
/// truth, and a queue manager that misses an event finds the message on its next scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// A new message in maildrop (for pickup).
    NewMaildrop(String),
    /// A new message in incoming (for qmgr).
    NewIncoming(String),
    /// `postqueue -f`: attempt every deferred message now.
    Flush,
    /// `postqueue -s site`.
    FlushSite(String),
    /// `postqueue -i id`.
    DeliverOne(String),
    /// Messages moved by `postsuper -r`/`-H`/`-f`.
    Requeued,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("encode queue record: {0}")]
    Encode(String),
    #[error("queue file {0}: cannot decode record: {1}")]
    Corrupt(String, String),
    #[error("invalid mail queue id: {0}")]
    InvalidId(String),
    #[error("queue id {0} already exists")]
    Exists(String),
    #[error("open queue {0}: {1}")]
    Open(String, String),
    #[error("blocking task failed: {0}")]
    Join(String),
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a record (bincode 2 through serde).
pub fn encode(rec: &Record) -> Result<Vec<u8>, QueueError> {
    bincode::serde::encode_to_vec(rec, bincode_config())
        .map_err(|e| QueueError::Encode(e.to_string()))
}

/// Decodes a record; trailing bytes count as corruption.
pub fn decode(id: &str, bytes: &[u8]) -> Result<Record, QueueError> {
    match bincode::serde::decode_from_slice::<Record, _>(bytes, bincode_config()) {
        Ok((rec, n)) if n == bytes.len() => Ok(rec),
        Ok(_) => Err(QueueError::Corrupt(id.into(), "trailing bytes".into())),
        Err(e) => Err(QueueError::Corrupt(id.into(), e.to_string())),
    }
}

/// Seconds and microseconds since the epoch.
pub fn now() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_micros())
}

/// Group-commit bookkeeping: `written` counts completed writes, `flushed` (a watch channel
/// so waiters cannot miss a wake-up) the highest write number known durable.
struct Commit {
    state: Mutex<CommitState>,
    flushed: watch::Sender<u64>,
}

#[derive(Default)]
struct CommitState {
    written: u64,
    flushing: bool,
}

/// Opens the spool again (the production spool: after sled failed on a full disk).
type Reopen = Box<dyn Fn() -> Result<Arc<dyn Spool>, QueueError> + Send + Sync>;

struct Inner {
    /// Swapped whole by [`Queue::reopen`]; each operation clones the Arc it works on.
    spool: std::sync::RwLock<Arc<dyn Spool>>,
    reopen: Option<Reopen>,
    /// A reopen is scheduled or running.
    reopening: std::sync::atomic::AtomicBool,
    long_ids: bool,
    commit: Commit,
    events: Mutex<Option<mpsc::Sender<QueueEvent>>>,
}

/// The queue. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    /// Wraps a spool and runs recovery (blocking: call at start-up, or in spawn_blocking).
    pub fn with_spool(spool: Arc<dyn Spool>, long_ids: bool) -> Result<Queue, QueueError> {
        Self::with_spool_reopen(spool, long_ids, None)
    }

    fn with_spool_reopen(
        spool: Arc<dyn Spool>,
        long_ids: bool,
        reopen: Option<Reopen>,
    ) -> Result<Queue, QueueError> {
        let (tx, _) = watch::channel(0);
        let q = Queue {
            inner: Arc::new(Inner {
                spool: std::sync::RwLock::new(spool),
                reopen,
                reopening: std::sync::atomic::AtomicBool::new(false),
                long_ids,
                commit: Commit {
                    state: Mutex::new(CommitState::default()),
                    flushed: tx,
                },
                events: Mutex::new(None),
            }),
        };
        q.recover()?;
        Ok(q)
    }

    /// An in-memory queue for tests.
    pub fn memory() -> Queue {
        // Recovery on an empty memory spool cannot fail.
        Self::with_spool(Arc::new(MemSpool::new()), false)
            .unwrap_or_else(|_| unreachable!("empty memory spool"))
    }

    /// Opens `$queue_directory/db` (blocking). Fails while another process (the daemon)
    /// holds the database.
    pub fn open(queue_directory: &Path, long_ids: bool) -> Result<Queue, QueueError> {
        Self::open_with(queue_directory, long_ids, journal::SEGMENT_BYTES)
    }

    /// [`open`](Self::open), with body segment files that close at `segment_bytes`
    /// (relais_body_segment_size).
    pub fn open_with(
        queue_directory: &Path,
        long_ids: bool,
        segment_bytes: u64,
    ) -> Result<Queue, QueueError> {
        let path = queue_directory.join("db");
        let open = move || -> Result<Arc<dyn Spool>, QueueError> {
            let spool = SledSpool::open_with(&path, segment_bytes)
                .map_err(|e| QueueError::Open(path.display().to_string(), e.to_string()))?;
            Ok(Arc::new(spool))
        };
        let spool = open()?;
        Self::with_spool_reopen(spool, long_ids, Some(Box::new(open)))
    }

    /// Opens the queue named by a configuration (`queue_directory`, `enable_long_queue_ids`).
    pub fn open_config(cfg: &crate::config::Config) -> Result<Queue, QueueError> {
        Self::open_with(
            Path::new(&cfg.get("queue_directory")),
            cfg.get_bool("enable_long_queue_ids"),
            cfg.get_size("relais_body_segment_size"),
        )
    }

    /// Where events go (qmgr's or pickup's inbox). Without one, events are dropped.
    pub fn set_events(&self, tx: mpsc::Sender<QueueEvent>) {
        if let Ok(mut g) = self.inner.events.lock() {
            *g = Some(tx);
        }
    }

    /// Tells the queue manager something happened (best effort, never blocks).
    pub fn notify(&self, ev: QueueEvent) {
        if let Ok(g) = self.inner.events.lock() {
            if let Some(tx) = g.as_ref() {
                let _ = tx.try_send(ev);
            }
        }
    }

    pub fn spool(&self) -> Arc<dyn Spool> {
        self.inner
            .spool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// sled keeps failing once one of its writes failed (a full disk): every later operation
    /// returns that error. The queue then opens its spool again — the journal holds every
    /// change — once the operations in flight have let go of the old one, retrying each
    /// second until it opens, so that mail is accepted again as soon as there is space,
    /// without a restart.
    fn schedule_reopen(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.reopen.is_none() || self.inner.reopening.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.reopening.store(false, Ordering::Release);
            return;
        };
        let q = self.clone();
        rt.spawn(async move {
            // Bounded by the process's life: one attempt a second while sled is broken.
            loop {
                let q2 = q.clone();
                let res = tokio::task::spawn_blocking(move || q2.reopen_blocking()).await;
                match res {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => tracing::warn!("queue: cannot reopen the queue database: {e}"),
                    Err(e) => tracing::warn!("queue: cannot reopen the queue database: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            q.inner.reopening.store(false, Ordering::Release);
        });
    }

    fn reopen_blocking(&self) -> Result<(), QueueError> {
        let Some(open) = &self.inner.reopen else {
            return Ok(());
        };
        let mut slot = self.inner.spool.write().unwrap_or_else(|p| p.into_inner());
        // Wait (bounded) for the operations in flight to drop their clones: sled's file lock
        // goes only with the last one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&slot) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let old = std::mem::replace(&mut *slot, Arc::new(MemSpool::failed()));
        drop(old);
        // sled's threads release its lock a moment after the last handle goes.
        let mut last = None;
        for _ in 0..50 {
            match open() {
                Ok(s) => {
                    *slot = s;
                    drop(slot);
                    tracing::info!("queue: the queue database was reopened");
                    self.recover()?;
                    self.notify(QueueEvent::Requeued);
                    return Ok(());
                }
                Err(e) => {
                    let locked = e.to_string().contains("lock");
                    last = Some(e);
                    if !locked {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        Err(last.unwrap_or_else(|| QueueError::Join("reopen".into())))
    }

    /// Recovery at open: active → incoming, undecodable → corrupt (with a warning). One pass
    /// over the records in batches, rewriting only those that need it: a restart with a long
    /// queue reads each record once and holds one batch of IDs.
    fn recover(&self) -> Result<(), QueueError> {
        let spool = self.spool();
        let mut changed = false;
        let mut cursor = String::new();
        // Bounded: each round moves the cursor forward over a finite key space.
        loop {
            let mut todo: Vec<(String, u8)> = Vec::new();
            let last = spool.scan_after(&cursor, RECOVER_BATCH, &mut |id, state, bytes| {
                let keep = match QueueName::from_byte(state) {
                    Some(QueueName::Corrupt) => true,
                    Some(QueueName::Active) => false,
                    Some(_) => decode(id, bytes).is_ok(),
                    None => false,
                };
                if !keep {
                    todo.push((id.to_string(), state));
                }
            })?;
            for (id, state) in todo {
                let mut moved = None;
                spool.update(&id, &mut |s: u8, bytes: &[u8]| {
                    let q = QueueName::from_byte(s);
                    match (q, decode(&id, bytes)) {
                        (Some(QueueName::Corrupt), _) => Change::Keep,
                        (Some(q), Ok(_)) if q != QueueName::Active => Change::Keep,
                        (Some(_), Ok(_)) => {
                            moved = Some(Ok(()));
                            Change::Put(QueueName::Incoming.byte(), bytes.to_vec())
                        }
                        (_, res) => {
                            moved = Some(Err(res
                                .err()
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| format!("unknown queue state {s}"))));
                            Change::Put(QueueName::Corrupt.byte(), bytes.to_vec())
                        }
                    }
                })?;
                changed |= moved.is_some();
                if let Some(Err(why)) = moved {
                    tracing::warn!("{id}: moved to corrupt queue: {why} (state {state})");
                }
            }
            match last {
                Some(l) => cursor = l,
                None => break,
            }
        }
        if changed {
            spool.flush()?;
        }
        spool.release_thread_garbage();
        trim_heap();
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Spool) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let spool = self.spool();
        let res = tokio::task::spawn_blocking(move || {
            let r = f(spool.as_ref());
            spool.release_thread_garbage();
            r
        })
        .await
        .map_err(|e| QueueError::Join(e.to_string()))?;
        if let Err(QueueError::Spool(SpoolError::Sled(sled::Error::Io(_)))) = &res {
            self.schedule_reopen();
        }
        res
    }

    /// A fresh queue ID without leaving the caller's thread: sled's ID generator is an
    /// in-memory counter that only occasionally persists a new range, so this is cheap
    /// enough for smtpd's first RCPT.
    pub fn new_id_now(&self) -> Result<String, QueueError> {
        Ok(id::make(self.spool().generate_id()?, self.inner.long_ids))
    }

    /// A fresh queue ID (unique across restarts; see [`id`]).
    pub async fn new_id(&self) -> Result<String, QueueError> {
        let long = self.inner.long_ids;
        self.blocking(move |s| Ok(id::make(s.generate_id()?, long)))
            .await
    }

    /// Stores a new message under `id` in `queue` (normally maildrop or incoming) and
    /// returns once it is on disk. `meta.size` is set from the content; an arrival time of
    /// 0 becomes now.
    pub async fn commit(
        &self,
        id: &str,
        queue: QueueName,
        record: Record,
        content: Vec<u8>,
    ) -> Result<(), QueueError> {
        let q = self.clone();
        let idc = id.to_string();
        self.blocking(move |_| q.store_blocking(&idc, queue, record, &content))
            .await?;
        self.committed(id, queue).await
    }

    /// The write half of [`commit`](Self::commit), for a caller already on a blocking thread
    /// (cleanup does its header work there): stores the message, not yet durable. Follow it
    /// with [`committed`](Self::committed) before acknowledging the message to anyone.
    pub fn store_blocking(
        &self,
        id: &str,
        queue: QueueName,
        mut record: Record,
        content: &[u8],
    ) -> Result<(), QueueError> {
        if !id::valid(id) {
            return Err(QueueError::InvalidId(id.into()));
        }
        record.meta.size = content.len() as u64;
        if record.meta.arrival_time == 0 {
            let (s, us) = now();
            record.meta.arrival_time = s;
            record.meta.arrival_usec = us;
        }
        let bytes = encode(&record)?;
        let spool = self.spool();
        let res = spool.insert(id, queue.byte(), &bytes, content);
        // The caller's blocking thread may go idle now (see Spool::release_thread_garbage).
        spool.release_thread_garbage();
        if let Err(SpoolError::Sled(sled::Error::Io(_))) = &res {
            self.schedule_reopen();
        }
        if !res? {
            return Err(QueueError::Exists(id.into()));
        }
        Ok(())
    }

    /// The durable half of [`commit`](Self::commit) after [`store_blocking`](Self::store_blocking):
    /// returns once the message is on disk (group commit), then tells qmgr or pickup.
    pub async fn committed(&self, id: &str, queue: QueueName) -> Result<(), QueueError> {
        self.durable().await?;
        self.notify(match queue {
            QueueName::Maildrop => QueueEvent::NewMaildrop(id.into()),
            _ => QueueEvent::NewIncoming(id.into()),
        });
        Ok(())
    }

    /// New ID + [`commit`](Self::commit); the ID is returned once the message is on disk.
    pub async fn enqueue(
        &self,
        queue: QueueName,
        record: Record,
        content: Vec<u8>,
    ) -> Result<String, QueueError> {
        // A fresh counter value cannot collide, but retry a few times in case the 24-bit
        // short-form counter wrapped onto a live ID in the same microsecond.
        for _ in 0..8 {
            let id = self.new_id().await?;
            match self
                .commit(&id, queue, record.clone(), content.clone())
                .await
            {
                Err(QueueError::Exists(_)) => continue,
                other => return other.map(|()| id),
            }
        }
        Err(QueueError::Exists("(eight collisions)".into()))
    }

    /// Returns once every write completed before this call is on disk (group commit).
    pub async fn durable(&self) -> Result<(), QueueError> {
        let commit = &self.inner.commit;
        let mut rx = commit.flushed.subscribe();
        let target = {
            let mut st = commit
                .state
                .lock()
                .map_err(|_| QueueError::Join("commit lock poisoned".into()))?;
            st.written += 1;
            st.written
        };
        // Bounded: each round either flushes (making progress) or waits for the current
        // flush, which covers or precedes our write.
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            let lead = {
                let mut st = commit
                    .state
                    .lock()
                    .map_err(|_| QueueError::Join("commit lock poisoned".into()))?;
                if st.flushing {
                    None
                } else {
                    st.flushing = true;
                    Some(st.written)
                }
            };
            match lead {
                Some(upto) => {
                    let res = self.blocking(|s| Ok(s.flush()?)).await;
                    if let Ok(mut st) = commit.state.lock() {
                        st.flushing = false;
                    }
                    match res {
                        Ok(()) => {
                            commit.flushed.send_modify(|v| *v = (*v).max(upto));
                        }
                        Err(e) => {
                            // Wake the others so one of them retries the flush.
                            commit.flushed.send_modify(|_| {});
                            return Err(e);
                        }
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        return Err(QueueError::Join("commit channel closed".into()));
                    }
                }
            }
        }
    }

    /// One message without content; a corrupt record is an error, a missing one None.
    pub async fn get(&self, id: &str) -> Result<Option<Message>, QueueError> {
        let idc = id.to_string();
        self.blocking(move |s| get_sync(s, &idc)).await
    }

    /// The content of one message.
    pub async fn content(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let idc = id.to_string();
        self.blocking(move |s| Ok(s.content(&idc)?)).await
    }

    /// Every decodable message in `queue`, in ID order (corrupt ones are skipped with a
    /// warning). Holds the whole queue in memory: for tests and small queues; the daemon
    /// pages through long ones ([`listing`](Self::listing), [`pick_after`](Self::pick_after)).
    pub async fn list(&self, queue: QueueName) -> Result<Vec<Message>, QueueError> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            for id in s.ids(queue.byte(), usize::MAX)? {
                match get_sync(s, &id) {
                    Ok(Some(m)) if m.queue == queue => out.push(m),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every decodable message of `queues`, grouped in the order of `queues` and in ID order
    /// within each: [`listing`](Self::listing) and [`listed`](Self::listed) in one go (the
    /// whole list in memory, for tests).
    pub async fn list_many(&self, queues: &[QueueName]) -> Result<Vec<Message>, QueueError> {
        let mut listing = self.listing(queues).await?;
        let mut out = Vec::new();
        // Bounded by the snapshot's length.
        while !listing.is_done() {
            out.extend(self.listed(listing.next(LIST_BATCH)).await?);
        }
        Ok(out)
    }

    /// The order of a showq listing (or of an operator's ALL), fixed by one pass over the
    /// records: each message once, in the queue it was in when the pass met it, grouped in
    /// the order of `queues`, in ID order within each. One pass over the records (not one per
    /// queue's index) because messages move while we read: queue by queue, a message going
    /// from active to deferred would be listed twice, and one going from deferred to active
    /// not at all. Only IDs are kept (about 12 bytes a message), so that 100,000 queued
    /// messages cost a megabyte here; [`listed`](Self::listed) reads the records a batch at
    /// a time.
    pub async fn listing(&self, queues: &[QueueName]) -> Result<Listing, QueueError> {
        let mut listing = Listing {
            groups: queues.iter().map(|q| (*q, String::new())).collect(),
            ..Default::default()
        };
        let mut cursor = String::new();
        // Bounded: the cursor moves forward over a finite key space. One pass in several
        // blocking calls, each ending with the spool's garbage released (see
        // Spool::release_thread_garbage): one call over 100,000 records left 30 MB behind.
        loop {
            let (l, last) = self
                .blocking(move |s| {
                    let mut l = listing;
                    let last = s.scan_after(&cursor, RECOVER_BATCH, &mut |id, state, _| {
                        let Some(q) = QueueName::from_byte(state) else {
                            return;
                        };
                        if let Some((_, ids)) = l.groups.iter_mut().find(|(g, _)| *g == q) {
                            ids.push_str(id);
                            ids.push('\n');
                            l.len += 1;
                        }
                    })?;
                    Ok((l, last))
                })
                .await?;
            listing = l;
            match last {
                Some(c) => cursor = c,
                None => break,
            }
        }
        for (_, ids) in &mut listing.groups {
            ids.shrink_to_fit();
        }
        Ok(listing)
    }

    /// The messages of one batch of a [`Listing`], read now, each shown in the queue the
    /// listing found it in (so that the groups stay whole); those removed since, or corrupt
    /// (with a warning), are left out.
    pub async fn listed(
        &self,
        batch: Vec<(String, QueueName)>,
    ) -> Result<Vec<Message>, QueueError> {
        self.blocking(move |s| {
            let mut out = Vec::with_capacity(batch.len());
            for (id, queue) in batch {
                match get_sync(s, &id) {
                    Ok(Some(mut m)) => {
                        m.queue = queue;
                        out.push(m);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// One step of a pass over a long queue: looks at no more than `examine` messages of
    /// `queue` after the ID `after` ("" for the first), and returns the IDs of at most `want`
    /// of them that `pick` accepts, with where to go on from (None: the end of the queue was
    /// reached). Only one batch is decoded at a time, and nothing is kept but the IDs
    /// picked: the queue manager's deferred-queue run over 100,000 messages holds no more
    /// than it has room to activate.
    pub async fn pick_after(
        &self,
        queue: QueueName,
        after: String,
        examine: usize,
        want: usize,
        pick: impl Fn(&Record) -> bool + Send + 'static,
    ) -> Result<(Vec<String>, Option<String>), QueueError> {
        self.blocking(move |s| {
            let ids = s.ids_after(queue.byte(), &after, examine.max(1))?;
            let end = ids.len() < examine.max(1);
            let mut picked = Vec::new();
            let mut last = None;
            for id in ids {
                if picked.len() >= want {
                    return Ok((picked, Some(last.unwrap_or(after))));
                }
                match get_sync(s, &id) {
                    Ok(Some(m)) if m.queue == queue && pick(&m.record) => picked.push(id.clone()),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
                last = Some(id);
            }
            Ok((picked, if end { None } else { last }))
        })
        .await
    }

    /// The one place where a message changes queue or record: if it is in one of `from`,
    /// `edit` may change the record, and it moves to `to` — one atomic change. Returns the
    /// message as it was before, or None if it is absent, in another queue, or corrupt.
    pub async fn transition(
        &self,
        id: &str,
        from: &[QueueName],
        to: QueueName,
        edit: impl Fn(&mut Record) + Send + 'static,
    ) -> Result<Option<Message>, QueueError> {
        let idc = id.to_string();
        let from = from.to_vec();
        let before = self
            .blocking(move |s| transition_blocking(s, &idc, &from, to, edit))
            .await?;
        // A change the caller acts on (an operator's answer, a delivery not to repeat)
        // must survive a crash: flush it, sharing the flush with concurrent callers.
        if before.is_some() {
            self.durable().await?;
        }
        Ok(before)
    }

    /// The queue manager takes a message from incoming or deferred into active, and gets
    /// its record (as it was) and content in the same blocking call. Same atomic change as
    /// [`transition`](Self::transition), but not flushed: if a crash loses the move, the
    /// message is still in incoming or deferred, and if it does not, recovery moves active
    /// back to incoming — either way the next scan finds it. Saving this flush leaves one
    /// flush per delivered message (its removal).
    pub async fn activate(
        &self,
        id: &str,
        from: &[QueueName],
    ) -> Result<Option<(Message, Vec<u8>)>, QueueError> {
        let idc = id.to_string();
        let from = from.to_vec();
        self.blocking(move |s| {
            let Some(m) = transition_blocking(s, &idc, &from, QueueName::Active, |_| {})? else {
                return Ok(None);
            };
            match s.content(&idc) {
                Ok(content) => Ok(Some((m, content.unwrap_or_default()))),
                // Bytes that are gone or wrong will not read on a retry: the message goes
                // where Postfix puts an unreadable queue file, and is reported.
                Err(SpoolError::Journal(e)) if e.is_damage() => {
                    tracing::warn!("{idc}: corrupt queue file: {e}: moved to the corrupt queue");
                    transition_blocking(s, &idc, &[QueueName::Active], QueueName::Corrupt, |_| {})?;
                    s.flush()?;
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Removes a message that is in one of `from`; returns its queue if it was removed.
    pub async fn delete(
        &self,
        id: &str,
        from: &[QueueName],
    ) -> Result<Option<QueueName>, QueueError> {
        let idc = id.to_string();
        let from = from.to_vec();
        let gone = self
            .blocking(move |s| delete_blocking(s, &idc, &from))
            .await?;
        if gone.is_some() {
            self.durable().await?;
        }
        Ok(gone)
    }

    /// [`delete`](Self::delete) for a batch (`postsuper -d`): one blocking call, and one
    /// flush for the whole batch instead of one per message. Returns the IDs removed, with
    /// the queue each was in.
    pub async fn delete_many(
        &self,
        ids: Vec<String>,
        from: &[QueueName],
    ) -> Result<Vec<(String, QueueName)>, QueueError> {
        let from = from.to_vec();
        let gone = self
            .blocking(move |s| {
                let mut gone = Vec::new();
                for id in ids {
                    if let Some(q) = delete_blocking(s, &id, &from)? {
                        gone.push((id, q));
                    }
                }
                Ok(gone)
            })
            .await?;
        if !gone.is_empty() {
            self.durable().await?;
        }
        Ok(gone)
    }

    /// [`transition`](Self::transition) for a batch (`postsuper -h`, `-H`, `-r`): one
    /// blocking call and one flush. Returns the messages moved, as they were before.
    pub async fn transition_many(
        &self,
        ids: Vec<String>,
        from: &[QueueName],
        to: QueueName,
        edit: impl Fn(&mut Record) + Send + 'static,
    ) -> Result<Vec<Message>, QueueError> {
        let from = from.to_vec();
        let moved = self
            .blocking(move |s| {
                let mut moved = Vec::new();
                for id in ids {
                    if let Some(m) = transition_blocking(s, &id, &from, to, &edit)? {
                        moved.push(m);
                    }
                }
                Ok(moved)
            })
            .await?;
        if !moved.is_empty() {
            self.durable().await?;
        }
        Ok(moved)
    }

    /// Re-injection under a new queue ID, as pickup does for maildrop (Postfix logs
    /// `NEWID: ... orig_id=OLDID`): if `old` is in one of `from`, it becomes a fresh ID in
    /// `to` with `edit` applied, content and all, as one atomic change (journalled), flushed before
    /// returning. Returns the new ID, or None when `old` was not there.
    pub async fn reinject(
        &self,
        old: &str,
        from: &[QueueName],
        to: QueueName,
        edit: impl Fn(&mut Record) + Send + 'static,
    ) -> Result<Option<String>, QueueError> {
        let oldc = old.to_string();
        let from = from.to_vec();
        let long = self.inner.long_ids;
        let new = self
            .blocking(move |s| {
                // Bounded retries only guard against a wrapped short-form counter.
                for _ in 0..8 {
                    let new = id::make(s.generate_id()?, long);
                    let mut err = None;
                    let done = s.rename(&oldc, &new, &mut |state: u8, bytes: &[u8]| {
                        err = None;
                        let q = QueueName::from_byte(state)?;
                        if !from.contains(&q) {
                            return None;
                        }
                        let mut rec = decode(&oldc, bytes).ok()?;
                        edit(&mut rec);
                        match encode(&rec) {
                            Ok(b) => Some((to.byte(), b)),
                            Err(e) => {
                                err = Some(e);
                                None
                            }
                        }
                    })?;
                    if let Some(e) = err {
                        return Err(e);
                    }
                    if done {
                        return Ok(Some(new));
                    }
                    if s.get(&new)?.is_none() {
                        // Not a collision: the old message is absent or elsewhere.
                        return Ok(None);
                    }
                }
                Err(QueueError::Exists("(eight collisions)".into()))
            })
            .await?;
        if let Some(n) = &new {
            self.durable().await?;
            self.notify(match to {
                QueueName::Maildrop => QueueEvent::NewMaildrop(n.clone()),
                _ => QueueEvent::NewIncoming(n.clone()),
            });
        }
        Ok(new)
    }

    /// `postsuper -h`: maildrop/incoming/active/deferred → hold.
    pub async fn hold(&self, id: &str) -> Result<bool, QueueError> {
        use QueueName::*;
        let r = self
            .transition(id, &[Maildrop, Incoming, Active, Deferred], Hold, |_| {})
            .await?;
        Ok(r.is_some())
    }

    /// `postsuper -H`: hold → deferred, eligible for delivery now (as Postfix does).
    pub async fn release(&self, id: &str) -> Result<bool, QueueError> {
        let r = self
            .transition(id, &[QueueName::Hold], QueueName::Deferred, |r| {
                r.meta.next_attempt = 0
            })
            .await?;
        if r.is_some() {
            self.notify(QueueEvent::Requeued);
        }
        Ok(r.is_some())
    }

    /// `postsuper -r`: incoming/active/deferred/hold → maildrop, where pickup re-injects it
    /// under a new ID (Postfix logs `orig_id=` then), re-running address rewriting.
    pub async fn requeue(&self, id: &str) -> Result<bool, QueueError> {
        use QueueName::*;
        let r = self
            .transition(id, &[Incoming, Active, Deferred, Hold], Maildrop, |_| {})
            .await?;
        if r.is_some() {
            self.notify(QueueEvent::NewMaildrop(id.into()));
        }
        Ok(r.is_some())
    }

    /// `postsuper -f`: marks the message for expiry; held messages are released to
    /// deferred. Returns (expired, released_from_hold).
    pub async fn expire(&self, id: &str) -> Result<(bool, bool), QueueError> {
        use QueueName::*;
        let before = self.get(id).await?;
        let Some(before) = before else {
            return Ok((false, false));
        };
        let to = match before.queue {
            Hold => Deferred,
            q => q,
        };
        let r = self
            .transition(id, &[Incoming, Active, Deferred, Hold], to, |r| {
                r.meta.forced_expire = true;
                r.meta.next_attempt = 0;
            })
            .await?;
        match r {
            Some(m) => {
                self.notify(QueueEvent::Requeued);
                Ok((true, m.queue == Hold))
            }
            None => Ok((false, false)),
        }
    }

    /// `postqueue -i`: makes a deferred message due now.
    pub async fn deliver_now(&self, id: &str) -> Result<bool, QueueError> {
        let r = self
            .transition(id, &[QueueName::Deferred], QueueName::Deferred, |r| {
                r.meta.next_attempt = 0
            })
            .await?;
        if r.is_some() {
            self.notify(QueueEvent::DeliverOne(id.into()));
        }
        Ok(r.is_some())
    }

    /// Updates recipient statuses/reasons of a message in `queue` without moving it:
    /// `edit` sees the whole record. Returns false when the message is not there.
    pub async fn update(
        &self,
        id: &str,
        queue: QueueName,
        edit: impl Fn(&mut Record) + Send + 'static,
    ) -> Result<bool, QueueError> {
        Ok(self.transition(id, &[queue], queue, edit).await?.is_some())
    }

    /// `postsuper -s`: the spool's structure check and repair; what it found, or empty.
    pub async fn structure_check(&self) -> Result<String, QueueError> {
        self.blocking(|s| Ok(s.structure_check()?)).await
    }

    /// Counts per queue (for status requests).
    pub async fn counts(&self) -> Result<Vec<(QueueName, usize)>, QueueError> {
        self.blocking(|s| {
            let mut out = Vec::new();
            for q in QueueName::ALL {
                out.push((q, s.count(q.byte())?));
            }
            Ok(out)
        })
        .await
    }

    /// IDs in one queue (cheap: no decoding).
    pub async fn ids(&self, queue: QueueName) -> Result<Vec<String>, QueueError> {
        self.ids_upto(queue, usize::MAX).await
    }

    /// Reclaims space left by removed messages' bodies; returns how many were moved.
    pub async fn compact(&self) -> Result<usize, QueueError> {
        self.blocking(|s| Ok(s.compact()?)).await
    }

    /// The first `limit` IDs in one queue: the queue manager asks for no more than it has
    /// room for, so a long incoming queue does not cost a full scan per delivery.
    pub async fn ids_upto(
        &self,
        queue: QueueName,
        limit: usize,
    ) -> Result<Vec<String>, QueueError> {
        self.blocking(move |s| Ok(s.ids(queue.byte(), limit)?))
            .await
    }
}

/// Gives the memory freed by a bulk operation (a listing, `postsuper ALL`, a queue run, the
/// recovery pass) back to the system. glibc keeps freed memory in per-thread arenas; after
/// the many short-lived allocations of a pass over 100,000 records the daemon's resident
/// size stayed 10–40 MB above what it used (measured with tools/bench/queue). Cheap next
/// to such a pass (it walks the free lists); never on a per-message path.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Records decoded per blocking call of the recovery pass at open.
const RECOVER_BATCH: usize = 4096;

/// Messages per batch of a listing read through [`Queue::list_many`].
pub const LIST_BATCH: usize = 512;

/// The order of a showq listing (see [`Queue::listing`]): IDs only, grouped by queue, handed
/// out a batch at a time.
#[derive(Debug, Default)]
pub struct Listing {
    /// Per queue, its IDs each followed by a newline (IDs are alphanumeric).
    groups: Vec<(QueueName, String)>,
    group: usize,
    /// Byte offset of the next ID in the current group.
    pos: usize,
    len: usize,
}

impl Listing {
    /// The next (at most) `n` IDs, each with the queue it was listed in.
    pub fn next(&mut self, n: usize) -> Vec<(String, QueueName)> {
        let mut out = Vec::new();
        // Bounded by `n` and by the groups' lengths.
        while out.len() < n && self.group < self.groups.len() {
            let (q, ids) = &self.groups[self.group];
            match ids[self.pos..].find('\n') {
                Some(end) => {
                    out.push((ids[self.pos..self.pos + end].to_string(), *q));
                    self.pos += end + 1;
                }
                None => {
                    self.group += 1;
                    self.pos = 0;
                }
            }
        }
        out
    }

    /// True once every ID has been handed out.
    pub fn is_done(&self) -> bool {
        self.groups[self.group.min(self.groups.len())..]
            .iter()
            .enumerate()
            .all(|(i, (_, ids))| ids.len() <= if i == 0 { self.pos } else { 0 })
    }

    /// How many messages the pass found.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The body of [`Queue::delete`], on a blocking thread.
fn delete_blocking(
    s: &dyn Spool,
    id: &str,
    from: &[QueueName],
) -> Result<Option<QueueName>, QueueError> {
    let mut gone = None;
    s.update(id, &mut |state: u8, _: &[u8]| {
        gone = None;
        match QueueName::from_byte(state) {
            Some(q) if from.contains(&q) => {
                gone = Some(q);
                Change::Remove
            }
            _ => Change::Keep,
        }
    })?;
    Ok(gone)
}

fn get_sync(s: &dyn Spool, id: &str) -> Result<Option<Message>, QueueError> {
    let Some((state, bytes)) = s.get(id)? else {
        return Ok(None);
    };
    let queue = QueueName::from_byte(state)
        .ok_or_else(|| QueueError::Corrupt(id.into(), format!("unknown queue state {state}")))?;
    let record = decode(id, &bytes)?;
    Ok(Some(Message {
        id: id.into(),
        queue,
        record,
    }))
}

/// True when some recipient is still to be delivered.
/// The body of [`Queue::transition`], on a blocking thread: if `id` is in one of `from`,
/// `edit` its record and move it to `to`. Returns the message as it was before.
fn transition_blocking(
    s: &dyn Spool,
    id: &str,
    from: &[QueueName],
    to: QueueName,
    edit: impl Fn(&mut Record),
) -> Result<Option<Message>, QueueError> {
    let mut before = None;
    let mut err = None;
    s.update(id, &mut |state: u8, bytes: &[u8]| {
        before = None;
        err = None;
        let Some(q) = QueueName::from_byte(state) else {
            return Change::Keep;
        };
        if !from.contains(&q) {
            return Change::Keep;
        }
        let Ok(mut rec) = decode(id, bytes) else {
            return Change::Keep;
        };
        before = Some(Message {
            id: id.to_string(),
            queue: q,
            record: rec.clone(),
        });
        edit(&mut rec);
        match encode(&rec) {
            Ok(b) => Change::Put(to.byte(), b),
            Err(e) => {
                before = None;
                err = Some(e);
                Change::Keep
            }
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(before),
    }
}

pub fn has_pending(rec: &Record) -> bool {
    rec.envelope
        .recipients
        .iter()
        .any(|r| r.status == RcptStatus::Pending)
}

#[cfg(test)]
pub(crate) mod tests;
