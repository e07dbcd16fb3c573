//! `sqlite:/file.cf` tables (sqlite_table(5)), through rusqlite.
//!
//! The .cf file holds `name = value` lines: `dbpath`, `query` (or the legacy `table`,
//! `select_field`, `where_field`, `additional_conditions`), `result_format` (default `%s`),
//! `domain` and `expansion_limit` (default 0, no limit).
//!
//! In `query`, `%s` is the key, `%u`/`%d` its local part/domain, `%1`…`%9` domain labels
//! from the right, `%S %U %D` the same as lower case, `%%` a percent sign; every expansion is
//! SQL-quoted (single quotes doubled). A key lacking a part the query needs (no domain for
//! `%d`, empty local part for `%u`, too few labels) is not looked up. The first column of each
//! row is formatted with `result_format` (`%s %u %d` from the value, `%S %U %D %1…%9` from the
//! key) and the results are joined with commas. Keys are folded to lower case unless the
//! table is opened with `fold_case = false`, as Postfix does for its SQL tables.

use super::{fold, read_text, split_spec, OpenFlags, Table, TableError};
use crate::config::main_cf::logical_lines;
use rusqlite::{Connection, OpenFlags as SqlFlags};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What `domain =` restricts lookups to.
#[derive(Debug)]
enum DomainItem {
    Name(String),
    Table(Arc<dyn super::Table>),
}

#[derive(Debug)]
pub struct SqliteTable {
    spec: String,
    fold: bool,
    query: String,
    result_format: String,
    expansion_limit: usize,
    domains: Vec<DomainItem>,
    conn: Mutex<Connection>,
}

/// The key split as the `%` expansions need it.
struct KeyParts<'a> {
    key: &'a str,
    local: Option<&'a str>,
    domain: Option<&'a str>,
}

impl<'a> KeyParts<'a> {
    fn new(key: &'a str) -> Self {
        match key.rfind('@') {
            Some(i) => KeyParts {
                key,
                local: Some(&key[..i]),
                domain: Some(&key[i + 1..]),
            },
            None => KeyParts {
                key,
                local: None,
                domain: None,
            },
        }
    }

    /// The expansion of one `%c` from the key; None = the key lacks it (lookup suppressed).
    fn get(&self, c: char) -> Option<&'a str> {
        match c.to_ascii_lowercase() {
            's' => Some(self.key),
            'u' => match self.local {
                Some("") => None,
                Some(l) => Some(l),
                None => Some(self.key),
            },
            'd' => self.domain.filter(|d| !d.is_empty()),
            '1'..='9' => {
                let n = c as usize - '0' as usize;
                self.domain?
                    .rsplit('.')
                    .nth(n - 1)
                    .filter(|l| !l.is_empty())
            }
            _ => None,
        }
    }
}

/// SQL string quoting as sqlite3_mprintf("%q"): single quotes doubled.
fn sql_quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// Checks a template's `%` escapes at open time, so a typo is an error, not a silent miss.
fn check_template(spec: &str, name: &str, t: &str, allowed: &str) -> Result<(), TableError> {
    let mut it = t.chars();
    while let Some(c) = it.next() {
        if c == '%' {
            match it.next() {
                Some(n) if n == '%' || allowed.contains(n) => {}
                other => {
                    return Err(TableError::Invalid {
                        spec: spec.to_string(),
                        msg: format!(
                            "invalid {name} template \"{t}\": bad % escape \"%{}\"",
                            other.map(String::from).unwrap_or_default()
                        ),
                    })
                }
            }
        }
    }
    Ok(())
}

