//! NAME
//!   pickup - local mail pickup
//!
//! SUMMARY
//!   Moves messages from the maildrop queue through cleanup into incoming.
//!
//! DESCRIPTION
//!   `sendmail` (through the control socket, or directly into the queue when no daemon runs)
//!   and `postsuper -r` put messages into maildrop. pickup takes each one, gives it a new queue
//!   ID as Postfix does, and logs `NEWID: uid=N from=<sender>` (with `orig_id=OLD` for a
//!   requeued message). A local submission goes through cleanup (Received:, missing headers,
//!   header_checks, virtual aliases); a requeued message keeps its content and recipient
//!   states and is only re-routed. The maildrop entry is removed only after the new message is
//!   durably in incoming, so a crash can duplicate but never lose it.
//!
//! QUEUES
//!   maildrop → incoming (via cleanup).
//!
//! MESSAGES
//!   Handles `Scan` (queue events and the master.cf wakeup timer); sends
//!   `cleanup::cleanup::Enqueue`.
//!
//! SECURITY
//!   The submitting uid recorded by the control socket (SO_PEERCRED) is what is logged and
//!   written into the Received: header; the message cannot claim another.
//!
//! CONFIGURATION PARAMETERS
//!   None of its own; master.cf's wakeup column sets the scan interval (60 s by default).

pub mod picker;

pub use picker::{Pickup, Scan};

/// The Origin.service value that marks a raw local submission (sendmail), as opposed to a
/// message requeued by `postsuper -r`.
pub const SENDMAIL: &str = "sendmail";
