//! MAIL FROM: start a transaction. Parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH) are
//! parsed by smtp-proto; the checks and replies are Postfix's, in its order: SIZE= against
//! message_size_limit, the sender restrictions (smtpd_delay_reject = no), the queue's free
//! space (`storage.rs`).

use super::reply::Reply;
use super::session::{Flow, Session};
use super::state::{State, Transaction};
use crate::envelope::{BodyType, Envelope, Ret};
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_mail(&mut self, line: &str) -> Flow {
        if self.settings.helo_required && self.info.helo.is_none() {
            self.reply(Reply::new(503, "5.5.1 Error: send HELO/EHLO first"))
                .await;
            return Flow::Continue;
        }
        if self.settings.tls_level == crate::tlsmgr::Level::Encrypt && self.tls.is_none() {
            self.reply(Reply::new(530, "5.7.0 Must issue a STARTTLS command first"))
                .await;
            return Flow::Continue;
        }
        if self.state.in_transaction() {
            self.reply(Reply::new(503, "5.5.1 Error: nested MAIL command"))
                .await;
            return Flow::Continue;
        }
        if !self.mail_rate_ok().await {
            return Flow::Continue;
        }
        let from = match parse(line) {
            Ok(Request::Mail { from }) => from,
            Ok(_) | Err(ProtoError::SyntaxError { .. }) => {
                return self.syntax().await;
            }
            Err(ProtoError::InvalidSenderAddress) if bare_local_part(line).is_some() => {
                smtp_proto::MailFrom {
                    address: bare_local_part(line).unwrap_or_default(),
                    flags: 0,
                    size: 0,
                    trans_id: None,
                    by: 0,
                    env_id: None,
                    solicit: None,
                    mtrk: None,
                    auth: None,
                    hold_for: 0,
                    hold_until: 0,
                    mt_priority: 0,
                }
            }
            Err(ProtoError::InvalidSenderAddress) => {
                let arg = address_arg(line);
                warn!(
                    "Illegal address syntax from {} in MAIL command: {arg}",
                    self.info.namaddr()
                );
                self.reply(Reply::new(501, "5.1.7 Bad sender address syntax"))
                    .await;
                return Flow::Continue;
            }
            Err(ProtoError::InvalidParameter { param }) => {
                let text = if param.eq_ignore_ascii_case("SIZE") {
                    "5.5.4 Bad message size syntax".to_string()
                } else {
                    format!("5.5.4 Bad {param} parameter syntax")
                };
                self.reply(Reply::new(501, text)).await;
                return Flow::Continue;
            }
            Err(ProtoError::UnsupportedParameter { param }) => {
                return self.unsupported(&param).await;
            }
            Err(_) => return self.syntax().await,
        };
        // Extensions we do not offer must not be silently accepted.
        let unoffered = smtp_proto::MAIL_REQUIRETLS
            | smtp_proto::MAIL_CONPERM
            | smtp_proto::MAIL_BY_NOTIFY
            | smtp_proto::MAIL_BY_RETURN
            | smtp_proto::MAIL_BY_TRACE;
        if from.flags & unoffered != 0
            || from.trans_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
        {
            return self.unsupported("extension not offered").await;
        }
        // AUTH= (RFC 4954 section 5): kept for the log only, as Postfix; refused when this
        // service has no AUTH.
        if let Some(a) = &from.auth {
            if self.sasl_active().is_none() {
                self.reply(Reply::new(503, "5.5.4 Error: authentication disabled"))
                    .await;
                return Flow::Continue;
            }
            if a != "<>" {
                self.info.sasl_sender = Some(crate::sasl::printable(a));
            }
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if smtputf8 && !self.settings.smtputf8 {
            return self.unsupported("SMTPUTF8").await;
        }
        if from.size > 0 {
            self.declared_size = Some(from.size as u64);
        }
        let limit = self.settings.message_size_limit;
        if limit > 0 && self.declared_size.is_some_and(|s| s > limit) {
            let r = Reply::new(552, "5.3.4 Message size exceeds fixed limit");
            self.log_reject("MAIL", &r, &from.address, None);
            self.reply(r).await;
            return Flow::Continue;
        }
        let body_type = if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            BodyType::BinaryMime
        } else if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else if from.flags & smtp_proto::MAIL_BODY_7BIT != 0 {
            BodyType::SevenBit
        } else {
            BodyType::Unspecified
        };
        let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(Ret::Full)
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(Ret::Hdrs)
        } else {
            None
        };
        let env = Envelope {
            sender: from.address.clone(),
            ret,
            envid: from.env_id.clone(),
            body_type,
            smtputf8,
            ..Default::default()
        };
        self.info.sender = Some(from.address);
        self.info.size = self.declared_size.unwrap_or(0);
        // smtpd_sender_restrictions now when smtpd_delay_reject = no.
        let c = if self.backend.delay_reject() {
            super::Checked::permit()
        } else {
            self.backend
                .check(super::CheckPoint::Mail, &self.info, "")
                .await
        };
        let mut env = env;
        let id = self.info.queue_id.clone();
        self.log_events(id.as_deref(), super::CheckPoint::Mail, &c.events, None);
        if let Some(r) = c.reject {
            self.log_whatsup(None, "reject", super::CheckPoint::Mail, &r.one_line(), None);
            self.info.sender = None;
            self.reply(r).await;
            return Flow::Continue;
        }
        // Last, as in Postfix: a client refused for its sender hears that, not about space.
        if let Some(r) = self.check_queue_space() {
            self.reply(r).await;
            return Flow::Continue;
        }
        env.actions.merge(c.actions);
        self.state = State::Mail(Box::new(Transaction {
            envelope: env,
            queue_id: None,
            declared_size: self.declared_size,
        }));
        self.reply(Reply::new(250, "2.1.0 Ok")).await;
        Flow::Continue
    }

    async fn syntax(&mut self) -> Flow {
        self.reply(Reply::new(501, "5.5.4 Syntax: MAIL FROM:<address>"))
            .await;
        Flow::Continue
    }

    pub(super) async fn unsupported(&mut self, param: &str) -> Flow {
        self.reply(Reply::new(
            555,
            format!("5.5.4 Unsupported option: {param}"),
        ))
        .await;
        Flow::Continue
    }
}

/// Parses a MAIL or RCPT line with smtp-proto (which wants the line ending).
pub(super) fn parse(line: &str) -> Result<Request<String>, ProtoError> {
    let mut bytes = Vec::with_capacity(line.len() + 2);
    bytes.extend_from_slice(line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    Request::parse(&mut bytes.iter())
}

/// smtp-proto insists on `local@domain`, but RFC 5321 requires `<postmaster>` and Postfix
/// takes any bare local part (the domain is appended later). Such an address, without
/// parameters, is accepted here.
pub(super) fn bare_local_part(line: &str) -> Option<String> {
    let arg = address_arg(line);
    let inner = arg.strip_prefix('<')?.strip_suffix('>')?;
    let ok = !inner.is_empty()
        && inner.len() <= 64
        && !inner.starts_with('.')
        && !inner.ends_with('.')
        && !inner.contains("..")
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
    ok.then(|| inner.to_string())
}

/// What follows `FROM:` / `TO:`, for log lines.
pub(super) fn address_arg(line: &str) -> &str {
    line.find(':').map(|i| line[i + 1..].trim()).unwrap_or("")
}
