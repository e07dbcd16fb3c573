//! NAME
//!   journal - the queue's durable truth: checksummed, append-only segment files
//!
//! SUMMARY
//!   Every accepted message (envelope record and body), every later change of its record or
//!   queue, and its removal are appended here as entries, and a commit returns only after
//!   the entries are `fdatasync`ed ([`Journal::sync`]). sled holds the same records as an
//!   index and state store for fast reads; at open the spool makes sled agree with the
//!   journal (see `SledSpool::reconcile`), so that whatever sled loses or damages — a torn
//!   tail, a flipped byte, records it had not flushed — comes back from here.
//!
//! DESCRIPTION
//!   Why not sled alone: sled's flush on Linux is `sync_file_range`, which neither flushes the
//!   disk's write cache nor the file's size, and sled's recovery silently cuts its log at the
//!   first damaged byte, taking every later write with it (measured: one flipped bit lost 31
//!   of 50 acknowledged messages). Why not one file per message, as Postfix: an fsync per file
//!   and per directory entry; here concurrent commits share one `fdatasync` (group commit).
//!
//!   Files: `$queue_directory/db.bodies/NNNNNNNN.seg`. Each run appends to a new segment,
//!   never to an older one, so a tail torn by a crash is never written over. A segment closes
//!   at relais_body_segment_size bytes. Entry layout (big-endian):
//!
//!   ```text
//!   0  "RLJ1"   4  kind (1 message, 2 state, 3 removal, 4 rename)   5  queue state
//!   6  id length   7  old id length (rename)   8  record length   12 body length
//!   16 record CRC32   20 body CRC32   24 sequence number (u64)
//!   32 header CRC32 (bytes 0..32, id, old id)   36 id, old id, record, body
//!   ```
//!
//!   The sequence number grows by one per entry, across runs; sled keeps, per message, the
//!   number of the entry it last applied, so that when the journal has lost entries (a cut
//!   tail) the open can tell that sled's copy is the newer one.
//!
//!   A rename's body is the 20-byte reference of the body it shares with the old ID. The
//!   header has its own checksum, so a damaged length cannot send the reader astray: it
//!   resynchronises on the next valid header, and a damaged entry costs only its own
//!   message. Entries of the previous format ("RLB1": a body without its record, written by
//!   relais before the journal) are still read.
//!
//!   Space: sled keeps, per message, a [`Slot`]: where its body and its latest record entry
//!   are. Each segment counts the slots pointing into it. Segments are unlinked oldest first
//!   and only when nothing points into them, after a sync: a removal entry in a newer segment
//!   must outlive every older entry of its ID, or a deleted message would come back at the
//!   next open. [`Journal::compaction_target`] names the oldest segment when it keeps dead
//!   ones behind it or is mostly dead; the spool copies its few live messages forward.
//!
//!   Full disk: the active segment is kept allocated 1 MB ahead of its end
//!   (`fallocate(FALLOC_FL_KEEP_SIZE)`), so that state changes and removals — a delivered
//!   message's — still fit when the file system is full; a failed append is taken back, so
//!   that its space is reused by the next one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Encoded length of a [`BlobRef`].
pub const REF_LEN: usize = 20;
/// Encoded length of a [`Slot`].
pub const SLOT_LEN: usize = 40;

/// A segment is closed to new entries once it holds this many bytes, unless
/// relais_body_segment_size says otherwise.
pub const SEGMENT_BYTES: u64 = 32 << 20;

const MAGIC: &[u8; 4] = b"RLJ1";
const LEGACY: &[u8; 4] = b"RLB1";
const HDR: usize = 36;
/// Kept allocated past the active segment's end.
const PREALLOC: u64 = 1 << 20;
/// Bytes read at once while scanning: most entries (header, record, small body) fit.
const WINDOW: usize = 64 << 10;

