//! NAME
//!   showq - the queue listing, in Postfix's `mailq` and `postqueue -j` formats
//!
//! SUMMARY
//!   `format_text(&entries, long_ids)` and `format_json(&entries)` turn [`Entry`] lists (from the
//!   control socket or the queue directly) into exactly what Postfix prints; [`TextListing`]
//!   writes the same text as batches arrive, so that `postqueue -p` never holds a long queue.
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
/// The header line with `enable_long_queue_ids = yes`.
pub const LONG_HEADER: &str =
    "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------";

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

/// The ID decorated as Postfix does: `*` active, `!` hold, then `#` when force-expired; and
/// `?` for the corrupt queue, which Postfix's showq does not list.
fn decorated_id(e: &Entry) -> String {
    let mut id = e.queue_id.clone();
    match e.queue_name {
        QueueName::Active => id.push('*'),
        QueueName::Hold => id.push('!'),
        QueueName::Corrupt => id.push('?'),
        _ => {}
    }
    if e.forced_expire {
        id.push('#');
    }
    id
}

/// The `postqueue -p` / `mailq` listing; `long` is `enable_long_queue_ids` (wider columns).
pub fn format_text(entries: &[Entry], long: bool) -> String {
    let mut t = TextListing::new(Vec::new(), long);
    for e in entries {
        // Writing into a Vec cannot fail.
        let _ = t.entry(e);
    }
    String::from_utf8(t.finish().unwrap_or_default()).unwrap_or_default()
}

/// The `postqueue -p` listing written as entries arrive, so that a long queue is never
/// held whole: the header before the first entry, the totals after the last.
pub struct TextListing<W: std::io::Write> {
    out: W,
    long: bool,
    total: u64,
    n: usize,
    /// One entry's lines, formatted before they are written.
    buf: String,
}

impl<W: std::io::Write> TextListing<W> {
    pub fn new(out: W, long: bool) -> Self {
        TextListing {
            out,
            long,
            total: 0,
            n: 0,
            buf: String::new(),
        }
    }

    pub fn entry(&mut self, e: &Entry) -> std::io::Result<()> {
        let long = self.long;
        let out = &mut self.buf;
        out.clear();
        if self.n == 0 {
            out.push_str(if long { LONG_HEADER } else { HEADER });
            out.push('\n');
        } else {
            out.push('\n');
        }
        self.n += 1;
        self.total = self.total.saturating_add(e.message_size);
        let id = decorated_id(e);
        let t = arrival(e.arrival_time);
        let from = sender(&e.sender);
        // Short IDs: the time column is 20 wide (asctime's trailing blank); long: 19.
        let _ = if long {
            writeln!(out, "{id:<17} {:>8} {t} {from}", e.message_size)
        } else {
            writeln!(out, "{id:<11} {:>7} {t}  {from}", e.message_size)
        };
        let indent = if long { 47 } else { 41 };
        // A reason line precedes each run of recipients sharing it; a recipient without
        // a reason after one with a reason gets "(reason unavailable)".
        let mut last = "";
        for (addr, reason) in &e.recipients {
            let why = reason.as_deref().unwrap_or("");
            if why != last {
                last = why;
                let show = if why.is_empty() {
                    "reason unavailable"
                } else {
                    why
                };
                let pad = 76usize.saturating_sub(show.len());
                let _ = writeln!(out, "{:pad$}({show})", "");
            }
            let _ = writeln!(out, "{:indent$}{addr}", "");
        }
        self.out.write_all(self.buf.as_bytes())
    }

    /// Writes the totals (or `Mail queue is empty`) and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        let n = self.n;
        if n == 0 {
            self.out.write_all(b"Mail queue is empty\n")?;
        } else {
            writeln!(
                self.out,
                "\n-- {} Kbytes in {} Request{}.",
                self.total / 1024,
                n,
                if n == 1 { "" } else { "s" }
            )?;
        }
        Ok(self.out)
    }
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
    if listing {
        use std::io::Write;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
        let json = matches!(mode, Mode::Json);
        let mut text = TextListing::new(&mut out, cfg.get_bool("enable_long_queue_ids"));
        // A failed write to standard output ends the listing with EX_IOERR.
        let mut out_failed = false;
        let res = backend.list(&mut |entries| {
            let r = if json {
                text.out.write_all(format_json(entries).as_bytes())
            } else {
                entries.iter().try_for_each(|e| text.entry(e))
            };
            out_failed |= r.is_err();
            r
        });
        let mut res = res;
        if res.is_ok() {
            let finished = if json {
                Ok(())
            } else {
                text.finish().map(drop)
            };
            if let Err(e) = finished.and_then(|()| out.flush()) {
                out_failed = true;
                res = Err(ControlError::Io(e));
            }
        }
        return match res {
            Ok(()) => exit::OK,
            Err(_) if out_failed => exit::EX_IOERR,
            Err(ControlError::Refused { code, message }) => fatal(prog, code, message),
            Err(e) => fatal(
                prog,
                exit::EX_UNAVAILABLE,
                format!("mail system is down: {e}"),
            ),
        };
    }
    match backend.call(&req, None) {
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
        let out = format_text(&list, false);
        let t = arrival(1_795_421_655);
        let want = format!(
            "{HEADER}\n59A0A9AA1B2     451 {t}  MAILER-DAEMON\n                   ({REFUSED})\n                                         postmaster@example.net\n\n5ACB19AA1B5!     376 {t}  ivan@example.com\n({held})\n                                         judy@example.net\n\n-- 0 Kbytes in 2 Requests.\n"
        );
        assert_eq!(out, want);
        assert_eq!(format_text(&[], false), "Mail queue is empty\n");
        // Hold and force-expired together; a reason-less recipient after a reason.
        let mut m = e(
            QueueName::Hold,
            "ABC",
            12,
            "a@b",
            &[("x@y", Some("r")), ("z@y", None)],
        );
        m.forced_expire = true;
        let out = format_text(&[m], true);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(LONG_HEADER));
        assert_eq!(
            lines.next().unwrap(),
            format!("ABC!#                   12 {t} a@b")
        );
        assert_eq!(lines.next().unwrap(), format!("{:75}(r)", ""));
        assert_eq!(lines.next().unwrap(), format!("{:47}x@y", ""));
        assert_eq!(
            lines.next().unwrap(),
            format!("{:58}(reason unavailable)", "")
        );
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
