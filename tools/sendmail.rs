//! `sendmail`: the Sendmail-compatible local submission interface, as Postfix's sendmail(1).
//!
//! Reads a message on standard input and hands it to the running daemon over the control
//! socket (into the maildrop queue, from where pickup takes it), or writes it into the queue
//! directly when no daemon runs. Supported: -f/-r sender, -F full name, -t, -i/-oi, -N, -R,
//! -V, -B, -bm (default), -bp (mailq), -q (flush), -C/-c config directory, -v; other -o and
//! -h/-G options are accepted and ignored, as Postfix does.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use relais::cli::{self, exit};
use relais::config::{self, Config};
use relais::control::client::Backend;
use relais::control::proto::{Request, Response};
use relais::envelope::{BodyType, Envelope, Origin, Recipient, Ret};

const PROG: &str = "sendmail";

struct Opts {
    sender: Option<String>,
    fullname: Option<String>,
    extract: bool,
    dot_ends: bool,
    notify: Option<String>,
    ret: Option<Ret>,
    envid: Option<String>,
    body: BodyType,
    mode: Mode,
    config: Option<PathBuf>,
    recipients: Vec<String>,
}

#[derive(PartialEq)]
enum Mode {
    Deliver,
    ListQueue,
    Flush,
}

fn usage(why: &str) -> ! {
    cli::fatal(PROG, exit::EX_USAGE, format!("{why}\nusage: sendmail [-f sender] [-F name] [-t] [-i] [-N dsn] [-R ret] [-V envid] [-bm|-bp|-q] [-C dir] [recipient ...]"))
}

