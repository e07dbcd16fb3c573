//! SMTP replies: a code and one or more text lines (the enhanced status code, when there is
//! one, is the start of the text, as Postfix writes it).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// One entry per reply line, without the code and without CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply: `Reply::new(250, "2.1.0 Ok")`.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (EHLO).
    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Reply { code, lines }
    }

    /// 4xx and 5xx count as errors (Postfix's error_count).
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The reply as one log-friendly line (`554 5.7.1 <a@b>: Relay access denied`).
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }

    /// Appends the wire form (every line CRLF-terminated) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        if n == 0 {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
        for (i, l) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            // A CR or LF inside a text would let a backend's message forge extra reply lines.
            let clean: String = l.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, clean).as_bytes());
        }
    }
}

/// smtpd_reject_footer: each footer line becomes a reply line with the reply's enhanced
/// status code; a line starting with `\c` is appended to the previous line instead.
pub fn add_footer(r: &mut Reply, footer: Vec<String>) {
    let dsn = r
        .lines
        .first()
        .and_then(|l| l.split(' ').next())
        .filter(|d| d.split('.').count() == 3 && d.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(str::to_string);
    for f in footer {
        if let Some(rest) = f.strip_prefix("\\c") {
            if let Some(last) = r.lines.last_mut() {
                last.push_str(rest);
                continue;
            }
        }
        r.lines.push(match &dsn {
            Some(d) => format!("{d} {f}"),
            None => f,
        });
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let mut out = Vec::new();
        Reply::multi(250, vec!["mail".into(), "PIPELINING".into()]).write_to(&mut out);
        Reply::new(221, "2.0.0 Bye\r\n550 x").write_to(&mut out);
        assert_eq!(out, b"250-mail\r\n250 PIPELINING\r\n221 2.0.0 Bye550 x\r\n");
    }
}
