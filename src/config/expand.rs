//! `$name` expansion as Postfix's mac_expand does it, lazily, with loop detection.
//!
//! Supported forms: `$name`, `${name}`, `$(name)`, `${name?text}`, `${name:text}`,
//! `${name?{text}}`, `${name:{text}}`, `${name?{text1}:{text2}}`, and Postfix 3.6's relational
//! form `${{expr} op {expr} ? {text1} : {text2}}` with `==`, `!=`, `<`, `<=`, `>`, `>=` (numbers)
//! and `<level` … `>=level` (compatibility levels such as `3.6`). `$$` is a literal `$`.

use thiserror::Error;

/// Postfix gives up after this many nested expansions; so do we.
const MAX_DEPTH: usize = 100;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("parameter ${0}: recursion loop or too many nested expansions")]
    Loop(String),
    #[error("malformed expansion in {0:?}: {1}")]
    Syntax(String, &'static str),
}

/// Expands `text`, calling `lookup` for each parameter name. `lookup` returns the raw
/// (unexpanded) value, or `None` for an undefined parameter, which expands to nothing.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut stack = Vec::new();
    expand_at(text, lookup, 0, &mut stack)
}

fn expand_at(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    stack: &mut Vec<String>,
) -> Result<String, ExpandError> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let next = text[i..].find('$').map(|n| i + n).unwrap_or(b.len());
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        i += 1;
        if i >= b.len() {
            out.push('$');
            break;
        }
        match b[i] {
            b'$' => {
                out.push('$');
                i += 1;
            }
            b'{' | b'(' => {
                let close = if b[i] == b'{' { b'}' } else { b')' };
                let end = matching(b, i, b[i], close)
                    .ok_or_else(|| ExpandError::Syntax(text.to_string(), "unbalanced brackets"))?;
                let inner = &text[i + 1..end];
                i = end + 1;
                out.push_str(&expand_braced(inner, lookup, depth, stack)?);
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push_str(&value_of(&text[start..i], lookup, depth, stack)?);
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

fn value_of(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    stack: &mut Vec<String>,
) -> Result<String, ExpandError> {
    if depth >= MAX_DEPTH || stack.iter().any(|n| n == name) {
        return Err(ExpandError::Loop(name.to_string()));
    }
    let Some(raw) = lookup(name) else {
        return Ok(String::new());
    };
    stack.push(name.to_string());
    let r = expand_at(&raw, lookup, depth + 1, stack);
    stack.pop();
    r
}

/// Index of the bracket closing the one at `open_at`, honouring nesting.
fn matching(b: &[u8], open_at: usize, open: u8, close: u8) -> Option<usize> {
    let mut level = 0usize;
    for (k, &c) in b.iter().enumerate().skip(open_at) {
        if c == open {
            level += 1;
        } else if c == close {
            level -= 1;
            if level == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// Strips one level of `{…}` around a conditional text, as Postfix 3.0+ allows.
fn unbrace(s: &str) -> &str {
    let t = s.trim();
    if t.starts_with('{')
        && t.ends_with('}')
        && matching(t.as_bytes(), 0, b'{', b'}') == Some(t.len() - 1)
    {
        &t[1..t.len() - 1]
    } else {
        s
    }
}

fn expand_braced(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    stack: &mut Vec<String>,
) -> Result<String, ExpandError> {
    let t = inner.trim_start();
    if t.starts_with('{') {
        return relational(t, lookup, depth, stack);
    }
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let name = &inner[..name_end];
    if name.is_empty() {
        return Err(ExpandError::Syntax(
            inner.to_string(),
            "empty parameter name",
        ));
    }
    let rest = &inner[name_end..];
    let value = value_of(name, lookup, depth, stack)?;
    if rest.is_empty() {
        return Ok(value);
    }
    let op = rest.as_bytes()[0];
    let arg = &rest[1..];
    // `?{a}:{b}` form: split the two branches at the top-level colon after a braced text.
    let (when_set, when_unset) = match op {
        b'?' => {
            let a = arg.trim_start();
            if a.starts_with('{') {
                let end = matching(a.as_bytes(), 0, b'{', b'}')
                    .ok_or_else(|| ExpandError::Syntax(inner.to_string(), "unbalanced {"))?;
                let after = a[end + 1..].trim_start();
                if let Some(other) = after.strip_prefix(':') {
                    (Some(&a[..=end]), Some(other))
                } else if after.is_empty() {
                    (Some(&a[..=end]), None)
                } else {
                    return Err(ExpandError::Syntax(inner.to_string(), "text after {…}"));
                }
            } else {
                (Some(arg), None)
            }
        }
        b':' => (None, Some(arg)),
        _ => {
            return Err(ExpandError::Syntax(
                inner.to_string(),
                "expected ? or : after name",
            ))
        }
    };
    let chosen = if !value.is_empty() {
        when_set
    } else {
        when_unset
    };
    match chosen {
        Some(t) => expand_at(unbrace(t), lookup, depth + 1, stack),
        None => Ok(String::new()),
    }
}

/// `{expr1} op {expr2} ? {true} : {false}`
fn relational(
    t: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    stack: &mut Vec<String>,
) -> Result<String, ExpandError> {
    let err = |m| ExpandError::Syntax(t.to_string(), m);
    let b = t.as_bytes();
    let e1 = matching(b, 0, b'{', b'}').ok_or_else(|| err("unbalanced {"))?;
    let left = expand_at(&t[1..e1], lookup, depth + 1, stack)?;
    let rest = t[e1 + 1..].trim_start();
    let op_end = rest.find('{').ok_or_else(|| err("missing right operand"))?;
    let op = rest[..op_end].trim();
    let rest = &rest[op_end..];
    let e2 = matching(rest.as_bytes(), 0, b'{', b'}').ok_or_else(|| err("unbalanced {"))?;
    let right = expand_at(&rest[1..e2], lookup, depth + 1, stack)?;
    let rest = rest[e2 + 1..].trim_start();
    let rest = rest
        .strip_prefix('?')
        .ok_or_else(|| err("missing ?"))?
        .trim_start();
    let e3 = matching(rest.as_bytes(), 0, b'{', b'}').ok_or_else(|| err("missing {true}"))?;
    let yes = &rest[1..e3];
    let rest = rest[e3 + 1..].trim_start();
    let no = match rest.strip_prefix(':') {
        Some(r) => {
            let r = r.trim_start();
            let e4 = matching(r.as_bytes(), 0, b'{', b'}').ok_or_else(|| err("missing {false}"))?;
            &r[1..e4]
        }
        None => "",
    };
    let truth = compare(left.trim(), op, right.trim()).ok_or_else(|| err("unknown operator"))?;
    expand_at(if truth { yes } else { no }, lookup, depth + 1, stack)
}

fn compare(l: &str, op: &str, r: &str) -> Option<bool> {
    use std::cmp::Ordering::*;
    let ord = if let Some(base) = op.strip_suffix("level") {
        let o = level_cmp(l, r);
        return Some(match base {
            "<" => o == Less,
            "<=" => o != Greater,
            ">" => o == Greater,
            ">=" => o != Less,
            "==" => o == Equal,
            "!=" => o != Equal,
            _ => return None,
        });
    } else {
        match (l.parse::<i64>(), r.parse::<i64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => l.cmp(r),
        }
    };
    Some(match op {
        "==" => ord == Equal,
        "!=" => ord != Equal,
        "<" => ord == Less,
        "<=" => ord != Greater,
        ">" => ord == Greater,
        ">=" => ord != Less,
        _ => return None,
    })
}

/// Compatibility levels compare as dotted numbers: `3.6` > `2` > `1` > `0`.
pub fn level_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| -> Vec<u64> {
        s.split('.')
            .map(|p| p.trim().parse::<u64>().unwrap_or(0))
            .collect()
    };
    let (mut x, mut y) = (parse(a), parse(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x.cmp(&y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ex(text: &str, vars: &[(&str, &str)]) -> Result<String, ExpandError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expand(text, &|n| m.get(n).cloned())
    }

    #[test]
    fn plain_forms() {
        let v = [("a", "x"), ("b", "$a-y"), ("empty", "")];
        assert_eq!(ex("$a ${a} $(a) $b", &v).unwrap(), "x x x x-y");
        assert_eq!(
            ex("${a?set}|${empty?set}|${a:unset}|${empty:unset}", &v).unwrap(),
            "set|||unset"
        );
        assert_eq!(
            ex("${a?{yes}:{no}} ${empty?{yes}:{no}}", &v).unwrap(),
            "yes no"
        );
        assert_eq!(ex("$undefined.", &v).unwrap(), ".");
        assert_eq!(ex("cost $$5", &v).unwrap(), "cost $5");
    }

    #[test]
    fn loops_are_detected() {
        let v = [("a", "$b"), ("b", "${a}")];
        assert!(matches!(ex("$a", &v), Err(ExpandError::Loop(_))));
    }

    #[test]
    fn relational() {
        let style = "${{$compatibility_level} <level {2} ? {subnet} : {host}}";
        assert_eq!(
            ex(style, &[("compatibility_level", "0")]).unwrap(),
            "subnet"
        );
        assert_eq!(
            ex(style, &[("compatibility_level", "3.6")]).unwrap(),
            "host"
        );
        assert_eq!(ex("${{5} > {10} ? {a} : {b}}", &[]).unwrap(), "b");
        assert_eq!(ex("${stress?{1}:{20}}", &[("stress", "")]).unwrap(), "20");
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        for bad in ["${a", "${?x}", "${{1} ~ {2} ? {a}}", "${{1}", "${a!x}"] {
            assert!(ex(bad, &[("a", "1")]).is_err(), "{bad}");
        }
    }
}
