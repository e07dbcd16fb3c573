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
//!     AUTH (RFC 4954, `auth.rs`) is offered when smtpd_sasl_auth_enable = yes for the service,
//!     not before STARTTLS with smtpd_tls_auth_only (or TLS enforcement), with the mechanisms
//!     of the SASL server ([`crate::sasl`]: Dovecot or relais's passwd-file) that pass
//!     smtpd_sasl_security_options / smtpd_sasl_tls_security_options. An authenticated session
//!     passes permit_sasl_authenticated, is checked by smtpd_sender_login_maps (`login.rs`),
//!     and its messages get `with ESMTPA`/`ESMTPSA` in Received:.
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
//!     Queue space (`storage.rs`, Postfix's smtpd_check_queue): at MAIL FROM, after the SIZE=
//!     check against message_size_limit and the sender restrictions, the queue file system is
//!     measured (statvfs); with fewer free blocks than queue_minfree, or than 1.5 ×
//!     message_size_limit, the reply is `452 4.3.1 Insufficient system storage`. A message the
//!     queue cannot write anyway (disk full, I/O error) gets `451 4.3.0 Error: queue file write
//!     error` at end of data, and the session goes on.
//!
//! QUEUES
//!     smtpd writes nothing itself: complete messages go to [`Backend::enqueue`] (cleanup, then
//!     the incoming queue), and 250 is answered only when that resolves, i.e. when the message
//!     is on disk.
//!
//! MESSAGES
//!     `connect from host[addr]`, `ID: client=host[addr]`, `NOQUEUE: reject: RCPT from …`
//!     (also CONNECT, EHLO, MAIL, DATA, ETRN; `ID: reject: END-OF-MESSAGE from …`), and for the
//!     access policy's actions `ID: hold|discard|redirect|filter|bcc|warn|reject_warning: RCPT
//!     from host[addr]: text; from=<…> to=<…> proto=… helo=<…>`,
//!     `warning: problem talking to server inet:…`, `warning: hostname X does not resolve to
//!     address A`,
//!     `lost connection after CMD from …`, `timeout after CMD from …`,
//!     `warning: non-SMTP command from …`,
//!     `NOQUEUE: reject: MAIL from host[addr]: 452 4.3.1 Insufficient system storage;
//!     proto=ESMTP helo=<…>` then `warning: not enough free space in mail queue: N bytes <
//!     1.5*message size limit`, `warning: queue_minfree(N) should be at least
//!     1.5*message_size_limit(N)` when a listener starts,
//!     `ID: client=host[addr], sasl_method=PLAIN, sasl_username=user`,
//!     `warning: host[addr]: SASL PLAIN authentication failed: reason, sasl_username=user`
//!     (fail2ban's postfix-sasl filter reads it), `warning: host[addr]: SASL LOGIN
//!     authentication aborted`, `disconnect from host[addr] ehlo=1 … commands=N`,
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
//!     The access policy ([`policy`]) runs at each check point ([`CheckPoint`]); it may use DNS
//!     (the client's PTR name with forward confirmation at connect, bounded to 5s and skipped
//!     for loopback clients; DNSBLs) and policy servers ([`policy_client`]).
//!
//! CONFIGURATION PARAMETERS
//!     anvil_rate_time_unit (60s)
//!     broken_sasl_auth_clients (no)
//!     access_map_defer_code (450), access_map_reject_code (554), default_rbl_reply,
//!     defer_code (450), invalid_hostname_reject_code (501), maps_rbl_reject_code (554),
//!     non_fqdn_reject_code (504), rbl_reply_maps, reject_code (554),
//!     reject_tempfail_action (defer_if_permit), relay_domains_reject_code (554),
//!     relay_recipient_maps (), smtpd_client_restrictions, smtpd_data_restrictions,
//!     smtpd_delay_reject (yes), smtpd_end_of_data_restrictions, smtpd_etrn_restrictions,
//!     smtpd_helo_restrictions, smtpd_policy_service_{default_action,max_idle,max_ttl,
//!     policy_context,request_limit,retry_delay,timeout,try_limit},
//!     smtpd_recipient_restrictions, smtpd_reject_footer, smtpd_reject_unlisted_recipient
//!     (yes), smtpd_reject_unlisted_sender (no), smtpd_relay_restrictions,
//!     smtpd_restriction_classes, smtpd_sender_restrictions, unknown_address_reject_code (450),
//!     unknown_address_tempfail_action, unknown_client_reject_code (450),
//!     unknown_helo_hostname_tempfail_action, unknown_hostname_reject_code (450),
//!     unknown_local_recipient_reject_code (550), unknown_relay_recipient_reject_code (550),
//!     unknown_virtual_alias_reject_code (550), unknown_virtual_mailbox_reject_code (550),
//!     relais_dns_servers
//!     disable_vrfy_command (no)
//!     fast_flush_domains ($relay_domains)
//!     line_length_limit (2048)
//!     mail_name (relais)
//!     message_size_limit (10240000)
//!     myhostname (system host name)
//!     queue_directory (/var/spool/postfix), queue_minfree (0)
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
//!     smtpd_sasl_auth_enable (no)
//!     smtpd_sasl_response_limit (12288)
//!     smtpd_sasl_security_options, smtpd_sasl_tls_security_options, smtpd_sasl_type,
//!     smtpd_sasl_path, smtpd_sasl_local_domain, smtpd_sasl_service (see crate::sasl)
//!     smtpd_sender_login_maps (empty)
//!     smtpd_soft_error_limit (10)
//!     smtpd_timeout (300s)
//!     smtpd_tls_auth_only (no)
//!     smtputf8_enable (yes)
//!     syslog_name (postfix)

