//! NAME
//!   table — Postfix-style lookup tables ("type:name")
//!
//! SUMMARY
//!   One [`Table`] trait behind every table type relais understands, [`open`] for one
//!   "type:name" spec and [`Maps`] for a parameter's list of tables (first match wins).
//!
//! DESCRIPTION
//!   Types: `static:`, `inline:{…}`, `texthash:` (text file read at open), `hash:`/`btree:`/
//!   `lmdb:` (a `file.db` compiled by `postmap`, relais's own format, see [`hash`]),
//!   `regexp:` (regex crate) and `pcre:` (fancy-regex), `cidr:` and `sqlite:` (rusqlite).
//!   Case folding follows Postfix: fixed-string tables (hash, texthash, inline, sqlite) fold
//!   the lookup key to lower case unless opened with `fold_case = false` (`postmap -f`);
//!   pattern tables (regexp, pcre, cidr) never fold, regexp/pcre patterns are case-insensitive
//!   unless their `i` flag says otherwise. `static:` ignores the key.
//!
//!   File-backed tables need absolute paths, as Postfix requires. Bad lines in table files get
//!   a warning naming file and line and are skipped, as Postfix does; the warnings are kept on
//!   the table ([`Table::warnings`]) so `postmap` can print them, and logged.
//!
//! SECURITY
//!   Table contents are administrator input but may be large or malformed: nothing here
//!   panics on them, compiled databases are length-checked, and regex engines run with their
//!   own size/backtrack limits.
//!
//! CONFIGURATION PARAMETERS
//!   default_database_type (hash), read by `postmap` for a bare file name.

pub mod cidr;
pub mod hash;
pub mod regexp;
pub mod simple;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TableError {
    /// Postfix's dict_open wording.
    #[error("open dictionary: expecting \"type:name\" form instead of \"{0}\"")]
    BadSpec(String),
    #[error("unsupported dictionary type: {0}")]
    UnsupportedType(String),
    #[error("{spec}: table file name must be an absolute path")]
    RelativePath { spec: String },
    /// A compiled database that is missing or unreadable (Postfix: "open database X.db: …").
    #[error("open database {path}: {reason}")]
    OpenDb { path: String, reason: String },
    /// A source or configuration file that is missing or unreadable.
    #[error("open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// A syntax error that makes the whole table unusable (one bad line is a warning).
    #[error("{file}, line {line}: {msg}")]
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{spec}: {msg}")]
    Invalid { spec: String, msg: String },
    #[error("{spec}: lookup error: {msg}")]
    Lookup { spec: String, msg: String },
    #[error("write {path}: {reason}")]
    Write { path: String, reason: String },
}

/// How a table is opened; `Default` is what the daemons use.
#[derive(Debug, Clone, Copy)]
pub struct OpenFlags {
    /// Fold keys of fixed-string tables to lower case (cleared by `postmap -f`).
    pub fold_case: bool,
}

impl Default for OpenFlags {
    fn default() -> Self {
        OpenFlags { fold_case: true }
    }
}

pub trait Table: Send + Sync + std::fmt::Debug {
    /// `Ok(None)` = not found. Keys are case-folded as Postfix does for this table type.
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError>;
    /// "type:name" as written.
    fn spec(&self) -> &str;
    /// Warnings about skipped lines found while opening, "file, line N: text".
    fn warnings(&self) -> &[String] {
        &[]
    }
}

/// Opens one table with the daemons' flags; warnings about skipped lines are logged.
pub fn open(spec: &str) -> Result<Arc<dyn Table>, TableError> {
    let t = open_with(spec, OpenFlags::default())?;
    for w in t.warnings() {
        tracing::warn!("{w}");
    }
    Ok(t)
}

