//! VRFY: refused when disable_vrfy_command is set; otherwise the address goes through the
//! same recipient check as RCPT TO, and a pass gets 252 (we do not promise delivery).

use super::reply::Reply;
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_vrfy(&mut self, args: &str) -> Flow {
        if self.settings.disable_vrfy {
            self.reply(Reply::new(502, "5.5.1 VRFY command is disabled"))
                .await;
            return Flow::Continue;
        }
        let arg = args.trim();
        if arg.is_empty() {
            self.reply(Reply::new(501, "5.5.4 Syntax: VRFY address"))
                .await;
            return Flow::Continue;
        }
        let addr = arg
            .strip_prefix('<')
            .and_then(|a| a.strip_suffix('>'))
            .unwrap_or(arg)
            .to_string();
        // The recipient's verdict only: VRFY changes no transaction.
        let r = match self.backend.check_recipient(&self.info, &addr).await.reject {
            None => Reply::new(252, format!("2.0.0 {addr}")),
            Some(r) => r,
        };
        self.reply(r).await;
        Flow::Continue
    }
}
