//! The storage behind the queue: a small byte-level trait with a journal-plus-sled backend
//! (production) and an in-memory backend (unit tests).
//!
//! A record value is one state byte followed by the bincode envelope record. In production
//! every change is first appended to the queue journal ([`super::journal`]: checksummed
//! segment files, `fdatasync`ed at each flush) and then applied to sled, which indexes
//! `state byte + id` so that listing one queue does not scan the others and keeps each
//! message's record for fast reads (see [`SledSpool`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::journal::{BlobRef, Journal, JournalError, Kind, RecLoc, Slot};

/// What an [`Spool::update`] callback decides for the record it was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Leave the record as it is.
    Keep,
    /// Replace the record (new state byte, new record bytes); content is untouched.
    Put(u8, Vec<u8>),
    /// Remove the record and its content.
    Remove,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Other(String),
}

/// Byte-level storage. Implementations are blocking; [`crate::queue::Queue`] calls them on
/// blocking threads.
pub trait Spool: Send + Sync + 'static {
    /// Stores a new message; returns false (and stores nothing) when `id` already exists.
    fn insert(
        &self,
        id: &str,
        state: u8,
        record: &[u8],
        content: &[u8],
    ) -> Result<bool, SpoolError>;
    /// The state byte and record bytes of `id`.
    fn get(&self, id: &str) -> Result<Option<(u8, Vec<u8>)>, SpoolError>;
    /// The message content of `id`.
    fn content(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError>;
    /// At most `limit` IDs in one state, in ID order.
    fn ids(&self, state: u8, limit: usize) -> Result<Vec<String>, SpoolError>;
    /// Every ID with its state byte (recovery, listing everything).
    fn all(&self) -> Result<Vec<(String, u8)>, SpoolError>;
    /// Atomically shows the current record to `f` and applies its decision. `f` may run more
    /// than once (transaction retry), so it must not have side effects. Returns the decision
    /// applied, or None when `id` does not exist.
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Change,
    ) -> Result<Option<Change>, SpoolError>;
    /// Atomically moves message `old` (record and content) to the new ID `new` with a new
    /// state and record. False (nothing changed) when `old` is absent, `new` exists, or
    /// `f` returns None for the current record.
    fn rename(
        &self,
        old: &str,
        new: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Option<(u8, Vec<u8>)>,
    ) -> Result<bool, SpoolError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), SpoolError>;
    /// A number unique across restarts, for queue IDs.
    fn generate_id(&self) -> Result<u64, SpoolError>;
    /// Reclaims space held by removed messages' bodies (see [`SledSpool::compact_blobs`]);
    /// returns how many bodies were moved.
    fn compact(&self) -> Result<usize, SpoolError> {
        Ok(0)
    }
    /// `postsuper -s`: checks every message and mends what it can; returns what it found
    /// (empty: nothing to report).
    fn structure_check(&self) -> Result<String, SpoolError> {
        Ok(String::new())
    }
    /// At most `limit` IDs in one state that sort after `after` ("" for the first), in ID
    /// order: a cursor, so that a pass over a long queue holds one batch at a time.
    fn ids_after(&self, state: u8, after: &str, limit: usize) -> Result<Vec<String>, SpoolError> {
        Ok(self
            .ids(state, usize::MAX)?
            .into_iter()
            .filter(|id| id.as_str() > after)
            .take(limit)
            .collect())
    }
    /// Shows `f` at most `limit` records whose ID sorts after `after` ("" for the first), in
    /// ID order, with their state bytes; returns the last ID shown, None when there was none.
    /// A pass over every record sees each message once even while messages change state,
    /// which a pass over the per-state index does not.
    fn scan_after(
        &self,
        after: &str,
        limit: usize,
        f: &mut dyn FnMut(&str, u8, &[u8]),
    ) -> Result<Option<String>, SpoolError> {
        let mut last = None;
        for (id, _) in self
            .all()?
            .into_iter()
            .filter(|(id, _)| id.as_str() > after)
            .take(limit)
        {
            if let Some((state, rec)) = self.get(&id)? {
                f(&id, state, &rec);
            }
            last = Some(id);
        }
        Ok(last)
    }
    /// How many messages are in one state.
    fn count(&self, state: u8) -> Result<usize, SpoolError> {
        Ok(self.ids(state, usize::MAX)?.len())
    }
    /// Called on a thread that has just used the spool, before it goes idle: lets go of what
    /// the store keeps for reclamation thread by thread (see [`SledSpool`]'s).
    fn release_thread_garbage(&self) {}
}

fn index_key(state: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(state);
    k.extend_from_slice(id.as_bytes());
    k
}

/// In-memory spool for unit tests: same semantics, no durability.
#[derive(Default)]
pub struct MemSpool {
    inner: Mutex<MemInner>,
    /// Every operation fails: the place-holder while the queue reopens its spool.
    failed: bool,
}

#[derive(Default)]
struct MemInner {
    records: BTreeMap<String, (u8, Vec<u8>)>,
    content: BTreeMap<String, Vec<u8>>,
    counter: u64,
}