mod auth;
pub mod backend;
mod bdat;
mod checks;
mod conn;
mod data;
mod ehlo;
mod etrn;
mod help;
mod limits;
mod login;
mod mail;
mod noop;
pub mod policy;
pub mod policy_client;
mod quit;
mod rcpt;
pub mod reply;
mod rset;
pub mod server;
pub mod session;
pub mod settings;
pub mod state;
pub mod storage;
mod vrfy;

pub use reply::Reply;
pub use server::{Reload, Smtpd};
pub use session::{Session, SessionInfo};
pub use settings::{BareNewline, Settings};
pub use state::State;

use thiserror::Error;

/// A boxed future, so that [`Backend`] stays object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the session asks the access policy (Postfix's restriction list stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPoint {
    /// smtpd_client_restrictions at connect (smtpd_delay_reject = no).
    Connect,
    /// smtpd_helo_restrictions at HELO/EHLO (smtpd_delay_reject = no).
    Helo,
    /// smtpd_sender_restrictions at MAIL FROM (smtpd_delay_reject = no).
    Mail,
    /// Everything due at RCPT TO (see [`Backend::check_recipient`]).
    Rcpt,
    /// smtpd_data_restrictions at DATA (and the first BDAT).
    Data,
    /// smtpd_end_of_data_restrictions after the content, before it is queued.
    EndOfData,
    /// smtpd_etrn_restrictions at ETRN.
    Etrn,
}

impl CheckPoint {
    /// The command named in `NOQUEUE: reject: CMD from …`.
    pub fn command(self) -> &'static str {
        match self {
            CheckPoint::Connect => "CONNECT",
            CheckPoint::Helo => "EHLO",
            CheckPoint::Mail => "MAIL",
            CheckPoint::Rcpt => "RCPT",
            CheckPoint::Data => "DATA",
            CheckPoint::EndOfData => "END-OF-MESSAGE",
            CheckPoint::Etrn => "ETRN",
        }
    }
}

/// Something the policy did that Postfix logs as `ID: KIND: CMD from host[addr]: TEXT; from=…`
/// (kind: hold, discard, redirect, filter, bcc, warn, info, reject_warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    pub text: String,
}

/// The access policy's answer at one check point.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The refusal, if refused.
    pub reject: Option<Reply>,
    /// Side effects on the transaction (HOLD, DISCARD, REDIRECT, FILTER, BCC, PREPEND).
    pub actions: crate::envelope::Actions,
    pub events: Vec<Event>,
}

impl Checked {
    pub fn permit() -> Checked {
        Checked::default()
    }
    pub fn reject(r: Reply) -> Checked {
        Checked {
            reject: Some(r),
            ..Default::default()
        }
    }
}

/// What a reverse lookup of the client's address found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameStatus {
    #[default]
    Ok,
    /// Temporary DNS failure.
    Temp,
    /// No name (or, for the verified name, no forward confirmation).
    Perm,
}

/// The client's names: the verified one (PTR and forward lookup agree) and the PTR one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNames {
    pub name: String,
    pub name_status: NameStatus,
    pub reverse_name: String,
    pub reverse_status: NameStatus,
}

impl ClientNames {
    pub fn unknown() -> ClientNames {
        ClientNames {
            name: "unknown".into(),
            name_status: NameStatus::Perm,
            reverse_name: "unknown".into(),
            reverse_status: NameStatus::Perm,
        }
    }
}

/// What smtpd needs from the rest of the mail system.
pub trait Backend: Send + Sync + 'static {
    /// A fresh queue ID, taken when the first recipient is accepted (logged as `ID: client=…`).
    fn new_queue_id(&self) -> String;
    /// The access policy for one RCPT: with smtpd_delay_reject = yes the client, HELO and
    /// sender lists, then relay control and the recipient list. May do DNS or talk to a
    /// policy server, hence the future.
    fn check_recipient(&self, s: &SessionInfo, rcpt: &str) -> BoxFuture<'static, Checked>;
    /// The access policy at the other check points; `arg` is the ETRN domain (else empty).
    fn check(&self, _at: CheckPoint, _s: &SessionInfo, _arg: &str) -> BoxFuture<'static, Checked> {
        Box::pin(async { Checked::permit() })
    }
    /// smtpd_delay_reject: client/HELO/sender restrictions wait for RCPT TO.
    fn delay_reject(&self) -> bool {
        true
    }
    /// The client's host names from DNS (PTR, then forward confirmation), bounded in time.
    fn lookup_client(&self, _addr: std::net::IpAddr) -> BoxFuture<'static, ClientNames> {
        Box::pin(async { ClientNames::unknown() })
    }
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
    /// The free space of the queue file system (statvfs of queue_directory), checked at MAIL
    /// FROM; None for a backend with no queue on disk, which never refuses for space.
    fn queue_space(&self) -> Option<Result<storage::FsSpace, storage::StorageError>> {
        None
    }
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
