//! NAME
//!   trivial-rewrite - address rewriting and resolution
//!
//! SUMMARY
//!   Decides, for each recipient, its address class, transport and next hop.
//!
//! DESCRIPTION
//!   Follows Postfix's ADDRESS_CLASS_README. Addresses without a domain get @$myorigin
//!   (append_at_myorigin), user@host gets .$mydomain (append_dot_mydomain). virtual_alias_maps
//!   expand recursively (user+ext@domain, user@domain, user for local domains, @domain; loop,
//!   recursion and size limits). Then the domain decides the class: mydestination and this
//!   machine's own IP literals are local (local_transport); virtual_alias_domains must have
//!   been aliased away ("User unknown in virtual alias table"); virtual_mailbox_domains go to
//!   virtual_transport, and must be listed in virtual_mailbox_maps; relay_domains to
//!   relay_transport; everything else to default_transport via relayhost or the domain's MX.
//!   transport_maps (full address, then domain, then parent domains) override the transport
//!   and/or next hop; `[host]:port` next hops skip the MX lookup. `[address]` literals are
//!   local when they name an inet_interfaces address (every interface address for `all`).
//!   Last, whatever the class, a user listed in relocated_maps goes to the error transport
//!   with `5.1.6 User has moved to <new location>` (smtpd refuses it at RCPT with that text).
//!   local_recipient_maps (alias tables read as aliases(5) text, unix:passwd.byname through
//!   getpwnam) tells smtpd which local users exist (`local_user_known`).
//!
//! QUEUES
//!   None: a library that qmgr and smtpd call (Postfix's rewrite service, in-process).
//!
//! SECURITY
//!   Addresses are untrusted input; only the administrator's tables choose destinations.
//!   Source routes, `%` and `!` forms are never rewritten into relaying (no percent hack).
//!
//! CONFIGURATION PARAMETERS
//!   myorigin ($myhostname), mydestination, mydomain, append_at_myorigin (yes),
//!   append_dot_mydomain, recipient_delimiter (), virtual_alias_maps, virtual_alias_domains,
//!   virtual_mailbox_domains, virtual_mailbox_maps, relay_domains, transport_maps,
//!   local_transport (local:$myhostname), virtual_transport (virtual), relay_transport (relay),
//!   default_transport (smtp), relayhost (), virtual_alias_recursion_limit (1000),
//!   virtual_alias_expansion_limit (1000), inet_interfaces (all), alias_maps,
//!   local_recipient_maps (proxy:unix:passwd.byname $alias_maps), relocated_maps ()

pub mod resolve;

pub use resolve::{Class, Resolved, RewriteError, Rewriter};
