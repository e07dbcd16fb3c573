//! Turning a submission into what goes into the queue: header work, content checks, the
//! Received: header. Pure CPU work, run off the coordinating actors.

use chrono::Local;

use super::checks::{self, Action};
use super::headers::{self, Header, ReceivedInfo};
use crate::envelope::{Envelope, Origin};

/// A lookup used for header_checks / body_checks: the result for one line, if any.
pub trait CheckTable: Send + Sync {
    fn check(&self, line: &str) -> Option<String>;
}

/// cleanup's settings, read once per (re)load.
pub struct Settings {
    pub myhostname: String,
    pub myorigin: String,
    pub mail_name: String,
    pub always_add_missing_headers: bool,
    pub header_size_limit: usize,
    pub sasl_authenticated_header: bool,
    pub tls_received_header: bool,
    pub header_checks: Option<Box<dyn CheckTable>>,
    pub mime_header_checks: Option<Box<dyn CheckTable>>,
    pub body_checks: Option<Box<dyn CheckTable>>,
    /// mime_nesting_limit: deepest multipart nesting followed for MIME part checks.
    pub mime_nesting_limit: usize,
    /// always_bcc: an address that gets a copy of every message received.
    pub always_bcc: String,
    /// sender_bcc_maps / recipient_bcc_maps: copies by envelope sender or recipient.
    pub sender_bcc_maps: crate::table::Maps,
    pub recipient_bcc_maps: crate::table::Maps,
}

/// Most MIME parts whose headers are checked in one message; past it the rest is body.
const MAX_MIME_PARTS: usize = 10_000;

impl CheckTable for crate::table::Maps {
    fn check(&self, line: &str) -> Option<String> {
        match self.lookup(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("content check lookup: {e}");
                None
            }
        }
    }
}

impl Settings {
    /// Reads cleanup's parameters and opens its check tables.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Settings, crate::table::TableError> {
        let checks = |name: &str| -> Result<Option<Box<dyn CheckTable>>, crate::table::TableError> {
            let list = cfg.get_list(name);
            if list.is_empty() {
                return Ok(None);
            }
            Ok(Some(Box::new(crate::table::Maps::open(&list)?)))
        };
        Ok(Settings {
            myhostname: cfg.get("myhostname"),
            myorigin: cfg.get("myorigin"),
            mail_name: cfg.get("mail_name"),
            always_add_missing_headers: cfg.get_bool("always_add_missing_headers"),
            header_size_limit: cfg.get_size("header_size_limit") as usize,
            sasl_authenticated_header: cfg.get_bool("smtpd_sasl_authenticated_header"),
            tls_received_header: cfg.get_bool("smtpd_tls_received_header"),
            header_checks: checks("header_checks")?,
            mime_header_checks: checks("mime_header_checks")?,
            body_checks: checks("body_checks")?,
            mime_nesting_limit: cfg.get_int("mime_nesting_limit").max(0) as usize,
            always_bcc: cfg.get("always_bcc").trim().to_string(),
            sender_bcc_maps: crate::table::Maps::open(&cfg.get_list("sender_bcc_maps"))?,
            recipient_bcc_maps: crate::table::Maps::open(&cfg.get_list("recipient_bcc_maps"))?,
        })
    }
}

/// A message as smtpd or pickup hands it over. `content` has CRLF line ends.
pub struct Submission {
    pub queue_id: String,
    pub envelope: Envelope,
    pub origin: Origin,
    pub content: Vec<u8>,
}

/// The result of cleanup: content to store and what the checks decided.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub content: Vec<u8>,
    pub hold: Option<String>,
    pub discard: Option<String>,
    pub redirect: Option<String>,
    pub filter: Option<String>,
    pub bcc: Vec<String>,
    pub message_id: Option<String>,
}

/// The message is refused; the text is a complete SMTP reply (`550 5.7.1 …`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Rejected(pub String);

fn log_context(sub: &Submission) -> String {
    let o = &sub.origin;
    let from = if o.client_addr.is_empty() {
        "local".to_string()
    } else {
        format!("{}[{}]", o.client_name, o.client_addr)
    };
    let to = sub
        .envelope
        .recipients
        .first()
        .map(|r| r.address.as_str())
        .unwrap_or("");
    let mut s = format!("from {from}; from=<{}> to=<{to}>", sub.envelope.sender);
    if !o.protocol.is_empty() {
        s.push_str(&format!(" proto={}", o.protocol));
    }
    if let Some(h) = &o.helo {
        s.push_str(&format!(" helo=<{h}>"));
    }
    s
}

