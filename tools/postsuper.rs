//! postsuper - queue maintenance, as Postfix's: `-d`, `-h`, `-H`, `-r`, `-f` with a queue ID,
//! `ALL`, or `-` (IDs on standard input), optionally limited to named queues. Goes through
//! the running daemon's control socket, or opens the queue directly when none runs.
//! Per-message and summary lines go to standard error and, when `maillog_file` is set, to
//! the mail log.

use std::io::BufRead;

use relais::cli::{exit, fatal};
use relais::control::{Backend, ControlError, Request, Response, SuperOp};
use relais::queue::{id, QueueName};

const PROG: &str = "postsuper";

/// The order in which Postfix performs the operations and prints their summaries.
const ORDER: [SuperOp; 5] = [
    SuperOp::Delete,
    SuperOp::Expire,
    SuperOp::Hold,
    SuperOp::Release,
    SuperOp::Requeue,
];

fn flag(op: SuperOp) -> &'static str {
    match op {
        SuperOp::Delete => "-d",
        SuperOp::Expire => "-f",
        SuperOp::Hold => "-h",
        SuperOp::Release => "-H",
        SuperOp::Requeue => "-r",
    }
}

fn done_word(op: SuperOp) -> (&'static str, &'static str) {
    match op {
        SuperOp::Delete => ("removed", "Deleted"),
        SuperOp::Expire => ("expired", "Force-expired"),
        SuperOp::Hold => ("placed on hold", "Placed on hold"),
        SuperOp::Release => ("released from hold", "Released from hold"),
        SuperOp::Requeue => ("requeued", "Requeued"),
    }
}

