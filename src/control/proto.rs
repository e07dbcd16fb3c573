//! The wire format: one JSON object per line. A request or response that carries message
//! content (maildrop submission, postcat fetch) says `content_length` and is followed by
//! exactly that many raw bytes, so bodies cross without base64 inflation.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Origin};
use crate::queue::{Meta, QueueName};

/// Largest request line accepted (the envelope of a big submission fits easily).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// Largest content accepted on the socket whatever the handler's own limit (which is
/// usually `message_size_limit`, far smaller).
pub const MAX_CONTENT: u64 = 1 << 30;

/// Messages per [`Response::Entries`] line: a few hundred kilobytes of JSON at most for
/// ordinary envelopes.
pub const LIST_BATCH: usize = 512;

/// What `postsuper` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuperOp {
    Delete,
    Hold,
    Release,
    Requeue,
    Expire,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Counts per queue.
    Status,
    /// Every message of the showq queues (postqueue -p / -j), answered in batches: one
    /// [`Response::Entries`] line per batch, the last with `more: false`.
    List,
    /// postqueue -f.
    Flush,
    /// postqueue -s site.
    FlushSite {
        site: String,
    },
    /// postqueue -i id.
    DeliverOne {
        id: String,
    },
    /// postsuper: `ids` None means ALL; `queues` limits where to look (empty: the default
    /// queues of that operation, as in Postfix).
    Super {
        action: SuperOp,
        ids: Option<Vec<String>>,
        queues: Vec<QueueName>,
    },
    /// postsuper -s: the queue's structure check and repair.
    Check,
    /// postcat -q id: the response carries the content.
    Fetch {
        id: String,
    },
    /// sendmail/postdrop: a new message for maildrop; `content_length` bytes follow.
    Submit {
        envelope: Envelope,
        origin: Origin,
        content_length: u64,
    },
}

/// One message as listed by showq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub queue_name: QueueName,
    pub queue_id: String,
    pub arrival_time: i64,
    pub message_size: u64,
    pub forced_expire: bool,
    /// Empty for the null sender.
    pub sender: String,
    /// Pending recipients with their delay reasons.
    pub recipients: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Pong {
        version: String,
    },
    Status {
        counts: Vec<(QueueName, usize)>,
    },
    /// One batch of a listing (at most [`LIST_BATCH`] messages); `more` says whether
    /// another follows. The daemon reads the next batch only when this one has been written,
    /// so a listing of 100,000 messages never sits in its memory at once.
    Entries {
        entries: Vec<Entry>,
        more: bool,
    },
    Ok,
    /// postsuper -s: what the structure check found and mended (empty: nothing).
    Checked {
        report: String,
    },
    /// postsuper: how many messages were acted on (`count`), and for `expire` how many were
    /// also released from hold; with named IDs, `ids` and `released` name them (with ALL
    /// they stay empty: Postfix reports only the counts then).
    Done {
        ids: Vec<String>,
        released: Vec<String>,
        #[serde(default)]
        count: usize,
        #[serde(default)]
        released_count: usize,
    },
    /// postcat: the record; `content_length` bytes follow.
    Message {
        id: String,
        queue: QueueName,
        envelope: Envelope,
        origin: Origin,
        meta: Meta,
        content_length: u64,
    },
    Queued {
        id: String,
    },
    /// `code` is the sysexits code the tool should exit with.
    Error {
        code: i32,
        message: String,
    },
}
