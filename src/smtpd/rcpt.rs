//! RCPT TO: add a recipient (NOTIFY, ORCPT), after the recipient limit and the backend's
//! relay / recipient check. The first accepted recipient takes the queue ID.

use super::mail::{address_arg, bare_local_part, parse};
use super::reply::Reply;
use super::session::{Flow, Session};
use super::state::State;
use super::CheckPoint;
use crate::envelope::{Notify, Recipient};
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_rcpt(&mut self, line: &str) -> Flow {
        match self.state {
            State::Mail(_) | State::Rcpt(_) => {}
            State::Chunking(..) => {
                self.reply(Reply::new(503, "5.5.1 Error: BDAT transaction in progress"))
                    .await;
                return Flow::Continue;
            }
            _ => {
                self.reply(Reply::new(503, "5.5.1 Error: need MAIL command"))
                    .await;
                return Flow::Continue;
            }
        }
        let to = match parse(line) {
            Ok(Request::Rcpt { to }) => to,
            Err(ProtoError::InvalidRecipientAddress) if bare_local_part(line).is_some() => {
                smtp_proto::RcptTo {
                    address: bare_local_part(line).unwrap_or_default(),
                    orcpt: None,
                    rrvs: 0,
                    flags: 0,
                }
            }
            Err(ProtoError::InvalidRecipientAddress) => {
                return self.bad_rcpt(line).await;
            }
            Err(ProtoError::InvalidParameter { param }) => {
                let r = Reply::new(501, format!("5.5.4 Error: Bad {param} parameter syntax"));
                self.reply(r).await;
                return Flow::Continue;
            }
            Err(ProtoError::UnsupportedParameter { param }) => {
                return self.unsupported(&param).await;
            }
            _ => {
                self.reply(Reply::new(501, "5.5.4 Syntax: RCPT TO:<address>"))
                    .await;
                return Flow::Continue;
            }
        };
        if to.address.is_empty() {
            return self.bad_rcpt(line).await;
        }
        if to.flags
            & (smtp_proto::RCPT_CONNEG
                | smtp_proto::RCPT_RRVS_REJECT
                | smtp_proto::RCPT_RRVS_CONTINUE)
            != 0
        {
            return self.unsupported("extension not offered").await;
        }
        let count = self
            .state
            .transaction()
            .map(|t| t.envelope.recipients.len())
            .unwrap_or(0);
        if count >= self.settings.recipient_limit {
            self.reply(Reply::new(452, "4.5.3 Error: too many recipients"))
                .await;
            return Flow::Continue;
        }
        self.info.recipient_count = count;
        self.info.queue_id = self.state.transaction().and_then(|t| t.queue_id.clone());
        let checked = self.backend.check_recipient(&self.info, &to.address).await;
        if let Some(r) = checked.reject {
            let id = self.info.queue_id.clone();
            self.log_events(
                id.as_deref(),
                CheckPoint::Rcpt,
                &checked.events,
                Some(&to.address),
            );
            let from = self.info.sender.clone().unwrap_or_default();
            self.log_reject("RCPT", &r, &from, Some(&to.address));
            self.reply(r).await;
            return Flow::Continue;
        }
        if notify_conflict(to.flags) {
            let r = Reply::new(501, "5.5.4 Error: Bad NOTIFY parameter syntax");
            self.reply(r).await;
            return Flow::Continue;
        }
        let notify = Notify {
            success: to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
            failure: to.flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
            delay: to.flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
            never: to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0,
            explicit: to.flags
                & (smtp_proto::RCPT_NOTIFY_SUCCESS
                    | smtp_proto::RCPT_NOTIFY_FAILURE
                    | smtp_proto::RCPT_NOTIFY_DELAY
                    | smtp_proto::RCPT_NOTIFY_NEVER)
                != 0,
        };
        let mut rcpt = Recipient::new(to.address);
        rcpt.notify = notify;
        // smtp-proto accepts only the rfc822 type and gives the decoded address.
        rcpt.orcpt = to.orcpt.map(|a| format!("rfc822;{a}"));
        let namaddr = self.info.namaddr();
        let state = std::mem::take(&mut self.state);
        let mut tx = match state {
            State::Mail(t) | State::Rcpt(t) => t,
            other => {
                // Checked at the top; keep the state as it was.
                self.state = other;
                return Flow::Continue;
            }
        };
        if tx.queue_id.is_none() {
            let id = self.backend.new_queue_id();
            info!("{id}: client={namaddr}{}", self.sasl_log());
            tx.queue_id = Some(id);
        }
        self.info.queue_id = tx.queue_id.clone();
        self.log_events(
            tx.queue_id.as_deref(),
            CheckPoint::Rcpt,
            &checked.events,
            Some(&rcpt.address),
        );
        tx.envelope.actions.merge(checked.actions);
        tx.envelope.recipients.push(rcpt);
        self.state = State::Rcpt(tx);
        self.reply(Reply::new(250, "2.1.5 Ok")).await;
        Flow::Continue
    }

    async fn bad_rcpt(&mut self, line: &str) -> Flow {
        warn!(
            "Illegal address syntax from {} in RCPT command: {}",
            self.info.namaddr(),
            address_arg(line)
        );
        self.reply(Reply::new(501, "5.1.3 Bad recipient address syntax"))
            .await;
        Flow::Continue
    }
}

/// RFC 3461: NEVER must stand alone.
fn notify_conflict(flags: u64) -> bool {
    flags & smtp_proto::RCPT_NOTIFY_NEVER != 0
        && flags
            & (smtp_proto::RCPT_NOTIFY_SUCCESS
                | smtp_proto::RCPT_NOTIFY_FAILURE
                | smtp_proto::RCPT_NOTIFY_DELAY)
            != 0
}
