//! postcat - show a queued message as Postfix's postcat does: `-q ID` with `-e` (envelope),
//! `-h` (header), `-b` (body); `-c dir` or MAIL_CONFIG select the configuration. relais
//! keeps no queue files, so the envelope section is rebuilt from the queue record in
//! Postfix's record names and order.
//!
//! `-o` prints each record's offset and `-d` its record type as a decimal number, as they
//! would be in a Postfix queue file holding the same records (type byte, length as 7-bit
//! groups, data), so the offsets match Postfix's for the same envelope and content. `-v`
//! names content records (`regular_text:`); Postfix's debug lines on stderr are not
//! imitated. `-r` (file order, no pointer following) prints the same as the default: the
//! rebuilt records have no pointer records. `-s` (skip the envelope offset) is accepted.

use std::fmt::Write as _;
use std::io::Write as _;

use relais::cli::{exit, fatal};
use relais::control::{Backend, ControlError, Request, Response};
use relais::envelope::{Envelope, Origin, RcptStatus};
use relais::queue::{Meta, QueueName};

const PROG: &str = "postcat";

/// asctime without the newline: `Mon Nov 23 08:14:15 2026`.
fn asctime(t: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(t, 0).single() {
        Some(d) => d.format("%a %b %e %H:%M:%S %Y").to_string(),
        None => "Thu Jan  1 00:00:00 1970".into(),
    }
}

/// The path Postfix would show: deferred is hashed one level by the ID's first character.
fn path(queue: QueueName, id: &str) -> String {
    match (queue, id.chars().next()) {
        (QueueName::Deferred, Some(c)) => format!("deferred/{c}/{id}"),
        _ => format!("{queue}/{id}"),
    }
}

/// One record as postcat prints it, with what a Postfix queue file would hold for it.
struct Rec {
    /// Postfix's record type letter (REC_TYPE_*).
    code: u8,
    /// The line postcat prints (without `-o`/`-d`/`-v` prefixes).
    text: String,
    /// Length of the record's data in a queue file.
    len: usize,
    /// A content record (printed raw, or as `regular_text:` with -v).
    content: bool,
}

impl Rec {
    /// Bytes the record takes in a queue file: type, length in 7-bit groups, data.
    fn size(&self) -> usize {
        let mut n = self.len;
        let mut len_bytes = 1;
        while n >= 0x80 {
            n >>= 7;
            len_bytes += 1;
        }
        1 + len_bytes + self.len
    }
}

/// Envelope records from the lines `envelope_lines` prints, each with its type and the
/// length of its data (for named attributes and addresses the printed value is the data).
fn envelope_records(text: &str, meta: &Meta) -> Vec<Rec> {
    let mut out = Vec::new();
    for line in text.lines() {
        let (label, value) = line.split_once(": ").unwrap_or((line, ""));
        let (code, len) = match label {
            "message_size" => (b'C', value.len()),
            "message_arrival_time" => (
                b'T',
                format!("{} {}", meta.arrival_time, meta.arrival_usec).len(),
            ),
            "create_time" => (b'A', format!("create_time={}", meta.arrival_time).len()),
            "named_attribute" => (b'A', value.len()),
            "sender_fullname" => (b'F', value.len()),
            "sender" => (b'S', value.len()),
            "original_recipient" => (b'O', value.len()),
            "recipient" => (b'R', value.len()),
            "done_recipient" => (b'D', value.len()),
            _ => (b'A', value.len()),
        };
        out.push(Rec {
            code,
            text: line.to_string(),
            len,
            content: false,
        });
    }
    out
}