/// Applies one table result to a header or body line; returns the lines that replace it.
fn apply(
    sub: &Submission,
    out: &mut Cleaned,
    what: &str,
    line: &str,
    result: Option<String>,
) -> Result<Option<Vec<String>>, Rejected> {
    let Some(result) = result else {
        return Ok(None);
    };
    let id = &sub.queue_id;
    let first = line.split('\n').next().unwrap_or(line);
    let ctx = log_context(sub);
    let action = match checks::parse(&result) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("{id}: {e}");
            return Ok(None);
        }
    };
    Ok(Some(match action {
        Action::Keep => vec![line.to_string()],
        Action::Ignore => vec![],
        Action::Reject(text) => {
            let reply = checks::reject_reply(&text);
            tracing::info!("{id}: reject: {what} {first} {ctx}: {}", &reply[4..]);
            return Err(Rejected(reply));
        }
        Action::Warn(text) => {
            tracing::info!("{id}: warning: {what} {first} {ctx}: {text}");
            vec![line.to_string()]
        }
        Action::Info(text) => {
            tracing::info!("{id}: info: {what} {first} {ctx}: {text}");
            vec![line.to_string()]
        }
        Action::Hold(text) => {
            tracing::info!("{id}: hold: {what} {first} {ctx}: {text}");
            out.hold.get_or_insert(text);
            vec![line.to_string()]
        }
        Action::Discard(text) => {
            tracing::info!("{id}: discard: {what} {first} {ctx}: {text}");
            out.discard.get_or_insert(text);
            vec![line.to_string()]
        }
        Action::Prepend(text) => vec![text, line.to_string()],
        Action::Replace(text) => vec![text],
        Action::Redirect(to) => {
            tracing::info!("{id}: redirect: {what} {first} {ctx}: {to}");
            out.redirect = Some(to);
            vec![line.to_string()]
        }
        Action::Filter(f) => {
            tracing::info!("{id}: filter: {what} {first} {ctx}: {f}");
            out.filter = Some(f);
            vec![line.to_string()]
        }
        Action::Bcc(to) => {
            out.bcc.push(to);
            vec![line.to_string()]
        }
    }))
}

fn is_mime_header(h: &Header) -> bool {
    h.is("MIME-Version") || h.name.to_ascii_lowercase().starts_with("content-")
}

