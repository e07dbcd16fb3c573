//! The session's side of the access policy: the client's names at connect, the restriction
//! lists at each check point ([`CheckPoint`]), and Postfix's log lines for what they decide
//! (`NOQUEUE: reject: CMD from …`, `ID: hold: RCPT from …`, `ID: warn: …`).

use super::reply::Reply;
use super::session::Session;
use super::{CheckPoint, Checked, Event};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// PTR lookup and forward confirmation of the client's address (the backend bounds the
    /// time); the session's client_name is `unknown` unless both agree.
    pub(super) async fn lookup_client(&mut self) {
        let Ok(ip) = self.info.client_addr.parse::<std::net::IpAddr>() else {
            return;
        };
        let names = self.backend.lookup_client(ip).await;
        self.info.client_name = names.name;
        self.info.name_status = names.name_status;
        self.info.reverse_name = names.reverse_name;
        self.info.reverse_status = names.reverse_status;
    }

    /// The greeting, or (smtpd_delay_reject = no) the refusal of smtpd_client_restrictions in
    /// its place; a refused client then gets `503 5.7.0 Error: access denied` for every
    /// command but QUIT, RSET and NOOP, as with Postfix.
    pub(super) async fn check_connect(&mut self) -> Option<Reply> {
        if self.backend.delay_reject() {
            return None;
        }
        let c = self
            .backend
            .check(CheckPoint::Connect, &self.info, "")
            .await;
        self.log_events(None, CheckPoint::Connect, &c.events, None);
        let r = c.reject?;
        self.log_whatsup(None, "reject", CheckPoint::Connect, &r.one_line(), None);
        self.access_denied = Some(r.clone());
        self.error_count += 1;
        Some(r)
    }

    /// The refusal of a command after a refused connect.
    pub(super) fn denied(&self, counter: &str) -> Option<Reply> {
        self.access_denied.as_ref()?;
        if matches!(counter, "quit" | "rset" | "noop") {
            return None;
        }
        Some(Reply::new(
            503,
            format!("5.7.0 Error: access denied for {}", self.info.namaddr()),
        ))
    }

    /// A check point other than RCPT: logs what happened and returns the refusal, if any.
    /// Side effects (HOLD, FILTER…) go to the transaction in progress.
    pub(super) async fn check_at(&mut self, at: CheckPoint, arg: &str) -> Option<Reply> {
        if matches!(at, CheckPoint::Helo | CheckPoint::Mail) && self.backend.delay_reject() {
            return None;
        }
        let c = self.backend.check(at, &self.info, arg).await;
        self.apply_checked(at, c, None)
    }

    /// Logs a policy answer and records its side effects; returns the refusal.
    pub(super) fn apply_checked(
        &mut self,
        at: CheckPoint,
        c: Checked,
        to: Option<&str>,
    ) -> Option<Reply> {
        let id = self.info.queue_id.clone();
        self.log_events(id.as_deref(), at, &c.events, to);
        if let Some(r) = c.reject {
            let id = if at == CheckPoint::EndOfData {
                id
            } else {
                None
            };
            self.log_whatsup(id.as_deref(), "reject", at, &r.one_line(), to);
            return Some(r);
        }
        self.merge_actions(c.actions);
        None
    }

    /// Adds policy side effects to the transaction in progress (none outside one).
    pub(super) fn merge_actions(&mut self, a: crate::envelope::Actions) {
        if a.is_empty() {
            return;
        }
        if let super::state::State::Mail(t)
        | super::state::State::Rcpt(t)
        | super::state::State::Chunking(t, _) = &mut self.state
        {
            t.envelope.actions.merge(a);
        }
    }

    pub(super) fn log_events(
        &self,
        id: Option<&str>,
        at: CheckPoint,
        events: &[Event],
        to: Option<&str>,
    ) {
        for e in events {
            self.log_whatsup(id, e.kind, at, &e.text, to);
        }
    }

    /// Postfix's log_whatsup: `ID: KIND: CMD from host[addr]: TEXT; from=<s> to=<r>
    /// proto=P helo=<h>`; `NOQUEUE` before the queue ID exists.
    pub(super) fn log_whatsup(
        &self,
        id: Option<&str>,
        kind: &str,
        at: CheckPoint,
        text: &str,
        to: Option<&str>,
    ) {
        let id = id.unwrap_or("NOQUEUE");
        let mut s = format!(
            "{id}: {kind}: {} from {}: {text};",
            at.command(),
            self.info.namaddr()
        );
        if let Some(f) = &self.info.sender {
            s.push_str(&format!(" from=<{f}>"));
        }
        if let Some(t) = to {
            s.push_str(&format!(" to=<{t}>"));
        }
        s.push_str(&format!(" proto={}", self.info.protocol));
        if let Some(h) = &self.info.helo {
            s.push_str(&format!(" helo=<{h}>"));
        }
        info!("{s}");
    }
}
