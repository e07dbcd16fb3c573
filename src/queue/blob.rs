//! Large message bodies kept out of sled's B-tree: append-only segment files beside the
//! database, each body referenced from sled by a [`BlobRef`] (segment, offset, length,
//! checksum).
//!
//! Why: sled keeps up to 16 values in one B-tree leaf and writes the whole leaf again each
//! time it consolidates the leaf's updates or moves it out of a log segment it cleans. A
//! 50 KB body was written to disk some 36 times (1.8 MB per message, measured with
//! tools/bench/deliver), and the copies cost CPU and memory until sled reclaimed them. Here a
//! body is written once, and its segment file is deleted when the last body in it is gone.
//!
//! Durability: [`BlobStore::sync`] fsyncs every segment written since the last sync; the
//! spool calls it inside its flush, before sled's, so a flushed record never points at an
//! unwritten body. sled may persist a record on its own before that (its background flush);
//! if the process then dies, the record points at a torn body. Such a message was never
//! acknowledged (250 waits for the whole flush), and the repair after a crash finds it by
//! its checksum (see `SledSpool::repair`).
//!
//! A segment is never appended to after a restart: each run starts a new one, so a torn tail
//! is never written over. Bodies are counted per segment in memory (rebuilt at open from
//! sled's references). A segment whose last reference is removed is unlinked after the next
//! flush, once that removal is on disk. [`BlobStore::sparse`] names segments that are mostly
//! dead, whose few live bodies the spool copies forward (`SledSpool::compact`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Encoded length of a [`BlobRef`].
pub const REF_LEN: usize = 20;

/// Bodies at least this long go to segment files; smaller ones stay in sled, where a leaf of
/// them is cheap to rewrite and a write costs no second fsync per flush.
pub const BLOB_MIN: usize = 8 << 10;

/// A segment is closed to new bodies once it holds this many bytes, unless
/// relais_body_segment_size says otherwise.
pub const SEGMENT_BYTES: u64 = 32 << 20;

const MAGIC: &[u8; 4] = b"RLB1";

/// Where one body lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub seg: u32,
    /// Offset of the body's first byte (after its header).
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
        let b: &[u8; REF_LEN] = b.try_into().ok()?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(BlobRef {
            seg: u32_at(0),
            off: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32_at(12),
            crc: u32_at(16),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("body segment {0}: {1}")]
    Io(String, io::Error),
    #[error("body segment {0} is gone")]
    Missing(u32),
    #[error("body in segment {0} at {1}: checksum mismatch")]
    Checksum(u32, u64),
    #[error("body of {0} bytes is too large for a segment")]
    TooLarge(usize),
}

struct Segment {
    /// Open while bodies are written to it (until they are synced); the others are opened
    /// for each read, so that a queue of many segments holds no descriptor for each.
    file: Option<Arc<File>>,
    /// Bytes written (the end of the last body).
    size: u64,
    /// Bodies referenced from sled, and their bytes.
    refs: u64,
    live: u64,
}

struct Inner {
    segments: BTreeMap<u32, Segment>,
    /// The segment new bodies go to, created at the first write of a run.
    active: Option<u32>,
    next: u32,
    /// Written since the last sync.
    dirty: Vec<u32>,
    /// No reference left: to unlink once a flush has made that durable.
    doomed: Vec<u32>,
    /// A segment file was created since the last sync: its directory entry must be synced
    /// too, or a power cut could lose the whole file whose data was synced.
    created: bool,
}

/// The segment files of one spool. All methods are blocking.
pub struct BlobStore {
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

impl BlobStore {
    /// Opens (creating) the directory and every segment in it; new segments close at
    /// `segment_bytes`. References are counted afterwards with [`adopt`](Self::adopt), then
    /// [`prune`](Self::prune) drops the unused.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<BlobStore, BlobError> {
        let io = |e| BlobError::Io(dir.display().to_string(), e);
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
                .map_err(|e| BlobError::Io(seg_name(seg), e))?
                .len();
            segments.insert(
                seg,
                Segment {
                    file: None,
                    size,
                    refs: 0,
                    live: 0,
                },
            );
        }
        let next = segments.keys().next_back().map_or(0, |s| s + 1);
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                segments,
                active: None,
                next,
                dirty: Vec::new(),
                doomed: Vec::new(),
                created: false,
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

    /// Counts a reference found in sled at open. Returns false when its segment is absent.
    pub fn adopt(&self, r: &BlobRef) -> bool {
        let mut g = self.lock();
        match g.segments.get_mut(&r.seg) {
            Some(s) => {
                s.refs += 1;
                s.live += u64::from(r.len);
                true
            }
            None => false,
        }
    }

    /// Whether `r` lies within its segment's written bytes and its checksum holds.
    pub fn verify(&self, r: &BlobRef) -> bool {
        self.read(r).is_ok()
    }

    /// Unlinks the segments no reference points to (at open, after counting).
    pub fn prune(&self) -> Result<usize, BlobError> {
        let dead: Vec<u32> = {
            let mut g = self.lock();
            let dead: Vec<u32> = g
                .segments
                .iter()
                .filter(|(seg, s)| s.refs == 0 && Some(**seg) != g.active)
                .map(|(seg, _)| *seg)
                .collect();
            for seg in &dead {
                g.segments.remove(seg);
            }
            dead
        };
        for seg in &dead {
            self.unlink(*seg)?;
        }
        Ok(dead.len())
    }

    fn unlink(&self, seg: u32) -> Result<(), BlobError> {
        match std::fs::remove_file(self.dir.join(seg_name(seg))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(BlobError::Io(seg_name(seg), e)),
            _ => Ok(()),
        }
    }

