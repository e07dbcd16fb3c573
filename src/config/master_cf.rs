//! master.cf's grammar: one service per logical line, eight columns.
//!
//! ```text
//! # service type  private unpriv  chroot  wakeup  maxproc command + args
//! smtp      inet  n       -       n       -       -       smtpd
//!   -o syslog_name=postfix/smtp
//! ```
//!
//! A logical line starts with non-whitespace; a line starting with whitespace continues it;
//! blank and `#` lines are skipped, even between continuation lines (as in main.cf). Tokens are
//! separated by whitespace; `{ … }` groups one token that may contain whitespace, so
//! `-o { name = value with spaces }` (Postfix 3.0+) is one option value. A `-` column takes
//! master(5)'s default: private y, unpriv y, chroot n (Postfix 3.0 and later), wakeup 0 (never),
//! maxproc `$default_process_limit`.
//!
//! [`Entry`] keeps the columns as written (normalized as `postconf -M` prints them, `-` kept);
//! [`Service`] is the resolved form the master starts daemons from.

use super::{Config, Problem};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The daemons relais implements, by master.cf command name. The master adds to it as
/// daemons land; any other command is reported and its service is not started.
pub const IMPLEMENTED_COMMANDS: &[&str] = &[
    "smtpd",
    "local",
    "pickup",
    "cleanup",
    "qmgr",
    "showq",
    "bounce",
    "error",
    "discard",
    "virtual",
    "trivial-rewrite",
    "anvil",
    "smtp",
    "lmtp",
];

/// The column names as `postconf -F` prints them (also the `-Fe` field names).
pub const FIELD_NAMES: &[&str] = &[
    "service",
    "type",
    "private",
    "unprivileged",
    "chroot",
    "wakeup",
    "process_limit",
    "command",
];

/// Index of the command column.
pub const FIELD_COMMAND: usize = 7;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MasterCfError {
    #[error("{file}, line {line}: {what}")]
    Syntax {
        file: String,
        line: usize,
        what: String,
    },
    #[error("open {file}: {reason}")]
    Io { file: String, reason: String },
}

/// A master.cf transport type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Inet,
    Unix,
    UnixDgram,
    Fifo,
    Pass,
}

impl ServiceKind {
    pub fn parse(s: &str) -> Option<ServiceKind> {
        Some(match s {
            "inet" => ServiceKind::Inet,
            "unix" => ServiceKind::Unix,
            "unix-dgram" => ServiceKind::UnixDgram,
            "fifo" => ServiceKind::Fifo,
            "pass" => ServiceKind::Pass,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Inet => "inet",
            ServiceKind::Unix => "unix",
            ServiceKind::UnixDgram => "unix-dgram",
            ServiceKind::Fifo => "fifo",
            ServiceKind::Pass => "pass",
        }
    }
}

/// One master.cf row as written: `argv[0..7]` are the seven columns before the command,
/// `argv[7]` the command, then its arguments with `-o` values normalized to `name=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub argv: Vec<String>,
    /// First physical line of the entry (1-based).
    pub line: usize,
}

impl Entry {
    pub fn name(&self) -> &str {
        &self.argv[0]
    }

    pub fn kind(&self) -> &str {
        &self.argv[1]
    }

    /// `name/type`, the service's identity.
    pub fn id(&self) -> String {
        format!("{}/{}", self.argv[0], self.argv[1])
    }

