//! HELP: a one-line list of the commands relais knows (Postfix has no HELP; clients only use
//! it interactively).

use super::reply::Reply;
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_help(&mut self) -> Flow {
        let r = Reply::new(
            214,
            "2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY ETRN HELP",
        );
        self.reply(r).await;
        Flow::Continue
    }
}
