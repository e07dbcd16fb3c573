//! NAME
//!   postconf - relais configuration utility (Postfix-compatible)
//!
//! SUMMARY
//!   postconf [-dfhnpvx] [-c config_dir] [name ...]
//!   postconf [-c config_dir] -e 'name = value' ... | -X name ... | -# name ...
//!   postconf [-fhvx] [-c config_dir] -M [name[/type] ...] | -F [name[/type[/field]] ...]
//!       | -P [name[/type[/param]] ...]
//!   postconf [-c config_dir] -Me 'name/type = entry' | -MX name/type | -M# name/type
//!       | -Fe 'name/type/field = value' | -Pe 'name/type/param = value' | -PX name/type/param
//!
//! DESCRIPTION
//!   Prints main.cf parameters (in effect, explicitly set with -n, or defaults with -d from
//!   relais's parameter table), master.cf entries, fields and -o parameters, and edits both
//!   files in place, changing only the edited entries and replacing each file atomically.
//!   Output, messages and exit codes follow Postfix's postconf: fatal errors print
//!   `postconf: fatal: …` and exit 1.
//!
//! CONFIGURATION PARAMETERS
//!   config_directory (/etc/postfix), from -c or MAIL_CONFIG.

use relais::config::edit::{self, EditError, MainEdit, MasterEdit};
use relais::config::master_cf::{self, Entry, MasterCf, MasterCfError, FIELD_NAMES};
use relais::config::{self, params, Config};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const PROG: &str = "postconf";

#[derive(Default)]
struct Opts {
    config: Option<PathBuf>,
    defaults: bool,
    edit: bool,
    exclude: bool,
    comment: bool,
    fold: bool,
    hide_name: bool,
    non_default: bool,
    expand: bool,
    master: bool,
    fields: bool,
    params: bool,
    verbose: u32,
    args: Vec<String>,
}

fn fatal(text: impl std::fmt::Display) -> ! {
    relais::cli::fatal(PROG, relais::cli::exit::FAIL, text)
}

fn warn(text: impl std::fmt::Display) {
    relais::cli::warning(PROG, text)
}

fn usage() -> ! {
    fatal("usage: postconf [-c config_dir] [-d (defaults)] [-e (edit)] [-f (fold lines)] [-#/-X (comment-out/remove)] [-h (no names)] [-M (master.cf)] [-F (master.cf fields)] [-P (master.cf parameters)] [-n (non-default)] [-v (verbose)] [-x (expand)] [name...]")
}

