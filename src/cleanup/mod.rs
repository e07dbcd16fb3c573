//! NAME
//!   cleanup - canonicalise and enqueue a message
//!
//! SUMMARY
//!   Receives complete messages from smtpd and pickup, and writes them into the queue.
//!
//! DESCRIPTION
//!   cleanup removes Return-Path: (and Bcc: from local submissions) and keeps Delivered-To:
//!   (as Postfix does: delivery agents find forwarding loops with it), applies header_checks,
//!   mime_header_checks and body_checks with Postfix's actions (IGNORE, REJECT, WARN, INFO, HOLD,
//!   DISCARD, PREPEND, REPLACE, REDIRECT, FILTER, BCC, DUNNO/OK). mime_header_checks sees the
//!   MIME headers of the primary header and of every MIME part, following nested multiparts
//!   up to mime_nesting_limit levels and 10,000 parts (beyond, the rest is body); body_checks
//!   sees every body line of every part, but not part headers or boundary lines. Headers of
//!   attached message/rfc822 parts are body lines (nested_header_checks is not implemented).
//!   It adds Postfix's Received:
//!   header with the queue ID, and adds Date:, Message-ID: and From: where missing for local
//!   submissions (and remote ones with always_add_missing_headers). Unless a REDIRECT
//!   replaced the recipients, it adds automatic blind copies: sender_bcc_maps for a non-null
//!   sender, recipient_bcc_maps for each recipient (looked up as user@domain, user for local
//!   domains, @domain), always_bcc; each once, with NOTIFY=NEVER, before virtual alias
//!   expansion (as Postfix 2.3 and later). canonical and masquerading maps are not
//!   implemented (`relais check` says so when they are set). It then writes the queue
//!   record in one durable change and only then answers the submitter, who only then
//!   answers 250 to its client.
//!
//! QUEUES
//!   (new) → incoming, or → hold (HOLD action); a DISCARD never reaches the queue.
//!
//! MESSAGES
//!   Handles `Enqueue` (from smtpd and pickup), answers `Result<Outcome, CleanupError>`.
//!
//! SECURITY
//!   Content is untrusted: headers are bounded by header_size_limit, lines by the submitter's
//!   line_length_limit; nothing here panics on malformed input.
//!
//! CONFIGURATION PARAMETERS
//!   header_checks (), mime_header_checks ($header_checks), body_checks (), mime_nesting_limit (100),
//!   always_add_missing_headers (no), header_size_limit (102400), myhostname, myorigin,
//!   mail_name (relais), always_bcc (), sender_bcc_maps (), recipient_bcc_maps ()

pub mod checks;
#[allow(clippy::module_inception)]
pub mod cleanup;
pub mod headers;
pub mod message;