    /// The `-o name=value` options in order (before the first non-option argument).
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut i = FIELD_COMMAND + 1;
        while i < self.argv.len() {
            let a = &self.argv[i];
            if !a.starts_with('-') || a == "--" {
                break;
            }
            if a == "-o" {
                if let Some(v) = self.argv.get(i + 1) {
                    let (n, val) = v.split_once('=').unwrap_or((v.as_str(), ""));
                    out.push((n.to_string(), val.to_string()));
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        out
    }

    /// The command's arguments other than `-o name=value` pairs.
    pub fn plain_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = FIELD_COMMAND + 1;
        let mut in_opts = true;
        while i < self.argv.len() {
            let a = &self.argv[i];
            if in_opts && (!a.starts_with('-') || a == "--") {
                in_opts = false;
            }
            if in_opts && a == "-o" {
                i += 2;
                continue;
            }
            out.push(a.clone());
            i += 1;
        }
        out
    }

    /// Parses one logical line (already joined) into a checked, normalized entry.
    pub fn parse(text: &str, line: usize) -> Result<Entry, String> {
        let mut argv = split_quoted(text)?;
        if argv.len() < FIELD_COMMAND + 1 {
            return Err("bad field count".to_string());
        }
        check_columns(&argv, text)?;
        normalize_args(&mut argv)?;
        Ok(Entry { argv, line })
    }

    /// The entry as `postconf -M` prints it: columns at Postfix's positions; with `fold`,
    /// each `-o` on its own indented line and long lines wrapped at 80 columns (the form
    /// `postconf -Me/-Fe/-Pe` writes into master.cf).
    pub fn format(&self, fold: bool) -> String {
        const GOAL: [usize; 8] = [0, 11, 17, 25, 33, 41, 49, 57];
        let mut out = String::new();
        let mut len = 0usize;
        for (i, goal) in GOAL.iter().enumerate() {
            if len > 0 {
                loop {
                    out.push(' ');
                    len += 1;
                    if len >= *goal {
                        break;
                    }
                }
            }
            out.push_str(&self.argv[i]);
            len += self.argv[i].len();
        }
        format_args_into(&mut out, &mut len, &self.argv[FIELD_COMMAND + 1..], fold);
        out.push('\n');
        out
    }

    /// Resolves `-` columns to master(5)'s defaults.
    pub fn service(&self, default_process_limit: u32) -> Result<Service, String> {
        let kind = ServiceKind::parse(self.kind())
            .ok_or_else(|| format!("invalid type field \"{}\"", self.kind()))?;
        let flag = |i: usize, def: bool| match self.argv[i].as_str() {
            "y" => true,
            "n" => false,
            _ => def,
        };
        let w = &self.argv[5];
        let (wakeup, wakeup_conditional) = if w == "-" {
            (0, false)
        } else {
            let cond = w.ends_with('?');
            let digits = w.trim_end_matches('?');
            let n = digits
                .parse::<u32>()
                .map_err(|_| format!("invalid wakeup field \"{w}\""))?;
            (n, cond)
        };
        let m = &self.argv[6];
        let maxproc = if m == "-" {
            default_process_limit
        } else {
            m.parse::<u32>()
                .map_err(|_| format!("invalid process_limit field \"{m}\""))?
        };
        Ok(Service {
            name: self.name().to_string(),
            kind,
            private: flag(2, true),
            unpriv: flag(3, true),
            chroot: flag(4, false),
            wakeup,
            wakeup_conditional,
            maxproc,
            command: self.argv[FIELD_COMMAND].clone(),
            args: self.plain_args(),
            overrides: self.overrides(),
            line: self.line,
        })
    }
}

/// Appends the command arguments as Postfix's postconf lays them out.
fn format_args_into(out: &mut String, len: &mut usize, args: &[String], fold: bool) {
    const LIMIT: usize = 80;
    const INDENT: usize = 4;
    let mut in_opts = true;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let mut arg_len = arg.len();
        let mut aval: Option<&String> = None;
        let mut parens = false;
        if in_opts {
            if !arg.starts_with('-') || arg == "--" {
                in_opts = false;
            } else if arg.as_bytes().get(1) == Some(&b'o') {
                if let Some(v) = args.get(i + 1) {
                    // An option with a value always starts a new line when folding.
                    *len = LIMIT;
                    arg_len += v.len() + 3;
                    parens = v.contains(char::is_whitespace);
                    if parens {
                        arg_len += 2;
                    }
                    aval = Some(v);
                }
            }
        }
        if !in_opts {
            parens = arg.contains(char::is_whitespace);
        }
        if *len > INDENT {
            if !fold || *len + 1 + arg_len < LIMIT {
                out.push(' ');
                *len += 1;
            } else {
                out.push_str("\n    ");
                *len = INDENT;
            }
        }
        let wrap_arg = !in_opts && parens;
        if wrap_arg {
            out.push('{');
            *len += 1;
        }
        out.push_str(arg);
        *len += arg.len();
        if wrap_arg {
            out.push('}');
            *len += 1;
        }
        if let Some(v) = aval {
            out.push(' ');
            if parens {
                out.push('{');
            }
            out.push_str(v);
            if parens {
                out.push('}');
            }
            *len = LIMIT;
            i += 1;
        }
        i += 1;
    }
}

