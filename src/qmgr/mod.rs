//! NAME
//!   qmgr - the queue manager
//!
//! SUMMARY
//!   Moves messages from incoming and deferred into active, hands their recipients to the
//!   delivery agents per destination, and records what happened.
//!
//! DESCRIPTION
//!   The queue is the truth; qmgr keeps in memory only the active messages
//!   (qmgr_message_active_limit) and its per-destination queues. Each active message's
//!   pending recipients are resolved by trivial-rewrite into (transport, next hop) and grouped
//!   into jobs of at most destination_recipient_limit recipients. Destinations are served
//!   round-robin, each with Postfix's concurrency feedback (dest.rs): the window starts at
//!   initial_destination_concurrency, grows by one per window's worth of deliveries that
//!   reached the site (positive feedback 1/concurrency) up to the transport's
//!   `_destination_concurrency_limit`, shrinks likewise on site failures (negative
//!   feedback), and after default_destination_concurrency_failed_cohort_limit failed
//!   cohorts the destination is dead for minimal_backoff_time: its jobs are deferred at
//!   once, logged `ID: to=<…>, relay=none, …, status=deferred (delivery temporarily
//!   suspended: …)`. A job fails the site when every recipient was deferred for a reason
//!   other than a reply to RCPT TO or end of DATA. The transport's master.cf maxproc caps
//!   the total. Every outcome is written to
//!   the record before the message moves on: all done → removed (after any notice is durably
//!   queued); some deferred → deferred with an exponential backoff between
//!   minimal_backoff_time and maximal_backoff_time; too old (maximal_queue_lifetime,
//!   bounce_queue_lifetime for notices) or force-expired → returned to sender. Bounced
//!   recipients produce one non-delivery notice per message, NOTIFY=SUCCESS a success notice,
//!   and delay_warning_time a single delay warning.
//!
//!   The deferred queue is read by queue runs: every queue_run_delay (and at start, and
//!   after `postsuper -H/-r/-f`) a run takes the messages that are due; `postqueue -f` takes
//!   every one, ETRN and `postqueue -s site` those with a pending recipient at the site. A
//!   run walks the deferred queue in ID order a batch at a time (a cursor, no more records
//!   decoded per step than a batch, only the IDs it takes kept), activating what the active
//!   queue has room for, pausing while it is full and going on as messages leave it, so that
//!   every due message is attempted with 100,000 deferred and memory stays bounded. A run
//!   asked for while one is going starts when it ends (as Postfix's qmgr restarts a scan).
//!   At most 256 activations are in flight at once. Each periodic run also lets the queue
//!   compact its body segments (`Queue::compact`, on a blocking thread, one at a time).
//!
//! QUEUES
//!   incoming → active; deferred → active; active → deferred | removed.
//!
//! MESSAGES
//!   Handles `Event` (queue events), `Reload`; sends `delivery::agent::Deliver` to the
//!   delivery agents and receives their outcomes.
//!
//! SECURITY
//!   Nothing from the network decides where mail goes except through the administrator's
//!   tables (trivial-rewrite).
//!
//! CONFIGURATION PARAMETERS
//!   qmgr_message_active_limit (20000), queue_run_delay (300s), minimal_backoff_time (300s),
//!   maximal_backoff_time (4000s), maximal_queue_lifetime (5d), bounce_queue_lifetime (5d),
//!   delay_warning_time (0h), initial_destination_concurrency (5),
//!   default_destination_concurrency_limit (20), default_destination_recipient_limit (50),
//!   default_destination_concurrency_positive_feedback (1/concurrency),
//!   default_destination_concurrency_negative_feedback (1/concurrency),
//!   default_destination_concurrency_failed_cohort_limit (1), `transport`_initial_destination_concurrency,
//!   `transport`_destination_concurrency_{positive,negative}_feedback,
//!   `transport`_destination_concurrency_failed_cohort_limit,
//!   bounce_size_limit (50000), `transport`_destination_concurrency_limit,
//!   `transport`_destination_recipient_limit

pub mod dest;
pub mod manager;

pub use manager::{Event, Qmgr, Settings};
