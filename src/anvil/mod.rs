//! NAME
//!     anvil - session count and request rate control
//!
//! SUMMARY
//!     `anvil unix - - n - 1 anvil` in master.cf
//!
//! DESCRIPTION
//!     anvil keeps short-term statistics per (service, client address), the `ident`
//!     `service:addr`: how many sessions the client holds now, and how many connections,
//!     MAIL FROM commands, RCPT TO commands, new TLS sessions and AUTH commands it made in the
//!     current anvil_rate_time_unit. As in Postfix the window is fixed, not sliding: when a
//!     time unit has passed since it started, every rate starts over at zero.
//!
//!     smtpd asks anvil at connect (`Connect` answers the session count and connection rate;
//!     `Disconnect` at the end of the session, however it ends), at MAIL FROM and RCPT TO
//!     (`Count`), before and after a TLS handshake (`Peek` and `Count` of new TLS sessions)
//!     and at AUTH ([`AnvilClient::auth`]), and enforces its smtpd_client_*_limit parameters
//!     with the answers; clients listed in smtpd_client_event_limit_exceptions are not
//!     reported at all. anvil itself refuses nothing.
//!
//!     Servers reach anvil through an [`AnvilClient`]; a server started without the master
//!     (tests) keeps a private table with the same rules.
//!
//! QUEUES
//!     None.
//!
//! MESSAGES
//!     Requests: `Connect`, `Disconnect`, `Count`, `Peek`, `Statistics`, `Size`.
//!     Logged every anvil_status_update_time and when anvil stops, for the peaks of the
//!     period (lines without activity are left out):
//!     `statistics: max connection rate 3/60s for (smtp:127.0.0.1) at Nov 23 13:02:38`,
//!     `statistics: max connection count 3 for (smtp:127.0.0.1) at …`,
//!     `statistics: max message rate …`, `max recipient rate …`, `max newtls rate …`,
//!     `max auth rate …`, `statistics: max cache size 1 at …`.
//!
//! SECURITY
//!     Memory is bounded: an entry lives while its client holds a session, and goes one time
//!     unit after its last session ended (or after its last event, for events without a
//!     session). A sweep runs every half time unit, and whenever a new entry arrives and the
//!     last sweep is half a time unit old, so a flood of new addresses cannot outgrow what
//!     one and a half time units of connections hold. Counters saturate instead of wrapping.
//!     Postfix's aggregation of clients by network prefix (smtpd_client_ipv4/6_prefix_length)
//!     is not implemented: each address counts alone.
//!
//! CONFIGURATION PARAMETERS
//!     anvil_rate_time_unit (60s)
//!     anvil_status_update_time (600s)
//!     syslog_name (postfix)

#[allow(clippy::module_inception)]
pub mod anvil;
pub mod client;
pub mod table;

pub use anvil::Anvil;
pub use client::AnvilClient;
pub use table::{Event, Table};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AnvilError {
    #[error("anvil service is not available")]
    Unavailable,
    #[error("anvil request failed: {0}")]
    Mailbox(#[from] actix::MailboxError),
}
