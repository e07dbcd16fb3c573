//! Per-client limits inside a session: the anvil rate checks at MAIL FROM, RCPT TO, STARTTLS
//! and AUTH, and the command pipelining rules (smtpd_forbid_unauth_pipelining, and the flag
//! reject_unauth_pipelining tests). The connection count and rate are checked before the
//! session starts, in server.rs.

use super::reply::Reply;
use super::session::Session;
use crate::anvil::Event;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

/// How much of the unexpected input the pipelining log line quotes, as Postfix.
const PIPELINING_QUOTE: usize = 100;

/// Commands that may only come last in a pipelined group (RFC 2920: EHLO, DATA, VRFY, NOOP…;
/// Postfix's SMTPD_CMD_FLAG_LAST), by their counter name.
fn last_in_group(counter: &str) -> bool {
    matches!(counter, "helo" | "ehlo" | "data" | "noop" | "vrfy")
}

/// Client input as Postfix's escape() writes it in a log line: C escapes for the usual
/// controls, octal for other non-printable bytes.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Flags improper pipelining once per session: input already waiting when the command
    /// being handled (`stage`) must be answered before the client goes on. With
    /// smtpd_forbid_unauth_pipelining the session ends with 554 5.5.0; true then.
    async fn flag_ill_pipelining(&mut self) -> bool {
        if self.info.ill_pipelining {
            return false;
        }
        let pending = match self.pending_input(PIPELINING_QUOTE).await {
            Ok(p) => p,
            Err(_) => return false,
        };
        if pending.is_empty() {
            return false;
        }
        info!(
            "improper command pipelining after {} from {}: {}",
            self.stage,
            self.info.namaddr(),
            escape(&pending)
        );
        self.info.ill_pipelining = true;
        if !self.settings.forbid_unauth_pipelining {
            return false;
        }
        self.reply(Reply::new(
            554,
            "5.5.0 Error: SMTP protocol synchronization",
        ))
        .await;
        true
    }

    /// A client that talks before the greeting (stage CONNECT). True when the session must
    /// end (the 554 is queued).
    pub(super) async fn pregreet(&mut self) -> bool {
        self.flag_ill_pipelining().await
    }

    /// Before a command runs: without ESMTP (no EHLO, so no PIPELINING announced) every
    /// command must wait for its reply; with it, the commands that end a group must. True
    /// when the session must end.
    pub(super) async fn check_pipelining(&mut self, counter: &str) -> bool {
        // ESMTPS, ESMTPA and ESMTPSA (after STARTTLS or AUTH) are ESMTP too.
        if !self.info.protocol.starts_with("ESMTP") || last_in_group(counter) {
            return self.flag_ill_pipelining().await;
        }
        false
    }

    /// Counts one event with anvil; Some(rate) when the client is over `limit`.
    async fn over(&self, ev: Event, limit: u32) -> Option<u32> {
        if limit == 0 {
            return None;
        }
        let (anvil, ip) = self.anvil.as_ref()?;
        match anvil.event(&self.settings.service, ip, ev).await {
            Ok(rate) if rate > limit => Some(rate),
            Ok(_) => None,
            Err(e) => {
                warn!("{e}; smtpd_client_*_rate_limit not applied");
                None
            }
        }
    }

    /// smtpd_client_message_rate_limit at MAIL FROM; false when refused (450 queued).
    pub(super) async fn mail_rate_ok(&mut self) -> bool {
        let Some(rate) = self
            .over(Event::Mail, self.settings.message_rate_limit)
            .await
        else {
            return true;
        };
        let r = Reply::new(
            450,
            format!("4.7.1 Error: too much mail from {}", self.info.client_addr),
        );
        self.reply(r).await;
        warn!(
            "Message delivery request rate limit exceeded: {rate} from {} for service {}",
            self.info.namaddr(),
            self.settings.service
        );
        false
    }

    /// smtpd_client_recipient_rate_limit at RCPT TO; false when refused (450 queued).
    pub(super) async fn rcpt_rate_ok(&mut self) -> bool {
        let Some(rate) = self
            .over(Event::Rcpt, self.settings.recipient_rate_limit)
            .await
        else {
            return true;
        };
        warn!(
            "Recipient address rate limit exceeded: {rate} from {} for service {}",
            self.info.namaddr(),
            self.settings.service
        );
        let r = Reply::new(
            450,
            format!(
                "4.7.1 Error: too many recipients from {}",
                self.info.client_addr
            ),
        );
        self.reply(r).await;
        false
    }

    /// smtpd_client_auth_rate_limit, for the AUTH command before any SASL exchange; false
    /// when refused (450 queued). auth.rs calls it once the AUTH syntax is checked.
    pub(super) async fn auth_rate_ok(&mut self) -> bool {
        let Some(rate) = self.over(Event::Auth, self.settings.auth_rate_limit).await else {
            return true;
        };
        warn!(
            "AUTH command rate limit exceeded: {rate} from {} for service {}",
            self.info.namaddr(),
            self.settings.service
        );
        let r = Reply::new(
            450,
            format!(
                "4.7.1 Error: too many AUTH commands from {}",
                self.info.client_addr
            ),
        );
        self.reply(r).await;
        false
    }

    /// Whether the client may start one more TLS handshake now: its new TLS sessions in this
    /// time unit must not be over smtpd_client_new_tls_session_rate_limit (not counted here;
    /// [`Session::count_new_tls`] counts the handshake once done).
    pub(super) async fn new_tls_allowed(&self) -> bool {
        let limit = self.settings.new_tls_rate_limit;
        if limit == 0 {
            return true;
        }
        let Some((anvil, ip)) = self.anvil.as_ref() else {
            return true;
        };
        match anvil.peek(&self.settings.service, ip, Event::NewTls).await {
            Ok(rate) => rate <= limit,
            Err(_) => true,
        }
    }

    /// STARTTLS refused for the rate limit: 454, the session goes on in plaintext.
    pub(super) async fn refuse_starttls(&mut self) {
        warn!(
            "Refusing STARTTLS request from {} for service {}",
            self.info.namaddr(),
            self.settings.service
        );
        let r = Reply::new(
            454,
            format!(
                "4.7.0 Error: too many new TLS sessions from {}",
                self.info.namaddr()
            ),
        );
        self.reply(r).await;
    }

    /// A TLS handshake completed: a new (not resumed) session counts against
    /// smtpd_client_new_tls_session_rate_limit. False when that is one too many: the
    /// session is then ended (a 421 is queued).
    pub(super) async fn count_new_tls(&mut self, resumed: bool) -> bool {
        if resumed {
            return true;
        }
        let Some(rate) = self
            .over(Event::NewTls, self.settings.new_tls_rate_limit)
            .await
        else {
            return true;
        };
        warn!(
            "New TLS session rate limit exceeded: {rate} from {} for service {}",
            self.info.namaddr(),
            self.settings.service
        );
        let r = Reply::new(
            421,
            format!(
                "4.7.0 {} Error: too many new TLS sessions from {}",
                self.settings.myhostname,
                self.info.namaddr()
            ),
        );
        self.reply(r).await;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_as_postfix() {
        assert_eq!(escape(b"EHLO x\r\nQUIT\r\n"), "EHLO x\\r\\nQUIT\\r\\n");
        assert_eq!(escape(b"a\\b\x01\xff"), "a\\\\b\\001\\377");
    }

    #[test]
    fn group_enders() {
        for c in ["helo", "ehlo", "data", "noop", "vrfy"] {
            assert!(last_in_group(c));
        }
        for c in ["mail", "rcpt", "rset", "bdat", "quit", "etrn"] {
            assert!(!last_in_group(c));
        }
    }
}
