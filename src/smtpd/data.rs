//! DATA: read the message up to `<CR><LF>.<CR><LF>`, undo dot-stuffing, store every line
//! with CRLF, and answer 250 only once the backend has queued the message.
//!
//! A bare LF or bare CR is never part of the end-of-data sequence (`\n.\n`, `\r.\r`,
//! `\n.\r\n`, `\r\n.\n` are content), which is what stops SMTP smuggling: a message can only
//! end where every MTA agrees it ends.

use super::reply::Reply;
use super::session::{Ending, Flow, Session};
use super::settings::BareNewline;
use super::state::{State, Transaction};
use super::CheckPoint;
use super::SmtpdError;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_data(&mut self, args: &str) -> Result<Flow, SmtpdError> {
        if !args.trim().is_empty() {
            self.reply(Reply::new(501, "5.5.4 Syntax: DATA")).await;
            return Ok(Flow::Continue);
        }
        let tx = match std::mem::take(&mut self.state) {
            State::Rcpt(tx) => tx,
            other => {
                let r = match other {
                    State::Mail(_) => Reply::new(554, "5.5.1 Error: no valid recipients"),
                    State::Chunking(..) => {
                        Reply::new(503, "5.5.1 Error: DATA after BDAT is not allowed")
                    }
                    _ => Reply::new(503, "5.5.1 Error: need RCPT command"),
                };
                self.state = other;
                self.reply(r).await;
                return Ok(Flow::Continue);
            }
        };
        self.state = State::Rcpt(tx);
        self.info.recipient_count = self
            .state
            .transaction()
            .map(|t| t.envelope.recipients.len())
            .unwrap_or(0);
        let last = self
            .state
            .transaction()
            .and_then(|t| t.envelope.recipients.last())
            .map(|r| r.address.clone());
        let c = self.backend.check(CheckPoint::Data, &self.info, "").await;
        let id = self.info.queue_id.clone();
        self.log_events(id.as_deref(), CheckPoint::Data, &c.events, last.as_deref());
        if let Some(r) = c.reject {
            // Postfix's DATA refusals carry no queue ID; the transaction stays open.
            self.log_whatsup(
                None,
                "reject",
                CheckPoint::Data,
                &r.one_line(),
                last.as_deref(),
            );
            self.reply(r).await;
            return Ok(Flow::Continue);
        }
        self.merge_actions(c.actions);
        let State::Rcpt(tx) = std::mem::take(&mut self.state) else {
            // Just put there.
            return Ok(Flow::Continue);
        };
        self.reply(Reply::new(354, "End data with <CR><LF>.<CR><LF>"))
            .await;
        let limit = self.settings.message_size_limit as usize;
        let line_limit = self.settings.line_length_limit;
        let mut body: Vec<u8> = Vec::new();
        let mut too_big = false;
        let mut at_line_start = true;
        // The DATA command's own line ending counts as the CRLF before a first-line ".".
        let mut prev_crlf = self.cmd_ending == Ending::CrLf;
        // Bounded: each piece consumes input; the loop ends at end-of-data or EOF/timeout.
        loop {
            let (piece, ending) = self.read_piece(line_limit).await?;
            if ending == Ending::Eof {
                return Err(SmtpdError::Lost);
            }
            if at_line_start && piece == b"." && ending == Ending::CrLf && prev_crlf {
                break;
            }
            if ending.is_bare() && self.settings.bare_newline == BareNewline::Reject {
                self.state = State::Idle;
                self.reject_bare(ending).await;
                return Ok(Flow::Close);
            }
            let content: &[u8] = if at_line_start && piece.first() == Some(&b'.') {
                &piece[1..]
            } else {
                &piece
            };
            let line_end: &[u8] = if ending == Ending::Partial {
                b""
            } else {
                b"\r\n"
            };
            if !too_big {
                if limit > 0 && body.len() + content.len() + line_end.len() > limit {
                    // Keep reading to the end so the client hears our reply, but stop storing.
                    too_big = true;
                    body = Vec::new();
                } else {
                    body.extend_from_slice(content);
                    body.extend_from_slice(line_end);
                }
            }
            at_line_start = ending != Ending::Partial;
            prev_crlf = ending == Ending::CrLf;
        }
        self.stage = "END-OF-MESSAGE";
        if too_big {
            self.reset_transaction();
            self.reply(Reply::new(552, "5.3.4 Message size exceeds fixed limit"))
                .await;
            return Ok(Flow::Continue);
        }
        self.finish_message(tx, body).await;
        Ok(Flow::Continue)
    }

    /// Hands the message to the backend and answers with its fate. The transaction ends
    /// either way.
    pub(super) async fn finish_message(&mut self, mut tx: Box<Transaction>, body: Vec<u8>) {
        // smtpd_end_of_data_restrictions, before anything is queued.
        self.info.size = body.len() as u64;
        self.info.queue_id = tx.queue_id.clone();
        self.info.recipient_count = tx.envelope.recipients.len();
        let last = tx.envelope.recipients.last().map(|r| r.address.clone());
        let c = self
            .backend
            .check(CheckPoint::EndOfData, &self.info, "")
            .await;
        let actions = c.actions.clone();
        if let Some(r) = self.apply_checked(CheckPoint::EndOfData, c, last.as_deref()) {
            self.reset_transaction();
            self.reply(r).await;
            return;
        }
        tx.envelope.actions.merge(actions);
        self.reset_transaction();
        let Some(id) = tx.queue_id.clone() else {
            // Unreachable by construction (a recipient was accepted), but never queue
            // anonymously.
            self.reply(Reply::new(451, "4.3.0 Error: internal error"))
                .await;
            return;
        };
        let origin = self.origin();
        // Replies queued so far (354, pipelined ones) go out before the possibly slow commit.
        if let Err(e) = self.flush().await {
            info!("{id}: lost connection before end of data: {e}");
            return;
        }
        let res = self
            .backend
            .enqueue(id.clone(), tx.envelope, origin, body)
            .await;
        match res {
            Ok(()) => {
                self.reply(Reply::new(250, format!("2.0.0 Ok: queued as {id}")))
                    .await
            }
            Err(r) => self.reply(r).await,
        }
    }
}
