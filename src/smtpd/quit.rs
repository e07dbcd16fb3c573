//! QUIT: say goodbye and close.

use super::reply::Reply;
use super::session::{Flow, Session};
use super::state::State;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_quit(&mut self) -> Flow {
        self.reply(Reply::new(221, "2.0.0 Bye")).await;
        self.state = State::Closed;
        Flow::Close
    }
}
