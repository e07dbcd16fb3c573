//! ETRN: ask for a queue run for a domain. Only domains in fast_flush_domains are served; an
//! accepted ETRN asks qmgr (through the backend) to retry that domain's deferred mail now, as
//! `postqueue -s` does. Postfix's ETRN replies carry no enhanced status codes, and neither do
//! ours.

use super::reply::Reply;
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_etrn(&mut self, args: &str) -> Flow {
        if self.settings.helo_required && self.info.helo.is_none() {
            self.reply(Reply::new(503, "Error: send HELO/EHLO first"))
                .await;
            return Flow::Continue;
        }
        if self.state.in_transaction() {
            self.reply(Reply::new(503, "Error: MAIL transaction in progress"))
                .await;
            return Flow::Continue;
        }
        let arg = args.trim();
        if arg.is_empty() {
            self.reply(Reply::new(500, "Syntax: ETRN domain")).await;
            return Flow::Continue;
        }
        // RFC 1985: `@domain` and `#queue` forms; relais serves plain domains and `@domain`.
        let domain = arg.strip_prefix('@').unwrap_or(arg);
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            self.reply(Reply::new(501, "Error: invalid parameter syntax"))
                .await;
            return Flow::Continue;
        }
        if let Some(r) = self.check_at(super::CheckPoint::Etrn, domain).await {
            self.reply(r).await;
            return Flow::Continue;
        }
        let d = domain.to_ascii_lowercase();
        let served = self.settings.fast_flush_domains.iter().any(|f| {
            let f = f.trim_start_matches('.');
            d == f || d.ends_with(&format!(".{f}"))
        });
        if served {
            self.backend.flush_site(&d);
            self.reply(Reply::new(250, "Queuing started")).await;
        } else {
            warn!("reject: ETRN {arg}... from {}", self.info.namaddr());
            self.reply(Reply::new(459, format!("<{arg}>: service unavailable")))
                .await;
        }
        Flow::Continue
    }
}
