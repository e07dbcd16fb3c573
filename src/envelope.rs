//! The envelope: who a message is from, whom it is for, and how it arrived.
//!
//! These types are shared by smtpd, pickup, cleanup, the queue and the queue tools, so that
//! one message means the same thing everywhere. They are plain data (serde + bincode) and
//! carry no behaviour beyond small helpers.

use serde::{Deserialize, Serialize};

/// RFC 3461 RET parameter of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// RFC 6152 / RFC 3030 BODY parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BodyType {
    #[default]
    Unspecified,
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// RFC 3461 NOTIFY parameter of RCPT TO, as bit flags (NEVER is the empty set with `never`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
    pub never: bool,
    /// true when the client gave NOTIFY at all (defaults differ when it did not).
    pub explicit: bool,
}

/// Where a recipient stands. A message leaves the queue when no recipient is `Pending`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RcptStatus {
    /// Not yet delivered; `reason` on the recipient says why the last attempt failed, if any.
    #[default]
    Pending,
    /// Delivered (2xx from the next hop, or written to a mailbox).
    Delivered,
    /// Permanently failed; a bounce notice has been (or will be) queued.
    Bounced,
    /// Dropped on purpose (discard transport, DISCARD action).
    Discarded,
}

/// One envelope recipient with its own DSN parameters and delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Recipient {
    /// The address as it will be delivered (after rewriting), without angle brackets.
    pub address: String,
    /// The address as the client gave it (Postfix's `original_recipient`).
    pub original: String,
    /// RFC 3461 ORCPT, as `addr-type;address` (e.g. `rfc822;a@b`).
    pub orcpt: Option<String>,
    pub notify: Notify,
    pub status: RcptStatus,
    /// Last delivery problem (`delay_reason` in postqueue -j), or the bounce reason.
    pub reason: Option<String>,
    /// Enhanced status code of the last outcome (e.g. `4.4.1`).
    pub dsn_status: Option<String>,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Self {
        let address = address.into();
        Recipient {
            original: address.clone(),
            address,
            ..Default::default()
        }
    }
}

/// The SMTP (or local) envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope sender without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    /// Sender's full name (sendmail -F), if any.
    pub sender_fullname: Option<String>,
    pub recipients: Vec<Recipient>,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    /// What the SMTP access policy decided beyond accept/refuse (access(5) HOLD, DISCARD,
    /// REDIRECT, FILTER, BCC, PREPEND); cleanup applies them, qmgr honours `filter`.
    pub actions: Actions,
}

/// Side effects of access(5) results and policy-service replies on one message. smtpd fills
/// them in; cleanup applies hold/discard/redirect/bcc/prepend; `filter` stays with the message
/// and routes every recipient through that `transport:nexthop`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Actions {
    /// HOLD: the message goes to the hold queue (the text is the reason logged).
    pub hold: Option<String>,
    /// DISCARD: accepted and dropped.
    pub discard: Option<String>,
    /// REDIRECT: every recipient is replaced by this address.
    pub redirect: Option<String>,
    /// FILTER: `transport:nexthop` content filter for all recipients.
    pub filter: Option<String>,
    /// BCC: recipients added.
    pub bcc: Vec<String>,
    /// PREPEND: header lines added at the top of the message.
    pub prepend: Vec<String>,
}

impl Actions {
    /// Adds what `other` decided (later decisions of the same kind win, as in Postfix;
    /// BCC and PREPEND accumulate).
    pub fn merge(&mut self, other: Actions) {
        if other.hold.is_some() && self.hold.is_none() {
            self.hold = other.hold;
        }
        if other.discard.is_some() && self.discard.is_none() {
            self.discard = other.discard;
        }
        if other.redirect.is_some() {
            self.redirect = other.redirect;
        }
        if other.filter.is_some() {
            self.filter = other.filter;
        }
        for b in other.bcc {
            if !self.bcc.contains(&b) {
                self.bcc.push(b);
            }
        }
        self.prepend.extend(other.prepend);
    }

    pub fn is_empty(&self) -> bool {
        *self == Actions::default()
    }
}

/// How and from whom a message arrived (Postfix's client_* / log_* named attributes).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Origin {
    /// Verified client host name, or `unknown`.
    pub client_name: String,
    /// Client IP address as text, empty for local submission.
    pub client_addr: String,
    pub client_port: u16,
    pub helo: Option<String>,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`, or `sendmail` style local names.
    pub protocol: String,
    pub sasl_user: Option<String>,
    /// Local submission: the submitting user's uid.
    pub uid: Option<u32>,
    /// Name of the master.cf service that received it (e.g. `smtp`, `submission`, `pickup`).
    pub service: String,
    /// TLS in use when it was received (`TLSv1.3 with cipher …`), for the Received: header.
    #[serde(default)]
    pub tls: Option<String>,
}