impl MemSpool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A spool that refuses every operation (see `failed`).
    pub fn failed() -> Self {
        MemSpool {
            failed: true,
            ..Self::default()
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemInner>, SpoolError> {
        if self.failed {
            return Err(SpoolError::Other(
                "the queue database is being reopened".into(),
            ));
        }
        self.inner
            .lock()
            .map_err(|_| SpoolError::Other("memory spool lock poisoned".into()))
    }

    /// Test helper: stores raw bytes as a record, e.g. to simulate corruption.
    pub fn put_raw(&self, id: &str, state: u8, record: Vec<u8>) {
        if let Ok(mut g) = self.lock() {
            g.records.insert(id.to_string(), (state, record));
        }
    }
}

impl Spool for MemSpool {
    fn insert(
        &self,
        id: &str,
        state: u8,
        record: &[u8],
        content: &[u8],
    ) -> Result<bool, SpoolError> {
        let mut g = self.lock()?;
        if g.records.contains_key(id) {
            return Ok(false);
        }
        g.records.insert(id.to_string(), (state, record.to_vec()));
        g.content.insert(id.to_string(), content.to_vec());
        Ok(true)
    }
    fn get(&self, id: &str) -> Result<Option<(u8, Vec<u8>)>, SpoolError> {
        Ok(self.lock()?.records.get(id).cloned())
    }
    fn content(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.lock()?.content.get(id).cloned())
    }
    fn ids(&self, state: u8, limit: usize) -> Result<Vec<String>, SpoolError> {
        Ok(self
            .lock()?
            .records
            .iter()
            .filter(|(_, (s, _))| *s == state)
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect())
    }
    fn all(&self) -> Result<Vec<(String, u8)>, SpoolError> {
        Ok(self
            .lock()?
            .records
            .iter()
            .map(|(k, (s, _))| (k.clone(), *s))
            .collect())
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Change,
    ) -> Result<Option<Change>, SpoolError> {
        let mut g = self.lock()?;
        let Some((state, rec)) = g.records.get(id).cloned() else {
            return Ok(None);
        };
        let change = f(state, &rec);
        match &change {
            Change::Keep => {}
            Change::Put(s, r) => {
                g.records.insert(id.to_string(), (*s, r.clone()));
            }
            Change::Remove => {
                g.records.remove(id);
                g.content.remove(id);
            }
        }
        Ok(Some(change))
    }
    fn rename(
        &self,
        old: &str,
        new: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Option<(u8, Vec<u8>)>,
    ) -> Result<bool, SpoolError> {
        let mut g = self.lock()?;
        if g.records.contains_key(new) {
            return Ok(false);
        }
        let Some((state, rec)) = g.records.get(old).cloned() else {
            return Ok(false);
        };
        let Some((s, r)) = f(state, &rec) else {
            return Ok(false);
        };
        g.records.remove(old);
        let content = g.content.remove(old).unwrap_or_default();
        g.records.insert(new.to_string(), (s, r));
        g.content.insert(new.to_string(), content);
        Ok(true)
    }
    fn flush(&self) -> Result<(), SpoolError> {
        self.lock().map(drop)
    }
    fn generate_id(&self) -> Result<u64, SpoolError> {
        let mut g = self.lock()?;
        g.counter += 1;
        Ok(g.counter)
    }
    fn scan_after(
        &self,
        after: &str,
        limit: usize,
        f: &mut dyn FnMut(&str, u8, &[u8]),
    ) -> Result<Option<String>, SpoolError> {
        use std::ops::Bound;
        let g = self.lock()?;
        let mut last = None;
        let range = g
            .records
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        for (id, (state, rec)) in range.take(limit) {
            f(id, *state, rec);
            last = Some(id.clone());
        }
        Ok(last)
    }
}

/// The production spool: a journal ([`Journal`], the durable truth) and one sled database
/// (index and state store). `records` (ID → state byte + record) is what the queue reads;
/// `blobrefs` holds each message's [`Slot`] (where its body and latest record entry are in
/// the journal), `index` (state byte + ID) lists one queue without reading the others.
/// `content` and `renames` are read only to take over a spool written before the journal.
///
/// Every change is appended to the journal first, then applied to sled; [`Spool::flush`]
/// is the journal's `fdatasync`, so a change is durable whatever sled has written. sled is
/// not flushed for a commit: its own flush is `sync_file_range` on Linux, which is not
/// durable, and whatever it loses [`SledSpool::reconcile`] brings back at open.
///
/// No sled transactions: once a process uses one, sled puts every operation behind one
/// process-wide lock (measured: the accept and delivery rates rose by half without them).
/// Changes to one ID are serialised by a lock stripe.
pub struct SledSpool {
    db: sled::Db,
    records: sled::Tree,
    content: sled::Tree,
    blobrefs: sled::Tree,
    journal: Journal,
    index: sled::Tree,
    renames: sled::Tree,
    stripes: Vec<Mutex<()>>,
    /// A change stopped between its writes (an error or a panic): the next open must not
    /// take disagreement between sled and the journal for damage, see [`CLOSED_CLEANLY`].
    broken: std::sync::atomic::AtomicBool,
    report: Mutex<Report>,
}

/// Written when the spool is dropped with every change complete and sled flushed, removed at
/// open. With it, sled and the journal must agree at the next open: a difference is damage
/// and is logged as a warning; without it, sled is expected to lag behind the journal.
pub const CLOSED_CLEANLY: &[u8] = b"relais:closed-cleanly";

/// The state byte of Postfix's `active` queue ([`crate::queue::QueueName::Active`]): moves
/// into it are not journalled, since recovery puts an active message back into incoming.
pub const ACTIVE: u8 = 2;
/// The state byte of the `corrupt` queue ([`crate::queue::QueueName::Corrupt`]).
pub const CORRUPT: u8 = 5;

