//! postmap — Postfix lookup table management.
//!
//! `postmap [-fv] [-c config_dir] [type:]file...` compiles each text file into its database
//! (`file.db`); `postmap [-fv] [-c config_dir] -q key [type:]name...` prints the first value
//! found for `key` (exit 0) or nothing (exit 1); with `-q -` the keys come from standard
//! input, one a line, and each hit prints as `key<TAB>value` (exit 0 if any key was found).
//! A name without a type uses `default_database_type`. `-f` turns off case folding of keys.
//! Options may be bundled (`-fq key`), as with getopt.

use relais::cli::{exit, fatal, warning};
use relais::config::{self, main_cf::MainCfError, Config};
use relais::table::{self, hash, OpenFlags, Table, TableError};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PROG: &str = "postmap";
const USAGE: &str =
    "usage: postmap [-Nfinoprsuvw] [-c config_dir] [-d key] [-q key] [map_type:]file...";
/// Longest key line read from standard input; longer lines are cut, not buffered unbounded.
const MAX_KEY_LINE: usize = 64 * 1024;

struct Args {
    config_dir: Option<PathBuf>,
    query: Option<String>,
    fold: bool,
    verbose: u32,
    maps: Vec<String>,
}

/// getopt-style parsing: bundled flags, `-cDIR` or `-c DIR`, operands anywhere, `--` ends
/// the options.
fn parse_args(argv: &[String]) -> Args {
    let mut a = Args {
        config_dir: None,
        query: None,
        fold: true,
        verbose: 0,
        maps: Vec::new(),
    };
    let mut i = 0;
    let mut only_operands = false;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if only_operands || !arg.starts_with('-') || arg == "-" {
            a.maps.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_operands = true;
            continue;
        }
        let flags: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < flags.len() {
            let c = flags[j];
            j += 1;
            match c {
                'c' | 'q' | 'd' => {
                    let value = if j < flags.len() {
                        let v: String = flags[j..].iter().collect();
                        j = flags.len();
                        v
                    } else if i < argv.len() {
                        i += 1;
                        argv[i - 1].clone()
                    } else {
                        fatal(PROG, exit::FAIL, USAGE)
                    };
                    match c {
                        'c' => a.config_dir = Some(PathBuf::from(value)),
                        'q' => a.query = Some(value),
                        _ => fatal(PROG, exit::FAIL, "-d (delete) is not supported by relais"),
                    }
                }
                'f' => a.fold = false,
                'v' => a.verbose += 1,
                // Accepted for compatibility; relais has one way to build and query.
                'N' | 'n' | 'o' | 'p' | 'r' | 'w' | 'i' | 's' | 'u' => {}
                _ => fatal(PROG, exit::FAIL, USAGE),
            }
        }
    }
    a
}

fn table_fatal(e: TableError) -> ! {
    fatal(PROG, exit::FAIL, e)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv);
    if args.maps.is_empty() {
        fatal(PROG, exit::FAIL, USAGE);
    }
    let dir = config::config_dir(args.config_dir.as_deref());
    let cfg = match Config::load(&dir) {
        Ok(c) => c,
        Err(config::ConfigError::MainCf(MainCfError::Io { file, source })) => fatal(
            PROG,
            exit::FAIL,
            format!("open {file}: {}", table::strerror(&source)),
        ),
        Err(e) => fatal(PROG, exit::FAIL, e),
    };
    let default_type = cfg.get("default_database_type");
    let specs: Vec<String> = args
        .maps
        .iter()
        .map(|m| {
            if table::split_spec(m).is_ok() {
                m.clone()
            } else {
                format!("{default_type}:{m}")
            }
        })
        .collect();
    let flags = OpenFlags {
        fold_case: args.fold,
    };
    match &args.query {
        Some(key) => std::process::exit(query(key, &specs, flags, args.verbose)),
        None => {
            for spec in &specs {
                build(spec, flags, args.verbose);
            }
        }
    }
}

fn open_all(specs: &[String], flags: OpenFlags, verbose: u32) -> Vec<Arc<dyn Table>> {
    specs
        .iter()
        .map(|spec| {
            if verbose > 0 {
                eprintln!("{PROG}: dict_open: {spec}");
            }
            let t = table::open_with(spec, flags).unwrap_or_else(|e| table_fatal(e));
            for w in t.warnings() {
                warning(PROG, w);
            }
            t
        })
        .collect()
}

/// The first table's value for `key`; a lookup error is fatal, as in postmap.
fn first_hit(tables: &[Arc<dyn Table>], key: &str) -> Option<String> {
    for t in tables {
        match t.lookup(key) {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(e) => table_fatal(e),
        }
    }
    None
}

fn query(key: &str, specs: &[String], flags: OpenFlags, verbose: u32) -> i32 {
    let tables = open_all(specs, flags, verbose);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut found = false;
    if key == "-" {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut input, &mut line) {
                Ok(None) => break,
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    warning(
                        PROG,
                        format!("skipping a key longer than {MAX_KEY_LINE} bytes"),
                    );
                    continue;
                }
                Err(e) => fatal(PROG, exit::FAIL, format!("read standard input: {e}")),
            }
            let text = String::from_utf8_lossy(&line);
            let k = text.trim_end_matches(['\n', '\r']);
            if let Some(v) = first_hit(&tables, k) {
                found = true;
                let _ = writeln!(out, "{k}\t{v}");
            }
        }
    } else if let Some(v) = first_hit(&tables, key) {
        found = true;
        let _ = writeln!(out, "{v}");
    }
    let _ = out.flush();
    if found {
        exit::OK
    } else {
        exit::FAIL
    }
}

/// Reads one line into `line` (without bounds beyond MAX_KEY_LINE): None at end of input,
/// Some(false) when the line was too long (the rest of it is drained and dropped).
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    let n = input
        .by_ref()
        .take(MAX_KEY_LINE as u64)
        .read_until(b'\n', line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.ends_with(b"\n") || n < MAX_KEY_LINE {
        return Ok(Some(true));
    }
    // Drain the overlong line chunk by chunk, so memory stays bounded.
    let mut scratch = Vec::new();
    loop {
        scratch.clear();
        let m = input
            .by_ref()
            .take(MAX_KEY_LINE as u64)
            .read_until(b'\n', &mut scratch)?;
        if m == 0 || scratch.ends_with(b"\n") {
            return Ok(Some(false));
        }
    }
}

fn build(spec: &str, flags: OpenFlags, verbose: u32) {
    let (kind, name) = table::split_spec(spec).unwrap_or_else(|e| table_fatal(e));
    match kind {
        "hash" | "btree" | "lmdb" => {}
        other => fatal(
            PROG,
            exit::FAIL,
            format!("unsupported map type for this operation: {other}"),
        ),
    }
    let source = Path::new(name);
    if verbose > 0 {
        eprintln!("{PROG}: building {spec}");
    }
    let warnings = hash::build(source, kind, flags).unwrap_or_else(|e| table_fatal(e));
    for w in warnings {
        warning(PROG, w);
    }
}