impl SqliteTable {
    pub fn open(spec: &str, cf: &Path, flags: OpenFlags) -> Result<SqliteTable, TableError> {
        let text = read_text(cf)?;
        let file = cf.display().to_string();
        let mut kv: std::collections::HashMap<String, String> = Default::default();
        for (line, raw) in logical_lines(&text) {
            let Some((k, v)) = raw.split_once('=') else {
                return Err(TableError::Syntax {
                    file,
                    line,
                    msg: "missing '=' after attribute name".to_string(),
                });
            };
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(TableError::Syntax {
                    file,
                    line,
                    msg: format!("bad attribute name \"{k}\""),
                });
            }
            kv.insert(k.to_string(), v.trim().to_string());
        }
        let invalid = |msg: String| TableError::Invalid {
            spec: spec.to_string(),
            msg,
        };
        let dbpath = kv
            .get("dbpath")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid(format!("{file}: missing dbpath")))?;
        let query = match (kv.get("query"), kv.get("table")) {
            (Some(q), _) if !q.is_empty() => q.clone(),
            (_, Some(table)) if !table.is_empty() => {
                // The pre-2.2 form, rebuilt into a query as Postfix does.
                let select = kv.get("select_field").cloned().unwrap_or_default();
                let wher = kv.get("where_field").cloned().unwrap_or_default();
                let extra = kv.get("additional_conditions").cloned().unwrap_or_default();
                format!("SELECT {select} FROM {table} WHERE {wher}='%s' {extra}")
            }
            _ => return Err(invalid(format!("{file}: missing query"))),
        };
        check_template(spec, "query", &query, "sudSUD123456789")?;
        let result_format = kv
            .get("result_format")
            .cloned()
            .unwrap_or_else(|| "%s".to_string());
        check_template(spec, "result_format", &result_format, "sudSUD123456789")?;
        let expansion_limit = match kv.get("expansion_limit") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| invalid(format!("{file}: bad expansion_limit \"{v}\"")))?,
        };
        let mut domains = Vec::new();
        for item in kv
            .get("domain")
            .map(|d| crate::config::split_list(d))
            .unwrap_or_default()
        {
            if item.starts_with('/') {
                // A file of domain names, one or more per line.
                for (_, l) in logical_lines(&read_text(Path::new(&item))?) {
                    for w in crate::config::split_list(&l) {
                        domains.push(DomainItem::Name(w.to_lowercase()));
                    }
                }
            } else if item.contains(':') && split_spec(&item).is_ok() {
                domains.push(DomainItem::Table(super::open_with(&item, flags)?));
            } else {
                domains.push(DomainItem::Name(item.to_lowercase()));
            }
        }
        let conn = Connection::open_with_flags(
            dbpath,
            SqlFlags::SQLITE_OPEN_READ_ONLY | SqlFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| TableError::Open {
            path: dbpath.clone(),
            reason: match &e {
                rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
                other => other.to_string(),
            },
        })?;
        // A busy writer (the administrator's sqlite3 shell) should delay us, not fail us.
        let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        Ok(SqliteTable {
            spec: spec.to_string(),
            fold: flags.fold_case,
            query,
            result_format,
            expansion_limit,
            domains,
            conn: Mutex::new(conn),
        })
    }

    fn domain_allowed(&self, key: &KeyParts<'_>) -> Result<bool, TableError> {
        if self.domains.is_empty() {
            return Ok(true);
        }
        let (Some(local), Some(domain)) = (key.local, key.domain) else {
            return Ok(false);
        };
        if local.is_empty() || domain.is_empty() {
            return Ok(false);
        }
        let d = domain.to_lowercase();
        for item in &self.domains {
            match item {
                DomainItem::Name(n) if *n == d => return Ok(true),
                DomainItem::Name(_) => {}
                DomainItem::Table(t) => {
                    if t.lookup(&d)?.is_some() {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Expands the query for a key; None when the key lacks a part the query uses.
    fn expand_query(&self, key: &KeyParts<'_>) -> Option<String> {
        let mut out = String::with_capacity(self.query.len() + key.key.len());
        let mut it = self.query.chars();
        while let Some(c) = it.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('%') => out.push('%'),
                Some(n) => out.push_str(&sql_quote(key.get(n)?)),
                None => out.push('%'),
            }
        }
        Some(out)
    }

    /// Formats one row value; None = this value is skipped.
    fn format_result(&self, value: &str, key: &KeyParts<'_>) -> Option<String> {
        let v = KeyParts::new(value);
        let mut out = String::new();
        let mut it = self.result_format.chars();
        while let Some(c) = it.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('%') => out.push('%'),
                Some('s') => out.push_str(value),
                Some('u') => out.push_str(v.get('u')?),
                Some('d') => out.push_str(v.get('d')?),
                Some(n) => out.push_str(key.get(n)?),
                None => out.push('%'),
            }
        }
        Some(out)
    }
}

impl Table for SqliteTable {
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        // SQL text cannot carry NUL; such a key cannot match anything real.
        if key.is_empty() || key.contains('\0') {
            return Ok(None);
        }
        let key = fold(key, self.fold);
        let parts = KeyParts::new(&key);
        if !self.domain_allowed(&parts)? {
            return Ok(None);
        }
        let Some(sql) = self.expand_query(&parts) else {
            return Ok(None);
        };
        // Key-only expansions in result_format must be available, else nothing is returned.
        for c in ['S', 'U', 'D', '1', '2', '3', '4', '5', '6', '7', '8', '9'] {
            if self.result_format.contains(&format!("%{c}")) && parts.get(c).is_none() {
                return Ok(None);
            }
        }
        let err = |msg: String| TableError::Lookup {
            spec: self.spec.clone(),
            msg,
        };
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(&sql)
            .map_err(|e| err(format!("query failed: {e}")))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| err(format!("query failed: {e}")))?;
        let mut results: Vec<String> = Vec::new();
        // Bounded by the database's rows and, when set, by expansion_limit.
        loop {
            let row = match rows.next() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(err(format!("query failed: {e}"))),
            };
            let value: Option<String> = match row.get_ref(0) {
                Ok(rusqlite::types::ValueRef::Null) => None,
                Ok(rusqlite::types::ValueRef::Integer(i)) => Some(i.to_string()),
                Ok(rusqlite::types::ValueRef::Real(f)) => Some(f.to_string()),
                Ok(rusqlite::types::ValueRef::Text(t)) | Ok(rusqlite::types::ValueRef::Blob(t)) => {
                    Some(String::from_utf8_lossy(t).into_owned())
                }
                Err(e) => return Err(err(format!("query failed: {e}"))),
            };
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            if let Some(r) = self.format_result(&value, &parts) {
                results.push(r);
                if self.expansion_limit > 0 && results.len() > self.expansion_limit {
                    return Err(err(format!("expansion limit exceeded for key: '{key}'")));
                }
            }
        }
        Ok(if results.is_empty() {
            None
        } else {
            Some(results.join(","))
        })
    }
    fn spec(&self) -> &str {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts() {
        let k = KeyParts::new("user@mail.example.com");
        assert_eq!(k.get('u'), Some("user"));
        assert_eq!(k.get('D'), Some("mail.example.com"));
        assert_eq!(k.get('1'), Some("com"));
        assert_eq!(k.get('3'), Some("mail"));
        assert_eq!(k.get('4'), None);
        let k = KeyParts::new("bare");
        assert_eq!(k.get('u'), Some("bare"));
        assert_eq!(k.get('d'), None);
        assert_eq!(KeyParts::new("@dom").get('u'), None);
        assert_eq!(sql_quote("o'brien"), "o''brien");
    }
}