/// What an entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new message: record and body.
    Message = 1,
    /// A new record or queue for an existing message.
    State = 2,
    /// The message is gone (delivered, bounced, expired or deleted).
    Removal = 3,
    /// The message `old` is now `id` (pickup's reinjection), sharing its body.
    Rename = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::State),
            3 => Some(Kind::Removal),
            4 => Some(Kind::Rename),
            _ => None,
        }
    }
}

/// Where one body lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub seg: u32,
    /// Offset of the body's first byte.
    pub off: u64,
    pub len: u32,
    pub crc: u32,
}

impl BlobRef {
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut b = [0u8; REF_LEN];
        b[0..4].copy_from_slice(&self.seg.to_be_bytes());
        b[4..12].copy_from_slice(&self.off.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b[16..20].copy_from_slice(&self.crc.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<BlobRef> {
        let b: &[u8; REF_LEN] = b.get(..REF_LEN)?.try_into().ok()?;
        Some(BlobRef {
            seg: be32(b, 0),
            off: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: be32(b, 12),
            crc: be32(b, 16),
        })
    }
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Where a record entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecLoc {
    pub seg: u32,
    pub off: u64,
    pub len: u32,
    pub crc: u32,
}

/// What sled keeps per message: its body and its latest record entry. A slot written before
/// the journal has only a body (20 bytes, `rec` None).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub body: BlobRef,
    pub rec: Option<RecLoc>,
    /// The sequence number of the last entry applied for this message (0: none).
    pub seq: u64,
}

impl Slot {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.body.encode().to_vec();
        if let Some(r) = self.rec {
            v.extend_from_slice(&r.seg.to_be_bytes());
            v.extend_from_slice(&(r.off as u32).to_be_bytes());
            v.extend_from_slice(&r.len.to_be_bytes());
            v.extend_from_slice(&self.seq.to_be_bytes());
            // The record's CRC is the record's own (sled holds its bytes); the offset's
            // high bits are not needed: segments are far below 4 GB.
            debug_assert!(r.off <= u64::from(u32::MAX));
        }
        v
    }

    pub fn decode(b: &[u8]) -> Option<Slot> {
        let body = BlobRef::decode(b)?;
        let (rec, seq) = match b.len() {
            REF_LEN => (None, 0),
            SLOT_LEN => (
                Some(RecLoc {
                    seg: be32(b, 20),
                    off: u64::from(be32(b, 24)),
                    len: be32(b, 28),
                    crc: 0,
                }),
                u64::from_be_bytes(b[32..40].try_into().ok()?),
            ),
            _ => return None,
        };
        Some(Slot { body, rec, seq })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("queue journal segment {0}: {1}")]
    Io(String, io::Error),
    #[error("queue journal segment {0} is gone")]
    Missing(u32),
    #[error("queue journal segment {0} at {1}: checksum mismatch (corrupt)")]
    Checksum(u32, u64),
    #[error("message of {0} bytes is too large for a journal entry")]
    TooLarge(usize),
}

impl JournalError {
    /// The bytes are there but wrong, or gone: no retry will read them.
    pub fn is_damage(&self) -> bool {
        matches!(self, JournalError::Missing(_) | JournalError::Checksum(..))
    }
}

struct Segment {
    /// Open while entries are written to it (until they are synced); the others are opened
    /// for each read, so that a queue of many segments holds no descriptor for each.
    file: Option<Arc<File>>,
    /// Bytes written (the end of the last entry).
    size: u64,
    /// Bytes allocated ahead (the active segment).
    allocated: u64,
    /// Slots pointing here, and the bytes they keep.
    refs: u64,
    live: u64,
}

struct Inner {
    segments: BTreeMap<u32, Segment>,
    /// The segment new entries go to, created at the first write of a run.
    active: Option<u32>,
    next: u32,
    /// Written since the last sync.
    dirty: Vec<u32>,
    /// A segment file was created since the last sync: its directory entry must be synced
    /// too, or a power cut could lose the whole file whose data was synced.
    created: bool,
    /// The next entry's sequence number.
    next_seq: u64,
}

/// The journal of one spool. All methods are blocking.
pub struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Serialises syncs: a flush that finds nothing dirty must still wait for a sync in
    /// progress that covers a write it depends on.
    syncing: Mutex<()>,
    segment_bytes: u64,
}