/// Parses options the way glibc's getopt does for Postfix: option clusters may appear
/// anywhere before `--`, and everything else is an operand.
fn parse_args(argv: &[String]) -> Opts {
    let mut o = Opts::default();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            o.args.extend(argv[i + 1..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a.len() < 2 {
            o.args.push(a.clone());
            i += 1;
            continue;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            match chars[j] {
                'c' => {
                    let rest: String = chars[j + 1..].iter().collect();
                    let dir = if !rest.is_empty() {
                        rest
                    } else {
                        i += 1;
                        match argv.get(i) {
                            Some(d) => d.clone(),
                            None => usage(),
                        }
                    };
                    o.config = Some(PathBuf::from(dir));
                    j = chars.len();
                    continue;
                }
                'd' => o.defaults = true,
                'e' => o.edit = true,
                'X' => o.exclude = true,
                '#' => o.comment = true,
                'f' => o.fold = true,
                'h' => o.hide_name = true,
                'H' => {}
                'n' => o.non_default = true,
                'p' => {}
                'x' => o.expand = true,
                'M' => o.master = true,
                'F' => o.fields = true,
                'P' => o.params = true,
                'v' => o.verbose += 1,
                _ => usage(),
            }
            j += 1;
        }
        i += 1;
    }
    o
}

fn main() {
    // Like a C program, end quietly when the reader goes away (`postconf -d | head`)
    // instead of reporting EPIPE as a fatal error.
    // SAFETY: setting a signal disposition to the default has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let o = parse_args(&argv);
    let dir = config::config_dir(o.config.as_deref());
    // Postfix shows config_directory under -n when the directory was named explicitly.
    let explicit_dir =
        o.config.is_some() || std::env::var_os("MAIL_CONFIG").is_some_and(|v| !v.is_empty());
    if o.verbose > 0 {
        eprintln!("{PROG}: config_directory: {}", dir.display());
    }
    let edits = [o.edit, o.exclude, o.comment]
        .iter()
        .filter(|b| **b)
        .count();
    let shows = [o.master, o.fields, o.params]
        .iter()
        .filter(|b| **b)
        .count();
    if edits > 1 || shows > 1 || (o.defaults && o.non_default) {
        usage();
    }
    let mut out = std::io::stdout().lock();
    let result = if edits == 1 {
        if o.args.is_empty() {
            usage();
        }
        if shows == 1 {
            edit_master_cf(&o, &dir)
        } else {
            edit_main_cf(&o, &dir)
        }
    } else if o.master {
        show_master(&o, &dir, &mut out)
    } else if o.fields {
        show_fields(&o, &dir, &mut out)
    } else if o.params {
        show_master_params(&o, &dir, &mut out)
    } else {
        show_params(&o, &dir, explicit_dir, &mut out)
    };
    if let Err(e) = result {
        fatal(e);
    }
    if out.flush().is_err() {
        std::process::exit(relais::cli::exit::FAIL);
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("open {}: {}", path.display(), edit::io_reason(&e)))
}

fn load_config(dir: &Path) -> Result<Config, String> {
    let text = read_text(&dir.join("main.cf"))?;
    Config::from_text(dir, &text).map_err(|e| e.to_string())
}

fn load_master(dir: &Path) -> Result<MasterCf, String> {
    let path = dir.join("master.cf");
    let text = read_text(&path)?;
    MasterCf::parse(&text, &path).map_err(|e| match e {
        MasterCfError::Syntax { file, line, what } => format!("file {file}: line {line}: {what}"),
        other => other.to_string(),
    })
}

fn print_param(out: &mut impl Write, o: &Opts, name: &str, value: &str) -> Result<(), String> {
    let r = if o.hide_name {
        writeln!(out, "{value}")
    } else if value.is_empty() {
        writeln!(out, "{name} =")
    } else {
        writeln!(out, "{name} = {value}")
    };
    r.map_err(|e| format!("write: {}", edit::io_reason(&e)))
}

/// `postconf [-d|-n] [-hx] [name …]`.
fn show_params(
    o: &Opts,
    dir: &Path,
    explicit_dir: bool,
    out: &mut impl Write,
) -> Result<(), String> {
    // The values to show, by name, in the selected mode.
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    let cfg;
    if o.defaults {
        // Defaults only: computed values from the system, not from main.cf.
        cfg = Config::from_text(dir, "").map_err(|e| e.to_string())?;
        for p in params::PARAMS {
            let v = if params::COMPUTED.contains(&p.name) && p.name != "config_directory" {
                cfg.raw(p.name).unwrap_or_default()
            } else {
                p.default.to_string()
            };
            table.insert(p.name.to_string(), v);
        }
    } else {
        cfg = load_config(dir)?;
        for (name, s) in &cfg.main.settings {
            table.insert(name.clone(), s.value.clone());
        }
        if o.non_default {
            if explicit_dir && !table.contains_key("config_directory") {
                table.insert("config_directory".into(), dir.display().to_string());
            }
        } else {
            for p in params::PARAMS {
                if !table.contains_key(p.name) {
                    table.insert(p.name.to_string(), cfg.raw(p.name).unwrap_or_default());
                }
            }
        }
    }
    let value_of = |v: &str| -> String {
        if o.expand {
            cfg.expand(v).unwrap_or_else(|_| v.to_string())
        } else {
            v.to_string()
        }
    };
    if o.args.is_empty() {
        for (name, v) in &table {
            print_param(out, o, name, &value_of(v))?;
        }
        return Ok(());
    }
    for name in &o.args {
        match table.get(name) {
            Some(v) => print_param(out, o, name, &value_of(v))?,
            // -n on a known parameter that is not set prints nothing.
            None if o.non_default && (params::lookup(name).is_some()) => {}
            None => warn(format!("{name}: unknown parameter")),
        }
    }
    Ok(())
}

fn edit_main_cf(o: &Opts, dir: &Path) -> Result<(), String> {
    let path = dir.join("main.cf");
    let mut edits = Vec::new();
    for a in &o.args {
        if o.edit {
            let (n, v) = edit::split_nameval(a).map_err(|e| e.to_string())?;
            if !edit::valid_param_name(&n) {
                return Err(format!("invalid parameter name: \"{n}\""));
            }
            if params::lookup(&n).is_none() {
                // Written as asked (Postfix accepts any name), but never silently.
                warn(format!("{n}: unknown parameter"));
            }
            if let Some(MainEdit::Set(_, earlier)) = edits
                .iter()
                .find(|e| matches!(e, MainEdit::Set(m, _) if *m == n))
            {
                warn(format!("ignoring earlier request: '{n} = {earlier}'"));
            }
            edits.push(MainEdit::Set(n, v));
        } else {
            let n = a.trim();
            if n.is_empty() {
                return Err("-X or -# requires non-blank parameter names".into());
            }
            if n.contains('=') {
                return Err("-X or -# requires parameter names without value".into());
            }
            edits.push(if o.exclude {
                MainEdit::Remove(n.to_string())
            } else {
                MainEdit::Comment(n.to_string())
            });
        }
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "open {} for reading: {}",
            path.display(),
            edit::io_reason(&e)
        )
    })?;
    // Every occurrence is edited, as Postfix does; say so when there is more than one.
    if let Ok(parsed) = config::MainCf::parse(&text, &path) {
        for e in &edits {
            let name = match e {
                MainEdit::Set(n, _) | MainEdit::Remove(n) | MainEdit::Comment(n) => n,
            };
            if parsed
                .settings
                .get(name)
                .is_some_and(|s| !s.overridden_lines.is_empty())
            {
                warn(format!(
                    "{}: multiple entries for \"{name}\"",
                    path.display()
                ));
            }
        }
    }
    let new = edit::edit_main(&text, &edits);
    write_if_changed(&path, &text, &new)
}