/// Formats one column value as `postconf -F` prints it (`svc/type/field = value`).
pub fn format_field(e: &Entry, field: usize) -> String {
    const LIMIT: usize = 80;
    let mut out = format!("{}/{}/{} = ", e.argv[0], e.argv[1], FIELD_NAMES[field]);
    let mut len = out.len();
    if len + e.argv[field].len() > LIMIT {
        out.push_str("\n    ");
        len = 4;
    }
    out.push_str(&e.argv[field]);
    len += e.argv[field].len();
    if field == FIELD_COMMAND {
        format_args_into(&mut out, &mut len, &e.argv[FIELD_COMMAND + 1..], false);
    }
    out.push('\n');
    out
}

/// A service resolved for the master: defaults applied, `-o` overrides split out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
    pub private: bool,
    pub unpriv: bool,
    pub chroot: bool,
    /// Seconds between wake-up events (0: never).
    pub wakeup: u32,
    /// `wakeup` ended in `?`: wake the service only once it has been used.
    pub wakeup_conditional: bool,
    /// Process limit (0: no limit).
    pub maxproc: u32,
    pub command: String,
    /// Command arguments other than the `-o` overrides.
    pub args: Vec<String>,
    pub overrides: Vec<(String, String)>,
    /// First line of the entry in master.cf, for messages.
    pub line: usize,
}

impl Service {
    pub fn id(&self) -> String {
        format!("{}/{}", self.name, self.kind.as_str())
    }

    pub fn implemented(&self) -> bool {
        IMPLEMENTED_COMMANDS.contains(&self.command.as_str())
    }
}

/// The parsed master.cf in file order.
#[derive(Debug, Clone, Default)]
pub struct MasterCf {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl MasterCf {
    pub fn read(path: &Path) -> Result<MasterCf, MasterCfError> {
        let text = read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses master.cf, failing on the first malformed entry.
    pub fn parse(text: &str, path: &Path) -> Result<MasterCf, MasterCfError> {
        let (m, errors) = Self::parse_lenient(text, path);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    /// Parses every well-formed entry and returns the errors of the others.
    pub fn parse_lenient(text: &str, path: &Path) -> (MasterCf, Vec<MasterCfError>) {
        let file = path.display().to_string();
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for (line, logical) in super::main_cf::logical_lines(text) {
            match Entry::parse(&logical, line) {
                Ok(e) => entries.push(e),
                Err(what) => errors.push(MasterCfError::Syntax {
                    file: file.clone(),
                    line,
                    what,
                }),
            }
        }
        (
            MasterCf {
                path: path.to_path_buf(),
                entries,
            },
            errors,
        )
    }

    /// The services with defaults resolved against `cfg` (entries that do not resolve are
    /// left out; [`check`] reports them).
    pub fn services(&self, cfg: &Config) -> Vec<Service> {
        let limit = process_limit(cfg);
        self.entries
            .iter()
            .filter_map(|e| e.service(limit).ok())
            .collect()
    }

    pub fn find(&self, name: &str, kind: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name() == name && e.kind() == kind)
    }
}

fn process_limit(cfg: &Config) -> u32 {
    u32::try_from(cfg.get_int("default_process_limit")).unwrap_or(100)
}

fn read_text(path: &Path) -> Result<String, MasterCfError> {
    std::fs::read_to_string(path).map_err(|e| MasterCfError::Io {
        file: path.display().to_string(),
        reason: super::edit::io_reason(&e),
    })
}

/// Checks master.cf text: malformed entries (fatal), duplicate services (fatal), commands
/// relais does not implement (warning: the service is not started), and each `-o` setting
/// through [`Config::check_one`].
pub fn check(text: &str, path: &Path, cfg: &Config) -> Vec<Problem> {
    let file = path.display().to_string();
    let (m, errors) = MasterCf::parse_lenient(text, path);
    let mut out: Vec<Problem> = errors
        .into_iter()
        .map(|e| Problem {
            fatal: true,
            text: e.to_string(),
        })
        .collect();
    let limit = process_limit(cfg);
    let mut seen: Vec<(String, usize)> = Vec::new();
    for e in &m.entries {
        let at = format!("{file}, line {}", e.line);
        let id = e.id();
        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == id) {
            out.push(Problem {
                fatal: true,
                text: format!("{at}: service {id} is already defined at line {first}"),
            });
            continue;
        }
        seen.push((id.clone(), e.line));
        let svc = match e.service(limit) {
            Ok(s) => s,
            Err(what) => {
                out.push(Problem {
                    fatal: true,
                    text: format!("{at}: {what}"),
                });
                continue;
            }
        };
        if !svc.implemented() {
            out.push(Problem {
                fatal: false,
                text: format!(
                    "{at}: service {id}: command {} is not supported by relais; the service is not started",
                    svc.command
                ),
            });
        }
        let scoped = cfg.with_overrides([("service_name", svc.name.as_str())]);
        for (name, value) in &svc.overrides {
            if name.is_empty() {
                out.push(Problem {
                    fatal: true,
                    text: format!("{at}: service {id}: -o needs name=value"),
                });
                continue;
            }
            out.extend(scoped.check_one(&format!("{at}: service {id}: -o"), name, value));
        }
    }
    out
}

/// Reads and checks `path`; an unreadable file is one fatal problem.
pub fn check_file(path: &Path, cfg: &Config) -> Vec<Problem> {
    match read_text(path) {
        Ok(text) => check(&text, path, cfg),
        Err(e) => vec![Problem {
            fatal: true,
            text: e.to_string(),
        }],
    }
}

/// Splits on whitespace; `{ … }` (nested) groups whitespace into one token, braces kept.
pub fn split_quoted(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                if depth == 0 {
                    return Err(format!("unexpected '}}' in \"{text}\""));
                }
                depth -= 1;
                cur.push(c);
            }
            c if c.is_whitespace() && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if depth > 0 {
        return Err(format!("missing '}}' in \"{text}\""));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// `{ text }` → `text` (trimmed); the token must be one whole group.
fn extract_braces(tok: &str) -> Result<String, String> {
    let inner = tok
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("syntax error after '}}' in \"{tok}\""))?;
    // The outer braces must pair with each other, not `{a} {b}`.
    let mut depth = 0i64;
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("syntax error after '}}' in \"{tok}\""));
                }
            }
            _ => {}
        }
    }
    Ok(inner.trim().to_string())
}

