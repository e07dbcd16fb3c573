//! `regexp:` (regexp_table(5), the regex crate) and `pcre:` (pcre_table(5), fancy-regex for
//! lookaround and backreferences).
//!
//! Syntax: `/pattern/flags result`, `!/pattern/flags result`, `if /pattern/flags` …
//! `endif` (nesting allowed, `if !/…/` too), `$1`…`$9`, `${n}`, `$(n)` and `$$` in results,
//! `#` comments and continuation lines. Patterns are case-insensitive unless the `i` flag
//! toggles that. Keys are never case-folded. Each bad line is reported with
//! "<type> map FILE, line N: …" and skipped, as Postfix does.

use super::{read_text, Table, TableError};
use crate::config::main_cf::logical_lines;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// POSIX-style extended regular expressions (regexp:).
    Posix,
    /// Perl-compatible expressions (pcre:).
    Pcre,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Posix => "regexp",
            Engine::Pcre => "pcre",
        }
    }
}

#[derive(Debug)]
enum Re {
    Posix(regex::Regex),
    Pcre(fancy_regex::Regex),
}

/// Upper bound on fancy-regex backtracking per match, so a hostile header cannot stall a
/// daemon (fancy-regex's own default, made explicit).
const BACKTRACK_LIMIT: usize = 1_000_000;

impl Re {
    fn groups(&self) -> usize {
        match self {
            Re::Posix(r) => r.captures_len().saturating_sub(1),
            Re::Pcre(r) => r.captures_len().saturating_sub(1),
        }
    }

