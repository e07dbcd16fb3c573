//! The session's state machine. DATA and BDAT content is read inside their verbs, so the
//! states are the points where the server waits for the next command.

use crate::envelope::Envelope;

/// One mail transaction, from MAIL FROM to end of data.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub envelope: Envelope,
    /// Taken when the first recipient is accepted.
    pub queue_id: Option<String>,
    /// SIZE= from MAIL FROM, if given.
    pub declared_size: Option<u64>,
}

/// Where the session stands between commands.
#[derive(Debug, Default)]
pub enum State {
    /// No transaction (before or after HELO/EHLO; the greeting itself is in `SessionInfo`).
    #[default]
    Idle,
    /// MAIL FROM accepted, no recipient yet.
    Mail(Box<Transaction>),
    /// At least one recipient accepted.
    Rcpt(Box<Transaction>),
    /// BDAT chunks received, waiting for more (the body so far, already normalized).
    Chunking(Box<Transaction>, Chunked),
    /// QUIT answered or the session was ended by the server.
    Closed,
}

/// Content of a BDAT transaction in progress.
#[derive(Debug, Default)]
pub struct Chunked {
    pub body: Vec<u8>,
    /// Bytes received over all chunks (counted even when dropped for size).
    pub received: u64,
    pub too_big: bool,
    /// A CR ended the previous chunk; whether it is a bare CR depends on the next byte.
    pub pending_cr: bool,
    /// smtpd_data_restrictions were evaluated (at the first chunk).
    pub checked: bool,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Mail(_) => "mail",
            State::Rcpt(_) => "rcpt",
            State::Chunking(..) => "chunking",
            State::Closed => "closed",
        }
    }

    /// The transaction in progress, if any.
    pub fn transaction(&self) -> Option<&Transaction> {
        match self {
            State::Mail(t) | State::Rcpt(t) | State::Chunking(t, _) => Some(t),
            _ => None,
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.transaction().is_some()
    }
}