/// What the last open (or [`SledSpool::reconcile`]) found, for `postsuper -s` and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Messages whose record sled had lost or held in an older form, taken from the journal.
    pub restored: usize,
    /// Messages removed in the journal that sled still held.
    pub removed: usize,
    /// Messages moved to the corrupt queue (body or record unreadable).
    pub corrupted: usize,
    /// Messages written before the journal, now in it.
    pub migrated: usize,
    /// Messages lost with no record left to keep (their envelope unreadable).
    pub lost: usize,
    /// Stretches of journal bytes that did not read as entries.
    pub damaged_ranges: usize,
    /// Index entries added or removed.
    pub index_fixed: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored={} removed={} corrupt={} migrated={} lost={} damaged_ranges={} index_fixed={}",
            self.restored,
            self.removed,
            self.corrupted,
            self.migrated,
            self.lost,
            self.damaged_ranges,
            self.index_fixed
        )
    }
}

/// Marks the spool broken unless the change it guards finishes (`std::mem::forget`).
struct Unfinished<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

const STRIPES: usize = 64;

/// sled's page cache. Its default, 1 GB, is sized for a database; the queue keeps only
/// records and references in sled (bodies are in the journal), and reads each a few times.
/// 8 MB: with 100,000 deferred 1 KB messages the daemon rests near 63 MB instead of 84 MB
/// with 32 MB, and lists them faster (tools/bench/queue); delivery is unchanged
/// (tools/bench/deliver, 2.9–8.2× Postfix).
const CACHE_CAPACITY: u64 = 8 << 20;

/// What the journal says of one ID, at open.
enum Seen {
    Live {
        state: u8,
        seq: u64,
        rec: RecLoc,
        rec_ok: bool,
        body: Option<BlobRef>,
        body_ok: bool,
    },
    Gone,
}

impl SledSpool {
    /// Opens (creating) the database at `path` and its journal beside it, and makes the
    /// database agree with the journal. Fails while another process holds it.
    pub fn open(path: &std::path::Path) -> Result<SledSpool, SpoolError> {
        Self::open_with(path, super::journal::SEGMENT_BYTES)
    }

