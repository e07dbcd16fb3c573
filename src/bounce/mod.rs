//! NAME
//!   bounce - delivery status notifications (also `defer` and `trace`)
//!
//! SUMMARY
//!   Writes non-delivery, delay and success notices and queues them with the null sender.
//!
//! DESCRIPTION
//!   Notices are RFC 3464 multipart/report messages in Postfix's layout (see `notice`). They
//!   follow the DSN parameters of the original message: NOTIFY decides which notices are
//!   sent, RET=HDRS returns only the headers, ENVID and ORCPT are reported. A recipient that
//!   differs from its original (an alias member, a rewritten address) is reported as Postfix
//!   does: `<member> (expanded from <original>): reason`, Final-Recipient the member, and
//!   Original-Recipient the ORCPT (cleanup records one for every recipient, as Postfix's
//!   dsn_orig_rcpt) or else `rfc822; original`; every failing member of an alias gets its
//!   own paragraph and delivery-status block.
//!
//!   No bounce of a bounce: when mail with the null sender fails, a double bounce
//!   ("Postmaster Copy: Undelivered Mail", headers only) goes to 2bounce_notice_recipient
//!   from double_bounce_sender@$myorigin if notify_classes lists 2bounce (or bounce), and is
//!   otherwise dropped with a log line. When a notice from double_bounce_sender fails, it is
//!   discarded (`ID: undeliverable postmaster notification discarded`), and qmgr drops mail
//!   addressed to the local double_bounce_sender the same way, so notices never loop. With
//!   bounce in notify_classes, every bounce also sends a headers-only copy to
//!   bounce_notice_recipient.
//!
//! QUEUES
//!   Notices enter `incoming` through cleanup like any other message.
//!
//! CONFIGURATION PARAMETERS
//!   bounce_size_limit (50000), myhostname, mail_name (relais), notify_classes (resource,
//!   software), double_bounce_sender (double-bounce), 2bounce_notice_recipient (postmaster),
//!   bounce_notice_recipient (postmaster)

pub mod notice;