    /// The capture groups of a match (index 0 = whole match), or None.
    fn captures(&self, key: &str) -> Result<Option<Vec<Option<String>>>, String> {
        match self {
            Re::Posix(r) => Ok(r.captures(key).map(|c| {
                c.iter()
                    .map(|m| m.map(|m| m.as_str().to_string()))
                    .collect()
            })),
            Re::Pcre(r) => match r.captures(key) {
                Ok(c) => Ok(c.map(|c| {
                    c.iter()
                        .map(|m| m.map(|m| m.as_str().to_string()))
                        .collect()
                })),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    fn is_match(&self, key: &str) -> Result<bool, String> {
        match self {
            Re::Posix(r) => Ok(r.is_match(key)),
            Re::Pcre(r) => r.is_match(key).map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Group(usize),
}

#[derive(Debug)]
enum Rule {
    Match {
        re: Re,
        negate: bool,
        result: Vec<Part>,
        line: usize,
    },
    /// `end` is the index of the matching Endif.
    If {
        re: Re,
        negate: bool,
        end: usize,
        line: usize,
    },
    Endif,
}

#[derive(Debug)]
pub struct RegexpTable {
    spec: String,
    file: String,
    engine: Engine,
    rules: Vec<Rule>,
    warnings: Vec<String>,
}

/// A pattern as written: negation, the expression, its flags, and what follows it.
struct Pat<'a> {
    negate: bool,
    expr: String,
    flags: &'a str,
    rest: &'a str,
}

/// Splits `!/expr/flags rest`; `\` escapes the delimiter (and is kept, as the regex
/// engines read `\/` as `/`).
fn split_pattern(text: &str) -> Result<Pat<'_>, String> {
    let (negate, t) = match text.strip_prefix('!') {
        Some(t) => (true, t.trim_start()),
        None => (false, text),
    };
    let mut chars = t.char_indices();
    let delim = match chars.next() {
        Some((_, c)) if !c.is_alphanumeric() && !c.is_whitespace() && c != '\\' => c,
        _ => return Err("ignoring unrecognized request".to_string()),
    };
    let mut expr = String::new();
    let mut end = None;
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            expr.push(c);
            escaped = false;
        } else if c == '\\' {
            expr.push(c);
            escaped = true;
        } else if c == delim {
            end = Some(i + c.len_utf8());
            break;
        } else {
            expr.push(c);
        }
    }
    let Some(end) = end else {
        return Err(format!("unmatched delimiter \"{delim}\" in pattern"));
    };
    let after = &t[end..];
    let flen = after.find(char::is_whitespace).unwrap_or(after.len());
    Ok(Pat {
        negate,
        expr,
        flags: &after[..flen],
        rest: after[flen..].trim(),
    })
}

fn compile(engine: Engine, pat: &Pat<'_>) -> Result<Re, String> {
    let mut casei = true;
    let mut multi = false;
    let (mut dotall, mut extended, mut ungreedy, mut anchored) = (false, false, false, false);
    for f in pat.flags.chars() {
        match (engine, f) {
            (_, 'i') => casei = !casei,
            (_, 'm') => multi = !multi,
            // regexp: x toggles POSIX "extended" syntax, which is the only syntax the regex
            // crate has; accepted so tables written for Postfix load.
            (Engine::Posix, 'x') => {}
            (Engine::Pcre, 'x') => extended = !extended,
            (Engine::Pcre, 's') => dotall = !dotall,
            (Engine::Pcre, 'U') => ungreedy = !ungreedy,
            (Engine::Pcre, 'A') => anchored = !anchored,
            // E (dollar matches only at the very end) is the default without m; X (strict
            // escapes) has no equivalent and only rejects patterns.
            (Engine::Pcre, 'E' | 'X') => {}
            _ => {
                return Err(format!(
                    "unknown {} option \"{f}\": skipping this rule",
                    engine.name()
                ))
            }
        }
    }
    match engine {
        // POSIX regcomp without REG_NEWLINE (Postfix's default; `m` sets it) lets `.` match a
        // newline, so `/^Received:.*with ESMTPSA/` matches a folded multi-line header.
        Engine::Posix => regex::RegexBuilder::new(&pat.expr)
            .case_insensitive(casei)
            .multi_line(multi)
            .dot_matches_new_line(!multi)
            .build()
            .map(Re::Posix)
            .map_err(|e| {
                format!(
                    "error in regular expression \"{}\": {}",
                    pat.expr,
                    one_line(&e.to_string())
                )
            }),
        Engine::Pcre => {
            let mut prefix = String::from("(?");
            for (on, c) in [
                (casei, 'i'),
                (multi, 'm'),
                (dotall, 's'),
                (extended, 'x'),
                (ungreedy, 'U'),
            ] {
                if on {
                    prefix.push(c);
                }
            }
            let body = if anchored {
                format!("\\A(?:{})", pat.expr)
            } else {
                pat.expr.clone()
            };
            let full = if prefix.len() > 2 {
                format!("{prefix}){body}")
            } else {
                body
            };
            fancy_regex::RegexBuilder::new(&full)
                .backtrack_limit(BACKTRACK_LIMIT)
                .build()
                .map(Re::Pcre)
                .map_err(|e| {
                    format!(
                        "error in regular expression \"{}\": {}",
                        pat.expr,
                        one_line(&e.to_string())
                    )
                })
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses result text into literals and `$n` references.
fn parse_result(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            // Copy up to the next '$' in one go (keeps UTF-8 intact).
            let next = text[i..].find('$').map(|n| i + n).unwrap_or(b.len());
            lit.push_str(&text[i..next]);
            i = next;
            continue;
        }
        let rest = &text[i + 1..];
        let (name, used) = if rest.starts_with('$') {
            lit.push('$');
            i += 2;
            continue;
        } else if let Some(r) = rest.strip_prefix('{').or_else(|| rest.strip_prefix('(')) {
            let close = if rest.starts_with('{') { '}' } else { ')' };
            match r.find(close) {
                Some(n) => (&r[..n], n + 2),
                None => return Err(format!("unmatched \"{}\" in replacement text", &rest[..1])),
            }
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if n == 0 {
                // A lone '$' is literal text.
                lit.push('$');
                i += 1;
                continue;
            }
            (&rest[..n], n)
        };
        let idx: usize = match name.parse() {
            Ok(n) if name.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => return Err(format!("non-numeric replacement index \"{name}\"")),
        };
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(Part::Group(idx));
        i += 1 + used;
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

impl RegexpTable {
    pub fn open(spec: &str, path: &Path, engine: Engine) -> Result<RegexpTable, TableError> {
        let text = read_text(path)?;
        Ok(Self::parse(
            spec,
            &path.display().to_string(),
            &text,
            engine,
        ))
    }

    /// Builds the rule list; every bad line becomes a warning and is skipped.
    pub fn parse(spec: &str, file: &str, text: &str, engine: Engine) -> RegexpTable {
        let mut rules: Vec<Rule> = Vec::new();
        let mut warnings = Vec::new();
        let mut open_ifs: Vec<usize> = Vec::new();
        let mut last_line = 0;
        let name = engine.name();
        for (line, raw) in logical_lines(text) {
            last_line = line;
            let mut warn =
                |msg: String| warnings.push(format!("{name} map {file}, line {line}: {msg}"));
            let t = raw.trim();
            let lower = t.to_ascii_lowercase();
            if lower == "endif"
                || lower.starts_with("endif") && lower[5..].starts_with(char::is_whitespace)
            {
                match open_ifs.pop() {
                    Some(at) => {
                        let end = rules.len();
                        if let Some(Rule::If { end: e, .. }) = rules.get_mut(at) {
                            *e = end;
                        }
                        rules.push(Rule::Endif);
                    }
                    None => warn("ignoring ENDIF without matching IF".to_string()),
                }
                if t.len() > 5 {
                    warn("ignoring extra text after ENDIF".to_string());
                }
                continue;
            }
            let is_if = lower.starts_with("if")
                && lower[2..].starts_with(|c: char| c.is_whitespace() || c == '!' || c == '/');
            let body = if is_if { t[2..].trim_start() } else { t };
            let pat = match split_pattern(body) {
                Ok(p) => p,
                Err(e) => {
                    warn(e);
                    continue;
                }
            };
            let re = match compile(engine, &pat) {
                Ok(re) => re,
                Err(e) => {
                    warn(e);
                    continue;
                }
            };
            if is_if {
                if !pat.rest.is_empty() {
                    warn("ignoring extra text after IF".to_string());
                }
                open_ifs.push(rules.len());
                rules.push(Rule::If {
                    re,
                    negate: pat.negate,
                    end: usize::MAX,
                    line,
                });
                continue;
            }
            if pat.rest.is_empty() {
                warn("using empty replacement string".to_string());
            }
            let result = match parse_result(pat.rest) {
                Ok(r) => r,
                Err(e) => {
                    warn(e);
                    continue;
                }
            };
            let max = result
                .iter()
                .filter_map(|p| match p {
                    Part::Group(n) => Some(*n),
                    _ => None,
                })
                .max();
            if let Some(max) = max {
                if pat.negate {
                    warn("$number found in negative match replacement text".to_string());
                    continue;
                }
                if max > re.groups() {
                    warn(format!("out of range replacement index \"{max}\""));
                    continue;
                }
            }
            rules.push(Rule::Match {
                re,
                negate: pat.negate,
                result,
                line,
            });
        }
        if !open_ifs.is_empty() {
            // An unterminated IF runs to the end of the file, as in Postfix.
            warnings.push(format!(
                "{name} map {file}, line {last_line}: more IFs than ENDIFs"
            ));
            let end = rules.len();
            for at in open_ifs {
                if let Some(Rule::If { end: e, .. }) = rules.get_mut(at) {
                    *e = end;
                }
            }
        }
        RegexpTable {
            spec: spec.to_string(),
            file: file.to_string(),
            engine,
            rules,
            warnings,
        }
    }

    fn match_error(&self, line: usize, e: String) {
        // Postfix logs a matching error (e.g. backtrack limit) and treats it as no match.
        tracing::warn!(
            "{} map {}, line {line}: matching error: {e}",
            self.engine.name(),
            self.file
        );
    }
}

impl Table for RegexpTable {
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let mut i = 0;
        // Each step moves forward, so the loop is bounded by the rule count.
        while i < self.rules.len() {
            match &self.rules[i] {
                Rule::Endif => {}
                Rule::If {
                    re,
                    negate,
                    end,
                    line,
                } => {
                    let hit = match re.is_match(key) {
                        Ok(m) => m,
                        Err(e) => {
                            self.match_error(*line, e);
                            false
                        }
                    };
                    if hit == *negate {
                        i = (*end).max(i).saturating_add(1);
                        continue;
                    }
                }
                Rule::Match {
                    re,
                    negate,
                    result,
                    line,
                } => {
                    if *negate {
                        match re.is_match(key) {
                            Ok(false) => return Ok(Some(expand(result, &[]))),
                            Ok(true) => {}
                            Err(e) => self.match_error(*line, e),
                        }
                    } else {
                        match re.captures(key) {
                            Ok(Some(groups)) => return Ok(Some(expand(result, &groups))),
                            Ok(None) => {}
                            Err(e) => self.match_error(*line, e),
                        }
                    }
                }
            }
            i += 1;
        }
        Ok(None)
    }
    fn spec(&self) -> &str {
        &self.spec
    }
    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Substitutes groups; a group that did not take part in the match expands to nothing.
fn expand(result: &[Part], groups: &[Option<String>]) -> String {
    let mut out = String::new();
    for p in result {
        match p {
            Part::Lit(s) => out.push_str(s),
            Part::Group(n) => {
                if let Some(Some(g)) = groups.get(*n) {
                    out.push_str(g);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str, engine: Engine) -> RegexpTable {
        RegexpTable::parse("regexp:/t", "/t", text, engine)
    }

    #[test]
    fn results_and_substitution() {
        let t = table(
            "/^(.*)@(example\\.com)$/ user $1 at ${2} costs $$5\n/^X-Mailer:/ IGNORE\n",
            Engine::Posix,
        );
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(
            t.lookup("Bob@Example.COM").unwrap().as_deref(),
            Some("user Bob at Example.COM costs $5")
        );
        assert_eq!(
            t.lookup("x-mailer: foo").unwrap().as_deref(),
            Some("IGNORE")
        );
        assert_eq!(t.lookup("Subject: hi").unwrap(), None);
    }

    #[test]
    fn case_flag_negation_and_if() {
        let text = "if /^From:/\n!/example\\.com/ REJECT outsider\nendif\n/^To:/i OK\n";
        let t = table(text, Engine::Posix);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(
            t.lookup("From: a@evil.org").unwrap().as_deref(),
            Some("REJECT outsider")
        );
        assert_eq!(t.lookup("From: a@example.com").unwrap(), None);
        assert_eq!(t.lookup("To: x").unwrap().as_deref(), Some("OK"));
        // The i flag toggles to case-sensitive.
        assert_eq!(t.lookup("TO: x").unwrap(), None);
        let t = table("if !/^a/\n/b/ notA\nendif\n", Engine::Posix);
        assert_eq!(t.lookup("xb").unwrap().as_deref(), Some("notA"));
        assert_eq!(t.lookup("ab").unwrap(), None);
    }

    #[test]
    fn nested_if() {
        let text = "if /a/\nif /b/\n/c/ abc\nendif\n/d/ ad\nendif\n/./ any\n";
        let t = table(text, Engine::Posix);
        assert_eq!(t.lookup("abc").unwrap().as_deref(), Some("abc"));
        assert_eq!(t.lookup("ac").unwrap().as_deref(), Some("any"));
        assert_eq!(t.lookup("ad").unwrap().as_deref(), Some("ad"));
        assert_eq!(t.lookup("bcd").unwrap().as_deref(), Some("any"));
    }

    #[test]
    fn bad_lines_are_skipped_with_warnings() {
        let text =
            "/(unclosed/ X\nnot a pattern\n/ok/ $3\n!/n/ $1\n/a/q R\nendif\n/good/ G\nif /x/\n";
        let t = table(text, Engine::Posix);
        assert_eq!(t.lookup("good").unwrap().as_deref(), Some("G"));
        let w = &t.warnings;
        assert_eq!(w.len(), 7, "{w:?}");
        assert!(
            w[0].starts_with("regexp map /t, line 1: error in regular expression"),
            "{w:?}"
        );
        assert_eq!(w[1], "regexp map /t, line 2: ignoring unrecognized request");
        assert_eq!(
            w[2],
            "regexp map /t, line 3: out of range replacement index \"3\""
        );
        assert_eq!(
            w[3],
            "regexp map /t, line 4: $number found in negative match replacement text"
        );
        assert!(w[4].contains("line 5: unknown regexp option \"q\""));
        assert_eq!(
            w[5],
            "regexp map /t, line 6: ignoring ENDIF without matching IF"
        );
        assert_eq!(w[6], "regexp map /t, line 8: more IFs than ENDIFs");
    }

    #[test]
    fn pcre_lookaround_and_backrefs() {
        let t = table(
            "/^(\\w+) \\1$/ double $1\n/^foo(?!bar)/ foo-not-bar\n",
            Engine::Pcre,
        );
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(t.lookup("hey hey").unwrap().as_deref(), Some("double hey"));
        assert_eq!(t.lookup("foobaz").unwrap().as_deref(), Some("foo-not-bar"));
        assert_eq!(t.lookup("foobar").unwrap(), None);
    }
}
