//! `static:` and `inline:` tables: their whole content is in the spec itself.

use super::{fold, OpenFlags, Table, TableError};
use std::collections::HashMap;

/// Strips one outer `{ … }` pair and the blanks inside it, if the text is so enclosed.
fn strip_braces(text: &str) -> Option<&str> {
    let t = text.trim();
    t.strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .map(str::trim)
}

/// `static:value`: every key finds `value` (`static:{ text with spaces }` for blanks).
#[derive(Debug)]
pub struct Static {
    spec: String,
    value: String,
}

impl Static {
    pub fn open(spec: &str, name: &str) -> Static {
        let value = strip_braces(name).unwrap_or(name).to_string();
        Static {
            spec: spec.to_string(),
            value,
        }
    }
}

impl Table for Static {
    fn lookup(&self, _key: &str) -> Result<Option<String>, TableError> {
        Ok(Some(self.value.clone()))
    }
    fn spec(&self) -> &str {
        &self.spec
    }
}

/// `inline:{ key=value, { key = text with spaces } }`: a small fixed-string table.
#[derive(Debug)]
pub struct Inline {
    spec: String,
    fold: bool,
    map: HashMap<String, String>,
}

impl Inline {
    pub fn open(spec: &str, name: &str, flags: OpenFlags) -> Result<Inline, TableError> {
        let invalid = |msg: String| TableError::Invalid {
            spec: spec.to_string(),
            msg,
        };
        let inner = strip_braces(name)
            .ok_or_else(|| invalid("the table must be enclosed in { and }".to_string()))?;
        let mut map = HashMap::new();
        for elem in crate::config::split_list(inner) {
            let pair = match strip_braces(&elem) {
                Some(p) if elem.trim_start().starts_with('{') => p.to_string(),
                _ => elem.clone(),
            };
            let Some((k, v)) = pair.split_once('=') else {
                return Err(invalid(format!(
                    "\"{pair}\": missing '=' after attribute name"
                )));
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(invalid(format!("\"{pair}\": missing attribute name")));
            }
            let k = fold(k, flags.fold_case).into_owned();
            // First definition wins, as with duplicate keys in other tables.
            map.entry(k).or_insert_with(|| v.trim().to_string());
        }
        if map.is_empty() {
            return Err(invalid("empty table".to_string()));
        }
        Ok(Inline {
            spec: spec.to_string(),
            fold: flags.fold_case,
            map,
        })
    }
}

impl Table for Inline {
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        Ok(self.map.get(fold(key, self.fold).as_ref()).cloned())
    }
    fn spec(&self) -> &str {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_with_and_without_braces() {
        let t = Static::open("static:OK", "OK");
        assert_eq!(t.lookup("anything").unwrap().as_deref(), Some("OK"));
        let t = Static::open("static:{ 550 go away }", "{ 550 go away }");
        assert_eq!(t.lookup("x").unwrap().as_deref(), Some("550 go away"));
    }

    #[test]
    fn inline_pairs_and_folding() {
        let name = "{ Key=Value, b=c, { long = text with spaces } }";
        let t = Inline::open("inline:", name, OpenFlags::default()).unwrap();
        assert_eq!(t.lookup("KEY").unwrap().as_deref(), Some("Value"));
        assert_eq!(
            t.lookup("long").unwrap().as_deref(),
            Some("text with spaces")
        );
        assert_eq!(t.lookup("nope").unwrap(), None);
        assert!(Inline::open("inline:", "{ a }", OpenFlags::default()).is_err());
        assert!(Inline::open("inline:", "a=b", OpenFlags::default()).is_err());
    }
}
