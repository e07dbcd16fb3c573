//! alias_maps and local_recipient_maps for the local agent.
//!
//! File-based alias tables (hash:, btree:, lmdb:, texthash:) are read from their aliases(5)
//! source text (`name: value, value`, continuation lines start with white space, `#`
//! comments), so no newaliases/postalias step is needed; the file is read again when its
//! modification time changes. Other table types (sqlite:, regexp:, inline:, static:…) go
//! through the shared lookup tables, keyed by the local part. `unix:passwd.byname` (with or
//! without `proxy:`) is the system password file through libc's getpwnam.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::LocalError;
use crate::table::{self, Table};

/// Largest alias file or :include: file read, so a runaway file cannot exhaust memory.
pub const MAX_FILE: u64 = 4 << 20;

/// A parsed alias file and the modification time it was read at.
type Cached = (Option<SystemTime>, Arc<HashMap<String, String>>);

/// One aliases(5) text file, re-read when it changes.
#[derive(Debug)]
pub struct AliasFile {
    path: PathBuf,
    cache: Mutex<Cached>,
}

/// Parses aliases(5) text. Names are case-folded; a quoted name keeps its inside.
pub fn parse(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut cur: Option<(String, String)> = None;
    let flush = |cur: &mut Option<(String, String)>, out: &mut HashMap<String, String>| {
        if let Some((k, v)) = cur.take() {
            // The first entry wins, as postalias warns about and keeps.
            out.entry(k).or_insert_with(|| v.trim().to_string());
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.as_mut() {
                v.push(' ');
                v.push_str(trimmed);
            }
            continue;
        }
        flush(&mut cur, &mut out);
        let (name, value) = if let Some(rest) = trimmed.strip_prefix('"') {
            match rest.split_once('"') {
                Some((n, v)) => (n.to_string(), v.trim_start().strip_prefix(':').unwrap_or(v)),
                None => continue,
            }
        } else {
            match trimmed.split_once(':') {
                Some((n, v)) => (n.trim().to_string(), v),
                None => continue,
            }
        };
        if name.is_empty() {
            continue;
        }
        cur = Some((name.to_lowercase(), value.to_string()));
    }
    flush(&mut cur, &mut out);
    out
}

impl AliasFile {
    fn new(path: PathBuf) -> AliasFile {
        AliasFile {
            path,
            cache: Mutex::new((None, Arc::new(HashMap::new()))),
        }
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, LocalError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // A missing alias file is an empty one (Postfix's default names /etc/aliases,
            // which many hosts lack); the warning is given once at start.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LocalError::Table(format!(
                    "{}: {}",
                    self.path.display(),
                    table::strerror(&e)
                )))
            }
        };
        if meta.len() > MAX_FILE {
            return Err(LocalError::Table(format!(
                "{}: larger than {MAX_FILE} bytes",
                self.path.display()
            )));
        }
        let mtime = meta.modified().ok();
        let mut g = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.is_none() || g.0 != mtime {
            let text = std::fs::read(&self.path).map_err(|e| {
                LocalError::Table(format!("{}: {}", self.path.display(), table::strerror(&e)))
            })?;
            *g = (mtime, Arc::new(parse(&String::from_utf8_lossy(&text))));
        }
        Ok(g.1.get(&key.to_lowercase()).cloned())
    }
}

/// One entry of alias_maps or local_recipient_maps.
#[derive(Debug)]
pub enum Source {
    Aliases(AliasFile),
    Table(Arc<dyn Table>),
    Passwd,
}

impl Source {
    /// Opens one `type:name`; unsupported types (nis:) are reported for a warning and left out.
    pub fn open(spec: &str, alias_format: bool) -> Result<Source, LocalError> {
        let spec = spec.strip_prefix("proxy:").unwrap_or(spec);
        let (kind, name) = table::split_spec(spec).map_err(|e| LocalError::Table(e.to_string()))?;
        match kind {
            "unix" if name == "passwd.byname" => Ok(Source::Passwd),
            "hash" | "btree" | "lmdb" | "texthash" | "dbm" | "cdb" if alias_format => {
                let p = PathBuf::from(name);
                if !p.is_absolute() {
                    return Err(LocalError::Table(format!(
                        "{spec}: table file name must be an absolute path"
                    )));
                }
                Ok(Source::Aliases(AliasFile::new(p)))
            }
            _ => table::open(spec)
                .map(Source::Table)
                .map_err(|e| LocalError::Table(format!("{spec}: {e}"))),
        }
    }

    pub fn lookup(&self, key: &str) -> Result<Option<String>, LocalError> {
        match self {
            Source::Aliases(f) => f.lookup(key),
            Source::Table(t) => t.lookup(key).map_err(|e| LocalError::Table(e.to_string())),
            Source::Passwd => Ok(super::passwd::home(key).map(|h| h.display().to_string())),
        }
    }
}

/// A list of sources, first match wins.
#[derive(Debug, Default)]
pub struct Sources(pub Vec<Source>);

impl Sources {
    /// Opens every entry; the ones that cannot be opened are returned as warnings.
    /// `alias_format`: file tables are aliases(5) text (alias_maps), not postmap input.
    pub fn open(list: &[String], alias_format: bool) -> (Sources, Vec<String>) {
        let mut v = Vec::new();
        let mut warnings = Vec::new();
        for spec in list {
            match Source::open(spec, alias_format) {
                Ok(s) => {
                    if let Source::Aliases(f) = &s {
                        if !f.path.exists() {
                            warnings.push(format!(
                                "{spec}: {} does not exist; treated as empty",
                                f.path.display()
                            ));
                        }
                    }
                    v.push(s)
                }
                Err(e) => warnings.push(format!("{e}; this table is not used")),
            }
        }
        (Sources(v), warnings)
    }

    pub fn lookup(&self, key: &str) -> Result<Option<String>, LocalError> {
        for s in &self.0 {
            if let Some(v) = s.lookup(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits an alias value into its members: commas separate, double quotes protect
/// (`"|/usr/bin/cmd -a, b"`), surrounding white space and angle brackets are dropped.
pub fn members(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                push_member(&mut out, &cur);
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    push_member(&mut out, &cur);
    out
}

fn push_member(out: &mut Vec<String>, m: &str) {
    let m = m.trim();
    let m = m
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(m)
        .trim();
    if !m.is_empty() {
        out.push(m.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_text_format() {
        let m = parse(
            "# comment\nPostmaster: root\nroot: bob,\n  carol@example.com\n\"odd name\": x\nteam: \"|/bin/cat > /dev/null\", /tmp/f\nroot: ignored\n",
        );
        assert_eq!(m["postmaster"], "root");
        assert_eq!(m["root"], "bob, carol@example.com");
        assert_eq!(m["odd name"], "x");
        assert_eq!(members(&m["team"]), vec!["|/bin/cat > /dev/null", "/tmp/f"]);
        assert_eq!(members("a, <b@c>,, "), vec!["a", "b@c"]);
    }
}
