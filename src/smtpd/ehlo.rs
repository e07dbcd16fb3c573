//! HELO and EHLO: greet, reset any transaction, and (EHLO) list the extensions in Postfix's
//! order.

use super::reply::Reply;
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_helo(&mut self, args: &str) -> Flow {
        let host = args.trim();
        if host.is_empty() {
            self.reply(Reply::new(501, "Syntax: HELO hostname")).await;
            return Flow::Continue;
        }
        self.greet(host, "SMTP");
        if self.helo_refused().await {
            return Flow::Continue;
        }
        let r = Reply::new(250, self.settings.myhostname.clone());
        self.reply(r).await;
        Flow::Continue
    }

    pub(super) async fn cmd_ehlo(&mut self, args: &str) -> Flow {
        let host = args.trim();
        if host.is_empty() {
            self.reply(Reply::new(501, "Syntax: EHLO hostname")).await;
            return Flow::Continue;
        }
        self.greet(host, "ESMTP");
        if self.helo_refused().await {
            return Flow::Continue;
        }
        let auth = self.auth_ehlo_lines().await;
        let s = &self.settings;
        let mut lines = vec![s.myhostname.clone(), "PIPELINING".to_string()];
        if s.message_size_limit > 0 {
            lines.push(format!("SIZE {}", s.message_size_limit));
        } else {
            lines.push("SIZE".to_string());
        }
        if !s.disable_vrfy {
            lines.push("VRFY".to_string());
        }
        lines.push("ETRN".to_string());
        if s.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".to_string());
        }
        lines.extend(auth);
        lines.push("ENHANCEDSTATUSCODES".to_string());
        lines.push("8BITMIME".to_string());
        lines.push("DSN".to_string());
        if s.smtputf8 {
            lines.push("SMTPUTF8".to_string());
        }
        lines.push("CHUNKING".to_string());
        self.reply(Reply::multi(250, lines)).await;
        Flow::Continue
    }

    /// smtpd_helo_restrictions at the command (smtpd_delay_reject = no); a refused name is
    /// forgotten.
    async fn helo_refused(&mut self) -> bool {
        match self.check_at(super::CheckPoint::Helo, "").await {
            Some(r) => {
                self.info.helo = None;
                self.reply(r).await;
                true
            }
            None => false,
        }
    }

    /// A new greeting starts over: no transaction survives it (RFC 5321 4.1.4).
    fn greet(&mut self, host: &str, protocol: &str) {
        self.reset_transaction();
        // Bounded by line_length_limit already; keep log lines printable.
        let host: String = host.chars().filter(|c| !c.is_control()).collect();
        self.info.helo = Some(host);
        // ESMTPS / SMTPS once TLS is active, as Postfix records it.
        self.info.protocol = if self.tls.is_some() {
            format!("{protocol}S")
        } else {
            protocol.to_string()
        };
    }
}