    /// [`open`](Self::open), with journal segments that close at `segment_bytes`. A
    /// database sled finds corrupt is moved aside (`db.corrupt-TIME`, for the operator) and
    /// rebuilt from the journal.
    pub fn open_with(path: &std::path::Path, segment_bytes: u64) -> Result<SledSpool, SpoolError> {
        match Self::open_once(path, segment_bytes) {
            Err(SpoolError::Sled(
                e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)),
            )) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".corrupt-{}", super::now().0));
                let aside = std::path::PathBuf::from(aside);
                tracing::warn!(
                    "queue database {}: corrupt ({e}): moved to {} and rebuilt from the queue journal",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside)
                    .map_err(|e| SpoolError::Other(format!("{}: {e}", path.display())))?;
                Self::open_once(path, segment_bytes)
            }
            other => other,
        }
    }

    fn open_once(path: &std::path::Path, segment_bytes: u64) -> Result<SledSpool, SpoolError> {
        let db = sled::Config::new()
            .path(path)
            .segment_size(segment_size(path))
            .cache_capacity(CACHE_CAPACITY)
            .open()?;
        // sled creates its directory world-readable; it holds message contents.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| SpoolError::Other(format!("{}: {e}", path.display())))?;
        }
        let spool = SledSpool {
            records: db.open_tree("records")?,
            content: db.open_tree("content")?,
            blobrefs: db.open_tree("blobs")?,
            journal: Journal::open(&bodies_dir(path), segment_bytes)?,
            index: db.open_tree("index")?,
            renames: db.open_tree("renames")?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            broken: std::sync::atomic::AtomicBool::new(false),
            report: Mutex::new(Report::default()),
            db,
        };
        // The mark holds the journal's last sequence number at the clean close.
        let mark = spool.db.remove(CLOSED_CLEANLY)?.map(|v| {
            v.get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        });
        spool.finish_renames()?;
        let mut report = spool.reconcile(mark)?;
        report.index_fixed = spool.repair_index()?;
        spool.db.flush()?;
        // Count the references only now, after reconciling.
        for kv in spool.blobrefs.iter() {
            let (id, v) = kv?;
            let Some(slot) = Slot::decode(&v) else {
                continue;
            };
            if !spool.journal.adopt(&slot) {
                tracing::warn!(
                    "{}: queue journal segment {} is missing",
                    String::from_utf8_lossy(&id),
                    slot.body.seg
                );
            }
        }
        spool.journal.prune()?;
        if report != Report::default() {
            tracing::info!("queue {}: open: {report}", path.display());
        }
        if let Ok(mut g) = spool.report.lock() {
            *g = report;
        }
        Ok(spool)
    }

    /// What the last open found.
    pub fn last_report(&self) -> Report {
        self.report.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Finishes or undoes a reinjection that a crash cut in a spool written before the
    /// journal (its `renames` tree); the journal's renames are single entries.
    fn finish_renames(&self) -> Result<(), SpoolError> {
        for kv in self.renames.iter() {
            let (new, old) = kv?;
            if self.records.contains_key(&new)? {
                if let Some(v) = self.records.remove(&old)? {
                    self.index
                        .remove(index_key(split(&v).0, &String::from_utf8_lossy(&old)))?;
                }
                self.content.remove(&old)?;
                self.blobrefs.remove(&old)?;
            } else {
                self.content.remove(&new)?;
                self.blobrefs.remove(&new)?;
            }
            self.renames.remove(&new)?;
        }
        Ok(())
    }

    /// Makes sled agree with the journal: records sled lost or holds in an older form come
    /// back, removals it missed are applied, messages whose body or record cannot be read
    /// move to the corrupt queue, and messages from before the journal are written into it.
    /// With `mark` (the last run closed cleanly, with this last sequence number) every
    /// difference is damage and is logged as a warning, and sled is trusted where the journal
    /// lost its tail. Memory: one small entry per queued message while it runs.
    pub fn reconcile(&self, mark: Option<u64>) -> Result<Report, SpoolError> {
        let clean = mark.is_some();
        let mut report = Report::default();
        self.journal.sync_all_present()?;
        let mut seen: std::collections::HashMap<String, Seen> = std::collections::HashMap::new();
        let mut journal_max = 0u64;
        let damage = self.journal.scan(|e| {
            journal_max = journal_max.max(e.seq);
            let live = Seen::Live {
                state: e.state,
                seq: e.seq,
                rec: e.rec,
                rec_ok: e.rec_ok,
                body: e.body,
                body_ok: e.body_ok,
            };
            match e.kind {
                Kind::Message => {
                    seen.insert(e.id.clone(), live);
                }
                Kind::State => match seen.get_mut(&e.id) {
                    Some(Seen::Live {
                        state,
                        seq,
                        rec,
                        rec_ok,
                        ..
                    }) => {
                        // A damaged newer record leaves the older one in force.
                        if e.rec_ok || !*rec_ok {
                            *state = e.state;
                            *seq = e.seq;
                            *rec = e.rec;
                            *rec_ok = e.rec_ok;
                        }
                    }
                    _ => {
                        seen.insert(
                            e.id.clone(),
                            Seen::Live {
                                state: e.state,
                                seq: e.seq,
                                rec: e.rec,
                                rec_ok: e.rec_ok,
                                body: None,
                                body_ok: false,
                            },
                        );
                    }
                },
                Kind::Removal => {
                    seen.insert(e.id.clone(), Seen::Gone);
                }
                Kind::Rename => {
                    seen.insert(e.old.clone(), Seen::Gone);
                    seen.insert(e.id.clone(), live);
                }
            }
        })?;
        for d in &damage {
            tracing::warn!("{d}: skipped (corrupt)");
        }
        report.damaged_ranges = damage.len();
        // Numbers already used must not be handed out again, wherever they survive.
        let mut sled_max = 0;
        for kv in self.blobrefs.iter() {
            let (_, v) = kv?;
            sled_max = sled_max.max(Slot::decode(&v).map_or(0, |s| s.seq));
        }
        self.journal
            .seen_seq(journal_max.max(sled_max).max(mark.unwrap_or(0)));
        // After a clean close sled held every change; a journal that ends before the close's
        // number has lost its tail, and what sled no longer holds was removed in it.
        let tail_lost = mark.is_some_and(|m| journal_max < m);
        let loud = clean || !damage.is_empty();
        for (id, s) in &seen {
            let idb = id.as_bytes();
            let current = self.records.get(idb)?;
            let Seen::Live {
                state,
                seq,
                rec,
                rec_ok,
                body,
                body_ok,
            } = s
            else {
                if let Some(v) = current {
                    if clean {
                        tracing::warn!("{id}: removed: the queue database had missed its removal");
                    }
                    self.records.remove(idb)?;
                    self.index.remove(index_key(split(&v).0, id))?;
                    self.blobrefs.remove(idb)?;
                    self.content.remove(idb)?;
                    report.removed += 1;
                }
                continue;
            };
            let slot_now = self.blobref(id)?;
            let journal_body = match body {
                Some(b) if *body_ok => Some(*b),
                _ => None,
            };
            if current.is_none() && tail_lost {
                tracing::info!("{id}: removed: the queue journal lost the end of its last run, and the queue database no longer holds it");
                self.journal.write_removal(id)?;
                report.removed += 1;
                continue;
            }
            // sled's copy: its state, record and the number of the last entry it applied.
            let sled = current
                .as_deref()
                .map(|v| (split(v), slot_now.map_or(0, |s| s.seq)));
            if let Some(((sled_state, sled_rec), sled_seq)) = sled {
                if sled_seq > *seq || !*rec_ok {
                    // sled's copy is newer (the journal lost later entries) or the only
                    // readable one: it stands, and goes into the journal again.
                    if sled_seq > *seq {
                        tracing::warn!("{id}: the queue journal lost its latest change; the queue database's copy is journalled again");
                    } else {
                        tracing::warn!("{id}: queue journal: its latest record is corrupt; the queue database's copy is journalled again");
                    }
                    let readable = slot_now
                        .filter(|s| self.journal.verify(&s.body))
                        .map(|s| s.body);
                    match journal_body.or(readable) {
                        Some(b) => {
                            let (loc, seq) = self.journal.write_state(id, sled_state, sled_rec)?;
                            let slot = Slot {
                                body: b,
                                rec: Some(loc),
                                seq,
                            };
                            self.blobrefs.insert(idb, slot.encode())?;
                            report.restored += 1;
                        }
                        None => self.no_journal_body(id, body, slot_now, &mut report)?,
                    }
                    continue;
                }
            }
            let agrees = sled.is_some_and(|((sled_state, sled_rec), sled_seq)| {
                sled_seq == *seq
                    && (sled_state == *state || (sled_state == ACTIVE && *state != CORRUPT))
                    && crc32fast::hash(sled_rec) == rec.crc
            });
            if !agrees {
                // sled lost the message, or holds an older or damaged copy: the journal's
                // comes back.
                let read = if *rec_ok {
                    self.journal.read_record(rec).map_err(|e| e.to_string())
                } else {
                    Err("its record is corrupt".to_string())
                };
                let bytes = match (read, sled) {
                    (Ok(b), _) => b,
                    (Err(e), Some(_)) => {
                        tracing::warn!(
                            "{id}: queue journal: {e}; the queue database's copy is kept"
                        );
                        continue;
                    }
                    (Err(e), None) => {
                        tracing::warn!(
                            "{id}: lost: queue journal: {e}, and the queue database has none"
                        );
                        report.lost += 1;
                        continue;
                    }
                };
                if loud {
                    tracing::warn!("{id}: restored from the queue journal: the queue database had lost it or held an older or damaged copy");
                }
                if let Some(((sled_state, _), _)) = sled {
                    self.index.remove(index_key(sled_state, id))?;
                }
                self.records.insert(idb, record_value(*state, &bytes))?;
                self.index.insert(index_key(*state, id), Vec::<u8>::new())?;
                report.restored += 1;
            }
            match journal_body {
                Some(b) => {
                    let slot = Slot {
                        body: b,
                        rec: Some(*rec),
                        seq: *seq,
                    };
                    if slot_now != Some(slot) {
                        self.blobrefs.insert(idb, slot.encode())?;
                    }
                }
                None => self.no_journal_body(id, body, slot_now, &mut report)?,
            }
        }
        // Records the journal knows nothing of: from before the journal, or whose entries
        // were in damaged bytes.
        for kv in self.records.iter() {
            let (idb, _) = kv?;
            let id = String::from_utf8_lossy(&idb).into_owned();
            if seen.contains_key(&id) {
                continue;
            }
            let slot = self.blobref(&id)?;
            match self.legacy_body(&id, slot)? {
                Some(content) => {
                    if slot.is_some_and(|s| s.rec.is_some()) {
                        tracing::warn!("{id}: its queue journal entries are lost; its record and body were read from their copies and journalled again");
                    }
                    self.migrate(&id, &content, &mut report)?;
                }
                None => {
                    self.to_corrupt(&id, "its body is missing or corrupt", &mut report)?;
                }
            }
        }
        drop(seen);
        // Sled entries without a record: leftovers.
        for tree in [&self.blobrefs, &self.content] {
            for kv in tree.iter() {
                let (idb, _) = kv?;
                if !self.records.contains_key(&idb)? {
                    tree.remove(&idb)?;
                }
            }
        }
        self.journal.sync()?;
        Ok(report)
    }

    /// A message whose body the journal does not have intact: one from before the journal
    /// (sled, or an old-format segment), else the corrupt queue.
    fn no_journal_body(
        &self,
        id: &str,
        body: &Option<BlobRef>,
        slot: Option<Slot>,
        report: &mut Report,
    ) -> Result<(), SpoolError> {
        match self.legacy_body(id, slot)? {
            Some(content) => self.migrate(id, &content, report),
            None => {
                let why = match body {
                    Some(b) => format!(
                        "its body is corrupt (queue journal segment {:08x} at {})",
                        b.seg, b.off
                    ),
                    None => "its body is missing from the queue journal".to_string(),
                };
                self.to_corrupt(id, &why, report)
            }
        }
    }

    /// A body readable outside the journal's entries for `id`: in sled (small bodies written
    /// before the journal), or where its slot points (an entry whose header was damaged, or
    /// an old-format body).
    fn legacy_body(&self, id: &str, slot: Option<Slot>) -> Result<Option<Vec<u8>>, SpoolError> {
        if let Some(v) = self.content.get(id.as_bytes())? {
            return Ok(Some(v.to_vec()));
        }
        Ok(slot.and_then(|s| self.journal.read(&s.body).ok()))
    }

    /// Writes `id` (its record as sled has it, and `content`) into the journal.
    fn migrate(&self, id: &str, content: &[u8], report: &mut Report) -> Result<(), SpoolError> {
        let Some(v) = self.records.get(id.as_bytes())? else {
            return Ok(());
        };
        let (state, rec) = split(&v);
        let slot = self.journal.write_message(id, state, rec, content)?;
        self.blobrefs.insert(id.as_bytes(), slot.encode())?;
        self.content.remove(id.as_bytes())?;
        report.migrated += 1;
        Ok(())
    }

    /// Moves `id` to the corrupt queue, journalled, with Postfix's kind of warning.
    fn to_corrupt(&self, id: &str, why: &str, report: &mut Report) -> Result<(), SpoolError> {
        let Some(v) = self.records.get(id.as_bytes())? else {
            return Ok(());
        };
        let (state, rec) = split(&v);
        if state == CORRUPT {
            return Ok(());
        }
        tracing::warn!("{id}: corrupt queue file: {why}: moved to the corrupt queue");
        let (loc, seq) = self.journal.write_state(id, CORRUPT, rec)?;
        // The record is journalled; its body, if any, stays where the slot says.
        if let Some(mut slot) = self.blobref(id)? {
            slot.rec = Some(loc);
            slot.seq = seq;
            self.blobrefs.insert(id.as_bytes(), slot.encode())?;
        }
        self.index.remove(index_key(state, id))?;
        self.records
            .insert(id.as_bytes(), record_value(CORRUPT, rec))?;
        self.index
            .insert(index_key(CORRUPT, id), Vec::<u8>::new())?;
        report.corrupted += 1;
        Ok(())
    }

    /// Index entries that disagree with their record go, missing ones are added. Returns how
    /// many changed.
    fn repair_index(&self) -> Result<usize, SpoolError> {
        let mut fixed = 0;
        for kv in self.index.iter() {
            let (k, _) = kv?;
            let Some((&state, id)) = k.split_first() else {
                continue;
            };
            let agrees = self.records.get(id)?.is_some_and(|v| split(&v).0 == state);
            if !agrees {
                self.index.remove(&k)?;
                fixed += 1;
            }
        }
        for kv in self.records.iter() {
            let (id, v) = kv?;
            let key = index_key(split(&v).0, &String::from_utf8_lossy(&id));
            if !self.index.contains_key(&key)? {
                self.index.insert(key, Vec::<u8>::new())?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// `postsuper -s` with the daemon running: checks every message's body against its
    /// checksum and its index entry; the unreadable go to the corrupt queue.
    pub fn check(&self) -> Result<Report, SpoolError> {
        let mut report = Report::default();
        for kv in self.records.iter() {
            let (idb, _) = kv?;
            let id = String::from_utf8_lossy(&idb).into_owned();
            let _g = self.lock(&id)?;
            let ok = match self.blobref(&id)? {
                Some(slot) => self.journal.verify(&slot.body),
                None => self.content.contains_key(&idb)?,
            };
            if !ok {
                self.to_corrupt(&id, "its body is missing or corrupt", &mut report)?;
            }
        }
        report.index_fixed = self.repair_index()?;
        if report.corrupted > 0 {
            self.flush()?;
        }
        Ok(report)
    }

    /// Copies the live messages of the journal's oldest segment forward when that lets
    /// files go ([`Journal::compaction_target`]); the old segment is unlinked by the flush
    /// that follows, once the copies are durable.
    pub fn compact_blobs(&self) -> Result<usize, SpoolError> {
        let Some(target) = self.journal.compaction_target() else {
            return Ok(0);
        };
        let mut ids = Vec::new();
        for kv in self.blobrefs.iter() {
            let (id, v) = kv?;
            if Slot::decode(&v)
                .is_some_and(|s| s.body.seg == target || s.rec.is_some_and(|r| r.seg == target))
            {
                ids.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
        let mut moved = 0;
        for id in ids {
            let _g = self.lock(&id)?;
            let (Some(old), Some(v)) = (self.blobref(&id)?, self.records.get(id.as_bytes())?)
            else {
                continue;
            };
            if old.body.seg != target && old.rec.is_none_or(|r| r.seg != target) {
                continue;
            }
            // An unreadable body stays where it is; its message goes to corrupt when read.
            let Ok(body) = self.journal.read(&old.body) else {
                continue;
            };
            let (state, rec) = split(&v);
            let new = self.journal.write_message(&id, state, rec, &body)?;
            self.journal.retain(&new);
            self.blobrefs.insert(id.as_bytes(), new.encode())?;
            self.journal.release(&old);
            moved += 1;
        }
        self.flush()?;
        Ok(moved)
    }

    /// Journal segment files present.
    pub fn blob_segments(&self) -> usize {
        self.journal.segments()
    }

    fn blobref(&self, id: &str) -> Result<Option<Slot>, SpoolError> {
        Ok(self
            .blobrefs
            .get(id.as_bytes())?
            .and_then(|v| Slot::decode(&v)))
    }

    /// Removes `id`'s body and slot from sled, wherever they are.
    fn remove_body(&self, id: &str) -> Result<(), SpoolError> {
        self.content.remove(id.as_bytes())?;
        if let Some(slot) = self
            .blobrefs
            .remove(id.as_bytes())?
            .and_then(|v| Slot::decode(&v))
        {
            self.journal.release(&slot);
        }
        Ok(())
    }

    fn stripe(&self, id: &str) -> usize {
        // FNV-1a: cheap, and any spread will do.
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % STRIPES as u64) as usize
    }

    fn lock(&self, id: &str) -> Result<std::sync::MutexGuard<'_, ()>, SpoolError> {
        self.lock_stripe(self.stripe(id))
    }

    fn lock_stripe(&self, i: usize) -> Result<std::sync::MutexGuard<'_, ()>, SpoolError> {
        self.stripes[i]
            .lock()
            .map_err(|_| SpoolError::Other("spool stripe lock poisoned".into()))
    }

    /// Test helper: stores raw record bytes in sled only (no journal entry, no body), as a
    /// damaged or foreign database would hold them.
    pub fn put_raw(&self, id: &str, state: u8, record: &[u8]) -> Result<(), SpoolError> {
        let mut v = vec![state];
        v.extend_from_slice(record);
        self.records.insert(id.as_bytes(), v)?;
        self.index.insert(index_key(state, id), Vec::<u8>::new())?;
        Ok(())
    }
}

fn record_value(state: u8, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(record.len() + 1);
    v.push(state);
    v.extend_from_slice(record);
    v
}

impl Spool for SledSpool {
    fn insert(
        &self,
        id: &str,
        state: u8,
        record: &[u8],
        content: &[u8],
    ) -> Result<bool, SpoolError> {
        let _g = self.lock(id)?;
        if self.records.contains_key(id.as_bytes())? {
            return Ok(false);
        }
        // The journal first: it is what the commit's sync makes durable.
        let slot = self.journal.write_message(id, state, record, content)?;
        self.journal.retain(&slot);
        let unfinished = Unfinished(&self.broken);
        let res = (|| -> Result<(), sled::Error> {
            self.blobrefs.insert(id.as_bytes(), slot.encode())?;
            self.index.insert(index_key(state, id), Vec::<u8>::new())?;
            self.records
                .insert(id.as_bytes(), record_value(state, record))?;
            Ok(())
        })();
        if let Err(e) = res {
            // The message will be refused: take it back from the journal too, or the next
            // open would bring back a message the client was told failed.
            let _ = self.journal.write_removal(id);
            self.journal.release(&slot);
            return Err(e.into());
        }
        std::mem::forget(unfinished);
        Ok(true)
    }
    fn get(&self, id: &str) -> Result<Option<(u8, Vec<u8>)>, SpoolError> {
        Ok(self.records.get(id.as_bytes())?.map(|v| {
            let (s, r) = split(&v);
            (s, r.to_vec())
        }))
    }
    fn content(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        if let Some(slot) = self.blobref(id)? {
            return Ok(Some(self.journal.read(&slot.body)?));
        }
        Ok(self.content.get(id.as_bytes())?.map(|v| v.to_vec()))
    }
    fn ids(&self, state: u8, limit: usize) -> Result<Vec<String>, SpoolError> {
        let mut out = Vec::new();
        for kv in self.index.scan_prefix([state]).take(limit) {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        Ok(out)
    }
    fn all(&self) -> Result<Vec<(String, u8)>, SpoolError> {
        let mut out = Vec::new();
        for kv in self.records.iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), split(&v).0));
        }
        Ok(out)
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Change,
    ) -> Result<Option<Change>, SpoolError> {
        let _g = self.lock(id)?;
        let Some(old) = self.records.get(id.as_bytes())? else {
            return Ok(None);
        };
        let (state, rec) = split(&old);
        let change = f(state, rec);
        match &change {
            Change::Keep => {}
            Change::Put(s, new) => {
                // A move into active with the record unchanged is not journalled: recovery
                // puts active messages back into incoming anyway.
                let journalled = if *s == ACTIVE && new.as_slice() == rec {
                    None
                } else {
                    Some(self.journal.write_state(id, *s, new)?)
                };
                let unfinished = Unfinished(&self.broken);
                if let (Some((loc, seq)), Some(mut slot)) = (journalled, self.blobref(id)?) {
                    let old_slot = slot;
                    slot.rec = Some(loc);
                    slot.seq = seq;
                    self.journal.retain(&slot);
                    self.blobrefs.insert(id.as_bytes(), slot.encode())?;
                    self.journal.release(&old_slot);
                }
                if *s != state {
                    self.index.insert(index_key(*s, id), Vec::<u8>::new())?;
                }
                self.records.insert(id.as_bytes(), record_value(*s, new))?;
                if *s != state {
                    self.index.remove(index_key(state, id))?;
                }
                std::mem::forget(unfinished);
            }
            Change::Remove => {
                self.journal.write_removal(id)?;
                let unfinished = Unfinished(&self.broken);
                self.records.remove(id.as_bytes())?;
                self.remove_body(id)?;
                self.index.remove(index_key(state, id))?;
                std::mem::forget(unfinished);
            }
        }
        Ok(Some(change))
    }
    fn rename(
        &self,
        old: &str,
        new: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Option<(u8, Vec<u8>)>,
    ) -> Result<bool, SpoolError> {
        // Both IDs' stripes, in stripe order so that two renames cannot deadlock.
        let (a, b) = (self.stripe(old), self.stripe(new));
        let _first = self.lock_stripe(a.min(b))?;
        let _second = if a != b {
            Some(self.lock_stripe(a.max(b))?)
        } else {
            None
        };
        if self.records.contains_key(new.as_bytes())? {
            return Ok(false);
        }
        let Some(v) = self.records.get(old.as_bytes())? else {
            return Ok(false);
        };
        let (state, rec) = split(&v);
        let Some((s, newrec)) = f(state, rec) else {
            return Ok(false);
        };
        let body = match self.blobref(old)? {
            Some(slot) => slot.body,
            None => {
                // A body from before the journal: into the journal first, under the old ID.
                let content = self.content.get(old.as_bytes())?.unwrap_or_default();
                let slot = self.journal.write_message(old, state, rec, &content)?;
                self.journal.retain(&slot);
                self.blobrefs.insert(old.as_bytes(), slot.encode())?;
                self.content.remove(old.as_bytes())?;
                slot.body
            }
        };
        // One entry: the next open sees the old ID gone and the new one there, or neither.
        let (loc, seq) = self.journal.write_rename(new, old, s, &newrec, &body)?;
        let slot = Slot {
            body,
            rec: Some(loc),
            seq,
        };
        let unfinished = Unfinished(&self.broken);
        self.journal.retain(&slot);
        self.blobrefs.insert(new.as_bytes(), slot.encode())?;
        self.index.insert(index_key(s, new), Vec::<u8>::new())?;
        self.records
            .insert(new.as_bytes(), record_value(s, &newrec))?;
        self.records.remove(old.as_bytes())?;
        self.index.remove(index_key(state, old))?;
        self.remove_body(old)?;
        std::mem::forget(unfinished);
        Ok(true)
    }
    fn flush(&self) -> Result<(), SpoolError> {
        // Segments unused now are unused because of entries written before this point: the
        // sync below makes those durable, and only then may the files go.
        let dead = self.journal.dead_prefix();
        self.journal.sync()?;
        // A file that cannot go is only wasted space (open prunes it): the flush succeeded,
        // and its callers must hear so.
        if let Err(e) = self.journal.unlink_prefix(dead) {
            tracing::warn!("cannot remove a queue journal segment: {e}");
        }
        Ok(())
    }
    fn generate_id(&self) -> Result<u64, SpoolError> {
        Ok(self.db.generate_id()?)
    }
    fn compact(&self) -> Result<usize, SpoolError> {
        self.compact_blobs()
    }
    fn structure_check(&self) -> Result<String, SpoolError> {
        // What the open found (the reconciliation with the journal), and the check now.
        let open = self.last_report();
        let now = self.check()?;
        let sum = Report {
            restored: open.restored + now.restored,
            removed: open.removed + now.removed,
            corrupted: open.corrupted + now.corrupted,
            migrated: open.migrated + now.migrated,
            lost: open.lost + now.lost,
            damaged_ranges: open.damaged_ranges + now.damaged_ranges,
            index_fixed: open.index_fixed + now.index_fixed,
        };
        if let Ok(mut g) = self.report.lock() {
            *g = Report::default();
        }
        Ok(if sum == Report::default() {
            String::new()
        } else {
            sum.to_string()
        })
    }
    fn ids_after(&self, state: u8, after: &str, limit: usize) -> Result<Vec<String>, SpoolError> {
        use std::ops::Bound;
        let start = index_key(state, after);
        let mut out = Vec::new();
        for kv in self
            .index
            .range::<Vec<u8>, _>((Bound::Excluded(start), Bound::Unbounded))
            .take(limit)
        {
            let (k, _) = kv?;
            if k.first() != Some(&state) {
                break;
            }
            out.push(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        Ok(out)
    }
    fn scan_after(
        &self,
        after: &str,
        limit: usize,
        f: &mut dyn FnMut(&str, u8, &[u8]),
    ) -> Result<Option<String>, SpoolError> {
        use std::ops::Bound;
        let mut last = None;
        for kv in self
            .records
            .range::<&[u8], _>((Bound::Excluded(after.as_bytes()), Bound::Unbounded))
            .take(limit)
        {
            let (k, v) = kv?;
            let id = String::from_utf8_lossy(&k);
            let (state, rec) = split(&v);
            f(&id, state, rec);
            last = Some(id.into_owned());
        }
        Ok(last)
    }
    fn count(&self, state: u8) -> Result<usize, SpoolError> {
        let mut n = 0;
        for kv in self.index.scan_prefix([state]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }
    /// sled frees what it replaces through epoch-based reclamation (crossbeam-epoch's global
    /// collector), each thread collecting its garbage in a bag of its own that is handed on
    /// only when full or when the thread pins often enough. That garbage includes whole log
    /// buffers of SEGMENT_SIZE bytes: the writer that fills a segment defers the old buffer's
    /// release. A blocking thread that then goes idle kept several of them (measured: 48 MB
    /// of them after a `postsuper -d ALL` of 30,000 messages, and more the more threads had
    /// written). Flushing the bag hands it to the global collector, and each flush also
    /// advances the epoch and frees what has expired: three in a row free this thread's
    /// garbage unless another thread is pinned meanwhile (then a later call does).
    fn release_thread_garbage(&self) {
        for _ in 0..3 {
            sled::pin().flush();
        }
    }
}

/// The body segments of the database at `path` live beside it, in `path` + `.bodies`.
pub fn bodies_dir(path: &std::path::Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".bodies");
    std::path::PathBuf::from(p)
}
/// Bytes per log segment for a new database: 1 MB. sled holds records and references only
/// (bodies are in the journal), so the 8 MB that large bodies once needed would only cost
/// memory and the free space sled needs to start. sled refuses to open a database with
/// another segment size than the one it was created with, so an existing database keeps its
/// own (read from the `conf` file sled writes next to its log).
pub const SEGMENT_SIZE: usize = 1 << 20;

fn segment_size(path: &std::path::Path) -> usize {
    // Text lines followed by a 4-byte checksum.
    std::fs::read(path.join("conf"))
        .ok()
        .and_then(|bytes| {
            String::from_utf8_lossy(&bytes).lines().find_map(|l| {
                l.strip_prefix("segment_size:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })
        })
        .filter(|n| n.is_power_of_two() && (256..=1 << 24).contains(n))
        .unwrap_or(SEGMENT_SIZE)
}

fn split(v: &[u8]) -> (u8, &[u8]) {
    match v.split_first() {
        Some((s, rest)) => (*s, rest),
        // An empty value has no state byte: 0xFF is no state, so it decodes as corrupt.
        None => (0xFF, &[]),
    }
}

impl Drop for SledSpool {
    fn drop(&mut self) {
        // Every change finished and sled holds them all: the next open can take any
        // difference between sled and the journal for damage.
        if !self.broken.load(std::sync::atomic::Ordering::Relaxed)
            && self.journal.sync().is_ok()
            && self.db.flush().is_ok()
            && self
                .db
                .insert(CLOSED_CLEANLY, &self.journal.last_seq().to_be_bytes())
                .is_ok()
        {
            let _ = self.db.flush();
        }
    }
}