fn seg_name(seg: u32) -> String {
    format!("{seg:08x}.seg")
}

/// One entry met by [`Journal::scan`].
#[derive(Debug, Clone)]
pub struct Scanned {
    pub kind: Kind,
    pub id: String,
    /// The old ID of a rename.
    pub old: String,
    pub state: u8,
    pub seq: u64,
    pub rec: RecLoc,
    /// The record's bytes matched their checksum.
    pub rec_ok: bool,
    /// A message's body, or the body a rename shares.
    pub body: Option<BlobRef>,
    pub body_ok: bool,
}

/// Bytes the scan could not read as entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub seg: u32,
    pub off: u64,
    pub len: u64,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queue journal segment {}: {} unreadable bytes at offset {}",
            seg_name(self.seg),
            self.len,
            self.off
        )
    }
}

impl Journal {
    /// Opens (creating) the directory and lists its segments. Slots are counted afterwards
    /// with [`adopt`](Self::adopt), then [`prune`](Self::prune) drops the unused.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Journal, JournalError> {
        let io = |e| JournalError::Io(dir.display().to_string(), e);
        // Message contents: for the mail system's owner only, as Postfix's queue directories.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(seg) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| u32::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            let size = entry
                .metadata()
                .map_err(|e| JournalError::Io(seg_name(seg), e))?
                .len();
            segments.insert(
                seg,
                Segment {
                    file: None,
                    size,
                    allocated: size,
                    refs: 0,
                    live: 0,
                },
            );
        }
        let next = segments.keys().next_back().map_or(0, |s| s + 1);
        Ok(Journal {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                segments,
                active: None,
                next,
                dirty: Vec::new(),
                created: false,
                next_seq: 1,
            }),
            syncing: Mutex::new(()),
            segment_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The counters stay consistent under a panic (each update is one statement), so a
        // poisoned lock is taken over rather than failing every later write.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Syncs every segment present (at open, before anything is pruned: entries a crashed
    /// run wrote but did not sync decide what is dead).
    pub fn sync_all_present(&self) -> Result<(), JournalError> {
        let segs: Vec<u32> = self.lock().segments.keys().copied().collect();
        for seg in segs {
            let res = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(seg_name(seg)))
                .and_then(|f| f.sync_data());
            match res {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(JournalError::Io(seg_name(seg), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Counts a slot found in sled. Returns false when a segment it names is absent.
    pub fn adopt(&self, slot: &Slot) -> bool {
        let mut g = self.lock();
        let mut ok = true;
        for (seg, bytes) in slot_parts(slot) {
            match g.segments.get_mut(&seg) {
                Some(s) => {
                    s.refs += 1;
                    s.live += bytes;
                }
                None => ok = false,
            }
        }
        ok
    }

    /// One more slot pointing at these places.
    pub fn retain(&self, slot: &Slot) {
        let mut g = self.lock();
        for (seg, bytes) in slot_parts(slot) {
            if let Some(s) = g.segments.get_mut(&seg) {
                s.refs += 1;
                s.live += bytes;
            }
        }
    }

    /// One slot fewer; a segment left without any goes at a later flush (oldest first).
    pub fn release(&self, slot: &Slot) {
        let mut g = self.lock();
        for (seg, bytes) in slot_parts(slot) {
            if let Some(s) = g.segments.get_mut(&seg) {
                s.refs = s.refs.saturating_sub(1);
                s.live = s.live.saturating_sub(bytes);
            }
        }
    }

    /// Unlinks the unused segments at the head (at open, after counting).
    pub fn prune(&self) -> Result<usize, JournalError> {
        let dead = self.dead_prefix();
        let n = dead.len();
        self.unlink_prefix(dead)?;
        Ok(n)
    }

    fn unlink(&self, seg: u32) -> Result<(), JournalError> {
        match std::fs::remove_file(self.dir.join(seg_name(seg))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(JournalError::Io(seg_name(seg), e))
            }
            _ => Ok(()),
        }
    }

    /// Appends a new message. Not durable until [`sync`](Self::sync).
    pub fn write_message(
        &self,
        id: &str,
        state: u8,
        record: &[u8],
        body: &[u8],
    ) -> Result<Slot, JournalError> {
        let at = self.append(Kind::Message, state, id, "", record, body)?;
        Ok(Slot {
            body: BlobRef {
                seg: at.rec.seg,
                off: at.body_off,
                len: body.len() as u32,
                crc: crc32fast::hash(body),
            },
            rec: Some(at.rec),
            seq: at.seq,
        })
    }

    /// Appends a new record (and queue) for `id`; returns where it is.
    pub fn write_state(
        &self,
        id: &str,
        state: u8,
        record: &[u8],
    ) -> Result<(RecLoc, u64), JournalError> {
        let at = self.append(Kind::State, state, id, "", record, &[])?;
        Ok((at.rec, at.seq))
    }

    /// Appends the removal of `id`.
    pub fn write_removal(&self, id: &str) -> Result<(), JournalError> {
        self.append(Kind::Removal, 0, id, "", &[], &[]).map(drop)
    }

    /// Appends the rename of `old` to `new`, which keeps `body`.
    pub fn write_rename(
        &self,
        new: &str,
        old: &str,
        state: u8,
        record: &[u8],
        body: &BlobRef,
    ) -> Result<(RecLoc, u64), JournalError> {
        let at = self.append(Kind::Rename, state, new, old, record, &body.encode())?;
        Ok((at.rec, at.seq))
    }

    /// The number of the last entry appended.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Entries from now on are numbered after `seq` (at open: the highest number the
    /// journal or sled has seen).
    pub fn seen_seq(&self, seq: u64) {
        let mut g = self.lock();
        g.next_seq = g.next_seq.max(seq + 1);
    }

    fn append(
        &self,
        kind: Kind,
        state: u8,
        id: &str,
        old: &str,
        record: &[u8],
        body: &[u8],
    ) -> Result<Appended, JournalError> {
        let too_large = || JournalError::TooLarge(record.len() + body.len());
        let reclen = u32::try_from(record.len()).map_err(|_| too_large())?;
        let bodylen = u32::try_from(body.len()).map_err(|_| too_large())?;
        let id = &id.as_bytes()[..id.len().min(255)];
        let old = &old.as_bytes()[..old.len().min(255)];
        let reccrc = crc32fast::hash(record);
        let mut buf = Vec::with_capacity(HDR + id.len() + old.len() + record.len() + body.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[kind as u8, state, id.len() as u8, old.len() as u8]);
        buf.extend_from_slice(&reclen.to_be_bytes());
        buf.extend_from_slice(&bodylen.to_be_bytes());
        buf.extend_from_slice(&reccrc.to_be_bytes());
        buf.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
        // Sequence number and header checksum: filled in under the lock.
        buf.extend_from_slice(&[0u8; 12]);
        buf.extend_from_slice(id);
        buf.extend_from_slice(old);
        buf.extend_from_slice(record);
        buf.extend_from_slice(body);
        let seal = |buf: &mut Vec<u8>, seq: u64| {
            buf[24..32].copy_from_slice(&seq.to_be_bytes());
            let mut h = crc32fast::Hasher::new();
            h.update(&buf[..32]);
            h.update(&buf[HDR..HDR + id.len() + old.len()]);
            let c = h.finalize();
            buf[32..36].copy_from_slice(&c.to_be_bytes());
        };
        let need = buf.len() as u64;
        let (seg, start, file, seq) = {
            let mut g = self.lock();
            let seq = g.next_seq;
            g.next_seq += 1;
            seal(&mut buf, seq);
            let full = g
                .active
                .and_then(|a| g.segments.get(&a))
                .is_none_or(|s| s.size > 0 && s.size + need > self.segment_bytes);
            if full {
                let seg = g.next;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(self.dir.join(seg_name(seg)))
                    .map_err(|e| JournalError::Io(seg_name(seg), e))?;
                g.next += 1;
                g.created = true;
                g.active = Some(seg);
                g.segments.insert(
                    seg,
                    Segment {
                        file: Some(Arc::new(file)),
                        size: 0,
                        allocated: 0,
                        refs: 0,
                        live: 0,
                    },
                );
            }
            let seg = g.active.unwrap_or_default();
            let s = g.segments.get_mut(&seg).ok_or(JournalError::Missing(seg))?;
            let file = s.file.clone().ok_or(JournalError::Missing(seg))?;
            let start = s.size;
            s.size += need;
            (seg, start, file, seq)
        };
        if let Err(e) = file.write_all_at(&buf, start) {
            let mut g = self.lock();
            if let Some(s) = g.segments.get_mut(&seg) {
                if s.size == start + need {
                    // Nothing was appended after it: the next entry takes its place.
                    s.size = start;
                }
            }
            drop(g);
            // Whatever part of it reached the file must not read as an entry.
            let _ = file.write_all_at(&[0u8; 4], start);
            return Err(JournalError::Io(seg_name(seg), e));
        }
        let prealloc = {
            let mut g = self.lock();
            if !g.dirty.contains(&seg) {
                g.dirty.push(seg);
            }
            match g.segments.get_mut(&seg) {
                Some(s) if s.allocated < s.size + PREALLOC / 2 => {
                    let from = s.size.max(s.allocated);
                    s.allocated = s.size + PREALLOC;
                    Some(from)
                }
                _ => None,
            }
        };
        if let Some(from) = prealloc {
            // Best effort: a file system without fallocate just grows as it is written.
            // SAFETY: fallocate on an open descriptor with valid offsets touches no memory.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    from as libc::off_t,
                    (start + need + PREALLOC - from) as libc::off_t,
                )
            };
            if rc != 0 {
                let mut g = self.lock();
                if let Some(s) = g.segments.get_mut(&seg) {
                    s.allocated = from;
                }
            }
        }
        let rec_off = start + (HDR + id.len() + old.len()) as u64;
        Ok(Appended {
            rec: RecLoc {
                seg,
                off: rec_off,
                len: reclen,
                crc: reccrc,
            },
            body_off: rec_off + u64::from(reclen),
            seq,
        })
    }

    fn file(&self, seg: u32, end: u64) -> Result<Arc<File>, JournalError> {
        let file = {
            let g = self.lock();
            let s = g.segments.get(&seg).ok_or(JournalError::Missing(seg))?;
            if end > s.size {
                return Err(JournalError::Checksum(seg, end));
            }
            s.file.clone()
        };
        match file {
            Some(f) => Ok(f),
            None => Ok(Arc::new(
                File::open(self.dir.join(seg_name(seg)))
                    .map_err(|e| JournalError::Io(seg_name(seg), e))?,
            )),
        }
    }

    /// Reads and checks one body.
    pub fn read(&self, r: &BlobRef) -> Result<Vec<u8>, JournalError> {
        self.read_checked(r.seg, r.off, r.len, r.crc)
    }

    /// Reads and checks one record.
    pub fn read_record(&self, r: &RecLoc) -> Result<Vec<u8>, JournalError> {
        self.read_checked(r.seg, r.off, r.len, r.crc)
    }

    fn read_checked(
        &self,
        seg: u32,
        off: u64,
        len: u32,
        crc: u32,
    ) -> Result<Vec<u8>, JournalError> {
        let file = self.file(seg, off + u64::from(len))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, off)
            .map_err(|e| JournalError::Io(seg_name(seg), e))?;
        if crc32fast::hash(&buf) != crc {
            return Err(JournalError::Checksum(seg, off));
        }
        Ok(buf)
    }

    /// Whether `r` lies within its segment's written bytes and its checksum holds.
    pub fn verify(&self, r: &BlobRef) -> bool {
        self.read(r).is_ok()
    }

    /// Makes every entry appended so far durable.
    pub fn sync(&self) -> Result<(), JournalError> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let (files, created) = {
            let mut g = self.lock();
            let created = std::mem::take(&mut g.created);
            let dirty = std::mem::take(&mut g.dirty);
            let files: Vec<(u32, Arc<File>)> = dirty
                .into_iter()
                .filter_map(|seg| {
                    let f = g.segments.get(&seg)?.file.clone()?;
                    Some((seg, f))
                })
                .collect();
            (files, created)
        };
        if created {
            let res = File::open(&self.dir).and_then(|d| d.sync_all());
            if let Err(e) = res {
                let mut g = self.lock();
                g.created = true;
                for (s, _) in &files {
                    if !g.dirty.contains(s) {
                        g.dirty.push(*s);
                    }
                }
                return Err(JournalError::Io(self.dir.display().to_string(), e));
            }
        }
        for (i, (seg, f)) in files.iter().enumerate() {
            if let Err(e) = f.sync_data() {
                // This one and those not tried stay dirty: the next flush tries again.
                let mut g = self.lock();
                for (s, _) in &files[i..] {
                    if !g.dirty.contains(s) {
                        g.dirty.push(*s);
                    }
                }
                return Err(JournalError::Io(seg_name(*seg), e));
            }
        }
        // Closed segments that are synced need their descriptor no more.
        let mut g = self.lock();
        let active = g.active;
        for (seg, _) in &files {
            if Some(*seg) != active && !g.dirty.contains(seg) {
                if let Some(s) = g.segments.get_mut(seg) {
                    s.file = None;
                }
            }
        }
        Ok(())
    }

    /// The unused segments at the head of the journal: pass them to
    /// [`unlink_prefix`](Self::unlink_prefix) after a sync, which makes durable the entries
    /// that left them unused.
    pub fn dead_prefix(&self) -> Vec<u32> {
        let g = self.lock();
        g.segments
            .iter()
            .take_while(|(seg, s)| Some(**seg) != g.active && s.refs == 0)
            .map(|(seg, _)| *seg)
            .collect()
    }

    /// Unlinks `segs` (from [`dead_prefix`](Self::dead_prefix)) in order, stopping at one that
    /// is no longer unused or no longer the oldest.
    pub fn unlink_prefix(&self, segs: Vec<u32>) -> Result<(), JournalError> {
        for seg in segs {
            let gone = {
                let mut g = self.lock();
                let first = g.segments.keys().next().copied();
                let dead = first == Some(seg)
                    && g.active != Some(seg)
                    && g.segments.get(&seg).is_some_and(|s| s.refs == 0);
                if dead {
                    g.segments.remove(&seg);
                }
                dead
            };
            if !gone {
                break;
            }
            self.unlink(seg)?;
        }
        Ok(())
    }

    /// The oldest segment, when copying its live messages forward would let files go: it is
    /// mostly dead (live bytes under a quarter), or unused segments wait behind it.
    pub fn compaction_target(&self) -> Option<u32> {
        let g = self.lock();
        let mut it = g.segments.iter().filter(|(seg, _)| Some(**seg) != g.active);
        let (first, s) = it.next()?;
        if s.refs == 0 {
            return None;
        }
        let dead_behind = it.any(|(_, s)| s.refs == 0);
        (dead_behind || s.live * 4 < s.size).then_some(*first)
    }

    /// Segment files present, for tests and `relais status`.
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }

    /// Reads every entry of every segment in order, checking each checksum, and hands each
    /// to `f`. Bytes that do not read as entries are skipped up to the next valid header and
    /// returned. Memory: one window, whatever the segments' size.
    pub fn scan(&self, mut f: impl FnMut(&Scanned)) -> Result<Vec<Damage>, JournalError> {
        let segs: Vec<(u32, u64)> = self
            .lock()
            .segments
            .iter()
            .map(|(k, s)| (*k, s.size))
            .collect();
        let mut damage = Vec::new();
        for (seg, size) in segs {
            let file = match File::open(self.dir.join(seg_name(seg))) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(JournalError::Io(seg_name(seg), e)),
            };
            let mut r = Reader::new(&file, seg, size);
            let mut pos = 0u64;
            let mut bad: Option<u64> = None;
            while pos < size {
                match r.entry(pos)? {
                    Some((len, scanned)) => {
                        if let Some(from) = bad.take() {
                            damage.push(Damage {
                                seg,
                                off: from,
                                len: pos - from,
                            });
                        }
                        if let Some(s) = scanned {
                            f(&s);
                        }
                        pos += len;
                    }
                    None => {
                        bad.get_or_insert(pos);
                        pos = r.next_header(pos + 1)?;
                    }
                }
            }
            if let Some(from) = bad {
                // Zeros after the last entry are a failed append taken back, or the space
                // fallocate keeps: not damage.
                if !r.all_zero(from, size)? {
                    damage.push(Damage {
                        seg,
                        off: from,
                        len: size - from,
                    });
                }
            }
        }
        Ok(damage)
    }
}

