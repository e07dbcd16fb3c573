//! RSET: abandon the transaction.

use super::reply::Reply;
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_rset(&mut self, args: &str) -> Flow {
        if !args.trim().is_empty() {
            self.reply(Reply::new(501, "5.5.4 Syntax: RSET")).await;
            return Flow::Continue;
        }
        self.reset_transaction();
        self.reply(Reply::new(250, "2.0.0 Ok")).await;
        Flow::Continue
    }
}
