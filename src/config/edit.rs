//! Text-preserving edits of main.cf and master.cf, as `postconf -e/-X/-#` and
//! `-Me/-MX/-M#/-Fe/-Pe/-PX` make them.
//!
//! Only the lines of the edited entries change; every other byte (comments, blank lines,
//! alignment, a missing final newline) is kept. An edited main.cf setting becomes one
//! `name = value` line; an edited master.cf entry is re-printed in postconf's folded layout,
//! as Postfix does. Edits are computed in memory: an invalid request fails before anything is
//! written, and [`write_atomic`] replaces the file in one rename.

use super::master_cf::{self, Entry, FIELD_COMMAND, FIELD_NAMES};
use std::io::Write;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EditError {
    /// A malformed request on the command line.
    #[error("{0}")]
    Request(String),
    /// The file itself does not parse where the edit needs it.
    #[error("file {file}: line {line}: {what}")]
    File {
        file: String,
        line: usize,
        what: String,
    },
    #[error("unmatched service_name/type: \"{0}\"")]
    NoService(String),
    #[error("service {service}: no -o {param} to remove")]
    NoParam { service: String, param: String },
}

/// One main.cf edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MainEdit {
    /// `-e 'name = value'`.
    Set(String, String),
    /// `-X name`.
    Remove(String),
    /// `-# name`.
    Comment(String),
}

impl MainEdit {
    fn name(&self) -> &str {
        match self {
            MainEdit::Set(n, _) | MainEdit::Remove(n) | MainEdit::Comment(n) => n,
        }
    }
}

/// One master.cf edit; `service` is `name/type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterEdit {
    /// `-Me 'name/type = entry'`.
    SetEntry { service: String, entry: String },
    /// `-MX name/type`.
    RemoveEntry { service: String },
    /// `-M# name/type`.
    CommentEntry { service: String },
    /// `-Fe 'name/type/field = value'`.
    SetField {
        service: String,
        field: String,
        value: String,
    },
    /// `-Pe 'name/type/param = value'`.
    SetParam {
        service: String,
        param: String,
        value: String,
    },
    /// `-PX name/type/param`.
    RemoveParam { service: String, param: String },
}

/// Splits `name = value` as Postfix's split_nameval does (both sides trimmed).
pub fn split_nameval(text: &str) -> Result<(String, String), EditError> {
    if text.contains('\n') {
        return Err(EditError::Request(
            "-e, -X, or -# accepts no multi-line input".into(),
        ));
    }
    let t = text.trim_start();
    if t.starts_with('#') {
        return Err(EditError::Request(
            "-e, -X, or -# accepts no comment input".into(),
        ));
    }
    let Some((n, v)) = t.split_once('=') else {
        return Err(EditError::Request(format!(
            "missing '=' after attribute name: \"{text}\""
        )));
    };
    let n = n.trim();
    if n.is_empty() {
        return Err(EditError::Request(format!(
            "missing attribute name: \"{text}\""
        )));
    }
    Ok((n.to_string(), v.trim().to_string()))
}

/// A main.cf parameter name: letters, digits and `_`.
pub fn valid_param_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How a physical line takes part in the logical structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// Blank or comment: never part of an entry, always kept.
    Other,
    /// Starts a logical line.
    Start,
    /// Continues the current logical line.
    Cont,
}

fn classify(line: &str) -> LineKind {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        LineKind::Other
    } else if line.starts_with(char::is_whitespace) {
        LineKind::Cont
    } else {
        LineKind::Start
    }
}

/// Physical lines with their terminators.
fn physical_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// Appends `s` to `out`, first ending an unterminated last line.
fn append_line(out: &mut String, s: &str) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(s);
}