fn slot_parts(slot: &Slot) -> impl Iterator<Item = (u32, u64)> {
    let body = (slot.body.seg, u64::from(slot.body.len));
    let rec = slot
        .rec
        .map(|r| (r.seg, u64::from(r.len) + HDR as u64 + 16));
    std::iter::once(body).chain(rec)
}

struct Appended {
    rec: RecLoc,
    body_off: u64,
    seq: u64,
}

/// Sequential reads of one segment through a window.
struct Reader<'a> {
    file: &'a File,
    seg: u32,
    size: u64,
    buf: Vec<u8>,
    at: u64,
}

impl<'a> Reader<'a> {
    fn new(file: &'a File, seg: u32, size: u64) -> Self {
        Reader {
            file,
            seg,
            size,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// `len` bytes at `off` (fewer at the end of the segment).
    fn get(&mut self, off: u64, len: usize) -> Result<&[u8], JournalError> {
        let end = (off + len as u64).min(self.size);
        if off < self.at || end > self.at + self.buf.len() as u64 {
            let want = (end - off).max(WINDOW as u64).min(self.size - off) as usize;
            self.buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                match self.file.read_at(&mut self.buf[got..], off + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(JournalError::Io(seg_name(self.seg), e)),
                }
            }
            self.buf.truncate(got);
            self.at = off;
        }
        let from = (off - self.at) as usize;
        let to = ((end - self.at) as usize).min(self.buf.len());
        Ok(&self.buf[from.min(to)..to])
    }

    /// The CRC32 of `len` bytes at `off`, read in windows; None when the segment ends first.
    fn crc(&mut self, off: u64, len: u64) -> Result<Option<u32>, JournalError> {
        let mut h = crc32fast::Hasher::new();
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(WINDOW as u64) as usize;
            let b = self.get(off + done, chunk)?;
            if b.len() < chunk {
                return Ok(None);
            }
            h.update(b);
            done += chunk as u64;
        }
        Ok(Some(h.finalize()))
    }