fn write_if_changed(path: &Path, old: &str, new: &str) -> Result<(), String> {
    if old == new {
        return Ok(());
    }
    edit::write_atomic(path, new.as_bytes())
        .map_err(|e| format!("write {}: {}", path.display(), edit::io_reason(&e)))
}

fn edit_master_cf(o: &Opts, dir: &Path) -> Result<(), String> {
    let path = dir.join("master.cf");
    let mut edits = Vec::new();
    for a in &o.args {
        let req = if o.edit {
            let (pattern, value) = edit::split_nameval(a).map_err(|e| e.to_string())?;
            let parts: Vec<&str> = pattern.split('/').collect();
            if o.master {
                MasterEdit::SetEntry {
                    service: pattern.clone(),
                    entry: value,
                }
            } else if parts.len() != 3 {
                return Err(if o.fields {
                    "-Fe or -FX requires service_name/type/field_name".into()
                } else {
                    "-Pe or -PX requires service_name/type/parameter".into()
                });
            } else if o.fields {
                MasterEdit::SetField {
                    service: format!("{}/{}", parts[0], parts[1]),
                    field: parts[2].to_string(),
                    value,
                }
            } else {
                MasterEdit::SetParam {
                    service: format!("{}/{}", parts[0], parts[1]),
                    param: parts[2].to_string(),
                    value,
                }
            }
        } else {
            let n = a.trim();
            if n.contains('=') {
                return Err("-X or -# requires names without value".into());
            }
            let parts: Vec<&str> = n.split('/').collect();
            if o.master {
                if o.exclude {
                    MasterEdit::RemoveEntry { service: n.into() }
                } else {
                    MasterEdit::CommentEntry { service: n.into() }
                }
            } else if o.params && o.exclude {
                if parts.len() != 3 {
                    return Err("-Pe or -PX requires service_name/type/parameter".into());
                }
                MasterEdit::RemoveParam {
                    service: format!("{}/{}", parts[0], parts[1]),
                    param: parts[2].to_string(),
                }
            } else {
                usage();
            }
        };
        edits.push(req);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "open {} for reading: {}",
            path.display(),
            edit::io_reason(&e)
        )
    })?;
    let new = edit::edit_master(&text, &path, &edits).map_err(|e: EditError| e.to_string())?;
    write_if_changed(&path, &text, &new)
}

/// A `name[/type[/third]]` filter; `*` or a missing part matches anything.
struct Filter {
    raw: String,
    parts: Vec<String>,
    matched: usize,
}

impl Filter {
    fn parse(raw: &str, max: usize, usage: &str) -> Result<Filter, String> {
        let parts: Vec<String> = raw.split('/').map(str::to_string).collect();
        if parts.len() > max || parts.iter().any(|p| p.is_empty()) {
            return Err(usage.to_string());
        }
        Ok(Filter {
            raw: raw.to_string(),
            parts,
            matched: 0,
        })
    }

    fn matches(&self, e: &Entry) -> bool {
        let ok = |i: usize, v: &str| match self.parts.get(i) {
            None => true,
            Some(p) => p == "*" || p == v,
        };
        ok(0, e.name()) && ok(1, e.kind())
    }