/// Runs cleanup on one submission.
pub fn process(sub: &Submission, s: &Settings) -> Result<Cleaned, Rejected> {
    // smtpd's access policy decisions come first; header/body checks may add to them.
    let acts = &sub.envelope.actions;
    let mut out = Cleaned {
        hold: acts.hold.clone(),
        discard: acts.discard.clone(),
        redirect: acts.redirect.clone(),
        filter: acts.filter.clone(),
        bcc: acts.bcc.clone(),
        ..Cleaned::default()
    };
    let (hdrs, body) = headers::split(&sub.content);
    let local = sub.origin.client_addr.is_empty();
    let mut kept: Vec<Header> = Vec::with_capacity(hdrs.len() + 4);
    let mut header_bytes = 0usize;
    for mut h in hdrs {
        // Return-Path: is added at final delivery from the envelope; one from outside lies.
        // Delivered-To: is kept although the issue text asked for its removal: Postfix keeps
        // it (header_opts gives it no drop flag) because the local, virtual and pipe agents
        // detect mail forwarding loops by finding their own Delivered-To: in a message that
        // comes back; removing it on input would turn such loops into endless deliveries.
        if h.is("Return-Path") || (local && h.is("Bcc")) {
            continue;
        }
        // header_size_limit: the excess of an oversized header is discarded, as Postfix does.
        if header_bytes + h.text.len() > s.header_size_limit {
            let room = s.header_size_limit.saturating_sub(header_bytes);
            if room == 0 {
                continue;
            }
            let mut cut = room.min(h.text.len());
            while !h.text.is_char_boundary(cut) {
                cut -= 1;
            }
            h.text.truncate(cut);
        }
        header_bytes += h.text.len();
        let table = if is_mime_header(&h) {
            s.mime_header_checks.as_deref()
        } else {
            s.header_checks.as_deref()
        };
        let result = table.and_then(|t| t.check(&h.text));
        match apply(sub, &mut out, "header", &h.text, result)? {
            None => kept.push(h),
            Some(lines) => {
                for text in lines {
                    let name = text.split(':').next().unwrap_or("").trim().to_string();
                    kept.push(Header { name, text });
                }
            }
        }
    }
    if let Some(mid) = kept.iter().find(|h| h.is("Message-ID")) {
        out.message_id = mid
            .text
            .split_once(':')
            .map(|(_, v)| v.trim().replace('\n', ""));
    }
    let now = Local::now();
    let mut added: Vec<Header> = Vec::new();
    if local || s.always_add_missing_headers {
        if !kept.iter().any(|h| h.is("Date") || h.is("Resent-Date")) {
            added.push(Header {
                name: "Date".into(),
                text: format!("Date: {}", headers::rfc2822_date(now)),
            });
        }
        if !kept
            .iter()
            .any(|h| h.is("Message-ID") || h.is("Resent-Message-ID"))
        {
            let mid = format!(
                "<{}.{}@{}>",
                now.format("%Y%m%d%H%M%S"),
                sub.queue_id,
                s.myhostname
            );
            added.push(Header {
                name: "Message-ID".into(),
                text: format!("Message-ID: {mid}"),
            });
            out.message_id = Some(mid);
        }
        if !kept.iter().any(|h| h.is("From") || h.is("Resent-From")) {
            let sender = if sub.envelope.sender.is_empty() {
                format!("MAILER-DAEMON@{}", s.myhostname)
            } else if sub.envelope.sender.contains('@') {
                sub.envelope.sender.clone()
            } else {
                format!("{}@{}", sub.envelope.sender, s.myorigin)
            };
            let text = match &sub.envelope.sender_fullname {
                Some(n) if !n.is_empty() => format!("From: {n} <{sender}>"),
                _ => format!("From: {sender}"),
            };
            added.push(Header {
                name: "From".into(),
                text,
            });
        }
    }
    if let Some(mid) = &out.message_id {
        tracing::info!("{}: message-id={mid}", sub.queue_id);
    }
    let single = match sub.envelope.recipients.as_slice() {
        [one] => Some(one.address.as_str()),
        _ => None,
    };
    let o = &sub.origin;
    let rcv = headers::received(&ReceivedInfo {
        helo: o.helo.as_deref(),
        client_name: &o.client_name,
        client_addr: &o.client_addr,
        protocol: &o.protocol,
        uid: o.uid,
        myhostname: &s.myhostname,
        mail_name: &s.mail_name,
        queue_id: &sub.queue_id,
        single_rcpt: single,
        sasl_user: if s.sasl_authenticated_header {
            o.sasl_user.as_deref()
        } else {
            None
        },
        tls: if s.tls_received_header {
            o.tls.as_deref()
        } else {
            None
        },
        now,
    });
    // Our own Received: header goes through header_checks too (the seed removes the
    // ESMTPSA one for privacy), as Postfix's does.
    let mut content = Vec::with_capacity(sub.content.len() + 512);
    let rcv_result = s.header_checks.as_deref().and_then(|t| t.check(&rcv.text));
    match apply(sub, &mut out, "header", &rcv.text, rcv_result)? {
        None => rcv.to_wire(&mut content),
        Some(lines) => {
            for text in lines {
                Header {
                    name: String::new(),
                    text,
                }
                .to_wire(&mut content);
            }
        }
    }
    // PREPEND results of the access policy go right after our Received:, as Postfix's smtpd
    // writes them ahead of the message's own headers.
    for text in &acts.prepend {
        Header {
            name: text.split(':').next().unwrap_or("").trim().to_string(),
            text: text.clone(),
        }
        .to_wire(&mut content);
    }
    for h in kept.iter().chain(added.iter()) {
        h.to_wire(&mut content);
    }
    content.extend_from_slice(b"\r\n");
    if s.body_checks.is_none() && s.mime_header_checks.is_none() {
        content.extend_from_slice(body);
    } else {
        let boundary = kept.iter().find_map(headers::multipart_boundary);
        process_body(sub, s, &mut out, body, boundary, &mut content)?;
    }
    out.content = content;
    Ok(out)
}

/// Writes one body line, through body_checks when there are any.
fn body_line(
    sub: &Submission,
    s: &Settings,
    out: &mut Cleaned,
    line: &[u8],
    content: &mut Vec<u8>,
) -> Result<(), Rejected> {
    let Some(t) = s.body_checks.as_deref() else {
        content.extend_from_slice(line);
        return Ok(());
    };
    let text = String::from_utf8_lossy(line.strip_suffix(b"\r\n").unwrap_or(line));
    match apply(sub, out, "body", &text, t.check(&text))? {
        None => content.extend_from_slice(line),
        Some(lines) => {
            for l in lines {
                content.extend_from_slice(l.as_bytes());
                content.extend_from_slice(b"\r\n");
            }
        }
    }
    Ok(())
}