/// Prints a line on stderr and logs it (Postfix's msg_info goes to both when stderr is a
/// terminal; the reference captures show the lines on a pipe too).
fn say(log: bool, text: &str) {
    eprintln!("{PROG}: {text}");
    if log {
        tracing::info!("{text}");
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "message"
    } else {
        "messages"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cdir: Option<std::path::PathBuf> = None;
    // Per operation: the IDs named (None: not requested), "ALL" becomes an empty marker.
    let mut wanted: Vec<(SuperOp, Vec<String>)> = Vec::new();
    let mut queues: Vec<QueueName> = Vec::new();
    // -s: the queue's structure check and repair (Postfix runs it before the other actions).
    let mut structure = false;
    let mut i = 0;
    // Bounded by the argument count.
    while i < args.len() {
        let a = &args[i];
        let op = match a.as_str() {
            "-c" => {
                i += 1;
                match args.get(i) {
                    Some(d) => cdir = Some(d.into()),
                    None => fatal(PROG, exit::EX_USAGE, "option -c requires an argument"),
                }
                i += 1;
                continue;
            }
            "-s" => {
                structure = true;
                i += 1;
                continue;
            }
            "-v" | "-p" | "-S" => {
                i += 1;
                continue;
            }
            "-d" => SuperOp::Delete,
            "-h" => SuperOp::Hold,
            "-H" => SuperOp::Release,
            "-r" => SuperOp::Requeue,
            "-f" => SuperOp::Expire,
            q if !q.starts_with('-') => {
                match QueueName::parse(q) {
                    Some(qn) => queues.push(qn),
                    None => fatal(PROG, exit::FAIL, format!("invalid directory name: {q}")),
                }
                i += 1;
                continue;
            }
            other => fatal(
                PROG,
                exit::EX_USAGE,
                format!("usage: {PROG} [-c config_dir] [-d queue_id] [-f queue_id] [-h queue_id] [-H queue_id] [-r queue_id] [queue...] (bad option {other})"),
            ),
        };
        i += 1;
        let Some(v) = args.get(i) else {
            fatal(
                PROG,
                exit::EX_USAGE,
                format!("option {} requires an argument", flag(op)),
            );
        };
        i += 1;
        let mut ids = Vec::new();
        if v == "-" {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                let t = line.trim();
                if !t.is_empty() {
                    ids.push(t.to_string());
                }
            }
        } else {
            ids.push(v.clone());
        }
        match wanted.iter_mut().find(|(o, _)| *o == op) {
            Some((_, l)) => l.extend(ids),
            None => wanted.push((op, ids)),
        }
    }
    if wanted.is_empty() && !structure {
        fatal(PROG, exit::EX_USAGE, "no action specified");
    }
    let dir = relais::config::config_dir(cdir.as_deref());
    let cfg = match relais::config::Config::load(&dir) {
        Ok(c) => c,
        Err(e) => fatal(PROG, exit::FAIL, e),
    };
    // Log like Postfix when a mail log file is configured; a failure to open it is fatal,
    // but only after the work is done and reported (as Postfix's postlog fallback does).
    let maillog = cfg.get("maillog_file");
    let mut log_error = None;
    let log = if maillog.is_empty() {
        false
    } else {
        match relais::log::open_sink(&maillog) {
            Ok(sink) => {
                let tag = relais::log::tag(&cfg.get("syslog_name"), PROG);
                relais::log::init(&cfg.get("myhostname"), &tag, sink, false);
                true
            }
            Err(e) => {
                log_error = Some(format!(
                    "open logfile '{maillog}': cannot open file: {}",
                    relais::control::strerror(&e)
                ));
                false
            }
        }
    };
    let mut backend = match Backend::open(&cfg) {
        Ok(b) => b,
        Err(ControlError::Down { connect, open }) => fatal(
            PROG,
            exit::EX_UNAVAILABLE,
            format!("mail system is down: {connect}; cannot open queue: {open}"),
        ),
        Err(e) => fatal(PROG, exit::EX_UNAVAILABLE, e),
    };
    if structure {
        match backend.call(&Request::Check, None) {
            Ok((Response::Checked { report }, _)) => {
                if !report.is_empty() {
                    say(log, &format!("queue structure check: {report}"));
                }
            }
            Ok((Response::Error { code, message }, _)) => fatal(PROG, code, message),
            Ok(_) => fatal(PROG, exit::FAIL, "unexpected answer to the structure check"),
            Err(e) => fatal(PROG, exit::EX_UNAVAILABLE, e),
        }
    }
    for op in ORDER {
        let Some((_, names)) = wanted.iter().find(|(o, _)| *o == op) else {
            continue;
        };
        let all = names.iter().any(|n| n == "ALL");
        let mut ids = Vec::new();
        if !all {
            for n in names {
                if id::valid(n) {
                    ids.push(n.clone());
                } else {
                    eprintln!("{PROG}: warning: invalid mail queue id: {n}");
                    if log {
                        tracing::warn!("invalid mail queue id: {n}");
                    }
                }
            }
        }
        let req = Request::Super {
            action: op,
            ids: if all { None } else { Some(ids) },
            queues: queues.clone(),
        };
        let (done, count, released_count) = match backend.call(&req, None) {
            Ok((
                Response::Done {
                    ids,
                    count,
                    released_count,
                    ..
                },
                _,
            )) => (ids, count, released_count),
            Ok((Response::Error { code, message }, _)) => {
                if code == exit::EX_NOPERM {
                    fatal(
                        PROG,
                        code,
                        "use of this command is reserved for the superuser",
                    );
                }
                fatal(PROG, code, message)
            }
            Ok((other, _)) => fatal(
                PROG,
                exit::EX_SOFTWARE,
                format!("unexpected reply: {other:?}"),
            ),
            Err(e) => fatal(PROG, exit::EX_UNAVAILABLE, e),
        };
        let (one, summary) = done_word(op);
        if !all {
            for d in &done {
                say(log, &format!("{d}: {one}"));
            }
        }
        say(log, &format!("{summary}: {count} {}", plural(count)));
        if op == SuperOp::Expire {
            let released_by_expire = released_count;
            // -f also releases from hold; Postfix reports that count even when -H was not given.
            if !wanted.iter().any(|(o, _)| *o == SuperOp::Release) {
                let (_, s) = done_word(SuperOp::Release);
                say(
                    log,
                    &format!("{s}: {released_by_expire} {}", plural(released_by_expire)),
                );
            }
        }
    }
    if let Some(e) = log_error {
        fatal(PROG, exit::FAIL, e);
    }
    std::process::exit(exit::OK);
}