    fn third(&self) -> Option<&str> {
        self.parts.get(2).map(String::as_str).filter(|p| *p != "*")
    }
}

fn parse_filters(args: &[String], max: usize, usage: &str) -> Result<Vec<Filter>, String> {
    args.iter().map(|a| Filter::parse(a, max, usage)).collect()
}

fn report_unmatched(filters: &[Filter]) {
    for f in filters.iter().filter(|f| f.matched == 0) {
        warn(format!("unmatched request: \"{}\"", f.raw));
    }
}

fn werr(e: std::io::Error) -> String {
    format!("write: {}", edit::io_reason(&e))
}

fn show_master(o: &Opts, dir: &Path, out: &mut impl Write) -> Result<(), String> {
    let mut filters = parse_filters(&o.args, 2, "-M option requires service_name[/type]")?;
    let m = load_master(dir)?;
    for e in &m.entries {
        if filters.is_empty() {
            out.write_all(e.format(o.fold).as_bytes()).map_err(werr)?;
        }
        for f in filters.iter_mut() {
            if f.matches(e) {
                f.matched += 1;
                out.write_all(e.format(o.fold).as_bytes()).map_err(werr)?;
            }
        }
    }
    report_unmatched(&filters);
    Ok(())
}

fn field_index(name: &str) -> Result<usize, String> {
    FIELD_NAMES
        .iter()
        .position(|f| *f == name)
        .ok_or_else(|| format!("invalid service attribute name: \"{name}\""))
}

fn show_fields(o: &Opts, dir: &Path, out: &mut impl Write) -> Result<(), String> {
    let mut filters = parse_filters(&o.args, 3, "-F option requires service_name[/type[/field]]")?;
    let mut wanted: Vec<Option<usize>> = Vec::new();
    for f in &filters {
        wanted.push(f.third().map(field_index).transpose()?);
    }
    let m = load_master(dir)?;
    let print = |out: &mut dyn Write, e: &Entry, field: Option<usize>| -> Result<(), String> {
        let range = match field {
            Some(i) => i..i + 1,
            None => 0..FIELD_NAMES.len(),
        };
        for i in range {
            let mut s = master_cf::format_field(e, i);
            if o.hide_name {
                s = s.split_once(" = ").map(|(_, v)| v.to_string()).unwrap_or(s);
            }
            out.write_all(s.as_bytes()).map_err(werr)?;
        }
        Ok(())
    };
    for e in &m.entries {
        if filters.is_empty() {
            print(out, e, None)?;
        }
        for (f, field) in filters.iter_mut().zip(&wanted) {
            if f.matches(e) {
                f.matched += 1;
                print(out, e, *field)?;
            }
        }
    }
    report_unmatched(&filters);
    Ok(())
}

fn show_master_params(o: &Opts, dir: &Path, out: &mut impl Write) -> Result<(), String> {
    let mut filters = parse_filters(
        &o.args,
        3,
        "-P option requires service_name[/type[/parameter]]",
    )?;
    let m = load_master(dir)?;
    let cfg = if o.expand {
        Some(load_config(dir)?)
    } else {
        None
    };
    let print = |out: &mut dyn Write, e: &Entry, name: &str, value: &str| -> Result<(), String> {
        let value = match &cfg {
            Some(c) => c
                .with_overrides([("service_name", e.name())])
                .expand(value)
                .unwrap_or_else(|_| value.to_string()),
            None => value.to_string(),
        };
        let line = if o.hide_name {
            format!("{value}\n")
        } else {
            format!("{}/{}/{name} = {value}\n", e.name(), e.kind())
        };
        out.write_all(line.as_bytes()).map_err(werr)
    };
    for e in &m.entries {
        // Sorted by name; a repeated -o keeps its last value, as the daemon sees it.
        let ps: BTreeMap<String, String> = e.overrides().into_iter().collect();
        if ps.is_empty() {
            continue;
        }
        if filters.is_empty() {
            for (n, v) in &ps {
                print(out, e, n, v)?;
            }
        }
        for f in filters.iter_mut() {
            if !f.matches(e) {
                continue;
            }
            let third = f.third().map(str::to_string);
            match third.as_deref() {
                None => {
                    f.matched += 1;
                    for (n, v) in &ps {
                        print(out, e, n, v)?;
                    }
                }
                Some(p) => {
                    if let Some(v) = ps.get(p) {
                        f.matched += 1;
                        print(out, e, p, v)?;
                    }
                }
            }
        }
    }
    report_unmatched(&filters);
    Ok(())
}