/// Applies main.cf edits (all of one kind or mixed; later requests for a name win).
/// Settings not found are appended in name order, as Postfix does.
pub fn edit_main(text: &str, edits: &[MainEdit]) -> String {
    // Later requests for the same name replace earlier ones.
    let mut reqs: Vec<(&MainEdit, bool)> = Vec::new();
    for e in edits {
        reqs.retain(|(r, _)| r.name() != e.name());
        reqs.push((e, false));
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut current: Option<usize> = None;
    for line in physical_lines(text) {
        match classify(line) {
            LineKind::Other => out.push_str(line),
            LineKind::Cont => match current.map(|i| reqs[i].0) {
                None => out.push_str(line),
                Some(MainEdit::Comment(_)) => {
                    out.push('#');
                    out.push_str(line);
                }
                Some(_) => {}
            },
            LineKind::Start => {
                let key_end = line
                    .find(|c: char| c.is_whitespace() || c == '=')
                    .unwrap_or(line.len());
                let key = &line[..key_end];
                current = reqs.iter().position(|(r, _)| r.name() == key);
                match current {
                    None => out.push_str(line),
                    Some(i) => {
                        reqs[i].1 = true;
                        match reqs[i].0 {
                            MainEdit::Set(n, v) => out.push_str(&setting_line(n, v)),
                            MainEdit::Remove(_) => {}
                            MainEdit::Comment(_) => {
                                out.push('#');
                                out.push_str(line);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut missing: Vec<(&String, &String)> = reqs
        .iter()
        .filter(|(_, found)| !found)
        .filter_map(|(r, _)| match r {
            MainEdit::Set(n, v) => Some((n, v)),
            _ => None,
        })
        .collect();
    missing.sort();
    for (n, v) in missing {
        append_line(&mut out, &setting_line(n, v));
    }
    out
}

fn setting_line(name: &str, value: &str) -> String {
    if value.is_empty() {
        format!("{name} =\n")
    } else {
        format!("{name} = {value}\n")
    }
}

/// Splits `name/type[/third]` into its parts, requiring exactly `parts` components.
fn split_service(pattern: &str, parts: usize, usage: &str) -> Result<Vec<String>, EditError> {
    let v: Vec<String> = pattern.trim().split('/').map(str::to_string).collect();
    if v.len() != parts || v.iter().any(|s| s.is_empty()) {
        return Err(EditError::Request(usage.to_string()));
    }
    Ok(v)
}

/// A master.cf edit request checked and prepared before the file is read.
enum Prepared {
    Entry(Entry),
    Remove,
    Comment,
    Field(usize, String),
    SetParam(String, String),
    RemoveParam(String),
}

fn prepare(e: &MasterEdit) -> Result<(String, String, Prepared), EditError> {
    match e {
        MasterEdit::SetEntry { service, entry } => {
            let p = split_service(service, 2, "-Me, -MX or -M# requires service_name/type")?;
            let parsed = Entry::parse(entry, 0)
                .map_err(|w| EditError::Request(format!("{w}: \"{service} = {entry}\"")))?;
            Ok((p[0].clone(), p[1].clone(), Prepared::Entry(parsed)))
        }
        MasterEdit::RemoveEntry { service } | MasterEdit::CommentEntry { service } => {
            let p = split_service(service, 2, "-Me, -MX or -M# requires service_name/type")?;
            let prep = if matches!(e, MasterEdit::RemoveEntry { .. }) {
                Prepared::Remove
            } else {
                Prepared::Comment
            };
            Ok((p[0].clone(), p[1].clone(), prep))
        }
        MasterEdit::SetField {
            service,
            field,
            value,
        } => {
            let p = split_service(
                service,
                2,
                "-Fe or -FX requires service_name/type/field_name",
            )?;
            let idx = FIELD_NAMES.iter().position(|f| f == field).ok_or_else(|| {
                EditError::Request(format!("invalid service attribute name: \"{field}\""))
            })?;
            if idx < FIELD_COMMAND && value.contains(char::is_whitespace) {
                return Err(EditError::Request(
                    "-Fe does not accept whitespace in non-command field".into(),
                ));
            }
            if value.is_empty() {
                return Err(EditError::Request(format!(
                    "empty value for service attribute \"{field}\""
                )));
            }
            Ok((
                p[0].clone(),
                p[1].clone(),
                Prepared::Field(idx, value.clone()),
            ))
        }
        MasterEdit::SetParam {
            service,
            param,
            value,
        } => {
            let p = split_service(
                service,
                2,
                "-Pe or -PX requires service_name/type/parameter",
            )?;
            if !valid_param_name(param) {
                return Err(EditError::Request(format!(
                    "invalid parameter name: \"{param}\""
                )));
            }
            if value.contains(char::is_whitespace) {
                return Err(EditError::Request(
                    "-Pe does not accept whitespace in parameter value".into(),
                ));
            }
            Ok((
                p[0].clone(),
                p[1].clone(),
                Prepared::SetParam(param.clone(), value.clone()),
            ))
        }
        MasterEdit::RemoveParam { service, param } => {
            let p = split_service(
                service,
                2,
                "-Pe or -PX requires service_name/type/parameter",
            )?;
            if !valid_param_name(param) {
                return Err(EditError::Request(format!(
                    "invalid parameter name: \"{param}\""
                )));
            }
            Ok((
                p[0].clone(),
                p[1].clone(),
                Prepared::RemoveParam(param.clone()),
            ))
        }
    }
}

fn service_of(e: &MasterEdit) -> &str {
    match e {
        MasterEdit::SetEntry { service, .. }
        | MasterEdit::RemoveEntry { service }
        | MasterEdit::CommentEntry { service }
        | MasterEdit::SetField { service, .. }
        | MasterEdit::SetParam { service, .. }
        | MasterEdit::RemoveParam { service, .. } => service,
    }
}

/// One logical master.cf entry located in the file.
struct Located {
    /// Indexes of its content lines (start and continuations).
    lines: Vec<usize>,
    name: String,
    kind: String,
    joined: String,
    first_line: usize,
}

fn locate_entries(lines: &[&str]) -> Vec<Located> {
    let mut out: Vec<Located> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match classify(l) {
            LineKind::Other => {}
            LineKind::Cont => {
                if let Some(cur) = out.last_mut() {
                    cur.lines.push(i);
                    cur.joined.push(' ');
                    cur.joined.push_str(l.trim());
                }
            }
            LineKind::Start => {
                let mut toks = l.split_whitespace();
                out.push(Located {
                    lines: vec![i],
                    name: toks.next().unwrap_or("").to_string(),
                    kind: toks.next().unwrap_or("").to_string(),
                    joined: l.trim().to_string(),
                    first_line: i + 1,
                });
            }
        }
    }
    out
}

/// Applies master.cf edits. A request for a service that is not there is an error, except
/// `-Me`, which appends a new entry.
pub fn edit_master(text: &str, path: &Path, edits: &[MasterEdit]) -> Result<String, EditError> {
    let file = path.display().to_string();
    let mut reqs = Vec::new();
    for e in edits {
        let (n, t, p) = prepare(e)?;
        reqs.push((n, t, p, 0usize, service_of(e).to_string()));
    }
    let lines = physical_lines(text);
    let entries = locate_entries(&lines);
    // What happens to each physical line: None keeps it; Some(text) replaces it.
    let mut replace: Vec<Option<String>> = vec![None; lines.len()];
    for loc in &entries {
        let mut entry: Option<Entry> = None;
        // Whole-entry removal or commenting, decided by the requests that match.
        let mut action: Option<bool> = None; // Some(true): remove, Some(false): comment out
        let mut edited = false;
        for (n, t, p, count, _) in reqs.iter_mut() {
            let matches_pattern = *n == loc.name && *t == loc.kind;
            let matches_new =
                matches!(p, Prepared::Entry(e) if e.name() == loc.name && e.kind() == loc.kind);
            if !(matches_pattern || matches_new) {
                continue;
            }
            *count += 1;
            match p {
                Prepared::Entry(new) => {
                    // The first match is replaced; any later one is dropped as a duplicate.
                    if *count == 1 {
                        entry = Some(new.clone());
                        edited = true;
                    } else {
                        action = Some(true);
                    }
                }
                Prepared::Remove => action = Some(true),
                Prepared::Comment => action = Some(false),
                Prepared::Field(idx, value) => {
                    let e = current_entry(&mut entry, loc, &file)?;
                    set_field(e, *idx, value)?;
                    edited = true;
                }
                Prepared::SetParam(param, value) => {
                    let e = current_entry(&mut entry, loc, &file)?;
                    set_param(e, param, Some(value.as_str()));
                    edited = true;
                }
                Prepared::RemoveParam(param) => {
                    let e = current_entry(&mut entry, loc, &file)?;
                    if !set_param(e, param, None) {
                        return Err(EditError::NoParam {
                            service: format!("{n}/{t}"),
                            param: param.clone(),
                        });
                    }
                    edited = true;
                }
            }
        }
        match action {
            Some(true) => {
                for &i in &loc.lines {
                    replace[i] = Some(String::new());
                }
            }
            Some(false) => {
                for &i in &loc.lines {
                    replace[i] = Some(format!("#{}", lines[i]));
                }
            }
            _ if edited => {
                if let Some(e) = &entry {
                    for &i in &loc.lines {
                        replace[i] = Some(String::new());
                    }
                    replace[loc.lines[0]] = Some(e.format(true));
                }
            }
            _ => {}
        }
    }
    let mut out = String::with_capacity(text.len() + 128);
    for (i, l) in lines.iter().enumerate() {
        match &replace[i] {
            None => out.push_str(l),
            Some(r) => {
                // A replaced last line without newline: the new text brings its own.
                out.push_str(r);
            }
        }
    }
    for (_, _, p, count, raw) in &reqs {
        if *count > 0 {
            continue;
        }
        match p {
            Prepared::Entry(new) => append_line(&mut out, &new.format(true)),
            _ => return Err(EditError::NoService(raw.clone())),
        }
    }
    Ok(out)
}

fn current_entry<'a>(
    entry: &'a mut Option<Entry>,
    loc: &Located,
    file: &str,
) -> Result<&'a mut Entry, EditError> {
    if entry.is_none() {
        let e = Entry::parse(&loc.joined, loc.first_line).map_err(|what| EditError::File {
            file: file.to_string(),
            line: loc.first_line,
            what,
        })?;
        *entry = Some(e);
    }
    entry
        .as_mut()
        .ok_or_else(|| EditError::Request("internal: no entry".into()))
}

fn set_field(e: &mut Entry, idx: usize, value: &str) -> Result<(), EditError> {
    if idx == FIELD_COMMAND {
        let mut argv: Vec<String> = e.argv[..FIELD_COMMAND].to_vec();
        argv.extend(master_cf::split_quoted(value).map_err(EditError::Request)?);
        if argv.len() <= FIELD_COMMAND {
            return Err(EditError::Request("empty command field".into()));
        }
        master_cf::normalize_args(&mut argv).map_err(EditError::Request)?;
        e.argv = argv;
    } else {
        e.argv[idx] = value.to_string();
    }
    master_cf::check_columns(&e.argv, value).map_err(EditError::Request)
}

/// Updates, adds (`Some`) or removes (`None`) `-o param=…`; returns whether it was present.
fn set_param(e: &mut Entry, param: &str, value: Option<&str>) -> bool {
    let mut found = false;
    let mut i = FIELD_COMMAND + 1;
    while i < e.argv.len() {
        let a = &e.argv[i];
        if !a.starts_with('-') || a == "--" {
            break;
        }
        if a.as_bytes().get(1) == Some(&b'o') && i + 1 < e.argv.len() {
            let is_it = a == "-o"
                && e.argv[i + 1]
                    .split_once('=')
                    .is_some_and(|(n, _)| n == param);
            if is_it {
                found = true;
                match value {
                    Some(v) => e.argv[i + 1] = format!("{param}={v}"),
                    None => {
                        e.argv.drain(i..i + 2);
                        continue;
                    }
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    if let (false, Some(v)) = (found, value) {
        e.argv.insert(i, format!("{param}={v}"));
        e.argv.insert(i, "-o".to_string());
    }
    found
}

/// The text of an I/O error without Rust's "(os error N)" suffix, as Postfix's %m prints it.
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Replaces `path` with `data` atomically: a temporary file in the same directory, written
/// and fsynced, keeps the original's permissions, then is renamed over it; the directory is
/// fsynced so the rename survives a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    let tmp = dir.join(format!(".{name}.relais-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Some filesystems refuse fsync on a directory; the rename itself succeeded.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "# head\na = 1\nlist =\n    x,\n    # kept\n    y\nb = 2\n";

    #[test]
    fn main_set_replaces_logical_line_and_appends_missing() {
        let out = edit_main(
            MAIN,
            &[
                MainEdit::Set("list".into(), "z".into()),
                MainEdit::Set("zz".into(), "".into()),
                MainEdit::Set("c".into(), "3".into()),
            ],
        );
        assert_eq!(
            out,
            "# head\na = 1\nlist = z\n    # kept\nb = 2\nc = 3\nzz =\n"
        );
    }

    #[test]
    fn main_remove_and_comment() {
        assert_eq!(
            edit_main(MAIN, &[MainEdit::Remove("list".into())]),
            "# head\na = 1\n    # kept\nb = 2\n"
        );
        assert_eq!(
            edit_main(MAIN, &[MainEdit::Comment("list".into())]),
            "# head\na = 1\n#list =\n#    x,\n    # kept\n#    y\nb = 2\n"
        );
        // No final newline: untouched text stays as it was, appended text starts a new line.
        assert_eq!(edit_main("a = 1", &[]), "a = 1");
        assert_eq!(
            edit_main("a = 1", &[MainEdit::Set("b".into(), "2".into())]),
            "a = 1\nb = 2\n"
        );
    }

    #[test]
    fn nameval_errors() {
        assert!(split_nameval("novalue").is_err());
        assert!(split_nameval(" = x").is_err());
        assert_eq!(
            split_nameval(" a =  b c ").unwrap(),
            ("a".to_string(), "b c".to_string())
        );
    }

    const MASTER: &str = "# m\nsmtp      inet  n       -       y       -       -       smtpd\nrelay     unix  -       -       y       -       -       smtp\n  -o a=1\n\n  -o b=2\nx unix - - n - - error\n";

    #[test]
    fn master_edits() {
        let p = Path::new("master.cf");
        let out = edit_master(
            MASTER,
            p,
            &[MasterEdit::RemoveParam {
                service: "relay/unix".into(),
                param: "a".into(),
            }],
        )
        .unwrap();
        assert_eq!(out, "# m\nsmtp      inet  n       -       y       -       -       smtpd\nrelay      unix  -       -       y       -       -       smtp\n    -o b=2\n\nx unix - - n - - error\n");
        let out = edit_master(
            MASTER,
            p,
            &[MasterEdit::CommentEntry {
                service: "relay/unix".into(),
            }],
        )
        .unwrap();
        assert_eq!(out, "# m\nsmtp      inet  n       -       y       -       -       smtpd\n#relay     unix  -       -       y       -       -       smtp\n#  -o a=1\n\n#  -o b=2\nx unix - - n - - error\n");
        let bad = [
            MasterEdit::SetField {
                service: "nope/unix".into(),
                field: "chroot".into(),
                value: "y".into(),
            },
            MasterEdit::SetField {
                service: "x/unix".into(),
                field: "chroot".into(),
                value: "maybe".into(),
            },
            MasterEdit::SetEntry {
                service: "y/unix".into(),
                entry: "y unix - -".into(),
            },
            MasterEdit::RemoveParam {
                service: "x/unix".into(),
                param: "zz".into(),
            },
        ];
        for b in bad {
            assert!(
                edit_master(MASTER, p, std::slice::from_ref(&b)).is_err(),
                "{b:?}"
            );
        }
    }
}
