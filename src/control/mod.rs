//! NAME
//!   control - the local control socket between the queue tools and the running daemon
//!
//! SUMMARY
//!   Server: `serve(listener, handler)` (the master runs it on `$queue_directory/public/control`).
//!   Client: `Backend::open(queue_directory)` gives the daemon over the socket, or the
//!   database directly when no daemon runs.
//!
//! DESCRIPTION
//!   Newline-delimited JSON requests and responses ([`proto`]); content follows a JSON line
//!   as `content_length` raw bytes. A listing (`postqueue -p`/`-j`) is answered in batches,
//!   one `entries` line each, the daemon reading the next batch only once the previous one
//!   is written; operator actions on ALL go a batch at a time, one flush per batch. The socket is mode 0666 like Postfix's public/ sockets,
//!   so any local user can list the queue and submit mail; operator requests (postsuper,
//!   postcat) are allowed only to root and to the daemon's own uid, checked with
//!   SO_PEERCRED. A submission's `origin.uid` is always the peer's uid, never the client's
//!   claim.
//!
//! QUEUES
//!   Reads all of them; operator requests move messages as `postsuper` does.
//!
//! SECURITY
//!   Request lines are bounded ([`proto::MAX_LINE`]), content by `message_size_limit`, and
//!   every read by a timeout, so a local client cannot pin memory or a task.
//!
//! CONFIGURATION PARAMETERS
//!   queue_directory (/var/spool/postfix), fast_flush_domains ($relay_domains),
//!   message_size_limit (10240000).

pub mod client;
pub mod proto;
pub mod server;

pub use client::{socket_path, Backend, Client};
pub use proto::{Entry, Request, Response, SuperOp};
pub use server::{serve, Handler, Peer, QueueHandler};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad control message: {0}")]
    Protocol(String),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// The daemon (or the handler, directly) answered with an error and the exit code the
    /// tool should use.
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// No daemon answers and the database is locked (or cannot be opened).
    #[error("mail system is down ({connect}; {open})")]
    Down { connect: String, open: String },
}

/// `strerror` text of an I/O error without Rust's ` (os error N)` suffix, as Postfix
/// prints it ("Connection refused", "No such file or directory").
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
