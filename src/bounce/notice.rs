//! Delivery status notifications as Postfix writes them: RFC 3464 multipart/report with a
//! human-readable part, a message/delivery-status part, and the original message (or its
//! headers). Written by hand rather than with a MIME builder so the layout is Postfix's, line
//! for line, which is what people and scripts that read bounces know.

use chrono::{DateTime, Local};

use crate::cleanup::headers::rfc2822_date;
use crate::envelope::Ret;

/// Which notice to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Non-delivery (bounce).
    Failure,
    /// Delay warning (delay_warning_time).
    Delay,
    /// Success (NOTIFY=SUCCESS).
    Success,
    /// A copy for the postmaster (notify_classes): a failed bounce (2bounce) or a bounce
    /// copy; headers only, addressed to `Notice::to`.
    Postmaster,
}

/// One recipient the notice reports on.
#[derive(Debug, Clone)]
pub struct Rcpt {
    /// The address that failed (Final-Recipient): an alias member or the queue's recipient.
    pub address: String,
    /// The recipient `address` was expanded from, when it differs (Postfix's orig_addr):
    /// `<address> (expanded from <original>)`, and the Original-Recipient without an ORCPT.
    pub original: Option<String>,
    pub orcpt: Option<String>,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// Human text: `host x said: 550 … (in reply to RCPT TO command)`.
    pub reason: String,
    /// `dns; host` of the remote MTA, when the result came from one.
    pub remote_mta: Option<String>,
    /// `smtp; 550 5.1.1 …` when a peer's reply is the cause.
    pub diagnostic: Option<String>,
}

pub struct Notice<'a> {
    pub kind: Kind,
    pub myhostname: &'a str,
    pub mail_name: &'a str,
    /// Queue ID of the message the notice is about.
    pub queue_id: &'a str,
    /// Queue ID of the notice itself (for its Received: and Message-Id:).
    pub notice_id: &'a str,
    pub sender: &'a str,
    /// Whom the notice is for when it is not the sender (postmaster copies).
    pub to: Option<&'a str>,
    pub arrival: DateTime<Local>,
    pub now: DateTime<Local>,
    pub recipients: &'a [Rcpt],
    /// The original message (CRLF lines).
    pub original: &'a [u8],
    pub ret: Option<Ret>,
    pub envid: Option<&'a str>,
    /// bounce_size_limit: the original is cut to its headers past this many bytes.
    pub size_limit: usize,
}