/// The headers of one MIME part: MIME headers through mime_header_checks (other headers
/// are kept as they are); a multipart part opens a nested boundary.
fn part_headers(
    sub: &Submission,
    s: &Settings,
    out: &mut Cleaned,
    hdrs: &mut Vec<Header>,
    stack: &mut Vec<String>,
    content: &mut Vec<u8>,
) -> Result<(), Rejected> {
    for h in hdrs.drain(..) {
        if let Some(b) = headers::multipart_boundary(&h) {
            if stack.len() < s.mime_nesting_limit {
                stack.push(b);
            } else {
                tracing::warn!("{}: MIME nesting exceeds mime_nesting_limit {}; deeper parts are checked as body", sub.queue_id, s.mime_nesting_limit);
            }
        }
        let result = if is_mime_header(&h) {
            s.mime_header_checks
                .as_deref()
                .and_then(|t| t.check(&h.text))
        } else {
            None
        };
        match apply(sub, out, "header", &h.text, result)? {
            None => h.to_wire(content),
            Some(lines) => {
                for text in lines {
                    Header {
                        name: String::new(),
                        text,
                    }
                    .to_wire(content);
                }
            }
        }
    }
    Ok(())
}

/// The body, following the multipart structure (bounded by mime_nesting_limit and
/// MAX_MIME_PARTS): part headers go through mime_header_checks, every other line through
/// body_checks. Boundary lines are copied as they are.
fn process_body(
    sub: &Submission,
    s: &Settings,
    out: &mut Cleaned,
    body: &[u8],
    boundary: Option<String>,
    content: &mut Vec<u8>,
) -> Result<(), Rejected> {
    let mut stack: Vec<String> = boundary.into_iter().collect();
    let mut in_headers = false;
    let mut hdrs: Vec<Header> = Vec::new();
    let mut parts = 0usize;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let raw = line.strip_suffix(b"\n").unwrap_or(line);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if in_headers {
            if raw.is_empty() {
                part_headers(sub, s, out, &mut hdrs, &mut stack, content)?;
                content.extend_from_slice(line);
                in_headers = false;
                continue;
            }
            if raw[0] == b' ' || raw[0] == b'\t' {
                if let Some(h) = hdrs.last_mut() {
                    h.text.push('\n');
                    h.text.push_str(&String::from_utf8_lossy(raw));
                    continue;
                }
            } else if let Some(name) = headers::header_name(raw) {
                hdrs.push(Header {
                    name,
                    text: String::from_utf8_lossy(raw).into_owned(),
                });
                continue;
            }
            // Not a header: the part's body starts without a separator line.
            part_headers(sub, s, out, &mut hdrs, &mut stack, content)?;
            in_headers = false;
        }
        if !stack.is_empty() {
            if let Some(rest) = raw.strip_prefix(b"--") {
                if let Some(pos) = stack.iter().rposition(|b| rest.starts_with(b.as_bytes())) {
                    let after = &rest[stack[pos].len()..];
                    let after = String::from_utf8_lossy(after);
                    let after = after.trim_end();
                    if after == "--" {
                        stack.truncate(pos);
                        content.extend_from_slice(line);
                        continue;
                    }
                    if after.is_empty() {
                        stack.truncate(pos + 1);
                        parts += 1;
                        if parts > MAX_MIME_PARTS {
                            tracing::warn!("{}: more than {MAX_MIME_PARTS} MIME parts; the rest is checked as body", sub.queue_id);
                            stack.clear();
                        } else {
                            in_headers = true;
                        }
                        content.extend_from_slice(line);
                        continue;
                    }
                }
            }
        }
        body_line(sub, s, out, line, content)?;
    }
    if in_headers {
        part_headers(sub, s, out, &mut hdrs, &mut stack, content)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Recipient;

    struct Re(Vec<(regex::Regex, &'static str)>);
    impl CheckTable for Re {
        fn check(&self, line: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(r, _)| r.is_match(line))
                .map(|(_, a)| a.to_string())
        }
    }

    fn settings(checks: Option<Box<dyn CheckTable>>) -> Settings {
        Settings {
            myhostname: "mail.exemple.fr".into(),
            myorigin: "exemple.fr".into(),
            mail_name: "relais".into(),
            always_add_missing_headers: false,
            header_size_limit: 102400,
            sasl_authenticated_header: true,
            tls_received_header: true,
            header_checks: checks,
            mime_header_checks: None,
            body_checks: None,
            mime_nesting_limit: 100,
            always_bcc: String::new(),
            sender_bcc_maps: Default::default(),
            recipient_bcc_maps: Default::default(),
        }
    }

    fn smtp(content: &[u8], sasl: Option<&str>) -> Submission {
        Submission {
            queue_id: "ABC123".into(),
            envelope: Envelope {
                sender: "a@b.c".into(),
                recipients: vec![Recipient::new("x@y.z")],
                ..Default::default()
            },
            origin: Origin {
                client_name: "unknown".into(),
                client_addr: "127.0.0.1".into(),
                helo: Some("client".into()),
                protocol: if sasl.is_some() {
                    "ESMTPSA".into()
                } else {
                    "ESMTP".into()
                },
                sasl_user: sasl.map(str::to_string),
                ..Default::default()
            },
            content: content.to_vec(),
        }
    }

    /// The seed's privacy header_checks, with (?s) as POSIX regexps let `.` cross the folded
    /// lines of a logical header.
    fn seed_checks() -> Box<dyn CheckTable> {
        let pats = [
            "^Received:.*with ESMTPSA",
            "^X-Originating-IP:",
            "^X-Mailer:",
            "^User-Agent:",
        ];
        Box::new(Re(pats
            .iter()
            .map(|p| (regex::Regex::new(&format!("(?si){p}")).unwrap(), "IGNORE"))
            .collect()))
    }

    #[test]
    fn seed_privacy_checks_strip_exactly_their_headers() {
        let msg = b"Received: from laptop (home [10.0.0.2])\r\n\tby mx with ESMTPSA id 1\r\nX-Originating-IP: 10.0.0.2\r\nX-Mailer: Foo 1.0\r\nUser-Agent: Bar\r\nSubject: hi\r\nX-Mailer-Extra: keep\r\n\r\nbody\r\n";
        let c = process(
            &smtp(msg, Some("test@exemple.fr")),
            &settings(Some(seed_checks())),
        )
        .unwrap();
        let text = String::from_utf8(c.content).unwrap();
        assert!(!text.contains("ESMTPSA"), "{text}");
        assert!(
            !text.contains("X-Originating-IP")
                && !text.contains("X-Mailer: Foo")
                && !text.contains("User-Agent"),
            "{text}"
        );
        assert!(
            text.contains("Subject: hi\r\n")
                && text.contains("X-Mailer-Extra: keep\r\n")
                && text.ends_with("\r\n\r\nbody\r\n"),
            "{text}"
        );
        // Without SASL our own Received: (with ESMTP) stays.
        let c = process(&smtp(msg, None), &settings(Some(seed_checks()))).unwrap();
        let text = String::from_utf8(c.content).unwrap();
        assert!(text.starts_with("Received: from client (unknown [127.0.0.1])\r\n\tby mail.exemple.fr (relais) with ESMTP id ABC123\r\n\tfor <x@y.z>; "), "{text}");
    }

    #[test]
    fn local_submission_gets_missing_headers_and_loses_bcc() {
        let mut sub = smtp(
            b"Bcc: secret@x\r\nReturn-Path: <forged@x>\r\nSubject: s\r\n\r\nhello\r\n",
            None,
        );
        sub.origin = Origin {
            uid: Some(1000),
            protocol: String::new(),
            ..Default::default()
        };
        sub.envelope.sender = "alice".into();
        sub.envelope.sender_fullname = Some("Alice".into());
        let c = process(&sub, &settings(None)).unwrap();
        let text = String::from_utf8(c.content).unwrap();
        assert!(
            text.starts_with(
                "Received: by mail.exemple.fr (relais, from userid 1000)\r\n\tid ABC123; "
            ),
            "{text}"
        );
        assert!(
            !text.contains("Bcc") && !text.contains("Return-Path"),
            "{text}"
        );
        assert!(
            text.contains("\r\nFrom: Alice <alice@exemple.fr>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nDate: ") && text.contains("\r\nMessage-ID: <"),
            "{text}"
        );
        assert!(c.message_id.unwrap().ends_with(".ABC123@mail.exemple.fr>"));
    }

    #[test]
    fn reject_hold_and_oversized_header() {
        let t: Box<dyn CheckTable> = Box::new(Re(vec![
            (
                regex::Regex::new("(?i)^Subject: spam").unwrap(),
                "REJECT 5.7.0 no spam",
            ),
            (regex::Regex::new("(?i)^Subject: wait").unwrap(), "HOLD"),
        ]));
        let s = settings(Some(t));
        assert_eq!(
            process(&smtp(b"Subject: spam\r\n\r\nx\r\n", None), &s).unwrap_err(),
            Rejected("550 5.7.0 no spam".into())
        );
        assert!(process(&smtp(b"Subject: wait\r\n\r\nx\r\n", None), &s)
            .unwrap()
            .hold
            .is_some());
        let mut s = settings(None);
        s.header_size_limit = 20;
        let c = process(
            &smtp(
                b"Subject: 0123456789012345678901234567890\r\nX: y\r\n\r\nb\r\n",
                None,
            ),
            &s,
        )
        .unwrap();
        let text = String::from_utf8(c.content).unwrap();
        assert!(text.contains("Subject: 01234567890\r\n\r\nb\r\n"), "{text}");
    }

    #[test]
    fn delivered_to_is_kept_return_path_removed() {
        let c = process(
            &smtp(
                b"Return-Path: <forged@x>\r\nDelivered-To: bob@x\r\nSubject: s\r\n\r\nb\r\n",
                None,
            ),
            &settings(None),
        )
        .unwrap();
        let text = String::from_utf8(c.content).unwrap();
        assert!(
            !text.contains("Return-Path") && text.contains("\r\nDelivered-To: bob@x\r\n"),
            "{text}"
        );
    }

    const NESTED: &[u8] = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\nSubject: s\r\n\r\npreamble\r\n--outer\r\nContent-Type: multipart/alternative;\r\n\tboundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\nContent-Disposition: inline; secret\r\n\r\nforbidden words\r\nfine words\r\n--inner--\r\n--outer\r\nContent-Type: application/octet-stream; name=\"PAYLOAD\"\r\n\r\nQUFB\r\n--outer--\r\nepilogue\r\n";

    fn mime_settings(payload_action: &'static str) -> Settings {
        let mut s = settings(None);
        s.mime_header_checks = Some(Box::new(Re(vec![
            (
                regex::Regex::new("(?i)^Content-Disposition:.*secret").unwrap(),
                "IGNORE",
            ),
            (
                regex::Regex::new("(?i)^Content-Type:.*name=\"PAYLOAD\"").unwrap(),
                payload_action,
            ),
        ])));
        s.body_checks = Some(Box::new(Re(vec![
            (
                regex::Regex::new("^forbidden").unwrap(),
                "REPLACE allowed words",
            ),
            // Part headers are not body lines: this never matches them.
            (
                regex::Regex::new("^Content-").unwrap(),
                "REJECT body_checks saw a header",
            ),
        ])));
        s
    }

    #[test]
    fn mime_part_headers_and_body_parts_are_checked() {
        let c = process(&smtp(NESTED, None), &mime_settings("WARN payload")).unwrap();
        let text = String::from_utf8(c.content).unwrap();
        // The nested part lost its Content-Disposition, the body line was replaced, the
        // boundaries and the rest are intact.
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("--inner\r\nContent-Type: text/plain\r\n\r\nallowed words\r\nfine words\r\n--inner--\r\n--outer\r\n"), "{text}");
        assert!(
            text.ends_with("QUFB\r\n--outer--\r\nepilogue\r\n"),
            "{text}"
        );
        // A part header can reject the whole message.
        assert_eq!(
            process(
                &smtp(NESTED, None),
                &mime_settings("REJECT 5.7.1 no payloads")
            )
            .unwrap_err(),
            Rejected("550 5.7.1 no payloads".into())
        );
        // Past mime_nesting_limit, deeper part headers are body lines (bounded work).
        let mut s = mime_settings("REJECT 5.7.1 no payloads");
        s.mime_nesting_limit = 1;
        s.body_checks = None;
        let c = process(&smtp(NESTED, None), &s).unwrap_err();
        assert_eq!(
            c,
            Rejected("550 5.7.1 no payloads".into()),
            "the outer level is still checked"
        );
        let deep = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Disposition: secret\r\n\r\nx\r\n--b--\r\n--a--\r\n";
        let c = process(&smtp(deep, None), &s).unwrap();
        assert!(String::from_utf8(c.content)
            .unwrap()
            .contains("Content-Disposition: secret"));
    }
}
