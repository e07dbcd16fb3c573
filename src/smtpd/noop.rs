//! NOOP: arguments are allowed and ignored (RFC 5321 4.1.1.9).

use super::reply::Reply;
use super::session::{Flow, Session};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_noop(&mut self) -> Flow {
        self.reply(Reply::new(250, "2.0.0 Ok")).await;
        Flow::Continue
    }
}
