//! `texthash:` (a "key value" text file read at open) and `hash:`/`btree:`/`lmdb:` (the same
//! text compiled by `postmap` into `file.db`, or `file.lmdb` for lmdb).
//!
//! The compiled format is relais's own: the 8-byte magic `RELAISDB`, a little-endian u32
//! format version, one byte saying whether keys were folded, then the bincode (standard
//! config) encoding of the key-sorted `Vec<(String, String)>`. It is written to a temporary
//! file and renamed into place, so a lookup never sees a half-written table. Postfix's
//! workflow is kept: edit the text, run `postmap`, and lookups read the compiled file (a
//! missing one is an error); a daemon notices a rebuilt file and rereads it.

use super::{fold, read_text, strerror, OpenFlags, Table, TableError};
use crate::config::main_cf::logical_lines;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"RELAISDB";
const VERSION: u32 = 1;
/// Refuse to decode more than this: a corrupt length must not allocate without bound.
const MAX_DB_BYTES: usize = 1 << 30;

/// One parsed source line: key, value, and its line number.
pub type Entry = (String, String, usize);

/// Parses postmap(1) input: `key whitespace value` lines, `#` comments, blank lines, and
/// continuation lines starting with whitespace. Bad lines become warnings (prefixed with
/// `file, line N: `, as Postfix words them) and are skipped. Duplicate keys keep the first
/// value with a warning. `texthash` adds Postfix's " -- ignoring this line".
pub fn parse_source(
    text: &str,
    file: &str,
    fold_keys: bool,
    texthash: bool,
) -> (Vec<Entry>, Vec<String>) {
    let mut out: Vec<Entry> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut warnings = Vec::new();
    let ignoring = if texthash {
        " -- ignoring this line"
    } else {
        ""
    };
    for (line, text) in logical_lines(text) {
        let text = text.trim();
        let (key, value) = match text.find(char::is_whitespace) {
            Some(i) => (&text[..i], text[i..].trim()),
            None => (text, ""),
        };
        if key.is_empty() || value.is_empty() {
            warnings.push(format!(
                "{file}, line {line}: expected format: key whitespace value{ignoring}"
            ));
            continue;
        }
        if key.ends_with(':') {
            warnings.push(format!(
                "{file}, line {line}: record is in \"key: value\" format; is this an alias file?"
            ));
        }
        let key = fold(key, fold_keys).into_owned();
        if seen.contains_key(&key) {
            warnings.push(if texthash {
                format!("{file}, line {line}: duplicate entry: \"{key}\"")
            } else {
                format!("{file}: duplicate entry: \"{key}\"")
            });
            continue;
        }
        seen.insert(key.clone(), ());
        out.push((key, value.to_string(), line));
    }
    (out, warnings)
}

/// `texthash:/file`: the source text, read once at open.
#[derive(Debug)]
pub struct TextHash {
    spec: String,
    fold: bool,
    map: HashMap<String, String>,
    warnings: Vec<String>,
}

impl TextHash {
    pub fn open(spec: &str, path: &Path, flags: OpenFlags) -> Result<TextHash, TableError> {
        let text = read_text(path)?;
        let (entries, warnings) =
            parse_source(&text, &path.display().to_string(), flags.fold_case, true);
        Ok(TextHash {
            spec: spec.to_string(),
            fold: flags.fold_case,
            map: entries.into_iter().map(|(k, v, _)| (k, v)).collect(),
            warnings,
        })
    }
}

impl Table for TextHash {
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        Ok(self.map.get(fold(key, self.fold).as_ref()).cloned())
    }
    fn spec(&self) -> &str {
        &self.spec
    }
    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// The compiled file for a source path and type: `file.lmdb` for lmdb, else `file.db`.