fn envelope_lines(id: &str, env: &Envelope, origin: &Origin, meta: &Meta) -> String {
    let mut body = String::new();
    let smtp = !origin.client_addr.is_empty();
    let _ = writeln!(body, "message_arrival_time: {}", asctime(meta.arrival_time));
    let _ = writeln!(body, "create_time: {}", asctime(meta.arrival_time));
    if smtp {
        let _ = writeln!(body, "named_attribute: log_ident={id}");
    }
    let _ = writeln!(body, "named_attribute: rewrite_context=local");
    if let Some(f) = &env.sender_fullname {
        let _ = writeln!(body, "sender_fullname: {f}");
    }
    let _ = writeln!(body, "sender: {}", env.sender);
    if smtp {
        let name = if origin.client_name.is_empty() {
            "unknown"
        } else {
            &origin.client_name
        };
        let addr = &origin.client_addr;
        let port = origin.client_port;
        let helo = origin.helo.as_deref();
        let proto = &origin.protocol;
        let _ = writeln!(body, "named_attribute: log_client_name={name}");
        let _ = writeln!(body, "named_attribute: log_client_address={addr}");
        let _ = writeln!(body, "named_attribute: log_client_port={port}");
        let _ = writeln!(body, "named_attribute: log_message_origin={name}[{addr}]");
        if let Some(h) = helo {
            let _ = writeln!(body, "named_attribute: log_helo_name={h}");
        }
        let _ = writeln!(body, "named_attribute: log_protocol_name={proto}");
        let _ = writeln!(body, "named_attribute: client_name={name}");
        let _ = writeln!(body, "named_attribute: reverse_client_name={name}");
        let _ = writeln!(body, "named_attribute: client_address={addr}");
        let _ = writeln!(body, "named_attribute: client_port={port}");
        if let Some(h) = helo {
            let _ = writeln!(body, "named_attribute: helo_name={h}");
        }
        let _ = writeln!(body, "named_attribute: protocol_name={proto}");
        if let Some(u) = &origin.sasl_user {
            let _ = writeln!(body, "named_attribute: sasl_username={u}");
        }
        let family = if addr.contains(':') { 10 } else { 2 };
        let _ = writeln!(body, "named_attribute: client_address_type={family}");
    }
    if let Some(e) = &env.envid {
        let _ = writeln!(body, "named_attribute: dsn_envid={e}");
    }
    for r in &env.recipients {
        if let Some(o) = &r.orcpt {
            let _ = writeln!(body, "named_attribute: dsn_orig_rcpt={o}");
        }
        let _ = writeln!(body, "original_recipient: {}", r.original);
        let kind = if r.status == RcptStatus::Pending {
            "recipient"
        } else {
            "done_recipient"
        };
        let _ = writeln!(body, "{kind}: {}", r.address);
    }
    let pending = env
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Pending)
        .count();
    // Postfix's size record: content size, data offset, recipient count, queue manager
    // options, content length, SMTPUTF8 flags. The data offset is where the content starts
    // in a Postfix queue file: after the size record (95 bytes of data and 2 of framing),
    // the other envelope records and the 2-byte message-content marker.
    let offset = 97
        + envelope_records(&body, meta)
            .iter()
            .map(Rec::size)
            .sum::<usize>()
        + 2;
    format!(
        "message_size: {:>15} {:>15} {:>15} {:>15} {:>15} {:>15}\n{body}",
        meta.size,
        offset,
        pending,
        0,
        meta.size,
        u8::from(env.smtputf8)
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut cdir, mut e, mut h, mut b, mut q) =
        (None::<std::path::PathBuf>, false, false, false, false);
    let (mut show_offset, mut show_type, mut verbose) = (false, false, false);
    let mut ids = Vec::new();
    let mut i = 0;
    // Bounded by the argument count.
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "-c" {
            match args.get(i) {
                Some(d) => cdir = Some(d.into()),
                None => fatal(PROG, exit::EX_USAGE, "option -c requires an argument"),
            }
            i += 1;
        } else if let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) {
            for f in flags.chars() {
                match f {
                    'e' => e = true,
                    'h' => h = true,
                    'b' => b = true,
                    'q' => q = true,
                    'o' => show_offset = true,
                    'd' => show_type = true,
                    'v' => verbose = true,
                    // File order without following pointers: the rebuilt records have no
                    // pointers, so this is the default order; -s only matters for files.
                    'r' | 's' => {}
                    _ => fatal(
                        PROG,
                        exit::EX_USAGE,
                        format!("usage: {PROG} [-bdehnoqv] [-c config_dir] [files...]"),
                    ),
                }
            }
        } else {
            ids.push(a.clone());
        }
    }
    if !q {
        // There are no queue files to name; every message is reached by its ID.
        fatal(
            PROG,
            exit::EX_USAGE,
            "relais keeps no queue files: use -q queue_id",
        );
    }
    let dir = relais::config::config_dir(cdir.as_deref());
    let cfg = match relais::config::Config::load(&dir) {
        Ok(c) => c,
        Err(err) => fatal(PROG, exit::FAIL, err),
    };
    let mut backend = match Backend::open(&cfg) {
        Ok(b) => b,
        Err(ControlError::Down { connect, open }) => fatal(
            PROG,
            exit::EX_UNAVAILABLE,
            format!("mail system is down: {connect}; cannot open queue: {open}"),
        ),
        Err(err) => fatal(PROG, exit::EX_UNAVAILABLE, err),
    };
    let show_env = e || (!h && !b);
    let show_hdr = h || (!e && !b);
    let show_body = b || (!e && !h);
    let mut stdout = std::io::stdout().lock();
    for id in ids {
        let (resp, content) = match backend.call(&Request::Fetch { id: id.clone() }, None) {
            Ok(r) => r,
            Err(err) => fatal(PROG, exit::EX_UNAVAILABLE, err),
        };
        let (queue, envelope, origin, meta) = match resp {
            Response::Message {
                queue,
                envelope,
                origin,
                meta,
                ..
            } => (queue, envelope, origin, meta),
            Response::Error { code, message } => {
                if code == exit::EX_NOPERM {
                    fatal(
                        PROG,
                        code,
                        format!("open queue file {id}: Permission denied"),
                    );
                }
                fatal(PROG, code, message)
            }
            other => fatal(
                PROG,
                exit::EX_SOFTWARE,
                format!("unexpected reply: {other:?}"),
            ),
        };
        let p = path(queue, &id);
        let mut out = String::new();
        // Every record with its offset; what is printed depends on -e/-h/-b.
        let mut offset = 0usize;
        let mut emit = |out: &mut String, r: &Rec, show: bool| {
            if show {
                if show_offset {
                    let _ = write!(out, "{offset:9} ");
                }
                if show_type {
                    let _ = write!(out, "{:3} ", r.code);
                }
                if r.content && verbose {
                    out.push_str("regular_text: ");
                }
                out.push_str(&r.text);
                out.push('\n');
            }
            offset += r.size();
        };
        if show_env {
            let _ = writeln!(out, "*** ENVELOPE RECORDS {p} ***");
        }
        let env_text = envelope_lines(&id, &envelope, &origin, &meta);
        for r in envelope_records(&env_text, &meta) {
            emit(&mut out, &r, show_env);
        }
        let marker = |code: u8, what: &str| Rec {
            code,
            text: format!("*** {what} {p} ***"),
            len: 0,
            content: false,
        };
        emit(&mut out, &marker(b'M', "MESSAGE CONTENTS"), show_env);
        let content = content.unwrap_or_default();
        let text = String::from_utf8_lossy(&content);
        let mut in_header = true;
        // Lines as records: CRLF or LF ends a line; a missing final newline is supplied.
        for line in text.split_inclusive('\n') {
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if in_header && line.is_empty() {
                in_header = false;
            }
            let show = (in_header && show_hdr) || (!in_header && show_body);
            let r = Rec {
                code: b'N',
                text: line.to_string(),
                len: line.len(),
                content: true,
            };
            emit(&mut out, &r, show);
        }
        emit(&mut out, &marker(b'X', "HEADER EXTRACTED"), show_env);
        emit(&mut out, &marker(b'E', "MESSAGE FILE END"), show_env);
        if stdout.write_all(out.as_bytes()).is_err() {
            std::process::exit(exit::EX_IOERR);
        }
    }
    let _ = stdout.flush();
    std::process::exit(exit::OK);
}