/// Opens one table; the caller reports [`Table::warnings`].
pub fn open_with(spec: &str, flags: OpenFlags) -> Result<Arc<dyn Table>, TableError> {
    let (kind, name) = split_spec(spec)?;
    Ok(match kind {
        "static" => Arc::new(simple::Static::open(spec, name)),
        "inline" => Arc::new(simple::Inline::open(spec, name, flags)?),
        "texthash" => Arc::new(hash::TextHash::open(spec, absolute(spec, name)?, flags)?),
        "hash" | "btree" | "lmdb" => {
            Arc::new(hash::Compiled::open(spec, absolute(spec, name)?, flags)?)
        }
        "regexp" => Arc::new(regexp::RegexpTable::open(
            spec,
            absolute(spec, name)?,
            regexp::Engine::Posix,
        )?),
        "pcre" => Arc::new(regexp::RegexpTable::open(
            spec,
            absolute(spec, name)?,
            regexp::Engine::Pcre,
        )?),
        "cidr" => Arc::new(cidr::CidrTable::open(spec, absolute(spec, name)?)?),
        "sqlite" => Arc::new(sqlite::SqliteTable::open(
            spec,
            absolute(spec, name)?,
            flags,
        )?),
        other => return Err(TableError::UnsupportedType(other.to_string())),
    })
}

/// Splits "type:name"; the type is everything before the first colon.
pub fn split_spec(spec: &str) -> Result<(&str, &str), TableError> {
    match spec.split_once(':') {
        Some((t, n)) if !t.is_empty() && !t.contains(char::is_whitespace) => Ok((t, n)),
        _ => Err(TableError::BadSpec(spec.to_string())),
    }
}

/// Postfix requires absolute table paths (relative ones depend on the daemon's cwd/chroot).
fn absolute<'a>(spec: &str, name: &'a str) -> Result<&'a Path, TableError> {
    let p = Path::new(name);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(TableError::RelativePath {
            spec: spec.to_string(),
        })
    }
}

/// The system's message for an I/O error, without Rust's " (os error N)" suffix, so errors
/// read like Postfix's `%m`.
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Reads a whole table file as text; invalid UTF-8 is replaced rather than refused, as
/// Postfix tables are byte strings and one odd byte should not lose the whole table.
fn read_text(path: &Path) -> Result<String, TableError> {
    let bytes = std::fs::read(path).map_err(|e| TableError::Open {
        path: path.display().to_string(),
        reason: strerror(&e),
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A parameter's list of tables ("hash:/a, regexp:/b"): the first table that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    tables: Vec<Arc<dyn Table>>,
}

impl Maps {
    pub fn open(list: &[String]) -> Result<Maps, TableError> {
        let mut tables = Vec::with_capacity(list.len());
        for spec in list {
            tables.push(open(spec)?);
        }
        Ok(Maps { tables })
    }

    /// Builds from tables already open (tests, or maps sharing a table).
    pub fn from_tables(tables: Vec<Arc<dyn Table>>) -> Maps {
        Maps { tables }
    }

    /// The first table's answer; an error in an earlier table stops the search, as Postfix
    /// does (a later table must not override an answer the earlier one could not give).
    pub fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        for t in &self.tables {
            if let Some(v) = t.lookup(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub fn tables(&self) -> &[Arc<dyn Table>] {
        &self.tables
    }
}

/// Lower-cases a key for fixed-string tables when folding is on.
fn fold(key: &str, on: bool) -> std::borrow::Cow<'_, str> {
    if on && key.chars().any(|c| c.is_uppercase()) {
        std::borrow::Cow::Owned(key.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_errors_are_clear() {
        assert!(matches!(open("nocolon"), Err(TableError::BadSpec(_))));
        let e = open("foo:/x").unwrap_err();
        assert_eq!(e.to_string(), "unsupported dictionary type: foo");
        let e = open("hash:relative/file").unwrap_err();
        assert!(matches!(e, TableError::RelativePath { .. }), "{e}");
    }

    #[test]
    fn maps_first_match_wins() {
        let m = Maps::open(&["inline:{a=1}".to_string(), "static:two".to_string()]).unwrap();
        assert_eq!(m.lookup("a").unwrap().as_deref(), Some("1"));
        assert_eq!(m.lookup("b").unwrap().as_deref(), Some("two"));
        assert!(!m.is_empty());
        assert!(Maps::open(&[]).unwrap().is_empty());
    }
}