pub fn db_path(source: &Path, kind: &str) -> PathBuf {
    let suffix = if kind == "lmdb" { ".lmdb" } else { ".db" };
    let mut s = source.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Compiles `source` into its database for `kind` (hash, btree or lmdb). Returns the warnings
/// about skipped lines. The table name in duplicate warnings is `kind:source`, as Postfix's.
pub fn build(source: &Path, kind: &str, flags: OpenFlags) -> Result<Vec<String>, TableError> {
    let text = read_text(source)?;
    let name = format!("{kind}:{}", source.display());
    // Bad-format warnings name the file; duplicate warnings name the table.
    let (entries, mut warnings) =
        parse_source(&text, &source.display().to_string(), flags.fold_case, false);
    for w in warnings.iter_mut() {
        if let Some(rest) = w.strip_prefix(&format!("{}: duplicate", source.display())) {
            *w = format!("{name}: duplicate{rest}");
        }
    }
    let mut pairs: Vec<(String, String)> = entries.into_iter().map(|(k, v, _)| (k, v)).collect();
    pairs.sort();
    write_db(&db_path(source, kind), &pairs, flags.fold_case)?;
    Ok(warnings)
}

fn write_db(path: &Path, pairs: &[(String, String)], folded: bool) -> Result<(), TableError> {
    let werr = |e: std::io::Error| TableError::Write {
        path: path.display().to_string(),
        reason: strerror(&e),
    };
    let body = bincode::serde::encode_to_vec(pairs, bincode::config::standard()).map_err(|e| {
        TableError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    let mut bytes = Vec::with_capacity(body.len() + 13);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.push(folded as u8);
    bytes.extend_from_slice(&body);
    // Write beside the target and rename: readers see the old table or the new one.
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })
}

/// Reads a compiled database; errors say which file and why.
fn read_db(path: &Path) -> Result<HashMap<String, String>, TableError> {
    let bytes = std::fs::read(path).map_err(|e| TableError::OpenDb {
        path: path.display().to_string(),
        reason: strerror(&e),
    })?;
    let corrupt = |reason: &str| TableError::Corrupt {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() > MAX_DB_BYTES {
        return Err(corrupt("database too large"));
    }
    if bytes.len() < 13 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a relais database (rebuild it with postmap)"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    if u32::from_le_bytes(v) != VERSION {
        return Err(corrupt(
            "unsupported database version (rebuild it with postmap)",
        ));
    }
    let cfg = bincode::config::standard().with_limit::<MAX_DB_BYTES>();
    let (pairs, _): (Vec<(String, String)>, usize) =
        bincode::serde::decode_from_slice(&bytes[13..], cfg)
            .map_err(|e| corrupt(&format!("corrupt database: {e}")))?;
    Ok(pairs.into_iter().collect())
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    map: HashMap<String, String>,
}

/// `hash:`/`btree:`/`lmdb:` over a compiled file.
#[derive(Debug)]
pub struct Compiled {
    spec: String,
    path: PathBuf,
    fold: bool,
    data: RwLock<Loaded>,
}

impl Compiled {
    pub fn open(spec: &str, source: &Path, flags: OpenFlags) -> Result<Compiled, TableError> {
        let kind = spec.split(':').next().unwrap_or("hash");
        let path = db_path(source, kind);
        let stamp = stamp(&path);
        let map = read_db(&path)?;
        Ok(Compiled {
            spec: spec.to_string(),
            path,
            fold: flags.fold_case,
            data: RwLock::new(Loaded { stamp, map }),
        })
    }

    /// Rereads the file when postmap has replaced it since the last read. A failed reread
    /// keeps the previous contents (logged), so a bad rebuild does not empty a live table.
    fn refresh(&self) {
        let now = stamp(&self.path);
        let stale = match self.data.read() {
            Ok(d) => now.is_some() && d.stamp != now,
            Err(_) => true,
        };
        if !stale {
            return;
        }
        match read_db(&self.path) {
            Ok(map) => {
                let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
                *d = Loaded { stamp: now, map };
            }
            Err(e) => tracing::warn!("{}: {e}; keeping the previous contents", self.spec),
        }
    }
}

impl Table for Compiled {
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        self.refresh();
        let d = self.data.read().unwrap_or_else(|p| p.into_inner());
        Ok(d.map.get(fold(key, self.fold).as_ref()).cloned())
    }
    fn spec(&self) -> &str {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_format_and_warnings() {
        let text =
            "# c\nFoo@Example.com   REJECT  spam \n  continued\nlonely\nfoo@example.com OK\nk: v\n";
        let (e, w) = parse_source(text, "/t", true, false);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "foo@example.com");
        assert_eq!(e[0].1, "REJECT  spam continued");
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[0], "/t, line 4: expected format: key whitespace value");
        assert_eq!(w[1], "/t: duplicate entry: \"foo@example.com\"");
        assert!(w[2].starts_with("/t, line 6: record is in"));
    }

    #[test]
    fn build_then_lookup_and_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("access");
        std::fs::write(&src, "A@B.c x\n").unwrap();
        build(&src, "hash", OpenFlags::default()).unwrap();
        let t = Compiled::open("hash:x", &src, OpenFlags::default()).unwrap();
        assert_eq!(t.lookup("a@b.C").unwrap().as_deref(), Some("x"));
        std::fs::write(&src, "a@b.c yy\nnew z\n").unwrap();
        build(&src, "hash", OpenFlags::default()).unwrap();
        assert_eq!(t.lookup("new").unwrap().as_deref(), Some("z"));
        std::fs::write(db_path(&src, "hash"), b"garbage").unwrap();
        assert!(Compiled::open("hash:x", &src, OpenFlags::default()).is_err());
    }
}
