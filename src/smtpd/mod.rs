//! NAME
//!     smtpd - relais's SMTP server session
//!
//! SUMMARY
//!     `smtp inet n - n - - smtpd` in master.cf
//!
//! DESCRIPTION
//!     The SMTP server accepts network connections and speaks RFC 5321 ESMTP with PIPELINING,
//!     SIZE, VRFY, ETRN, ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8 and CHUNKING, advertised in
//!     Postfix's order. Each session is an explicit [`State`] machine, one file per verb, generic
//!     over any `AsyncRead + AsyncWrite` stream (a TCP socket in production, `tokio::io::duplex`
//!     in tests). Replies carry enhanced status codes and Postfix's texts; pipelined commands
//!     are answered in order and replies are written in batches, flushed when no more client
//!     input is buffered.
//!
//!     Only `<CR><LF>.<CR><LF>` ends DATA. A bare LF or bare CR is never part of the
//!     end-of-data sequence; with `smtpd_forbid_bare_newline = normalize` (or `no`) it ends a
//!     line and is stored as CRLF, with `yes` the session is ended with `521 5.5.2`. Every stored
//!     line ends in CRLF, so nothing that a later hop could read as end-of-data passes raw.
//!
//!     The [`Smtpd`] actor owns a listening socket, runs one tokio task per session and enforces
//!     the per-client connection count limit. The rest of the mail system is reached through the
//!     small [`Backend`] trait: a queue ID, a recipient check, and "enqueue this message".
//!
//! QUEUES
//!     smtpd writes nothing itself: complete messages go to [`Backend::enqueue`] (cleanup, then
//!     the incoming queue), and 250 is answered only when that resolves, i.e. when the message
//!     is on disk.
//!
//! MESSAGES
//!     `connect from host[addr]`, `ID: client=host[addr]`, `NOQUEUE: reject: RCPT from …`,
//!     `lost connection after CMD from …`, `timeout after CMD from …`,
//!     `warning: non-SMTP command from …`, `disconnect from host[addr] ehlo=1 … commands=N`.
//!
//! SECURITY
//!     smtpd talks to untrusted clients. Memory is bounded whatever they send: command lines by
//!     line_length_limit (the excess is discarded), message bodies by message_size_limit (the
//!     excess is read and dropped, then refused with 552). Every read and write has
//!     smtpd_timeout. Errors are counted and the session ended at smtpd_hard_error_limit.
//!     HTTP requests and header lines sent as commands end the session at once.
//!
//! CONFIGURATION PARAMETERS
//!     disable_vrfy_command (no)
//!     fast_flush_domains ($relay_domains)
//!     line_length_limit (2048)
//!     mail_name (relais)
//!     message_size_limit (10240000)
//!     myhostname (system host name)
//!     smtpd_banner ($myhostname ESMTP $mail_name)
//!     smtpd_client_connection_count_limit (50)
//!     smtpd_client_event_limit_exceptions ($mynetworks)
//!     smtpd_error_sleep_time (1s)
//!     smtpd_forbid_bare_newline (normalize)
//!     smtpd_forbidden_commands (CONNECT GET POST)
//!     smtpd_hard_error_limit (20)
//!     smtpd_helo_required (no)
//!     smtpd_junk_command_limit (100)
//!     smtpd_recipient_limit (1000)
//!     smtpd_soft_error_limit (10)
//!     smtpd_timeout (300s)
//!     smtputf8_enable (yes)
//!     syslog_name (postfix)

pub mod backend;
mod bdat;
mod conn;
mod data;
mod ehlo;
mod etrn;
mod help;
mod limits;
mod mail;
mod noop;
pub mod policy;
mod quit;
mod rcpt;
pub mod reply;
mod rset;
pub mod server;
pub mod session;
pub mod settings;
pub mod state;
mod vrfy;

pub use reply::Reply;
pub use server::{Reload, Smtpd};
pub use session::{Session, SessionInfo};
pub use settings::{BareNewline, Settings};
pub use state::State;

use thiserror::Error;

/// A boxed future, so that [`Backend`] stays object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What smtpd needs from the rest of the mail system.
pub trait Backend: Send + Sync + 'static {
    /// A fresh queue ID, taken when the first recipient is accepted (logged as `ID: client=…`).
    fn new_queue_id(&self) -> String;
    /// Relay control / recipient validation for one RCPT; Ok(()) accepts, Err(reply) rejects.
    fn check_recipient(&self, s: &SessionInfo, rcpt: &str) -> Result<(), Reply>;
    /// Hands a complete message to cleanup; resolves only when it is durably queued.
    fn enqueue(
        &self,
        id: String,
        env: crate::envelope::Envelope,
        origin: crate::envelope::Origin,
        content: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>>;
    /// ETRN accepted for `site`: ask for a queue run of its deferred mail (nothing by default,
    /// for backends without a queue).
    fn flush_site(&self, _site: &str) {}
}

/// Why a session ended early (everything else is an SMTP reply, not an error).
#[derive(Debug, Error)]
pub enum SmtpdError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timeout exceeded")]
    Timeout,
    #[error("lost connection")]
    Lost,
    #[error("listener: {0}")]
    Listener(String),
}
