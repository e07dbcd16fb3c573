//! NAME
//!   showq - the queue listing, in Postfix's `mailq` and `postqueue -j` formats
//!
//! SUMMARY
//!   `format_text(&entries)` and `format_json(&entries)` turn [`Entry`] lists (from the
//!   control socket or the queue directly) into exactly what Postfix prints.
//!
//! DESCRIPTION
//!   Text: a header line; per message the ID with `*` (active), `!` (hold) or `#`
//!   (force-expired) glued on, the size, the arrival time (asctime without the year) and
//!   the sender (`MAILER-DAEMON` for `<>`); then each run of recipients sharing a delay
//!   reason, preceded by that reason in parentheses, right-aligned to column 78; a blank
//!   line; and `-- N Kbytes in M Request(s).`, or `Mail queue is empty`.
//!   JSON: one object per message and line, Postfix's keys in Postfix's order and spacing.
//!
//! QUEUES
//!   maildrop, incoming, active, deferred, hold (in that order).
//!
//! SECURITY
//!   Output only; addresses and reasons are printed as stored.
//!
//! CONFIGURATION PARAMETERS
//!   none.

use std::fmt::Write as _;

use crate::control::Entry;
use crate::queue::QueueName;

/// Postfix's header line for short queue IDs.
pub const HEADER: &str = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------";

fn sender(s: &str) -> &str {
    if s.is_empty() {
        "MAILER-DAEMON"
    } else {
        s
    }
}

/// asctime's first 19 characters in local time: `Mon Nov 23 08:14:15`.
fn arrival(t: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(t, 0).single() {
        Some(d) => d.format("%a %b %e %H:%M:%S").to_string(),
        None => "Thu Jan  1 00:00:00".into(),
    }
}

fn status_char(e: &Entry) -> &'static str {
    match e.queue_name {
        QueueName::Active => "*",
        QueueName::Hold => "!",
        _ if e.forced_expire => "#",
        _ => "",
    }
}

