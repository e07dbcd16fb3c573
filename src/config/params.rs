//! The parameter table, relais's mail_params.h: every main.cf parameter relais knows, with
//! its type, Postfix's default, bounds and a one-line description. `postconf -d` prints it.
//!
//! `support` says what relais does with a parameter an administrator sets:
//! `Yes` — honoured; `No` — accepted and ignored, with a warning at start and in
//! `relais check`; `Instead(text)` — a security-relevant setting relais cannot honour as
//! written: the warning says what relais does instead, so nothing is silently weaker.
//!
//! Sections belong to the module that reads them; keep each section sorted by name.

/// How a value is parsed and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bool,
    Int,
    /// A time with units s, m, h, d, w; the char is the unit of a bare number.
    Time(char),
    /// A byte count.
    Size,
    /// A list separated by commas and/or whitespace.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Yes,
    No,
    Instead(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// Postfix's default as `postconf -d` prints it (before expansion).
    pub default: &'static str,
    pub kind: Kind,
    /// Inclusive bounds for Int/Time(seconds)/Size values.
    pub min: i64,
    pub max: i64,
    pub doc: &'static str,
    pub support: Support,
}

use Kind::*;
use Support::*;

const MAXI: i64 = i64::MAX;

macro_rules! p {
    ($name:literal, $def:literal, $kind:expr, $doc:literal, $sup:expr) => {
        Param {
            name: $name,
            default: $def,
            kind: $kind,
            min: i64::MIN,
            max: MAXI,
            doc: $doc,
            support: $sup,
        }
    };
    ($name:literal, $def:literal, $kind:expr, $min:expr, $max:expr, $doc:literal, $sup:expr) => {
        Param {
            name: $name,
            default: $def,
            kind: $kind,
            min: $min,
            max: $max,
            doc: $doc,
            support: $sup,
        }
    };
}

const NO_MILTER: Support = Instead("relais has no milter client yet: mail passes unfiltered and unsigned, as with milter_default_action = accept");
const NO_CIPHERS: Support = Instead("rustls has no OpenSSL cipher strings: relais always uses rustls's safe default suites (AEAD with forward secrecy only)");

/// Parameters whose default is computed at run time (host name, computed networks, the -c
/// directory). `postconf -d` prints the computed value, as Postfix does.
pub const COMPUTED: &[&str] = &[
    "myhostname",
    "mydomain",
    "mynetworks",
    "config_directory",
    "process_id",
];

