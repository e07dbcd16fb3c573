//! postcat - show a queued message as Postfix's postcat does: `-q ID` with `-e` (envelope),
//! `-h` (header), `-b` (body); `-c dir` or MAIL_CONFIG select the configuration. relais
//! keeps no queue files, so the envelope section is rebuilt from the queue record in
//! Postfix's record names and order.

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
    // options, content length, SMTPUTF8 flags. The data offset is where the content would
    // start in a Postfix queue file: the envelope records before it, each with about two
    // bytes of record framing.
    let offset = 100 + body.len() + 2 * body.lines().count();
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
                    'v' | 'o' | 'r' | 'd' | 's' => {}
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
        if show_env {
            let _ = writeln!(out, "*** ENVELOPE RECORDS {p} ***");
            out.push_str(&envelope_lines(&id, &envelope, &origin, &meta));
            let _ = writeln!(out, "*** MESSAGE CONTENTS {p} ***");
        }
        let content = content.unwrap_or_default();
        let text = String::from_utf8_lossy(&content);
        let mut in_header = true;
        // Lines as records: CRLF or LF ends a line; a missing final newline is supplied.
        for line in text.split_inclusive('\n') {
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if in_header && line.is_empty() {
                in_header = false;
            }
            if (in_header && show_hdr) || (!in_header && show_body) {
                out.push_str(line);
                out.push('\n');
            }
        }
        if show_env {
            let _ = writeln!(out, "*** HEADER EXTRACTED {p} ***");
            let _ = writeln!(out, "*** MESSAGE FILE END {p} ***");
        }
        if stdout.write_all(out.as_bytes()).is_err() {
            std::process::exit(exit::EX_IOERR);
        }
    }
    let _ = stdout.flush();
    std::process::exit(exit::OK);
}