/// The `postqueue -p` / `mailq` listing.
pub fn format_text(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::new();
    out.push_str(HEADER);
    out.push('\n');
    let mut total: u64 = 0;
    for e in entries {
        total = total.saturating_add(e.message_size);
        let id = format!("{}{}", e.queue_id, status_char(e));
        let _ = writeln!(
            out,
            "{:<11}{:>8} {}  {}",
            id,
            e.message_size,
            arrival(e.arrival_time),
            sender(&e.sender)
        );
        let mut last: Option<&Option<String>> = None;
        for (addr, reason) in &e.recipients {
            if last != Some(reason) {
                if let Some(r) = reason {
                    let pad = 76usize.saturating_sub(r.chars().count());
                    let _ = writeln!(out, "{:pad$}({})", "", r, pad = pad);
                }
                last = Some(reason);
            }
            let _ = writeln!(out, "{:41}{}", "", addr);
        }
        out.push('\n');
    }
    let n = entries.len();
    let _ = writeln!(
        out,
        "-- {} Kbytes in {} Request{}.",
        total / 1024,
        n,
        if n == 1 { "" } else { "s" }
    );
    out
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `postqueue -j`: one JSON object per line (nothing for an empty queue).
pub fn format_json(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = write!(
            out,
            "{{\"queue_name\": {}, \"queue_id\": {}, \"arrival_time\": {}, \"message_size\": {}, \"forced_expire\": {}, \"sender\": {}, \"recipients\": [",
            js(e.queue_name.as_str()),
            js(&e.queue_id),
            e.arrival_time,
            e.message_size,
            e.forced_expire,
            js(sender(&e.sender)),
        );
        for (i, (addr, reason)) in e.recipients.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{{\"address\": {}", js(addr));
            if let Some(r) = reason {
                let _ = write!(out, ", \"delay_reason\": {}", js(r));
            }
            out.push('}');
        }
        out.push_str("]}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(q: QueueName, id: &str, size: u64, sender: &str, r: &[(&str, Option<&str>)]) -> Entry {
        Entry {
            queue_name: q,
            queue_id: id.into(),
            arrival_time: 1_795_421_655,
            message_size: size,
            forced_expire: false,
            sender: sender.into(),
            recipients: r
                .iter()
                .map(|(a, b)| (a.to_string(), b.map(str::to_string)))
                .collect(),
        }
    }

    const REFUSED: &str = "connect to 127.0.0.1[127.0.0.1]:10129: Connection refused";

    #[test]
    fn text_matches_postfix_layout() {
        // Only the time column depends on TZ; the golden files were made in UTC.
        let held = format!("delivery temporarily suspended: {REFUSED}");
        let list = vec![
            e(
                QueueName::Deferred,
                "59A0A9AA1B2",
                451,
                "",
                &[("postmaster@example.net", Some(REFUSED))],
            ),
            e(
                QueueName::Hold,
                "5ACB19AA1B5",
                376,
                "ivan@example.com",
                &[("judy@example.net", Some(&held))],
            ),
        ];
        let out = format_text(&list);
        let t = arrival(1_795_421_655);
        let want = format!(
            "{HEADER}\n59A0A9AA1B2     451 {t}  MAILER-DAEMON\n                   ({REFUSED})\n                                         postmaster@example.net\n\n5ACB19AA1B5!     376 {t}  ivan@example.com\n({held})\n                                         judy@example.net\n\n-- 0 Kbytes in 2 Requests.\n"
        );
        assert_eq!(out, want);
        assert_eq!(format_text(&[]), "Mail queue is empty\n");
    }

    #[test]
    fn json_matches_postfix_layout() {
        let mut a = e(
            QueueName::Active,
            "935729AA198",
            384,
            "kate@example.com",
            &[
                ("leo@slow.example.net", None),
                ("mia@slow.example.net", None),
            ],
        );
        a.arrival_time = 1_795_422_019;
        assert_eq!(
            format_json(&[a]),
            "{\"queue_name\": \"active\", \"queue_id\": \"935729AA198\", \"arrival_time\": 1795422019, \"message_size\": 384, \"forced_expire\": false, \"sender\": \"kate@example.com\", \"recipients\": [{\"address\": \"leo@slow.example.net\"}, {\"address\": \"mia@slow.example.net\"}]}\n"
        );
        assert_eq!(format_json(&[]), "");
    }
}

/// `postqueue` (and `mailq`, which is `postqueue -p`): parses Postfix's flags and runs the
/// request; returns the exit status.
pub fn postqueue_main(prog: &str, args: &[String]) -> i32 {
    use crate::cli::{exit, fatal, warning};
    use crate::control::{Backend, ControlError, Request, Response};

    enum Mode {
        List,
        Json,
        Flush,
        Site(String),
        One(String),
    }
    let mut cdir: Option<std::path::PathBuf> = None;
    let mut mode = None;
    let mut it = args.iter();
    // Bounded by the argument count.
    while let Some(a) = it.next() {
        let mut need = |what: &str| -> String {
            match it.next() {
                Some(v) => v.clone(),
                None => fatal(
                    prog,
                    exit::EX_USAGE,
                    format!("option {what} requires an argument"),
                ),
            }
        };
        match a.as_str() {
            "-c" => cdir = Some(need("-c").into()),
            "-p" => mode = Some(Mode::List),
            "-j" => mode = Some(Mode::Json),
            "-f" => mode = Some(Mode::Flush),
            "-s" => mode = Some(Mode::Site(need("-s"))),
            "-i" => mode = Some(Mode::One(need("-i"))),
            "-v" => {}
            other => fatal(
                prog,
                exit::EX_USAGE,
                format!("usage: {prog} -f | {prog} -i queueid | {prog} -j | {prog} -p | {prog} -s site (bad argument {other})"),
            ),
        }
    }
    let Some(mode) = mode else {
        fatal(
            prog,
            exit::EX_USAGE,
            format!(
                "usage: {prog} -f | {prog} -i queueid | {prog} -j | {prog} -p | {prog} -s site"
            ),
        );
    };
    let dir = crate::config::config_dir(cdir.as_deref());
    let cfg = match crate::config::Config::load(&dir) {
        Ok(c) => c,
        Err(e) => fatal(prog, exit::FAIL, e),
    };
    let listing = matches!(mode, Mode::List | Mode::Json);
    let mut backend = match Backend::open(&cfg) {
        Ok(b) => b,
        Err(ControlError::Down { .. }) if listing => fatal(
            prog,
            exit::EX_UNAVAILABLE,
            "Queue report unavailable - mail system is down",
        ),
        Err(_) => fatal(
            prog,
            exit::EX_UNAVAILABLE,
            "Cannot flush mail queue - mail system is down",
        ),
    };
    if let Backend::Direct { why, .. } = &backend {
        if listing {
            warning(
                prog,
                format!("Mail system is down -- accessing queue directly (Connect to the Postfix showq service: {why})"),
            );
        } else {
            // Flushing needs the queue manager; reading the database alone cannot do it.
            fatal(
                prog,
                exit::EX_UNAVAILABLE,
                "Cannot flush mail queue - mail system is down",
            );
        }
    }
    let req = match &mode {
        Mode::List | Mode::Json => Request::List,
        Mode::Flush => Request::Flush,
        Mode::Site(s) => Request::FlushSite { site: s.clone() },
        Mode::One(id) => Request::DeliverOne { id: id.clone() },
    };
    match backend.call(&req, None) {
        Ok((Response::List { entries }, _)) => {
            let text = match mode {
                Mode::Json => format_json(&entries),
                _ => format_text(&entries),
            };
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return exit::EX_IOERR;
            }
            exit::OK
        }
        Ok((Response::Ok, _)) => exit::OK,
        Ok((Response::Error { code, message }, _)) => fatal(prog, code, message),
        Ok((other, _)) => fatal(
            prog,
            exit::EX_SOFTWARE,
            format!("unexpected reply: {other:?}"),
        ),
        Err(e) => fatal(
            prog,
            exit::EX_UNAVAILABLE,
            format!("mail system is down: {e}"),
        ),
    }
}
