//! relais: a mail transfer agent that reads Postfix's configuration and does Postfix's job.
//!
//! The library holds every daemon (one folder each, named as in master.cf) and the pieces they
//! share; the binaries in `src/main.rs` and `tools/` are thin edges around it.

pub mod bounce;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod discard;
pub mod dns;
pub mod envelope;
pub mod error;
pub mod log;
pub mod master;
pub mod pickup;
pub mod qmgr;
pub mod queue;
pub mod sasl;
pub mod showq;
pub mod smtp;
pub mod smtpd;
pub mod table;
pub mod tlsmgr;
pub mod trivial_rewrite;
pub mod r#virtual;