    /// The entry at `pos`: its length and what it says (None for an old-format body), or
    /// None when no valid header starts there.
    #[allow(clippy::type_complexity)]
    fn entry(&mut self, pos: u64) -> Result<Option<(u64, Option<Scanned>)>, JournalError> {
        let seg = self.seg;
        let h = self.get(pos, HDR + 510)?.to_vec();
        if h.len() >= 13 && &h[..4] == LEGACY {
            // Old format: magic, length, CRC, id length, id, body. No header checksum: take
            // it only when it fits and its body checks.
            let len = u64::from(be32(&h, 4));
            let crc = be32(&h, 8);
            let idlen = usize::from(h[12]);
            let off = pos + 13 + idlen as u64;
            if off + len <= self.size && self.crc(off, len)? == Some(crc) {
                return Ok(Some((13 + idlen as u64 + len, None)));
            }
            return Ok(None);
        }
        if h.len() < HDR || &h[..4] != MAGIC {
            return Ok(None);
        }
        let (idlen, oldlen) = (usize::from(h[6]), usize::from(h[7]));
        if h.len() < HDR + idlen + oldlen {
            return Ok(None);
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..32]);
        c.update(&h[HDR..HDR + idlen + oldlen]);
        if c.finalize() != be32(&h, 32) {
            return Ok(None);
        }
        let Some(kind) = Kind::from_byte(h[4]) else {
            return Ok(None);
        };
        let reclen = be32(&h, 8);
        let bodylen = be32(&h, 12);
        let id = String::from_utf8_lossy(&h[HDR..HDR + idlen]).into_owned();
        let old = String::from_utf8_lossy(&h[HDR + idlen..HDR + idlen + oldlen]).into_owned();
        let rec_off = pos + (HDR + idlen + oldlen) as u64;
        let body_off = rec_off + u64::from(reclen);
        let end = body_off + u64::from(bodylen);
        let len = end.min(self.size) - pos;
        let rec_ok = self.crc(rec_off, u64::from(reclen))? == Some(be32(&h, 16));
        let body_crc = be32(&h, 20);
        let (body, body_ok) = match kind {
            Kind::Message => {
                let ok = self.crc(body_off, u64::from(bodylen))? == Some(body_crc);
                let r = BlobRef {
                    seg,
                    off: body_off,
                    len: bodylen,
                    crc: body_crc,
                };
                (Some(r), ok)
            }
            Kind::Rename => {
                let b = self.get(body_off, REF_LEN)?.to_vec();
                let ok = b.len() == REF_LEN && crc32fast::hash(&b) == body_crc;
                (BlobRef::decode(&b).filter(|_| ok), ok)
            }
            _ => (None, true),
        };
        Ok(Some((
            len,
            Some(Scanned {
                kind,
                id,
                old,
                state: h[5],
                seq: u64::from_be_bytes(h[24..32].try_into().unwrap_or_default()),
                rec: RecLoc {
                    seg,
                    off: rec_off,
                    len: reclen,
                    crc: be32(&h, 16),
                },
                rec_ok,
                body,
                body_ok,
            }),
        )))
    }

    /// The offset of the next valid header at or after `from`, or the segment's end.
    fn next_header(&mut self, from: u64) -> Result<u64, JournalError> {
        let mut pos = from;
        while pos < self.size {
            let w = self.get(pos, WINDOW)?.to_vec();
            if w.is_empty() {
                break;
            }
            let mut at = 0;
            while let Some(i) = memchr::memmem::find(&w[at..], MAGIC)
                .into_iter()
                .chain(memchr::memmem::find(&w[at..], LEGACY))
                .min()
            {
                let cand = pos + (at + i) as u64;
                if self.entry(cand)?.is_some() {
                    return Ok(cand);
                }
                at += i + 1;
            }
            // A magic may straddle the window's end.
            pos += (w.len() as u64).saturating_sub(3).max(1);
        }
        Ok(self.size)
    }

    fn all_zero(&mut self, from: u64, to: u64) -> Result<bool, JournalError> {
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(WINDOW as u64) as usize;
            let b = self.get(pos, n)?;
            if b.is_empty() {
                return Ok(true);
            }
            if b.iter().any(|&x| x != 0) {
                return Ok(false);
            }
            pos += b.len() as u64;
        }
        Ok(true)
    }
}