fn parse_args() -> Opts {
    let mut o = Opts {
        sender: None,
        fullname: None,
        extract: false,
        dot_ends: true,
        notify: None,
        ret: None,
        envid: None,
        body: BodyType::Unspecified,
        mode: Mode::Deliver,
        config: None,
        recipients: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    // Options take their value either attached (-fuser) or as the next word (-f user).
    let value = |i: &mut usize, attached: &str, flag: &str| -> String {
        if !attached.is_empty() {
            return attached.to_string();
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .unwrap_or_else(|| usage(&format!("option {flag} requires an argument")))
    };
    while i < args.len() {
        let a = args[i].clone();
        if a == "--" {
            o.recipients.extend(args[i + 1..].iter().cloned());
            break;
        }
        if a == "--help" {
            println!("usage: sendmail [-f sender] [-F name] [-t] [-i] [-N dsn] [-R ret] [-V envid] [-bm|-bp|-q] [-C dir] [recipient ...]");
            std::process::exit(exit::OK);
        }
        if !a.starts_with('-') || a.len() < 2 {
            o.recipients.push(a);
            i += 1;
            continue;
        }
        let flag = &a[1..2];
        let rest = &a[2..];
        match flag {
            "f" | "r" => o.sender = Some(value(&mut i, rest, "-f")),
            "F" => o.fullname = Some(value(&mut i, rest, "-F")),
            "t" => o.extract = true,
            "i" => o.dot_ends = false,
            "o" => {
                if rest == "i" {
                    o.dot_ends = false;
                }
                // -oXvalue: other sendmail options are accepted and ignored.
            }
            "N" => o.notify = Some(value(&mut i, rest, "-N")),
            "R" => {
                o.ret = match value(&mut i, rest, "-R").to_ascii_lowercase().as_str() {
                    "full" => Some(Ret::Full),
                    "hdrs" => Some(Ret::Hdrs),
                    other => usage(&format!("bad -R option: {other}")),
                }
            }
            "V" => o.envid = Some(value(&mut i, rest, "-V")),
            "B" => {
                o.body = match value(&mut i, rest, "-B").to_ascii_uppercase().as_str() {
                    "8BITMIME" => BodyType::EightBitMime,
                    "7BIT" => BodyType::SevenBit,
                    other => usage(&format!("bad -B option: {other}")),
                }
            }
            "b" => match rest {
                "m" | "" => o.mode = Mode::Deliver,
                "p" => o.mode = Mode::ListQueue,
                "s" => cli::fatal(PROG, exit::EX_USAGE, "-bs (SMTP on standard input) is not supported by relais: connect to the submission port instead"),
                other => usage(&format!("unsupported: -b{other}")),
            },
            "q" => o.mode = Mode::Flush,
            "C" | "c" => o.config = Some(PathBuf::from(value(&mut i, rest, "-C"))),
            "h" | "G" | "v" | "U" | "m" | "n" | "d" | "x" | "A" | "L" | "X" => {
                if matches!(flag, "h" | "L" | "X" | "A") && rest.is_empty() {
                    i += 1; // these take a value we ignore
                }
            }
            _ => usage(&format!("invalid option -- '{flag}'")),
        }
        i += 1;
    }
    o
}

/// The invoking user's login name and full name (from the password database).
fn login() -> (String, Option<String>) {
    // SAFETY: getpwuid returns a pointer into static storage valid until the next call; we
    // copy what we need at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() {
            return (format!("#{}", libc::getuid()), None);
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned();
        let gecos = if (*pw).pw_gecos.is_null() {
            None
        } else {
            let g = std::ffi::CStr::from_ptr((*pw).pw_gecos).to_string_lossy();
            let g = g.split(',').next().unwrap_or("").trim().to_string();
            (!g.is_empty()).then_some(g)
        };
        (name, gecos)
    }
}

/// Reads the message: LF or CRLF lines to CRLF; a lone "." ends it unless -i.
fn read_message(dot_ends: bool, limit: u64) -> Vec<u8> {
    let mut raw = Vec::new();
    let stdin = std::io::stdin();
    let mut h = stdin
        .lock()
        .take(if limit > 0 { limit + 1 } else { u64::MAX });
    if let Err(e) = h.read_to_end(&mut raw) {
        cli::fatal(PROG, exit::EX_IOERR, format!("error reading input: {e}"));
    }
    if limit > 0 && raw.len() as u64 > limit {
        cli::fatal(PROG, exit::EX_DATAERR, "message file too big");
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if dot_ends && body == b"." {
            break;
        }
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Recipients from To:, Cc:, Bcc: (and their Resent- forms) for -t.
fn header_recipients(content: &[u8]) -> Vec<String> {
    let (headers, _) = relais::cleanup::headers::split(content);
    let mut block = Vec::new();
    for h in headers {
        let n = h.name.to_ascii_lowercase();
        let n = n.strip_prefix("resent-").unwrap_or(&n);
        if matches!(n, "to" | "cc" | "bcc") {
            h.to_wire(&mut block);
        }
    }
    block.extend_from_slice(b"\r\n");
    let msg = mail_parser::MessageParser::default().parse(&block);
    let mut out = Vec::new();
    if let Some(m) = msg {
        for a in [m.to(), m.cc(), m.bcc()].into_iter().flatten() {
            for addr in a.iter() {
                if let Some(s) = addr.address() {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn main() {
    let o = parse_args();
    let dir = config::config_dir(o.config.as_deref());
    match o.mode {
        Mode::ListQueue | Mode::Flush => {
            let flag = if o.mode == Mode::Flush { "-f" } else { "-p" };
            let st = Command::new(sibling("postqueue"))
                .arg("-c")
                .arg(&dir)
                .arg(flag)
                .status();
            std::process::exit(
                st.ok()
                    .and_then(|s| s.code())
                    .unwrap_or(exit::EX_UNAVAILABLE),
            );
        }
        Mode::Deliver => {}
    }
    let cfg = Config::load(&dir).unwrap_or_else(|e| cli::fatal(PROG, exit::EX_CONFIG, e));
    let content = read_message(o.dot_ends, cfg.get_size("message_size_limit"));
    let mut rcpts = o.recipients.clone();
    if o.extract {
        rcpts.extend(header_recipients(&content));
    }
    if rcpts.is_empty() {
        cli::fatal(
            PROG,
            exit::EX_USAGE,
            "No recipient addresses found in message header",
        );
    }
    let (user, gecos) = login();
    let sender = o.sender.clone().unwrap_or(user);
    let sender = if sender == "<>" {
        String::new()
    } else {
        sender
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string()
    };
    let mut notify = relais::envelope::Notify::default();
    if let Some(n) = &o.notify {
        notify.explicit = true;
        for w in n.split(',') {
            match w.trim().to_ascii_lowercase().as_str() {
                "never" => notify.never = true,
                "success" => notify.success = true,
                "failure" => notify.failure = true,
                "delay" => notify.delay = true,
                other => usage(&format!("bad -N option: {other}")),
            }
        }
    }
    let recipients = rcpts
        .iter()
        .map(|r| {
            let mut rc = Recipient::new(r.trim_start_matches('<').trim_end_matches('>'));
            rc.notify = notify;
            rc
        })
        .collect();
    let envelope = Envelope {
        sender,
        sender_fullname: o.fullname.clone().or(gecos),
        recipients,
        ret: o.ret,
        envid: o.envid.clone(),
        body_type: o.body,
        smtputf8: false,
        actions: Default::default(),
    };
    let origin = Origin {
        protocol: String::new(),
        service: relais::pickup::SENDMAIL.into(),
        ..Default::default()
    };
    let mut backend =
        Backend::open(&cfg).unwrap_or_else(|e| cli::fatal(PROG, exit::EX_TEMPFAIL, e));
    let req = Request::Submit {
        envelope,
        origin,
        content_length: content.len() as u64,
    };
    match backend.call(&req, Some(&content)) {
        Ok((Response::Queued { .. }, _)) => std::process::exit(exit::OK),
        Ok((Response::Error { code, message }, _)) => cli::fatal(PROG, code, message),
        Ok((other, _)) => cli::fatal(
            PROG,
            exit::EX_SOFTWARE,
            format!("unexpected reply: {other:?}"),
        ),
        Err(e) => cli::fatal(PROG, exit::EX_TEMPFAIL, e),
    }
}