    /// Appends `body` (tagged with `id` for a human with a hex dump) and counts the new
    /// reference. Not durable until [`sync`](Self::sync).
    pub fn write(&self, id: &str, body: &[u8]) -> Result<BlobRef, BlobError> {
        let len = u32::try_from(body.len()).map_err(|_| BlobError::TooLarge(body.len()))?;
        let id = &id.as_bytes()[..id.len().min(255)];
        let mut header = Vec::with_capacity(13 + id.len());
        let crc = crc32fast::hash(body);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&crc.to_be_bytes());
        header.push(id.len() as u8);
        header.extend_from_slice(id);
        let need = header.len() as u64 + u64::from(len);
        let (seg, start, file) = {
            let mut g = self.lock();
            let full = g
                .active
                .and_then(|a| g.segments.get(&a))
                .is_none_or(|s| s.size > 0 && s.size + need > self.segment_bytes);
            if full {
                let seg = g.next;
                let path = self.dir.join(seg_name(seg));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| BlobError::Io(seg_name(seg), e))?;
                g.next += 1;
                g.created = true;
                if let Some(old) = g.active.replace(seg) {
                    if g.segments.get(&old).is_some_and(|s| s.refs == 0) {
                        g.doomed.push(old);
                    }
                }
                g.segments.insert(
                    seg,
                    Segment {
                        file: Some(Arc::new(file)),
                        size: 0,
                        refs: 0,
                        live: 0,
                    },
                );
            }
            let seg = g.active.unwrap_or_default();
            let s = g.segments.get_mut(&seg).ok_or(BlobError::Missing(seg))?;
            let file = s.file.clone().ok_or(BlobError::Missing(seg))?;
            let start = s.size;
            s.size += need;
            s.refs += 1;
            s.live += u64::from(len);
            (seg, start, file)
        };
        let res = file
            .write_all_at(&header, start)
            .and_then(|()| file.write_all_at(body, start + header.len() as u64));
        let r = BlobRef {
            seg,
            off: start + header.len() as u64,
            len,
            crc,
        };
        let mut g = self.lock();
        if let Err(e) = res {
            drop(g);
            self.release(&r);
            return Err(BlobError::Io(seg_name(seg), e));
        }
        if !g.dirty.contains(&seg) {
            g.dirty.push(seg);
        }
        Ok(r)
    }

    /// Reads and checks one body.
    pub fn read(&self, r: &BlobRef) -> Result<Vec<u8>, BlobError> {
        let file = {
            let g = self.lock();
            let s = g.segments.get(&r.seg).ok_or(BlobError::Missing(r.seg))?;
            if r.off + u64::from(r.len) > s.size {
                return Err(BlobError::Checksum(r.seg, r.off));
            }
            s.file.clone()
        };
        let file = match file {
            Some(f) => f,
            None => Arc::new(
                File::open(self.dir.join(seg_name(r.seg)))
                    .map_err(|e| BlobError::Io(seg_name(r.seg), e))?,
            ),
        };
        let mut buf = vec![0u8; r.len as usize];
        file.read_exact_at(&mut buf, r.off)
            .map_err(|e| BlobError::Io(seg_name(r.seg), e))?;
        if crc32fast::hash(&buf) != r.crc {
            return Err(BlobError::Checksum(r.seg, r.off));
        }
        Ok(buf)
    }

    /// One more reference to an existing body (a reinjection under a new ID).
    pub fn retain(&self, r: &BlobRef) {
        let mut g = self.lock();
        if let Some(s) = g.segments.get_mut(&r.seg) {
            s.refs += 1;
            s.live += u64::from(r.len);
        }
    }

    /// One reference fewer; a closed segment left without any is unlinked after the next
    /// flush.
    pub fn release(&self, r: &BlobRef) {
        let mut g = self.lock();
        let active = g.active;
        if let Some(s) = g.segments.get_mut(&r.seg) {
            s.refs = s.refs.saturating_sub(1);
            s.live = s.live.saturating_sub(u64::from(r.len));
            if s.refs == 0 && active != Some(r.seg) {
                g.doomed.push(r.seg);
            }
        }
    }

    /// Makes every body written so far durable.
    pub fn sync(&self) -> Result<(), BlobError> {
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
                self.lock().created = true;
                return Err(BlobError::Io(self.dir.display().to_string(), e));
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
                return Err(BlobError::Io(seg_name(*seg), e));
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

    /// The segments left without references so far; pass them to
    /// [`unlink_doomed`](Self::unlink_doomed) once sled has flushed.
    pub fn doomed(&self) -> Vec<u32> {
        std::mem::take(&mut self.lock().doomed)
    }

    /// Unlinks those of `segs` that still have no reference; a failure does not stop the
    /// others (the first is returned).
    pub fn unlink_doomed(&self, segs: Vec<u32>) -> Result<(), BlobError> {
        let mut first = Ok(());
        for seg in segs {
            let gone = {
                let mut g = self.lock();
                let dead =
                    g.active != Some(seg) && g.segments.get(&seg).is_some_and(|s| s.refs == 0);
                if dead {
                    g.segments.remove(&seg);
                }
                dead
            };
            if gone {
                if let Err(e) = self.unlink(seg) {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// Closed segments whose live bodies fill less than a quarter of them: copying those
    /// bodies forward lets the file go.
    pub fn sparse(&self) -> Vec<u32> {
        let g = self.lock();
        g.segments
            .iter()
            .filter(|(seg, s)| Some(**seg) != g.active && s.refs > 0 && s.live * 4 < s.size)
            .map(|(seg, _)| *seg)
            .collect()
    }

    /// Segment files present, for tests and `relais status`.
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }
}
