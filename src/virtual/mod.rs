//! NAME
//!   virtual - deliver into Maildir mailboxes
//!
//! SUMMARY
//!   Local delivery for virtual_mailbox_domains (and the default conf/'s local domain).
//!
//! DESCRIPTION
//!   The mailbox path is virtual_mailbox_base joined with the virtual_mailbox_maps result for
//!   the recipient; a result ending in `/` is a Maildir (the only format relais writes).
//!   Return-Path: and Delivered-To: are added; a message that already carries
//!   `Delivered-To: <recipient>` bounces as a forwarding loop.
//!
//! QUEUES
//!   None: qmgr hands it recipients of active messages and records the outcome.
//!
//! SECURITY
//!   Mailbox paths come from the administrator's tables, never from the message; a result
//!   containing `..` is refused.
//!
//! CONFIGURATION PARAMETERS
//!   virtual_mailbox_base (), virtual_mailbox_maps ()

pub mod maildir;