pub static PARAMS: &[Param] = &[
    // --- identity, paths, global ---------------------------------------------------------
    p!("append_at_myorigin", "yes", Bool, "append @$myorigin to addresses without a domain from local submissions", Yes),
    p!("append_dot_mydomain", "${{$compatibility_level} <level {1} ? {yes} : {no}}", Bool, "append .$mydomain to user@host addresses without a dot in the domain", Yes),
    p!("biff", "yes", Bool, "notify the local biff service of new mail (relais has no biff)", No),
    p!("command_directory", "/usr/sbin", Str, "where the administrative commands live (relais finds its tools next to its own binary)", No),
    p!("compatibility_level", "0", Str, "which generation of Postfix defaults applies", Yes),
    p!("config_directory", "/etc/postfix", Str, "directory holding main.cf and master.cf", Yes),
    p!("daemon_directory", "/usr/lib/postfix/sbin", Str, "where Postfix keeps its daemon programs (relais's daemons are built in)", No),
    p!("data_directory", "/var/lib/postfix", Str, "directory for caches and other writable data (relais keeps none yet)", No),
    p!("default_database_type", "hash", Str, "table type postmap and newaliases use when none is given", Yes),
    p!("default_process_limit", "100", Int, 1, MAXI, "maxproc of a master.cf row that says -", Yes),
    p!("enable_long_queue_ids", "no", Bool, "use long, non-repeating queue IDs", Yes),
    p!("import_environment", "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C", List, "environment variables kept for child processes", No),
    p!("inet_interfaces", "all", List, "addresses smtpd listens on (all, loopback-only, or a list)", Yes),
    p!("inet_protocols", "all", List, "address families used: ipv4, ipv6, all", Yes),
    p!("mail_name", "relais", Str, "the mail system's name in the banner and Received: headers", Yes),
    p!("mail_owner", "postfix", Str, "the unprivileged account that owns the queue", No),
    p!("maillog_file", "", Str, "file that receives the log (empty: standard error)", Yes),
    p!("mydestination", "$myhostname, localhost.$mydomain, localhost", List, "domains delivered locally", Yes),
    p!("mydomain", "", Str, "this system's internet domain (default: myhostname without its first label)", Yes),
    p!("myhostname", "", Str, "this system's fully-qualified host name (default: from the system)", Yes),
    p!("mynetworks", "", List, "trusted client networks (default: computed from mynetworks_style)", Yes),
    p!("mynetworks_style", "${{$compatibility_level} <level {2} ? {subnet} : {host}}", Str, "how to compute mynetworks when it is not set: host, subnet or class", Yes),
    p!("myorigin", "$myhostname", Str, "domain appended to locally-posted mail", Yes),
    p!("process_id", "", Str, "the process ID of the running daemon (read-only)", Yes),
    p!("process_name", "", Str, "the name of the running daemon (read-only)", Yes),
    p!("queue_directory", "/var/spool/postfix", Str, "where the queue (the sled database and control socket) lives", Yes),
    p!("relais_body_segment_size", "33554432", Size, 65536, 2147483647, "relais-specific: bytes after which a queue journal segment ($queue_directory/db.bodies: every message and change, checksummed) takes no more; the oldest segment is compacted at a queue run when that lets files go", Yes),
    p!("fast_flush_domains", "$relay_domains", List, "destinations whose deferred mail postqueue -s and ETRN may flush at once", Yes),
    p!("recipient_delimiter", "", Str, "characters that separate a user name from an address extension", Yes),
    p!("relay_domains", "${{$compatibility_level} <level {2} ? {$mydestination} : {}}", List, "domains relais relays mail to from anyone", Yes),
    p!("relayhost", "", Str, "next-hop for mail not delivered locally ([host]:port suppresses MX lookup)", Yes),
    p!("service_name", "", Str, "the master.cf service name of the running daemon (read-only)", Yes),
    p!("smtputf8_enable", "${{$compatibility_level} <level {1} ? {no} : {yes}}", Bool, "offer SMTPUTF8 and accept UTF-8 addresses", Yes),
    p!("stress", "", Str, "set by the master under overload (read-only)", Yes),
    p!("syslog_facility", "mail", Str, "syslog facility (relais logs to maillog_file)", No),
    p!("syslog_name", "${multi_instance_name?{$multi_instance_name}:{postfix}}", Str, "program name prefix of log lines", Yes),
    p!("multi_instance_name", "", Str, "name of this instance in a multi-instance setup (only used in syslog_name)", No),
    // --- anvil ---------------------------------------------------------------------------
    p!("anvil_rate_time_unit", "60s", Time('s'), 1, MAXI, "time unit over which anvil counts client connection, message, recipient, TLS and AUTH rates", Yes),
    p!("anvil_status_update_time", "600s", Time('s'), 1, MAXI, "how often anvil logs its peak-usage statistics", Yes),
    // --- smtpd ---------------------------------------------------------------------------
    p!("disable_vrfy_command", "no", Bool, "refuse VRFY and do not advertise it", Yes),
    p!("header_size_limit", "102400", Size, 1, MAXI, "largest message header kept, in bytes", Yes),
    p!("line_length_limit", "2048", Size, 1, MAXI, "longest SMTP line or message line read in one piece", Yes),
    p!("message_size_limit", "10240000", Size, 0, MAXI, "largest message accepted, in bytes (0: no limit)", Yes),
    p!("queue_minfree", "0", Size, 0, MAXI, "free bytes the queue file system must have for smtpd to accept MAIL FROM (it also needs 1.5 × message_size_limit)", Yes),
    p!("smtpd_banner", "$myhostname ESMTP $mail_name", Str, "text after 220 in the greeting", Yes),
    p!("smtpd_client_auth_rate_limit", "0", Int, 0, MAXI, "AUTH commands one client may send per anvil_rate_time_unit (0: no limit)", Yes),
    p!("smtpd_client_connection_count_limit", "50", Int, 0, MAXI, "simultaneous connections one client may hold (0: no limit)", Yes),
    p!("smtpd_client_connection_rate_limit", "0", Int, 0, MAXI, "connections one client may make per anvil_rate_time_unit (0: no limit)", Yes),
    p!("smtpd_client_event_limit_exceptions", "${smtpd_client_connection_limit_exceptions:$mynetworks}", List, "clients exempt from the per-client connection count and rate limits (not reported to anvil)", Yes),
    p!("smtpd_client_message_rate_limit", "0", Int, 0, MAXI, "MAIL FROM commands one client may send per anvil_rate_time_unit (0: no limit)", Yes),
    p!("smtpd_client_new_tls_session_rate_limit", "0", Int, 0, MAXI, "new (not resumed) TLS sessions one client may negotiate per anvil_rate_time_unit (0: no limit)", Yes),
    p!("smtpd_client_recipient_rate_limit", "0", Int, 0, MAXI, "RCPT TO commands one client may send per anvil_rate_time_unit (0: no limit)", Yes),
    p!("smtpd_delay_reject", "yes", Bool, "apply client/helo/sender restrictions at RCPT TO (no: at connect, HELO and MAIL FROM)", Yes),
    p!("smtpd_error_sleep_time", "1s", Time('s'), 0, MAXI, "pause before answering an error once soft_error_limit is reached", Yes),
    p!("smtpd_forbid_bare_newline", "normalize", Str, "bare LF / CR handling: normalize, yes (reject), no", Yes),
    p!("smtpd_forbid_unauth_pipelining", "yes", Bool, "disconnect clients that send commands ahead of time where RFC 2920 does not allow it, or before the greeting (554 5.5.0)", Yes),
    p!("smtpd_forbidden_commands", "CONNECT GET POST", List, "commands that mark a client as not speaking SMTP and end the session (header-like lines always do)", Yes),
    p!("smtpd_hard_error_limit", "${stress?{1}:{20}}", Int, 1, MAXI, "errors after which the session is ended", Yes),
    p!("smtpd_helo_required", "no", Bool, "require HELO/EHLO before MAIL FROM", Yes),
    p!("smtpd_junk_command_limit", "${stress?{1}:{100}}", Int, 1, MAXI, "NOOP/VRFY/ETRN/RSET commands allowed before an error counts", Yes),
    p!("smtpd_recipient_limit", "1000", Int, 1, MAXI, "recipients accepted per message", Yes),
    p!("smtpd_soft_error_limit", "10", Int, 1, MAXI, "errors after which each reply is delayed", Yes),
    p!("smtpd_timeout", "${stress?{10}:{300}}s", Time('s'), 1, MAXI, "time to wait for a client command or data", Yes),
    // --- smtpd access policy -------------------------------------------------------------
    p!("smtpd_client_restrictions", "", List, "restrictions on the client (at connect, or at RCPT TO with smtpd_delay_reject)", Yes),
    p!("smtpd_data_restrictions", "", List, "restrictions at DATA (and the first BDAT)", Yes),
    p!("smtpd_helo_restrictions", "", List, "restrictions on the HELO/EHLO name (at HELO, or at RCPT TO with smtpd_delay_reject)", Yes),
    p!("smtpd_recipient_restrictions", "", List, "restrictions at RCPT TO", Yes),
    p!("access_map_defer_code", "450", Int, 400, 499, "reply code of DEFER in access tables", Yes),
    p!("access_map_reject_code", "554", Int, 500, 599, "reply code of REJECT in access tables", Yes),
    p!("invalid_hostname_reject_code", "501", Int, 400, 599, "reply code of reject_invalid_helo_hostname", Yes),
    p!("non_fqdn_reject_code", "504", Int, 400, 599, "reply code of the reject_non_fqdn_* restrictions", Yes),
    p!("relay_domains_reject_code", "554", Int, 400, 599, "reply code of reject_unauth_destination", Yes),
    p!("default_rbl_reply", "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain${rbl_reason?; $rbl_reason}", Str, "reply template of reject_rbl_client and reject_rhsbl_* ($rbl_code, $rbl_class, $rbl_what, $rbl_domain, $rbl_reason…)", Yes),
    p!("defer_code", "450", Int, 400, 499, "reply code of the defer restriction", Yes),
    p!("maps_rbl_reject_code", "554", Int, 400, 599, "reply code of a DNSBL/RHSBL listing", Yes),
    p!("policy_time_limit", "1000s", Time('s'), 0, MAXI, "time limit of a spawn(8) policy server process", Instead("relais does not run spawn(8) policy servers: start the server yourself; smtpd_policy_service_timeout bounds every exchange")),
    p!("rbl_reply_maps", "", List, "reply templates per DNSBL domain (default: default_rbl_reply)", Yes),
    p!("reject_code", "554", Int, 500, 599, "reply code of the reject restriction", Yes),
    p!("reject_tempfail_action", "defer_if_permit", Str, "what a temporary failure of a reject_* test does: defer_if_permit or defer", Yes),
    p!("smtpd_end_of_data_restrictions", "", List, "restrictions after the message content, before it is queued", Yes),
    p!("smtpd_etrn_restrictions", "", List, "restrictions at ETRN", Yes),
    p!("smtpd_policy_service_default_action", "451 4.3.5 Server configuration problem", Str, "access(5) result used when a policy server cannot answer", Yes),
    p!("smtpd_policy_service_max_idle", "300s", Time('s'), 1, MAXI, "close an idle policy server connection after this long", Yes),
    p!("smtpd_policy_service_max_ttl", "1000s", Time('s'), 1, MAXI, "close a policy server connection after this long in use", Yes),
    p!("smtpd_policy_service_policy_context", "", Str, "policy_context attribute sent to policy servers", Yes),
    p!("smtpd_policy_service_request_limit", "0", Int, 0, MAXI, "requests per policy server connection (0: no limit)", Yes),
    p!("smtpd_policy_service_retry_delay", "1s", Time('s'), 0, MAXI, "pause between attempts to reach a policy server", Yes),
    p!("smtpd_policy_service_timeout", "100s", Time('s'), 1, MAXI, "time limit to connect to, write to or read from a policy server", Yes),
    p!("smtpd_policy_service_try_limit", "2", Int, 1, MAXI, "attempts to reach a policy server before the default action", Yes),
    p!("smtpd_reject_footer", "", Str, "text added to every 4xx/5xx reply (\\n: new line, \\c at the start: same line; $client_address, $client_name, $localtime, $service…)", Yes),
    p!("unknown_address_reject_code", "450", Int, 400, 599, "reply code of reject_unknown_sender_domain / _recipient_domain", Yes),
    p!("unknown_address_tempfail_action", "$reject_tempfail_action", Str, "what a temporary DNS failure of reject_unknown_*_domain does", Yes),
    p!("unknown_client_reject_code", "450", Int, 400, 599, "reply code of reject_unknown_client_hostname / _reverse_client_hostname", Yes),
    p!("unknown_helo_hostname_tempfail_action", "$reject_tempfail_action", Str, "what a temporary DNS failure of reject_unknown_helo_hostname does", Yes),
    p!("unknown_hostname_reject_code", "450", Int, 400, 599, "reply code of reject_unknown_helo_hostname", Yes),
    p!("smtpd_restriction_classes", "", List, "names of restriction lists usable as access table results", Yes),
    p!("relay_recipient_maps", "", List, "tables of valid recipients in relay_domains (empty: any recipient there is valid)", Yes),
    p!("unknown_local_recipient_reject_code", "550", Int, 400, 599, "reply code of reject_unlisted_recipient / _sender for users of local domains not in local_recipient_maps", Yes),
    p!("unknown_relay_recipient_reject_code", "550", Int, 400, 599, "reply code of reject_unlisted_recipient / _sender for addresses of relay domains not in relay_recipient_maps", Yes),
    p!("unknown_virtual_alias_reject_code", "550", Int, 400, 599, "reply code of reject_unlisted_recipient / _sender for addresses of virtual alias domains not in virtual_alias_maps", Yes),
    p!("unknown_virtual_mailbox_reject_code", "550", Int, 400, 599, "reply code of reject_unlisted_recipient / _sender for addresses of virtual mailbox domains not in virtual_mailbox_maps", Yes),
    p!("smtpd_reject_unlisted_recipient", "yes", Bool, "refuse recipients of local, virtual alias, virtual mailbox and relay domains that their class's table does not list, after the recipient restrictions", Yes),
    p!("smtpd_reject_unlisted_sender", "no", Bool, "refuse MAIL FROM addresses of local, virtual alias, virtual mailbox and relay domains that their class's table does not list, after the sender restrictions (never the null sender)", Yes),
    p!("smtpd_relay_restrictions", "${{$compatibility_level} <level {1} ? {} : {permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination}}", List, "relay control at RCPT TO", Yes),
    p!("smtpd_sender_restrictions", "", List, "restrictions on the sender (at MAIL FROM, or at RCPT TO with smtpd_delay_reject)", Yes),
    // --- smtpd SASL ----------------------------------------------------------------------
    p!("broken_sasl_auth_clients", "no", Bool, "also advertise AUTH=mech for old clients", Yes),
    p!("smtpd_sasl_auth_enable", "no", Bool, "offer SMTP AUTH", Yes),
    p!("smtpd_sasl_authenticated_header", "no", Bool, "name the SASL user in the Received: header", Yes),
    p!("smtpd_sasl_local_domain", "", Str, "realm appended to SASL user names without one (relais's passwd-file type; Dovecot applies its own auth_default_realm)", Yes),
    p!("smtpd_sasl_path", "smtpd", Str, "dovecot: auth socket (relative to queue_directory, unix:PATH or inet:host:port); passwd-file: the file", Yes),
    p!("smtpd_sasl_response_limit", "12288", Size, 1, MAXI, "longest SASL response line a client may send", Yes),
    p!("smtpd_sasl_security_options", "noanonymous", List, "SASL mechanism restrictions (noplaintext, noanonymous, noactive, nodictionary, forward_secrecy, mutual_auth)", Yes),
    p!("smtpd_sasl_service", "smtp", Str, "service name passed to the SASL server (Dovecot's service=)", Yes),
    p!("smtpd_sasl_tls_security_options", "$smtpd_sasl_security_options", List, "SASL mechanism restrictions under TLS", Yes),
    p!("smtpd_sasl_type", "cyrus", Str, "SASL server implementation: dovecot, or passwd-file (relais-specific: a file of user:{SCHEME}hash lines as doveadm pw writes them); cyrus is not supported", Yes),
    p!("smtpd_sender_login_maps", "", List, "tables giving the SASL login names that own each sender address", Yes),
    // --- smtpd TLS -----------------------------------------------------------------------
    p!("smtpd_tls_auth_only", "no", Bool, "offer AUTH only after STARTTLS", Yes),
    p!("smtpd_tls_cert_file", "", Str, "server certificate chain (PEM)", Yes),
    p!("smtpd_tls_dh1024_param_file", "", Str, "DH parameters (rustls uses ECDHE and needs none)", Instead("rustls offers no finite-field DHE: relais uses ECDHE key exchange only, which is stronger")),
    p!("smtpd_tls_exclude_ciphers", "", List, "ciphers to exclude", NO_CIPHERS),
    p!("smtpd_tls_key_file", "$smtpd_tls_cert_file", Str, "server private key (PEM)", Yes),
    p!("smtpd_tls_loglevel", "0", Int, 0, 4, "TLS logging level of smtpd", Yes),
    p!("smtpd_tls_mandatory_ciphers", "medium", Str, "cipher grade for mandatory TLS", NO_CIPHERS),
    p!("smtpd_tls_mandatory_protocols", "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", List, "TLS versions for mandatory TLS", Instead("relais applies smtpd_tls_protocols to every TLS session, mandatory or not")),
    p!("smtpd_tls_protocols", "!SSLv2, !SSLv3", List, "TLS versions offered", Yes),
    p!("smtpd_tls_received_header", "no", Bool, "record TLS version and cipher in Received:", Yes),
    p!("relais_tls_self_signed", "no", Bool, "relais-specific: create a self-signed certificate for $myhostname at smtpd_tls_cert_file/smtpd_tls_key_file when they do not exist", Yes),
    p!("smtpd_tls_security_level", "", Str, "none, may or encrypt", Yes),
    p!("smtpd_tls_session_cache_database", "", Str, "TLS session cache (TLS 1.3 tickets make it unnecessary)", No),
    p!("smtpd_tls_wrappermode", "no", Bool, "TLS from the first byte (smtps, port 465)", Yes),
    p!("relay_clientcerts", "", List, "client certificate fingerprints allowed to relay by permit_tls_clientcerts", Yes),
    p!("smtpd_tls_ask_ccert", "no", Bool, "ask the client for a certificate", Yes),
    p!("smtpd_tls_CAfile", "", Str, "CA certificates (PEM) that make a client certificate trusted", Yes),
    p!("smtpd_tls_CApath", "", Str, "directory of CA certificates for client certificates", Yes),
    p!("smtpd_tls_chain_files", "", List, "PEM files of private keys each followed by its certificate chain (RSA, ECDSA…); wins over the cert/key pairs", Yes),
    p!("smtpd_tls_eccert_file", "", Str, "server ECDSA certificate chain (PEM), in addition to the RSA one", Yes),
    p!("smtpd_tls_eckey_file", "$smtpd_tls_eccert_file", Str, "server ECDSA private key (PEM)", Yes),
    p!("smtpd_tls_fingerprint_digest", "${{$compatibility_level} <level {3.6} ? {md5} : {sha256}}", Str, "digest of client certificate fingerprints (relais: sha256, sha1, sha512; md5 is not available)", Yes),
    p!("smtpd_tls_req_ccert", "no", Bool, "require a trusted client certificate (only at smtpd_tls_security_level = encrypt, not in wrapper mode; else a warning)", Yes),
    p!("tls_server_sni_maps", "", List, "SNI name to key and certificate chain files", Yes),
    p!("tls_medium_cipherlist", "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH", Str, "OpenSSL cipher list of the medium grade", NO_CIPHERS),
    p!("tls_preempt_cipherlist", "no", Bool, "server's cipher preference wins (rustls always uses its own order)", No),
    p!("tls_random_source", "dev:/dev/urandom", Str, "entropy source (rustls uses the operating system's)", No),
    // --- smtp / lmtp client (src/smtp, src/dns.rs) -----------------------------------------
    p!("fallback_relay", "", List, "obsolete name of smtp_fallback_relay", No),
    p!("relais_dns_servers", "", List, "relais-specific: DNS servers as ip[:port] or [ipv6]:port for the delivery agents and smtpd's DNS restrictions (empty: /etc/resolv.conf)", Yes),
    p!("smtp_connect_timeout", "30s", Time('s'), 0, MAXI, "time limit for a TCP connection to complete", Yes),
    p!("smtp_connection_cache_time_limit", "2s", Time('s'), 0, MAXI, "how long an idle client session stays open for reuse", Yes),
    p!("smtp_connection_reuse_count_limit", "100", Int, 0, MAXI, "transactions one cached session may carry (0: no limit)", Yes),
    p!("smtp_data_done_timeout", "600s", Time('s'), 1, MAXI, "time limit for the reply to the end of the message", Yes),
    p!("smtp_data_init_timeout", "120s", Time('s'), 1, MAXI, "time limit for the reply to DATA", Yes),
    p!("smtp_data_xfer_timeout", "180s", Time('s'), 1, MAXI, "time limit for each write of message content", Yes),
    p!("smtp_fallback_relay", "$fallback_relay", List, "hosts tried when every server of a destination fails temporarily", Yes),
    p!("smtp_helo_name", "$myhostname", Str, "name sent in EHLO, HELO and LHLO", Yes),
    p!("smtp_helo_timeout", "300s", Time('s'), 1, MAXI, "time limit for the greeting and the EHLO/HELO reply", Yes),
    p!("smtp_mail_timeout", "300s", Time('s'), 1, MAXI, "time limit for the reply to MAIL FROM", Yes),
    p!("smtp_mx_address_limit", "5", Int, 0, MAXI, "addresses tried per destination (0: no limit)", Yes),
    p!("smtp_mx_session_limit", "2", Int, 0, MAXI, "sessions established per destination and attempt (0: no limit)", Yes),
    p!("smtp_quit_timeout", "300s", Time('s'), 1, MAXI, "time limit for the reply to QUIT", Yes),
    p!("smtp_rcpt_timeout", "300s", Time('s'), 1, MAXI, "time limit for the reply to RCPT TO", Yes),
    p!("smtp_rset_timeout", "20s", Time('s'), 1, MAXI, "time limit for the reply to RSET", Yes),
    // --- smtp / lmtp client TLS ----------------------------------------------------------
    p!("lmtp_enforce_peername", "yes", Bool, "obsolete: with lmtp_enforce_tls, verify the server name", Yes),
    p!("lmtp_enforce_tls", "no", Bool, "obsolete: TLS required (encrypt, or verify with lmtp_enforce_peername)", Yes),
    p!("lmtp_tls_CAfile", "", Str, "CA certificates (PEM) trusted by the lmtp client", Yes),
    p!("lmtp_tls_CApath", "", Str, "directory of CA certificates trusted by the lmtp client", Yes),
    p!("lmtp_tls_cert_file", "", Str, "lmtp client certificate chain (PEM)", Yes),
    p!("lmtp_tls_key_file", "$lmtp_tls_cert_file", Str, "lmtp client private key (PEM)", Yes),
    p!("lmtp_tls_loglevel", "0", Int, 0, 4, "TLS logging level of the lmtp client", Yes),
    p!("lmtp_tls_mandatory_protocols", "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", List, "TLS versions for mandatory TLS (lmtp)", Yes),
    p!("lmtp_tls_note_starttls_offer", "no", Bool, "log LMTP servers that offer STARTTLS", Yes),
    p!("lmtp_tls_policy_maps", "", List, "per-destination TLS policy (lmtp)", Yes),
    p!("lmtp_tls_protocols", "!SSLv2, !SSLv3", List, "TLS versions used (lmtp)", Yes),
    p!("lmtp_tls_secure_cert_match", "nexthop", List, "names a certificate must match at level secure (lmtp)", Yes),
    p!("lmtp_tls_security_level", "", Str, "none, may, encrypt, verify, secure (lmtp)", Yes),
    p!("lmtp_tls_servername", "", Str, "SNI name sent by the lmtp client: hostname, nexthop or a name (empty: none)", Yes),
    p!("lmtp_tls_session_cache_database", "", Str, "lmtp client TLS session cache", Instead("relais keeps client TLS sessions in rustls's in-memory resumption cache: the database file is not used and sessions are lost at restart")),
    p!("lmtp_tls_session_cache_timeout", "3600s", Time('s'), 0, MAXI, "lifetime of cached lmtp client TLS sessions (rustls keeps them as long as the server's ticket allows)", Yes),
    p!("lmtp_tls_verify_cert_match", "hostname", List, "names a certificate must match at level verify (lmtp)", Yes),
    p!("lmtp_use_tls", "no", Bool, "obsolete: opportunistic TLS (may)", Yes),
    p!("smtp_enforce_peername", "yes", Bool, "obsolete: with smtp_enforce_tls, verify the server name", Yes),
    p!("smtp_enforce_tls", "no", Bool, "obsolete: TLS required (encrypt, or verify with smtp_enforce_peername)", Yes),
    p!("smtp_sasl_auth_enable", "no", Bool, "authenticate to servers that have credentials in smtp_sasl_password_maps", Yes),
    p!("smtp_sasl_mechanism_filter", "", List, "SASL mechanisms the client may use (empty: any it knows, PLAIN and LOGIN)", Yes),
    p!("smtp_sasl_password_maps", "", List, "username:password by sender, next-hop, host or domain", Yes),
    p!("smtp_sasl_security_options", "noplaintext, noanonymous", List, "SASL mechanism restrictions of the client (noplaintext rules out PLAIN and LOGIN)", Yes),
    p!("smtp_sasl_tls_security_options", "$smtp_sasl_security_options", List, "SASL mechanism restrictions of the client under TLS", Yes),
    p!("smtp_sender_dependent_authentication", "no", Bool, "look SASL credentials up by sender first", Yes),
    p!("smtp_tls_CAfile", "", Str, "CA certificates (PEM) trusted by the smtp client", Yes),
    p!("smtp_tls_CApath", "", Str, "directory of CA certificates trusted by the smtp client", Yes),
    p!("smtp_tls_cert_file", "", Str, "smtp client certificate chain (PEM)", Yes),
    p!("smtp_tls_exclude_ciphers", "", List, "ciphers to exclude", NO_CIPHERS),
    p!("smtp_tls_key_file", "$smtp_tls_cert_file", Str, "smtp client private key (PEM)", Yes),
    p!("smtp_tls_loglevel", "0", Int, 0, 4, "TLS logging level of the smtp client", Yes),
    p!("smtp_tls_mandatory_ciphers", "medium", Str, "cipher grade for mandatory TLS", NO_CIPHERS),
    p!("smtp_tls_mandatory_protocols", "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", List, "TLS versions for mandatory TLS (rustls: TLSv1.2 and TLSv1.3 only)", Yes),
    p!("smtp_tls_note_starttls_offer", "no", Bool, "log hosts that offer STARTTLS", Yes),
    p!("smtp_tls_policy_maps", "", List, "per-destination TLS policy: level [match=…] [protocols=…] [servername=…]", Yes),
    p!("smtp_tls_protocols", "!SSLv2, !SSLv3", List, "TLS versions used (rustls: TLSv1.2 and TLSv1.3 only)", Yes),
    p!("smtp_tls_secure_cert_match", "nexthop, dot-nexthop", List, "names a certificate must match at level secure", Yes),
    p!("smtp_tls_security_level", "", Str, "none, may, encrypt, verify, secure (dane: may; dane-only, fingerprint: secure)", Yes),
    p!("smtp_tls_servername", "", Str, "SNI name sent: hostname, nexthop or a name (empty: none)", Yes),
    p!("smtp_tls_session_cache_database", "", Str, "client TLS session cache", Instead("relais keeps client TLS sessions in rustls's in-memory resumption cache: the database file is not used and sessions are lost at restart")),
    p!("smtp_tls_session_cache_timeout", "3600s", Time('s'), 0, MAXI, "lifetime of cached client TLS sessions (rustls keeps them as long as the server's ticket allows)", Yes),
    p!("smtp_tls_verify_cert_match", "hostname", List, "names a certificate must match at level verify", Yes),
    p!("smtp_use_tls", "no", Bool, "obsolete: opportunistic TLS (may)", Yes),
    // --- cleanup -------------------------------------------------------------------------
    p!("always_add_missing_headers", "no", Bool, "add missing From:/To:/Date:/Message-ID: to mail from remote clients too", Yes),
    p!("body_checks", "", List, "tables applied to each body line", Yes),
    p!("header_checks", "", List, "tables applied to each primary header", Yes),
    p!("mime_header_checks", "$header_checks", List, "tables applied to MIME headers, in the primary header and in every MIME part", Yes),
    p!("mime_nesting_limit", "100", Int, 1, MAXI, "deepest multipart nesting cleanup follows for MIME part header checks", Yes),
    p!("milter_default_action", "tempfail", Str, "what to do when a milter is unavailable", NO_MILTER),
    p!("milter_macro_daemon_name", "$myhostname", Str, "{daemon_name} macro sent to milters", NO_MILTER),
    p!("milter_protocol", "6", Str, "milter protocol version", NO_MILTER),
    p!("non_smtpd_milters", "", List, "milters for locally submitted mail", NO_MILTER),
    p!("smtpd_milters", "", List, "milters for mail received over SMTP", NO_MILTER),
    // --- queue / qmgr --------------------------------------------------------------------
    p!("2bounce_notice_recipient", "postmaster", Str, "recipient of double bounces (a bounce that could not be delivered)", Yes),
    p!("bounce_notice_recipient", "postmaster", Str, "recipient of postmaster copies of bounces (notify_classes = bounce)", Yes),
    p!("bounce_size_limit", "50000", Size, 1, MAXI, "largest original message returned in full in a notice", Yes),
    p!("double_bounce_sender", "double-bounce", Str, "sender of postmaster notices; mail to it is discarded, so they never loop", Yes),
    p!("notify_classes", "resource, software", List, "problems reported to the postmaster (relais acts on bounce and 2bounce)", Yes),
    p!("default_destination_concurrency_failed_cohort_limit", "1", Int, 0, MAXI, "failed pseudo-cohorts after which a destination is declared dead (0: never)", Yes),
    p!("default_destination_concurrency_limit", "20", Int, 1, MAXI, "parallel deliveries to one destination", Yes),
    p!("default_destination_concurrency_negative_feedback", "1/concurrency", Str, "window decrement per failed delivery (1/concurrency or a number)", Yes),
    p!("default_destination_concurrency_positive_feedback", "1/concurrency", Str, "window increment per successful delivery (1/concurrency or a number)", Yes),
    p!("default_destination_recipient_limit", "50", Int, 1, MAXI, "recipients per delivery to one destination", Yes),
    p!("initial_destination_concurrency", "5", Int, 1, MAXI, "parallel deliveries to a destination before slow start opens up", Yes),
    p!("bounce_queue_lifetime", "5d", Time('d'), 0, MAXI, "how long a bounce notice is retried", Yes),
    p!("delay_warning_time", "0h", Time('h'), 0, MAXI, "when to warn the sender of a delay (0: never)", Yes),
    p!("maximal_backoff_time", "4000s", Time('s'), 1, MAXI, "longest wait between delivery attempts", Yes),
    p!("maximal_queue_lifetime", "5d", Time('d'), 0, MAXI, "how long a message is retried before it bounces", Yes),
    p!("minimal_backoff_time", "300s", Time('s'), 1, MAXI, "shortest wait between delivery attempts", Yes),
    p!("qmgr_message_active_limit", "20000", Int, 1, MAXI, "messages in the active queue at once", Yes),
    p!("queue_run_delay", "300s", Time('s'), 1, MAXI, "how often the deferred queue is scanned", Yes),
    // --- delivery (routing, local, virtual) ----------------------------------------------
    p!("alias_database", "hash:/etc/aliases", List, "alias databases newaliases rebuilds (relais reads aliases(5) text directly: no rebuild needed)", No),
    p!("alias_maps", "hash:/etc/aliases, nis:mail.aliases", List, "alias tables for local recipients (file types are read as aliases(5) text; nis: is not supported)", Yes),
    p!("allow_mail_to_commands", "alias, forward", List, "where |command destinations are allowed (alias, forward, include; refused when relais runs as root)", Yes),
    p!("allow_mail_to_files", "alias, forward", List, "where /file destinations are allowed (alias, forward, include; refused when relais runs as root)", Yes),
    p!("command_time_limit", "1000s", Time('s'), 1, MAXI, "time limit for delivery to an alias |command", Yes),
    p!("default_transport", "smtp", Str, "transport for mail not otherwise routed", Yes),
    p!("default_privs", "nobody", Str, "the user alias commands run as when relais runs as root", Yes),
    p!("fallback_transport", "", Str, "local(8): transport for users that are neither aliases nor known users", Yes),
    p!("home_mailbox", "", Str, "mailbox path relative to a local user's home (ending in / means Maildir)", Yes),
    p!("local_mailbox_base", "", Str, "relais-specific: local users' homes are $local_mailbox_base/user instead of the password file's (for an unprivileged relais)", Yes),
    p!("local_recipient_maps", "proxy:unix:passwd.byname $alias_maps", List, "tables of known local users (unix:passwd.byname is the system password database)", Yes),
    p!("local_transport", "local:$myhostname", Str, "transport for mydestination", Yes),
    p!("luser_relay", "", Str, "local(8): address that receives mail for unknown local users", Yes),
    p!("mail_spool_directory", "/var/mail", Str, "directory of mbox files for local users when home_mailbox is empty", Yes),
    p!("always_bcc", "", Str, "cleanup(8): address that receives a blind copy of every message received (added as with NOTIFY=NEVER)", Yes),
    p!("sender_bcc_maps", "", List, "cleanup(8): blind copies by envelope sender (user@domain, user, @domain)", Yes),
    p!("recipient_bcc_maps", "", List, "cleanup(8): blind copies by envelope recipient (user@domain, user, @domain)", Yes),
    p!("canonical_maps", "", List, "cleanup(8): address rewriting of envelope and headers (relais has no canonical mapping yet)", No),
    p!("sender_canonical_maps", "", List, "cleanup(8): rewriting of sender addresses (relais has no canonical mapping yet)", No),
    p!("recipient_canonical_maps", "", List, "cleanup(8): rewriting of recipient addresses (relais has no canonical mapping yet)", No),
    p!("canonical_classes", "envelope_sender, envelope_recipient, header_sender, header_recipient", List, "what canonical_maps rewrites", No),
    p!("sender_canonical_classes", "envelope_sender, header_sender", List, "what sender_canonical_maps rewrites", No),
    p!("recipient_canonical_classes", "envelope_recipient, header_recipient", List, "what recipient_canonical_maps rewrites", No),
    p!("masquerade_domains", "", List, "cleanup(8): domains whose subdomains are stripped from addresses (not implemented by relais)", No),
    p!("masquerade_classes", "envelope_sender, header_sender, header_recipient", List, "what masquerade_domains rewrites", No),
    p!("masquerade_exceptions", "", List, "users whose addresses are not masqueraded", No),
    p!("local_header_rewrite_clients", "permit_inet_interfaces", List, "clients whose message headers are rewritten (relais rewrites no headers)", No),
    p!("remote_header_rewrite_domain", "", Str, "domain appended to incomplete header addresses from remote clients (relais rewrites no headers)", No),
    p!("smtp_generic_maps", "", List, "smtp(8): address rewriting of outgoing mail (not implemented by relais)", No),
    p!("relocated_maps", "", List, "trivial-rewrite: users who moved; their mail bounces (and smtpd refuses it) with 5.1.6 \"User has moved to\" the table's value", Yes),
    p!("sender_dependent_relayhost_maps", "", List, "relayhost by envelope sender (not implemented by relais: relayhost applies)", No),
    p!("mailbox_command", "", Str, "local(8): command that delivers to a user's mailbox (sh -c, the message on input, as the user, HOME, USER, EXTENSION, … set); not subjected to $name expansion", Yes),
    p!("forward_path", "$home/.forward${recipient_delimiter}${extension}, $home/.forward", Str, "local(8): a user's .forward files, the first that exists wins ($home, $user, $local, $domain, $recipient, $extension, $recipient_delimiter, $shell; a path naming an empty value is skipped)", Yes),
    p!("mailbox_size_limit", "51200000", Size, 0, MAXI, "largest mailbox file (0: no limit)", No),
    p!("mailbox_transport", "", Str, "local(8): transport for mailbox delivery of every known local user", Yes),
    p!("owner_request_special", "yes", Bool, "owner-name aliases become the envelope sender of name's expansion", Yes),
    p!("relay_transport", "relay", Str, "transport for relay_domains", Yes),
    p!("transport_maps", "", List, "tables mapping recipients to transport:nexthop", Yes),
    p!("parent_domain_matches_subdomains", "${{$compatibility_level} <level {3.0} ? {debug_peer_list,fast_flush_domains,mynetworks,permit_mx_backup_networks,qmqpd_authorized_clients,relay_domains,smtpd_access_maps} : {}}", List, "features where a domain name also matches its subdomains", Yes),
    p!("virtual_alias_expansion_limit", "1000", Int, 1, MAXI, "most addresses one virtual alias expansion may produce", Yes),
    p!("virtual_alias_recursion_limit", "1000", Int, 1, MAXI, "deepest nesting of virtual alias expansion", Yes),
    p!("virtual_alias_domains", "$virtual_alias_maps", List, "domains whose addresses are all aliases", Yes),
    p!("virtual_alias_maps", "$virtual_maps", List, "tables rewriting recipients to other addresses", Yes),
    p!("virtual_gid_maps", "", List, "group ID of virtual mailboxes", No),
    p!("virtual_mailbox_base", "", Str, "prefix of every virtual mailbox path", Yes),
    p!("virtual_mailbox_domains", "$virtual_mailbox_maps", List, "domains with virtual mailboxes", Yes),
    p!("virtual_mailbox_maps", "", List, "tables giving each virtual recipient's mailbox path", Yes),
    p!("virtual_maps", "", List, "obsolete name of virtual_alias_maps", No),
    p!("virtual_minimum_uid", "100", Int, 1, MAXI, "smallest uid a virtual mailbox may be owned by", No),
    p!("virtual_transport", "virtual", Str, "transport for virtual_mailbox_domains", Yes),
    p!("virtual_uid_maps", "", List, "user ID of virtual mailboxes", No),
];

/// The table row for `name`, if relais knows it.
pub fn lookup(name: &str) -> Option<&'static Param> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static INDEX: OnceLock<HashMap<&'static str, &'static Param>> = OnceLock::new();
    INDEX
        .get_or_init(|| PARAMS.iter().map(|p| (p.name, p)).collect())
        .get(name)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_documented_once() {
        let mut seen = std::collections::HashSet::new();
        for p in PARAMS {
            assert!(seen.insert(p.name), "{} twice in the table", p.name);
            assert!(p.doc.len() > 10, "{} has no real doc", p.name);
            assert!(p.min <= p.max, "{} has inverted bounds", p.name);
        }
    }
}
