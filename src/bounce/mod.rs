//! NAME
//!   bounce - delivery status notifications (also `defer` and `trace`)
//!
//! SUMMARY
//!   Writes non-delivery, delay and success notices and queues them with the null sender.
//!
//! DESCRIPTION
//!   Notices are RFC 3464 multipart/report messages in Postfix's layout (see `notice`). They
//!   follow the DSN parameters of the original message: NOTIFY decides which notices are
//!   sent, RET=HDRS returns only the headers, ENVID and ORCPT are reported. A notice is never
//!   sent about a message with the null sender (no bounce of a bounce).
//!
//! QUEUES
//!   Notices enter `incoming` through cleanup like any other message.
//!
//! CONFIGURATION PARAMETERS
//!   bounce_size_limit (50000), myhostname, mail_name (relais)

pub mod notice;
