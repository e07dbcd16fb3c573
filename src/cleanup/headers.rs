//! Message header work: split a message into logical headers and body, and build the headers
//! cleanup adds (Received:, Date:, Message-ID:, From:).

use chrono::{DateTime, Local};

/// One logical header: the name as written and the whole field, continuation lines included,
/// joined with `\n` (how header_checks sees it, as in Postfix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// `Name: value` with inner line breaks as `\n` followed by the continuation's whitespace.
    pub text: String,
}

impl Header {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Wire form, every line ending in CRLF.
    pub fn to_wire(&self, out: &mut Vec<u8>) {
        for line in self.text.split('\n') {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Splits content (CRLF lines) into the primary headers and the body (from the first byte
/// after the empty separator line). A first line that is not a header starts the body, as in
/// Postfix; so does a header section that never ends.
pub fn split(content: &[u8]) -> (Vec<Header>, &[u8]) {
    let mut headers: Vec<Header> = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let end = find_crlf(content, pos).unwrap_or(content.len());
        let line = &content[pos..end];
        let next = (end + 2).min(content.len());
        if line.is_empty() {
            return (headers, &content[next..]);
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            match headers.last_mut() {
                Some(h) => {
                    h.text.push('\n');
                    h.text.push_str(&text);
                }
                None => return (headers, &content[pos..]),
            }
        } else {
            match header_name(line) {
                Some(name) => headers.push(Header {
                    name,
                    text: text.into_owned(),
                }),
                // Not a header: the body starts here, with no separator line.
                None => return (headers, &content[pos..]),
            }
        }
        pos = next;
    }
    (headers, &content[content.len()..])
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// `Name` of a `Name: value` line (RFC 5322 field name: printable ASCII except colon).
pub fn header_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&c| c == b':')?;
    let name = &line[..colon];
    let name = name.strip_suffix(b" ").unwrap_or(name); // Postfix tolerates "Name :"
    if name.is_empty() || !name.iter().all(|&c| (33..=126).contains(&c) && c != b':') {
        return None;
    }
    Some(String::from_utf8_lossy(name).into_owned())
}

/// RFC 5322 date as Postfix writes it: `Mon, 23 Nov 2026 08:14:15 +0000 (UTC)`.
pub fn rfc2822_date(t: DateTime<Local>) -> String {
    format!(
        "{} ({})",
        t.format("%a, %e %b %Y %H:%M:%S %z"),
        tz_abbrev(t.timestamp())
    )
    .replace(",  ", ", ")
}

/// The local time zone's abbreviation at `ts` (`UTC`, `CET`…); chrono does not know names.
fn tz_abbrev(ts: i64) -> String {
    // SAFETY: localtime_r fills the tm we own; tm_zone points to static storage in libc.
    unsafe {
        let t: libc::time_t = ts as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() || tm.tm_zone.is_null() {
            return "UTC".to_string();
        }
        std::ffi::CStr::from_ptr(tm.tm_zone)
            .to_string_lossy()
            .into_owned()
    }
}

/// What cleanup knows about how a message arrived, for the Received: header.
pub struct ReceivedInfo<'a> {
    pub helo: Option<&'a str>,
    pub client_name: &'a str,
    pub client_addr: &'a str,
    pub protocol: &'a str,
    pub uid: Option<u32>,
    pub myhostname: &'a str,
    pub mail_name: &'a str,
    pub queue_id: &'a str,
    /// The recipient, named only when there is exactly one (privacy, as Postfix).
    pub single_rcpt: Option<&'a str>,
    /// SASL user for `smtpd_sasl_authenticated_header`.
    pub sasl_user: Option<&'a str>,
    /// TLS description for `smtpd_tls_received_header`.
    pub tls: Option<&'a str>,
    pub now: DateTime<Local>,
}

/// Postfix's Received: header, for SMTP and for local submissions.
pub fn received(r: &ReceivedInfo) -> Header {
    let date = rfc2822_date(r.now);
    let text = if r.client_addr.is_empty() {
        let by = match r.uid {
            Some(uid) => format!(
                "Received: by {} ({}, from userid {uid})",
                r.myhostname, r.mail_name
            ),
            None => format!("Received: by {} ({})", r.myhostname, r.mail_name),
        };
        format!("{by}\n\tid {}; {date}", r.queue_id)
    } else {
        let helo = r.helo.unwrap_or(r.client_name);
        let addr = if r.client_addr.contains(':') {
            format!("IPv6:{}", r.client_addr)
        } else {
            r.client_addr.to_string()
        };
        let auth = r
            .sasl_user
            .map(|u| format!("\n\t(Authenticated sender: {u})"))
            .unwrap_or_default();
        let tls = r
            .tls
            .map(|t| format!("\n\t(using {t})\n\t(No client certificate requested)"))
            .unwrap_or_default();
        let mut t = format!(
            "Received: from {helo} ({} [{addr}]){tls}{auth}\n\tby {} ({}) with {} id {}",
            r.client_name, r.myhostname, r.mail_name, r.protocol, r.queue_id
        );
        match r.single_rcpt {
            Some(rcpt) => t.push_str(&format!("\n\tfor <{rcpt}>; {date}")),
            None => t.push_str(&format!(";\n\t{date}")),
        }
        t
    };
    Header {
        name: "Received".into(),
        text,
    }
}

/// The `boundary` parameter of a `Content-Type: multipart/…` header, if it is one.
pub fn multipart_boundary(h: &Header) -> Option<String> {
    if !h.is("Content-Type") {
        return None;
    }
    let value = h.text.split_once(':')?.1.replace('\n', " ");
    let mut params = value.split(';');
    let kind = params.next()?.trim().to_ascii_lowercase();
    if !kind.starts_with("multipart/") {
        return None;
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.split('"').next())
                .unwrap_or(v);
            // RFC 2046: 1 to 70 characters.
            if !v.is_empty() && v.len() <= 70 {
                return Some(v.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_headers_and_body() {
        let m = b"Subject: a\r\n b\r\nX-A: 1\r\n\r\nbody\r\n";
        let (h, body) = split(m);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].text, "Subject: a\n b");
        assert_eq!(body, b"body\r\n");
        let mut w = Vec::new();
        h[0].to_wire(&mut w);
        assert_eq!(w, b"Subject: a\r\n b\r\n");
    }

    #[test]
    fn no_separator_and_non_header_lines() {
        let (h, body) = split(b"just text\r\nmore\r\n");
        assert!(h.is_empty());
        assert_eq!(body, b"just text\r\nmore\r\n");
        let (h, body) = split(b"A: 1\r\nnot a header\r\n");
        assert_eq!(h.len(), 1);
        assert_eq!(body, b"not a header\r\n");
        let (h, body) = split(b" leading continuation\r\n");
        assert!(h.is_empty());
        assert_eq!(body, b" leading continuation\r\n");
    }

    #[test]
    fn received_forms() {
        use chrono::TimeZone;
        let now = Local.with_ymd_and_hms(2026, 11, 23, 8, 14, 15).unwrap();
        let base = ReceivedInfo {
            helo: Some("client.example.com"),
            client_name: "unknown",
            client_addr: "127.0.0.1",
            protocol: "ESMTP",
            uid: None,
            myhostname: "mail.exemple.fr",
            mail_name: "Postfix",
            queue_id: "59A0A9AA1B2",
            single_rcpt: Some("postmaster@example.net"),
            sasl_user: None,
            tls: None,
            now,
        };
        let h = received(&base);
        assert!(h.text.starts_with(
            "Received: from client.example.com (unknown [127.0.0.1])\n\tby mail.exemple.fr (Postfix) with ESMTP id 59A0A9AA1B2\n\tfor <postmaster@example.net>; Mon, 23 Nov 2026 08:14:15 "
        ), "{}", h.text);
        let local = ReceivedInfo {
            client_addr: "",
            uid: Some(0),
            ..base
        };
        assert!(received(&local).text.starts_with("Received: by mail.exemple.fr (Postfix, from userid 0)\n\tid 59A0A9AA1B2; Mon, 23 Nov 2026"));
    }
}