fn wrap_reason(r: &Rcpt) -> String {
    // Postfix (line_wrap, bounce_notify_util.c) folds the whole entry at 79 columns with a
    // 4-space indent.
    let text = match &r.original {
        Some(o) => format!("<{}> (expanded from <{o}>): {}", r.address, r.reason),
        None => format!("<{}>: {}", r.address, r.reason),
    };
    let mut out = String::new();
    let mut words = text.split(' ');
    let mut line = words.next().unwrap_or_default().to_string();
    for word in words {
        if line.len() + 1 + word.len() > 79 && !line.trim().is_empty() && line.len() > 4 {
            out.push_str(&line);
            out.push('\n');
            line = format!("    {word}");
        } else {
            line.push(' ');
            line.push_str(word);
        }
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The complete notice, CRLF line ends, ready for cleanup (sender `<>`, recipient the sender).
pub fn build(n: &Notice) -> Vec<u8> {
    let boundary = format!("{}.{}/{}", n.queue_id, n.now.timestamp(), n.myhostname);
    let (subject, intro, action) = match n.kind {
        Kind::Failure => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. It's attached below.\n\nFor further assistance, please send mail to postmaster.\n\nIf you do so, please include this problem report. You can\ndelete your own text from the attached returned message.\n",
            "failed",
        ),
        Kind::Delay => (
            "Delayed Mail (still being retried)",
            "####################################################################\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n####################################################################\n\nYour message could not be delivered for more than the configured delay.\nIt will be retried until it is too old.\n\nFor further assistance, please send mail to postmaster.\n\nIf you do so, please include this problem report. You can\ndelete your own text from the attached returned message.\n",
            "delayed",
        ),
        Kind::Postmaster => (
            "Postmaster Copy: Undelivered Mail",
            "This is a copy for the postmaster: the message whose headers are attached\ncould not be delivered to the recipients below, and notify_classes asks\nfor such copies. When the original sender is empty, the notice to the\nsender itself failed (a double bounce).\n",
            "failed",
        ),
        Kind::Success => (
            "Successful Mail Delivery Report",
            "Your message was successfully delivered to the destination(s)\nlisted below. If the message was delivered to mailbox you will\nreceive no further notifications. Otherwise you may still receive\nnotifications of mail delivery errors from other systems.\n",
            "delivered",
        ),
    };
    let date = rfc2822_date(n.now);
    let mut t = String::new();
    t.push_str(&format!(
        "Received: by {} ({})\n\tid {}; {date}\n",
        n.myhostname, n.mail_name, n.notice_id
    ));
    t.push_str(&format!("Date: {date}\n"));
    t.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\n",
        n.myhostname
    ));
    t.push_str(&format!("Subject: {subject}\n"));
    t.push_str(&format!("To: {}\n", n.to.unwrap_or(n.sender)));
    t.push_str("Auto-Submitted: auto-replied\nMIME-Version: 1.0\n");
    t.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
    ));
    t.push_str("Content-Transfer-Encoding: 8bit\n");
    t.push_str(&format!(
        "Message-Id: <{}.{}@{}>\n\n",
        n.now.format("%Y%m%d%H%M%S"),
        n.notice_id,
        n.myhostname
    ));
    t.push_str("This is a MIME-encapsulated message.\n\n");
    t.push_str(&format!("--{boundary}\nContent-Description: Notification\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"));
    t.push_str(&format!(
        "This is the mail system at host {}.\n\n{intro}\n                   The mail system\n\n",
        n.myhostname
    ));
    for r in n.recipients {
        t.push_str(&wrap_reason(r));
    }
    t.push('\n');
    t.push_str(&format!("--{boundary}\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"));
    t.push_str(&format!("Reporting-MTA: dns; {}\n", n.myhostname));
    if let Some(envid) = n.envid {
        t.push_str(&format!("Original-Envelope-Id: {envid}\n"));
    }
    t.push_str(&format!("X-Postfix-Queue-ID: {}\n", n.queue_id));
    t.push_str(&format!("X-Postfix-Sender: rfc822; {}\n", n.sender));
    t.push_str(&format!("Arrival-Date: {}\n", rfc2822_date(n.arrival)));
    for r in n.recipients {
        t.push_str(&format!("\nFinal-Recipient: rfc822; {}\n", r.address));
        // As Postfix: the ORCPT as recorded, else the address the recipient was expanded from.
        if let Some(o) = &r.orcpt {
            t.push_str(&format!("Original-Recipient: {o}\n"));
        } else if let Some(o) = &r.original {
            t.push_str(&format!("Original-Recipient: rfc822; {o}\n"));
        }
        t.push_str(&format!("Action: {action}\nStatus: {}\n", r.status));
        if let Some(m) = &r.remote_mta {
            t.push_str(&format!("Remote-MTA: {m}\n"));
        }
        if let Some(d) = &r.diagnostic {
            t.push_str(&format!("Diagnostic-Code: {d}\n"));
        }
        if n.kind == Kind::Delay {
            t.push_str(&format!("Will-Retry-Until: {}\n", rfc2822_date(n.now)));
        }
    }
    t.push('\n');
    let (hdrs_only, part_type, desc) = match (n.kind, n.ret) {
        (Kind::Failure, Some(Ret::Full) | None) if n.original.len() <= n.size_limit => {
            (false, "message/rfc822", "Undelivered Message")
        }
        (Kind::Failure, _) => (true, "text/rfc822-headers", "Undelivered Message Headers"),
        (Kind::Delay, _) => (true, "text/rfc822-headers", "Undelivered Message Headers"),
        (Kind::Success, _) => (true, "text/rfc822-headers", "Message Headers"),
        (Kind::Postmaster, _) => (true, "text/rfc822-headers", "Undelivered Message Headers"),
    };
    t.push_str(&format!("--{boundary}\nContent-Description: {desc}\nContent-Type: {part_type}\nContent-Transfer-Encoding: 8bit\n\n"));
    t.push_str(&format!("Return-Path: <{}>\n", n.sender));
    let mut out: Vec<u8> = to_crlf(t.as_bytes());
    let original: &[u8] = if hdrs_only {
        let (_, body) = crate::cleanup::headers::split(n.original);
        &n.original[..n.original.len() - body.len()]
    } else {
        n.original
    };
    out.extend_from_slice(original);
    if !original.ends_with(b"\r\n") && !original.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn to_crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 20);
    for &c in b {
        if c == b'\n' {
            out.push(b'\r');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn failure_notice_is_a_parseable_multipart_report() {
        let now = Local.with_ymd_and_hms(2026, 11, 23, 8, 16, 20).unwrap();
        let rc = [Rcpt {
            address: "nobody@reject.example.net".into(),
            original: None,
            orcpt: Some("rfc822;nobody@reject.example.net".into()),
            status: "5.1.1".into(),
            reason: "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 Recipient address rejected: User unknown (in reply to RCPT TO command)".into(),
            remote_mta: Some("dns; 127.0.0.1".into()),
            diagnostic: Some("smtp; 550 5.1.1 Recipient address rejected: User unknown".into()),
        }];
        let orig = b"From: Dave <dave@example.com>\r\nSubject: Will be rejected\r\n\r\nThe next hop rejects this recipient.\r\n";
        let n = Notice {
            kind: Kind::Failure,
            myhostname: "mail.exemple.fr",
            mail_name: "Postfix",
            queue_id: "B24EE9AA2CA",
            notice_id: "B5E389AA2CD",
            sender: "dave@example.com",
            to: None,
            arrival: now,
            now,
            recipients: &rc,
            original: orig,
            ret: None,
            envid: None,
            size_limit: 50000,
        };
        let bytes = build(&n);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\r\n<nobody@reject.example.net>: host 127.0.0.1[127.0.0.1] said: 550 5.1.1\r\n    Recipient address rejected: User unknown (in reply to RCPT TO command)\r\n"), "{text}");
        let msg = mail_parser::MessageParser::default()
            .parse(&bytes)
            .expect("parses");
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        use mail_parser::MimeHeaders;
        let ct = msg.root_part().content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(msg.parts.len(), 4, "root + 3 parts");
        let report = String::from_utf8_lossy(msg.parts[2].contents());
        assert!(
            report.contains("Final-Recipient: rfc822; nobody@reject.example.net")
                && report.contains("Action: failed")
                && report.contains("Status: 5.1.1"),
            "{report}"
        );
        assert!(
            text.contains("Content-Type: message/rfc822\r\n")
                && text.contains("The next hop rejects this recipient.")
        );
    }

    #[test]
    fn an_expanded_member_is_named_with_its_original() {
        let now = Local::now();
        let mut rc = [Rcpt {
            address: "test@mail.exemple.fr".into(),
            original: Some("toto@mail.exemple.fr".into()),
            orcpt: None,
            status: "5.1.1".into(),
            reason: "unknown user: \"test\"".into(),
            remote_mta: None,
            diagnostic: Some("X-Postfix; unknown user: \"test\"".into()),
        }];
        let n = |rc: &[Rcpt]| {
            String::from_utf8(build(&Notice {
                kind: Kind::Failure,
                myhostname: "mail.exemple.fr",
                mail_name: "Postfix",
                queue_id: "Q",
                notice_id: "N",
                sender: "alice@tutu.org",
                to: None,
                arrival: now,
                now,
                recipients: rc,
                original: b"Subject: s\r\n\r\nbody\r\n",
                ret: None,
                envid: None,
                size_limit: 50000,
            }))
            .unwrap()
        };
        let t = n(&rc);
        assert!(
            t.contains("\r\n<test@mail.exemple.fr> (expanded from <toto@mail.exemple.fr>): unknown user:\r\n    \"test\"\r\n")
                && t.contains("\r\nFinal-Recipient: rfc822; test@mail.exemple.fr\r\nOriginal-Recipient: rfc822; toto@mail.exemple.fr\r\nAction: failed\r\n"),
            "{t}"
        );
        // An ORCPT, when the message has one, is the Original-Recipient as it was given.
        rc[0].orcpt = Some("rfc822;toto@mail.exemple.fr".into());
        let t = n(&rc);
        assert!(
            t.contains("\r\nOriginal-Recipient: rfc822;toto@mail.exemple.fr\r\n"),
            "{t}"
        );
    }

    #[test]
    fn ret_hdrs_and_size_limit_return_headers_only() {
        let now = Local::now();
        let rc = [Rcpt {
            address: "a@b".into(),
            original: None,
            orcpt: None,
            status: "5.0.0".into(),
            reason: "x".into(),
            remote_mta: None,
            diagnostic: None,
        }];
        let orig = b"Subject: s\r\n\r\nSECRET BODY\r\n";
        let mut n = Notice {
            kind: Kind::Failure,
            myhostname: "h",
            mail_name: "relais",
            queue_id: "Q",
            notice_id: "N",
            sender: "s@x",
            to: None,
            arrival: now,
            now,
            recipients: &rc,
            original: orig,
            ret: Some(Ret::Hdrs),
            envid: Some("E1"),
            size_limit: 50000,
        };
        let t = String::from_utf8(build(&n)).unwrap();
        assert!(
            !t.contains("SECRET BODY")
                && t.contains("text/rfc822-headers")
                && t.contains("Original-Envelope-Id: E1"),
            "{t}"
        );
        n.ret = Some(Ret::Full);
        n.size_limit = 5;
        assert!(!String::from_utf8(build(&n))
            .unwrap()
            .contains("SECRET BODY"));
    }
}
