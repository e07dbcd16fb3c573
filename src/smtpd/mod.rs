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
//!     The [`Smtpd`] actor owns a listening socket and runs one tokio task per session. Each
//!     session from a client outside smtpd_client_event_limit_exceptions is reported to anvil
//!     (the master's, or the listener's own counters when started alone), which answers the
//!     client's session count and its connection, MAIL FROM, RCPT TO, new TLS session and AUTH
//!     rates over anvil_rate_time_unit; smtpd enforces the smtpd_client_*_limit parameters with
//!     Postfix's replies: `421 4.7.0 host Error: too many connections from addr` at connect,
//!     `450 4.7.1 Error: too much mail from addr` at MAIL FROM, `450 4.7.1 Error: too many
//!     recipients from addr` at RCPT TO, `454 4.7.0 Error: too many new TLS sessions from
//!     host[addr]` at STARTTLS (421 after a new handshake that was one too many), `450 4.7.1
//!     Error: too many AUTH commands from addr` at AUTH. The rest of the mail system is reached
//!     through the small [`Backend`] trait: a queue ID, a recipient check, and "enqueue this
//!     message".
//!
//!     Command pipelining (RFC 2920): input already waiting when smtpd is about to answer a
//!     command that ends a group (HELO, EHLO, DATA, NOOP, VRFY), any command before EHLO, or
//!     the greeting itself (a pre-greeting talker, stage CONNECT; not checked in TLS wrapper
//!     mode), is improper pipelining. It is logged once per session and sets the flag
//!     reject_unauth_pipelining tests ([`SessionInfo::ill_pipelining`]); with
//!     smtpd_forbid_unauth_pipelining (default yes, as Postfix >= 3.9; Postfix 3.5.20-3.8
//!     default to no) the reply is `554 5.5.0 Error: SMTP protocol synchronization` and the
//!     session ends. Postfix's smtpd does the same pre-greeting check (postscreen's PREGREET
//!     test, with its greet wait, is not implemented): it sees only what has arrived by the
//!     time the greeting is about to be sent.
//!
//!     Tarpit (Postfix >= 2.1): once a client has made smtpd_soft_error_limit errors, every
//!     reply waits smtpd_error_sleep_time first; at smtpd_hard_error_limit the session ends
//!     with `421 4.7.0 host Error: too many errors`. A received message forgives the errors.
//!
//! QUEUES
//!     smtpd writes nothing itself: complete messages go to [`Backend::enqueue`] (cleanup, then
//!     the incoming queue), and 250 is answered only when that resolves, i.e. when the message
//!     is on disk.
//!
//! MESSAGES
//!     `connect from host[addr]`, `ID: client=host[addr]`, `NOQUEUE: reject: RCPT from …`,
//!     `lost connection after CMD from …`, `timeout after CMD from …`,
//!     `warning: non-SMTP command from …`, `disconnect from host[addr] ehlo=1 … commands=N`,
//!     `improper command pipelining after CMD from host[addr]: <input, escaped, 100 bytes>`,
//!     `warning: Connection concurrency limit exceeded: N from host[addr] for service S`,
//!     `warning: Connection rate limit exceeded: …`, `warning: Message delivery request rate
//!     limit exceeded: …`, `warning: Recipient address rate limit exceeded: …`, `warning: New
//!     TLS session rate limit exceeded: …`, `warning: AUTH command rate limit exceeded: …`,
//!     `warning: Refusing STARTTLS request from host[addr] for service S`, `warning: Refusing
//!     TLS service request from …` (wrapper mode).
//!
//! SECURITY
//!     smtpd talks to untrusted clients. An idle client costs one task and one descriptor, never
//!     the accept loop's attention; the master raises RLIMIT_NOFILE to its hard limit at start.
//!     Memory is bounded whatever they send: command lines by
//!     line_length_limit (the excess is discarded), message bodies by message_size_limit (the
//!     excess is read and dropped, then refused with 552). Every read and write has
//!     smtpd_timeout. Errors are counted and the session ended at smtpd_hard_error_limit.
//!     HTTP requests and header lines sent as commands end the session at once.
//!
//! CONFIGURATION PARAMETERS
//!     anvil_rate_time_unit (60s)
//!     disable_vrfy_command (no)
//!     fast_flush_domains ($relay_domains)
//!     line_length_limit (2048)
//!     mail_name (relais)
//!     message_size_limit (10240000)
//!     myhostname (system host name)
//!     smtpd_banner ($myhostname ESMTP $mail_name)
//!     smtpd_client_auth_rate_limit (0)
//!     smtpd_client_connection_count_limit (50)
//!     smtpd_client_connection_rate_limit (0)
//!     smtpd_client_event_limit_exceptions ($mynetworks)
//!     smtpd_client_message_rate_limit (0)
//!     smtpd_client_new_tls_session_rate_limit (0)
//!     smtpd_client_recipient_rate_limit (0)
//!     smtpd_error_sleep_time (1s)
//!     smtpd_forbid_bare_newline (normalize)
//!     smtpd_forbid_unauth_pipelining (yes)
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