/// Checks the seven fixed columns as Postfix's postconf does.
pub fn check_columns(argv: &[String], raw: &str) -> Result<(), String> {
    if argv.len() < FIELD_COMMAND + 1 {
        return Err("bad field count".to_string());
    }
    if ServiceKind::parse(&argv[1]).is_none() {
        return Err(format!("invalid type field \"{}\" in \"{raw}\"", argv[1]));
    }
    for (i, v) in argv.iter().enumerate().take(5).skip(2) {
        if !matches!(v.as_str(), "y" | "n" | "-") {
            return Err(format!(
                "invalid {} field \"{v}\" in \"{raw}\"",
                FIELD_NAMES[i]
            ));
        }
    }
    let w = &argv[5];
    let digits = w.strip_suffix('?').unwrap_or(w);
    if !(digits == "-" || (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))) {
        return Err(format!("invalid wakeup field \"{w}\" in \"{raw}\""));
    }
    let m = &argv[6];
    if !(m == "-" || (!m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))) {
        return Err(format!("invalid process_limit field \"{m}\" in \"{raw}\""));
    }
    Ok(())
}

/// Brings the command's arguments into one form: `-o` always a separate token followed by
/// `name=value` (from `-oname=value` or `-o { name = value }`), option clusters such as `-vo`
/// split, and `{ … }` removed from plain arguments.
pub fn normalize_args(argv: &mut Vec<String>) -> Result<(), String> {
    let mut i = FIELD_COMMAND + 1;
    while i < argv.len() {
        let arg = argv[i].clone();
        if !arg.starts_with('-') || arg == "--" {
            break;
        }
        // "-vo..." → "-v" "-o...".
        if let Some(pos) = arg[1..].find('o').map(|p| p + 1) {
            if pos > 1 {
                argv[i] = arg[..pos].to_string();
                argv.insert(i + 1, format!("-{}", &arg[pos..]));
                i += 1;
                continue;
            }
        }
        if arg.as_bytes().get(1) != Some(&b'o') {
            i += 1;
            continue;
        }
        if arg.len() > 2 {
            argv[i] = "-o".to_string();
            argv.insert(i + 1, arg[2..].to_string());
        }
        let Some(v) = argv.get(i + 1).cloned() else {
            return Err("-o without name=value".to_string());
        };
        let v = if v.starts_with('{') {
            let inner = extract_braces(&v)?;
            let (n, val) = inner
                .split_once('=')
                .ok_or_else(|| format!("missing '=' after attribute name: \"{inner}\""))?;
            format!("{}={}", n.trim(), val.trim())
        } else {
            v
        };
        if !v.contains('=') {
            return Err(format!("-o {v}: missing '=' after attribute name"));
        }
        argv[i + 1] = v;
        i += 2;
    }
    while i < argv.len() {
        if argv[i].starts_with('{') {
            argv[i] = extract_braces(&argv[i])?;
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# c\nsmtp      inet  n       -       y       -       -       smtpd\n\
relay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n\
tlsmgr    unix  -       -       y       1000?   1       tlsmgr\n\
sub inet n - n - 5 smtpd -o { smtpd_banner = hello there } -vo smtpd_timeout=5s\n";

    #[test]
    fn parses_columns_defaults_and_options() {
        let m = MasterCf::parse(SAMPLE, Path::new("master.cf")).unwrap();
        assert_eq!(m.entries.len(), 4);
        let svcs: Vec<Service> = m.entries.iter().map(|e| e.service(100).unwrap()).collect();
        assert_eq!(svcs[0].id(), "smtp/inet");
        assert!(!svcs[0].private && svcs[0].unpriv && svcs[0].chroot);
        assert_eq!(svcs[0].maxproc, 100);
        assert_eq!(svcs[0].line, 2);
        assert_eq!(svcs[1].line, 3);
        assert_eq!(
            svcs[1].overrides,
            vec![("syslog_name".into(), "postfix/$service_name".into())]
        );
        assert!(svcs[1].private, "- means private y");
        assert_eq!((svcs[2].wakeup, svcs[2].wakeup_conditional), (1000, true));
        assert_eq!(svcs[3].maxproc, 5);
        assert!(!svcs[3].chroot);
        assert_eq!(
            svcs[3].overrides,
            vec![
                ("smtpd_banner".into(), "hello there".into()),
                ("smtpd_timeout".into(), "5s".into())
            ]
        );
        assert_eq!(svcs[3].args, vec!["-v".to_string()]);
    }

    #[test]
    fn formats_like_postconf() {
        let m = MasterCf::parse(SAMPLE, Path::new("master.cf")).unwrap();
        assert_eq!(
            m.entries[1].format(false),
            "relay      unix  -       -       y       -       -       smtp -o syslog_name=postfix/$service_name\n"
        );
        assert_eq!(
            m.entries[1].format(true),
            "relay      unix  -       -       y       -       -       smtp\n    -o syslog_name=postfix/$service_name\n"
        );
        assert_eq!(
            m.entries[3].format(false),
            "sub        inet  n       -       n       -       5       smtpd -o {smtpd_banner=hello there} -v -o smtpd_timeout=5s\n"
        );
    }

    #[test]
    fn malformed_lines_are_fatal_with_line() {
        let text = "smtp inet n - n - - smtpd\nbad unix - -\nx tcp - - - - - smtpd\n";
        let (m, errs) = MasterCf::parse_lenient(text, Path::new("/e/master.cf"));
        assert_eq!(m.entries.len(), 1);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].to_string(), "/e/master.cf, line 2: bad field count");
        assert!(errs[1]
            .to_string()
            .starts_with("/e/master.cf, line 3: invalid type field \"tcp\""));
        assert!(split_quoted("a { b").is_err());
        assert!(Entry::parse("a unix - - - 5x - cmd", 1).is_err());
        assert!(Entry::parse("a unix - - maybe - - cmd", 1).is_err());
    }

    #[test]
    fn check_reports_unsupported_commands_and_bad_overrides() {
        let cfg = Config::from_text(Path::new("/e"), "").unwrap();
        let text = "smtp inet n - n - - smtpd -o smtpd_timeout=abc\nmaildrop unix - n n - - pipe\n";
        let p = check(text, Path::new("/e/master.cf"), &cfg);
        assert!(p.iter().any(|p| p.fatal
            && p.text.starts_with(
                "/e/master.cf, line 1: service smtp/inet: -o: bad value for smtpd_timeout"
            )));
        assert!(p.iter().any(|p| !p.fatal
            && p.text == "/e/master.cf, line 2: service maildrop/unix: command pipe is not supported by relais; the service is not started"));
    }
}
