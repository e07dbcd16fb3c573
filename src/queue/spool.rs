//! The storage behind the queue: a small byte-level trait with a sled backend (production)
//! and an in-memory backend (unit tests).
//!
//! A record value is one state byte followed by the bincode envelope record; content lives
//! in its own tree so that status updates never rewrite the body. A third tree indexes
//! `state byte + id` so that listing one queue does not scan the others. Every change has
//! one commit point, the atomic write of the message's record (see [`SledSpool`]). Bodies
//! of [`BLOB_MIN`] bytes or more live in segment files beside the database, referenced from
//! sled (see [`super::blob`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::blob::{BlobError, BlobRef, BlobStore, BLOB_MIN};

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
    Blob(#[from] BlobError),
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

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemInner>, SpoolError> {
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
        Ok(())
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

/// The production spool: one sled database. `records` (ID → state byte + record) is the
/// truth; `content` holds small bodies, `blobs` references the large ones in segment files
/// ([`BlobStore`]), `index` (state byte + ID) lists one queue without reading the others, and
/// `renames` journals a reinjection in flight.
///
/// No sled transactions: once a process uses one, sled puts every operation behind one
/// process-wide lock, and its background flusher holds that lock's read side while it
/// writes, so every queue change of every session waited in one line (measured: the accept
/// and delivery rates rose by half without them). Instead each change has one commit point,
/// a single-key write of the message's record, with the other writes ordered around it so
/// that a crash at any point leaves either the old or the new state plus leftovers that
/// [`SledSpool::repair`] clears at open. Changes to one ID are serialised by a lock stripe.
pub struct SledSpool {
    db: sled::Db,
    records: sled::Tree,
    content: sled::Tree,
    blobrefs: sled::Tree,
    blobs: BlobStore,
    index: sled::Tree,
    renames: sled::Tree,
    stripes: Vec<Mutex<()>>,
    /// A change stopped between its writes (an error or a panic): the next open must not
    /// trust this run's shutdown, see [`CLOSED_CLEANLY`].
    broken: std::sync::atomic::AtomicBool,
}

/// Written when the spool is dropped with every change complete, removed at open. Without it
/// the next open looks for bodies left without a record, which reads every body.
pub const CLOSED_CLEANLY: &[u8] = b"relais:closed-cleanly";

/// Marks the spool broken unless the change it guards finishes (`std::mem::forget`).
struct Unfinished<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

const STRIPES: usize = 64;

/// sled's page cache. Its default, 1 GB, is sized for a database, not for a queue whose
/// bodies are each read once; sled counts on-disk bytes here, so the resident size can be
/// larger (a backlog of 8,000 bodies of 50 KB peaked near 500 MB with either value).
const CACHE_CAPACITY: u64 = 128 << 20;

impl SledSpool {
    /// Opens (creating) the database at `path` and repairs what a crash left half done.
    /// Fails while another process holds it.
    pub fn open(path: &std::path::Path) -> Result<SledSpool, SpoolError> {
        Self::open_with(path, super::blob::SEGMENT_BYTES)
    }

    /// [`open`](Self::open), with body segments that close at `segment_bytes`.
    pub fn open_with(path: &std::path::Path, segment_bytes: u64) -> Result<SledSpool, SpoolError> {
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
            blobs: BlobStore::open(&bodies_dir(path), segment_bytes)?,
            index: db.open_tree("index")?,
            renames: db.open_tree("renames")?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            broken: std::sync::atomic::AtomicBool::new(false),
            db,
        };
        let clean = spool.db.remove(CLOSED_CLEANLY)?.is_some();
        if spool.repair(!clean)? || clean {
            spool.db.flush()?;
        }
        // Count the references only now, after repair has dropped the stale ones.
        for kv in spool.blobrefs.iter() {
            let (id, v) = kv?;
            let Some(r) = BlobRef::decode(&v) else {
                continue;
            };
            if !spool.blobs.adopt(&r) {
                tracing::warn!(
                    "{}: body segment {} is missing",
                    String::from_utf8_lossy(&id),
                    r.seg
                );
            }
        }
        spool.blobs.prune()?;
        Ok(spool)
    }

    /// Copies the live bodies of mostly-dead segments ([`BlobStore::sparse`]) into the
    /// current one, so that the old files can go. The copies are synced before a reference
    /// moves to them, and an old segment is unlinked only after sled has flushed the moves:
    /// a crash in between finds every body at its old place or at its new one.
    pub fn compact_blobs(&self) -> Result<usize, SpoolError> {
        let sparse = self.blobs.sparse();
        if sparse.is_empty() {
            return Ok(0);
        }
        let mut copies = Vec::new();
        for kv in self.blobrefs.iter() {
            let (id, v) = kv?;
            let Some(old) = BlobRef::decode(&v).filter(|r| sparse.contains(&r.seg)) else {
                continue;
            };
            let id = String::from_utf8_lossy(&id).into_owned();
            // An unreadable body stays where it is; its message defers with a read error.
            let Ok(body) = self.blobs.read(&old) else {
                continue;
            };
            let new = self.blobs.write(&id, &body)?;
            copies.push((id, old, new));
        }
        self.blobs.sync()?;
        let mut moved = 0;
        for (id, old, new) in copies {
            let _g = self.lock(&id)?;
            let current = self.blobrefs.get(id.as_bytes())?;
            if current.as_deref().and_then(BlobRef::decode) == Some(old) {
                self.blobrefs.insert(id.as_bytes(), &new.encode())?;
                self.blobs.release(&old);
                moved += 1;
            } else {
                // Delivered or removed meanwhile.
                self.blobs.release(&new);
            }
        }
        self.flush()?;
        Ok(moved)
    }

    /// Body segment files present.
    pub fn blob_segments(&self) -> usize {
        self.blobs.segments()
    }

    fn blobref(&self, id: &str) -> Result<Option<BlobRef>, SpoolError> {
        Ok(self
            .blobrefs
            .get(id.as_bytes())?
            .and_then(|v| BlobRef::decode(&v)))
    }

    /// Removes `id`'s body, wherever it is.
    fn remove_body(&self, id: &str) -> Result<(), SpoolError> {
        self.content.remove(id.as_bytes())?;
        if let Some(r) = self
            .blobrefs
            .remove(id.as_bytes())?
            .and_then(|v| BlobRef::decode(&v))
        {
            self.blobs.release(&r);
        }
        Ok(())
    }

    /// Finishes or undoes what a crash interrupted: a journalled reinjection is completed
    /// when its new record exists and undone otherwise; index entries that disagree with
    /// their record go, missing ones are added; with `bodies` (after a crash), bodies without
    /// a record go. Returns whether anything changed.
    pub fn repair(&self, bodies: bool) -> Result<bool, SpoolError> {
        let mut changed = false;
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
            changed = true;
        }
        for kv in self.index.iter() {
            let (k, _) = kv?;
            let Some((&state, id)) = k.split_first() else {
                continue;
            };
            let agrees = self.records.get(id)?.is_some_and(|v| split(&v).0 == state);
            if !agrees {
                self.index.remove(&k)?;
                changed = true;
            }
        }
        for kv in self.records.iter() {
            let (id, v) = kv?;
            let key = index_key(split(&v).0, &String::from_utf8_lossy(&id));
            if !self.index.contains_key(&key)? {
                self.index.insert(key, Vec::<u8>::new())?;
                changed = true;
            }
        }
        if bodies {
            for kv in self.content.iter() {
                let (id, _) = kv?;
                if !self.records.contains_key(&id)? {
                    self.content.remove(&id)?;
                    changed = true;
                }
            }
            for kv in self.blobrefs.iter() {
                let (id, v) = kv?;
                let Some(record) = self.records.get(&id)? else {
                    self.blobrefs.remove(&id)?;
                    changed = true;
                    continue;
                };
                // sled persisted the record before the body's segment was synced, then the
                // process died: the flush that would have covered both never returned, so
                // the message was never acknowledged and can go.
                if !BlobRef::decode(&v).is_some_and(|r| self.blobs.verify(&r)) {
                    let name = String::from_utf8_lossy(&id).into_owned();
                    tracing::warn!("{name}: removed: its body was cut short by a crash before the message was acknowledged");
                    self.records.remove(&id)?;
                    self.index.remove(index_key(split(&record).0, &name))?;
                    self.blobrefs.remove(&id)?;
                    changed = true;
                }
            }
        }
        Ok(changed)
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

    /// Test helper: stores raw record bytes, e.g. to simulate corruption.
    pub fn put_raw(&self, id: &str, state: u8, record: &[u8]) -> Result<(), SpoolError> {
        let mut v = vec![state];
        v.extend_from_slice(record);
        self.records.insert(id.as_bytes(), v)?;
        self.index.insert(index_key(state, id), Vec::<u8>::new())?;
        Ok(())
    }

    /// Test helper: writes only the first `steps` writes of a reinjection of `old` as
    /// `new`, as a crash would leave them.
    pub fn rename_interrupted(&self, old: &str, new: &str, steps: usize) -> Result<(), SpoolError> {
        self.broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let v = self
            .records
            .get(old.as_bytes())?
            .ok_or_else(|| SpoolError::Other(format!("{old}: no such record")))?;
        let body = self.content.get(old.as_bytes())?;
        let blob = self.blobrefs.get(old.as_bytes())?;
        let state = split(&v).0;
        let writes: [&dyn Fn() -> Result<(), sled::Error>; 4] = [
            &|| {
                self.renames
                    .insert(new.as_bytes(), old.as_bytes())
                    .map(drop)
            },
            &|| {
                if let Some(b) = &body {
                    self.content.insert(new.as_bytes(), b.clone())?;
                }
                if let Some(b) = &blob {
                    self.blobrefs.insert(new.as_bytes(), b.clone())?;
                }
                Ok(())
            },
            &|| {
                self.index
                    .insert(index_key(state, new), Vec::<u8>::new())
                    .map(drop)
            },
            &|| self.records.insert(new.as_bytes(), v.clone()).map(drop),
        ];
        for w in writes.iter().take(steps) {
            w()?;
        }
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
        // Body and index first: the record, written last, is the commit point.
        let unfinished = Unfinished(&self.broken);
        if content.len() >= BLOB_MIN {
            let r = self.blobs.write(id, content)?;
            if let Err(e) = self.blobrefs.insert(id.as_bytes(), &r.encode()) {
                self.blobs.release(&r);
                return Err(e.into());
            }
        } else {
            self.content.insert(id.as_bytes(), content)?;
        }
        self.index.insert(index_key(state, id), Vec::<u8>::new())?;
        self.records
            .insert(id.as_bytes(), record_value(state, record))?;
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
        if let Some(r) = self.blobref(id)? {
            return Ok(Some(self.blobs.read(&r)?));
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
        let unfinished = Unfinished(&self.broken);
        match &change {
            Change::Keep => {}
            Change::Put(s, new) => {
                if *s != state {
                    self.index.insert(index_key(*s, id), Vec::<u8>::new())?;
                }
                // The commit point.
                self.records.insert(id.as_bytes(), record_value(*s, new))?;
                if *s != state {
                    self.index.remove(index_key(state, id))?;
                }
            }
            Change::Remove => {
                self.records.remove(id.as_bytes())?;
                self.remove_body(id)?;
                self.index.remove(index_key(state, id))?;
            }
        }
        std::mem::forget(unfinished);
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
        let blob = self.blobref(old)?;
        let body = match blob {
            Some(_) => None,
            None => Some(self.content.get(old.as_bytes())?.unwrap_or_default()),
        };
        let unfinished = Unfinished(&self.broken);
        // Journal first: repair completes the rename if the new record made it, and
        // undoes it otherwise, so the message is never lost nor left twice.
        self.renames.insert(new.as_bytes(), old.as_bytes())?;
        if let Some(r) = &blob {
            // Both IDs point at the one body until the old record goes.
            self.blobs.retain(r);
            self.blobrefs.insert(new.as_bytes(), &r.encode())?;
        }
        if let Some(body) = body {
            self.content.insert(new.as_bytes(), body)?;
        }
        self.index.insert(index_key(s, new), Vec::<u8>::new())?;
        self.records
            .insert(new.as_bytes(), record_value(s, &newrec))?;
        self.records.remove(old.as_bytes())?;
        self.index.remove(index_key(state, old))?;
        self.remove_body(old)?;
        self.renames.remove(new.as_bytes())?;
        std::mem::forget(unfinished);
        Ok(true)
    }
    fn flush(&self) -> Result<(), SpoolError> {
        // Bodies first: a record sled makes durable must find its body on disk.
        self.blobs.sync()?;
        let doomed = self.blobs.doomed();
        self.db.flush()?;
        // Their references' removal is on disk now. A file that cannot go is only wasted
        // space (open prunes it): the flush succeeded, and its callers must hear so.
        if let Err(e) = self.blobs.unlink_doomed(doomed) {
            tracing::warn!("cannot remove a body segment: {e}");
        }
        Ok(())
    }
    fn generate_id(&self) -> Result<u64, SpoolError> {
        Ok(self.db.generate_id()?)
    }
    fn compact(&self) -> Result<usize, SpoolError> {
        self.compact_blobs()
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
}

/// The body segments of the database at `path` live beside it, in `path` + `.bodies`.
pub fn bodies_dir(path: &std::path::Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".bodies");
    std::path::PathBuf::from(p)
}
/// Bytes per log segment for a new database: 8 MB. sled writes any log item over a quarter
/// segment (a B-tree leaf of message bodies, up to 16 of them) to a file of its own, fsynced
/// apart. Measured with 50 KB messages (tools/bench/deliver, 50 sessions): 8 MB delivered
/// 470–630 msg/s at 1.2–1.7 ms CPU each, 1 MB 450–530 at 1.9–2.6 ms, the 512 KB default
/// about 570; the price is resident memory and disk writes (1.8 MB written per 50 KB message
/// against 0.6 MB: sled rewrites whole leaves when it cleans segments). sled refuses to open
/// a database with another segment size than the one it was created with, so an existing
/// database keeps its own (read from the `conf` file sled writes next to its log).
pub const SEGMENT_SIZE: usize = 8 << 20;

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
        // Every change finished: the next open need not look for orphaned bodies, nor check
        // the bodies' checksums — so the bodies must be on disk before the mark is.
        if !self.broken.load(std::sync::atomic::Ordering::Relaxed)
            && self.blobs.sync().is_ok()
            && self.db.insert(CLOSED_CLEANLY, &[]).is_ok()
        {
            let _ = self.db.flush();
        }
    }
}
