//! NAME
//!   local - deliver to local users and aliases
//!
//! SUMMARY
//!   The delivery agent for mydestination (and this machine's own [address] literals):
//!   master.cf `local unix - n n - - local`.
//!
//! DESCRIPTION
//!   For each recipient user+ext@domain, in Postfix's order:
//!   1. A message that already carries `Delivered-To: <recipient>` bounces (5.4.6, mail
//!      forwarding loop).
//!   2. alias_maps is searched for `user+ext`, then `user`. Each member of the value is an
//!      address (local ones are expanded again in place, bounded; others are forwarded as a
//!      new message with `Delivered-To: <alias>` added, logged `forwarded as ID`),
//!      `:include:/file` (members read from the file), `|command` or `/file` (allowed by
//!      allow_mail_to_commands / allow_mail_to_files for the class `alias` or `include`),
//!      or `\user` (the user's mailbox, no further alias lookup). When `owner-alias` exists
//!      (owner_request_special), the forwarded message's envelope sender becomes
//!      owner-alias@$myorigin, so delivery problems of list members go to the owner; a null
//!      sender stays null. An alias naming itself delivers to the user's own mailbox.
//!   3. Otherwise the user must be in local_recipient_maps (`unix:passwd.byname` is the
//!      system password database through getpwnam; the aliases part was step 2); when the
//!      list is empty, the password database decides. A known user's .forward comes first:
//!      the first file of forward_path that exists (`$home/.forward+ext` for an address with
//!      an extension, then `$home/.forward`) is expanded as an alias value of class
//!      `forward` (`\user` and a reference to the user itself mean the mailbox; commands
//!      run as the user, in the home directory). Without one, `\user` from an alias also
//!      skipping it: mailbox_transport if set, else mailbox_command if set (`/bin/sh -c`,
//!      the message on its input, HOME, USER, LOGNAME, LOCAL, EXTENSION, DOMAIN, RECIPIENT,
//!      SENDER in its environment), else their mailbox: home_mailbox under the home
//!      directory (a path ending in `/`
//!      is a Maildir, written with the virtual agent's Maildir writer; otherwise an mbox file),
//!      or, with home_mailbox empty, the mbox file mail_spool_directory/user.
//!      relais-specific: with local_mailbox_base set, a user's "home" is
//!      $local_mailbox_base/user instead of the password file's, so an unprivileged relais
//!      can keep local users' Maildirs in a directory of its own (users then come from a
//!      table in local_recipient_maps, e.g. `texthash:/etc/relais/users`).
//!   4. Unknown users go to fallback_transport if set, else to luser_relay ($user, $local,
//!      $extension, $domain, $recipient expanded) if set, else bounce
//!      `unknown user: "user"` (5.1.1).
//!
//!   Every mailbox or file written gets `Return-Path:` and `Delivered-To:`. One recipient's
//!   outcome combines its destinations: any deferral defers it (the whole recipient is tried
//!   again), else any bounce bounces it, else sent. As in Postfix, each destination is
//!   logged on its own line under the address it was expanded to, with the queue's recipient
//!   as orig_to, and the notice names each failing member (qmgr records the first's status
//!   for the recipient): `<member> (expanded from <recipient>): reason`, `Final-Recipient:
//!   rfc822; member`.
//!
//! QUEUES
//!   Forwarded mail is committed to incoming (durably, before the recipient is recorded as
//!   sent). Otherwise none: qmgr records the outcomes.
//!
//! MESSAGES
//!   Sends `delivery::agent::Deliver` to the mailbox_transport / fallback_transport agent.
//!   Logs `ID: to=<member>, orig_to=<recipient>, relay=local, delay=…, dsn=…, status=…
//!   (delivered to maildir | forwarded as ID | unknown user: "user" | …)` per destination.
//!
//! SECURITY
//!   Mailbox paths are built from the administrator's settings and a user name that may not
//!   contain `/` or start with `.`. `/file` destinations must be absolute; symbolic links are
//!   not followed. Commands and files run with relais's own rights; when relais runs as root,
//!   mailboxes of system users are given to the user (chown), alias commands run as
//!   default_privs (never root), and `/file` destinations are refused (Postfix would write
//!   them as the alias table's owner). A .forward file counts only when it is a regular
//!   file, not a symbolic link, owned by its user (for local_mailbox_base users: by relais
//!   or root) and not writable by others; an extension with `/` or `..` is not put into its
//!   path. relais reads it with its own rights, where Postfix uses the user's: hence the
//!   owner rule, stricter than Postfix's (which also accepts root's). A user's commands
//!   run as the user when relais runs as root (never as root: root's run as default_privs).
//!
//! CONFIGURATION PARAMETERS
//!   alias_maps (hash:/etc/aliases, nis:mail.aliases; nis: is not supported and skipped with a
//!   warning), local_recipient_maps (proxy:unix:passwd.byname $alias_maps), home_mailbox (),
//!   mail_spool_directory (/var/mail), local_mailbox_base () relais-specific,
//!   mailbox_transport (), mailbox_command (), forward_path
//!   ($home/.forward${recipient_delimiter}${extension}, $home/.forward),
//!   fallback_transport (), luser_relay (), recipient_delimiter (),
//!   allow_mail_to_commands (alias, forward), allow_mail_to_files (alias, forward),
//!   command_time_limit (1000s), owner_request_special (yes), default_privs (nobody), myorigin

pub mod aliases;
pub mod command;
pub mod mbox;
pub mod passwd;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::delivery::agent::{AgentTable, Deliver};
use crate::delivery::{log_outcome, BoxFuture, Failed, Job, JobRcpt, Outcome, Transport};
use crate::envelope::{Envelope, Origin, Recipient};
use crate::queue::{Queue, QueueName, Record};
use crate::r#virtual::maildir;
use crate::trivial_rewrite::{Class, Rewriter};
use aliases::Sources;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("table lookup: {0}")]
    Table(String),
}

/// Deepest nesting of local alias expansion (aliases naming local aliases, :include:).
const MAX_DEPTH: usize = 20;
/// Most destinations one recipient may expand into.
const MAX_DESTINATIONS: usize = 1000;

/// The local agent's view of main.cf.
#[derive(Debug)]
pub struct Settings {
    pub aliases: Sources,
    pub recipients: Sources,
    pub home_mailbox: String,
    pub mail_spool_directory: PathBuf,
    pub mailbox_base: Option<PathBuf>,
    pub mailbox_transport: Option<(String, String)>,
    pub fallback_transport: Option<(String, String)>,
    pub luser_relay: String,
    /// forward_path's templates, unexpanded ($home, $user, … are filled in per recipient).
    pub forward_path: Vec<String>,
    /// mailbox_command as written: not subjected to `$name` expansion, as in Postfix, so
    /// that it can use shell variables.
    pub mailbox_command: String,
    pub allow_commands: Vec<String>,
    pub allow_files: Vec<String>,
    pub command_time_limit: Duration,
    /// The user alias commands run as when relais runs as root.
    pub default_privs: String,
    pub owner_request_special: bool,
    pub hostname: String,
    /// Our own master.cf service name, to recognise addresses that come back to us.
    pub service: String,
}

fn transport_opt(v: String) -> Option<(String, String)> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    Some(match v.split_once(':') {
        Some((t, n)) => (t.to_string(), n.to_string()),
        None => (v.to_string(), String::new()),
    })
}

/// luser_relay with main.cf's `$name`s expanded but the per-recipient ones ($user,
/// $local, $extension, $domain, $recipient) kept for delivery time.
fn luser_relay(cfg: &Config) -> String {
    let Some(raw) = cfg.raw("luser_relay") else {
        return String::new();
    };
    const VARS: [&str; 5] = ["recipient", "extension", "domain", "local", "user"];
    let mut t = raw;
    for (i, v) in VARS.iter().enumerate() {
        let mark = format!("\u{1}{i}\u{1}");
        t = t
            .replace(&format!("${{{v}}}"), &mark)
            .replace(&format!("${v}"), &mark);
    }
    let mut t = cfg.expand(&t).unwrap_or(t);
    for (i, v) in VARS.iter().enumerate() {
        t = t.replace(&format!("\u{1}{i}\u{1}"), &format!("${v}"));
    }
    t
}

impl Settings {
    /// Reads main.cf; tables that cannot be opened are left out with a warning.
    pub fn from_config(cfg: &Config, service: &str) -> Settings {
        let alias_list = cfg.get_list("alias_maps");
        let (aliases, w1) = Sources::open(&alias_list, true);
        // The alias part of local_recipient_maps ($alias_maps) was searched in step 2; only
        // the user part decides whether a name that is no alias is a known user (so that an
        // alias loop ends in "unknown user", as with Postfix's getpwnam).
        let users: Vec<String> = cfg
            .get_list("local_recipient_maps")
            .into_iter()
            .filter(|s| !alias_list.contains(s))
            .collect();
        let (recipients, w2) = Sources::open(&users, false);
        for w in w1.iter().chain(&w2) {
            tracing::warn!("local: {w}");
        }
        let base = cfg.get("local_mailbox_base");
        Settings {
            forward_path: cfg
                .raw("forward_path")
                .unwrap_or_default()
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            mailbox_command: cfg
                .raw("mailbox_command")
                .unwrap_or_default()
                .trim()
                .to_string(),
            aliases,
            recipients,
            home_mailbox: cfg.get("home_mailbox"),
            mail_spool_directory: PathBuf::from(cfg.get("mail_spool_directory")),
            mailbox_base: (!base.trim().is_empty()).then(|| PathBuf::from(base.trim())),
            mailbox_transport: transport_opt(cfg.get("mailbox_transport")),
            fallback_transport: transport_opt(cfg.get("fallback_transport")),
            luser_relay: luser_relay(cfg),
            allow_commands: cfg.get_list("allow_mail_to_commands"),
            allow_files: cfg.get_list("allow_mail_to_files"),
            command_time_limit: cfg
                .get_time("command_time_limit")
                .max(Duration::from_secs(1)),
            owner_request_special: cfg.get_bool("owner_request_special"),
            default_privs: cfg.get("default_privs"),
            hostname: cfg.get("myhostname"),
            service: service.to_string(),
        }
    }
}

/// One place a recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// `owner`: the user's (uid, gid), given the mailbox when relais runs as root.
    Maildir {
        path: PathBuf,
        rcpt: String,
        owner: Option<(u32, u32)>,
    },
    Mbox {
        path: PathBuf,
        rcpt: String,
        owner: Option<(u32, u32)>,
    },
    File {
        path: String,
        rcpt: String,
    },
    /// Runs with `privs`' rights and home.
    Command {
        cmd: String,
        rcpt: String,
        user: String,
        ext: String,
        domain: String,
        privs: Privs,
    },
    /// A new message to `addr`, from `owner` (or the original sender).
    Forward {
        addr: String,
        owner: Option<String>,
    },
    Pass {
        transport: String,
        nexthop: String,
        rcpt: String,
    },
    /// `rcpt`: the address that failed (an alias member, or the recipient itself).
    Fail {
        rcpt: String,
        outcome: Outcome,
    },
}

impl Action {
    /// The address this destination is logged under (`to=<…>`), as Postfix's local(8) logs
    /// each alias member with the expanded address and the original as `orig_to`.
    fn rcpt(&self) -> &str {
        match self {
            Action::Maildir { rcpt, .. }
            | Action::Mbox { rcpt, .. }
            | Action::File { rcpt, .. }
            | Action::Command { rcpt, .. }
            | Action::Pass { rcpt, .. }
            | Action::Fail { rcpt, .. } => rcpt,
            Action::Forward { addr, .. } => addr,
        }
    }
}

/// Whose rights and home directory a command destination gets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Privs {
    home: String,
    /// The user's (uid, gid), used when relais runs as root; None (alias tables, include
    /// files) or uid 0 means default_privs, as Postfix never runs a command as root.
    owner: Option<(u32, u32)>,
}

impl Privs {
    fn alias() -> Privs {
        Privs {
            home: "/".to_string(),
            owner: None,
        }
    }
}

/// Fills forward_path's per-recipient names into `template`: `$name`, `${name}`,
/// `${name?text}` (text when the value is not empty) and `${name:text}` (text when it is).
/// None when a plain reference names an empty or unknown value: that path is skipped, as
/// Postfix skips `$home/.forward${recipient_delimiter}${extension}` for an address
/// without an extension.
fn expand_local(template: &str, attrs: &[(&str, &str)]) -> Option<String> {
    let value = |name: &str| {
        attrs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .unwrap_or("")
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            match inner.find(['?', ':']) {
                Some(j) => {
                    let v = value(&inner[..j]);
                    let text = &inner[j + 1..];
                    // `?`: shown when set; `:`: shown when empty.
                    let show = (inner.as_bytes()[j] == b'?') != v.is_empty();
                    if show {
                        out.push_str(&expand_local(text, attrs)?);
                    }
                }
                None => {
                    let v = value(inner);
                    if v.is_empty() {
                        return None;
                    }
                    out.push_str(v);
                }
            }
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let v = value(&rest[..n]);
            if n == 0 || v.is_empty() {
                return None;
            }
            out.push_str(v);
            rest = &rest[n..];
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Reads a .forward file for a user whose uid is `uid` (None: a local_mailbox_base user,
/// whose files are relais's own). Only a regular file owned by that user (or, for relais's
/// own users, by relais or root) counts, opened without following a symbolic link: relais
/// may read it as root, where Postfix reads it with the user's rights. Ok(None): no usable
/// file at this path.
fn read_forward(path: &str, uid: Option<u32>) -> Result<Option<String>, Outcome> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
            ) =>
        {
            if e.raw_os_error() == Some(libc::ELOOP) {
                tracing::warn!("local: {path}: a symbolic link; ignored");
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(Outcome::deferred(
                "4.3.0",
                format!("cannot open {path}: {}", crate::table::strerror(&e)),
            ))
        }
    };
    let m = f.metadata().map_err(|e| {
        Outcome::deferred(
            "4.3.0",
            format!("cannot stat {path}: {}", crate::table::strerror(&e)),
        )
    })?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let owner_ok = match uid {
        Some(u) => m.uid() == u,
        None => m.uid() == me || m.uid() == 0,
    };
    if !m.file_type().is_file() || !owner_ok || m.mode() & 0o002 != 0 {
        tracing::warn!(
            "local: {path}: not a regular file owned by its user and closed to others (owner uid {}); ignored",
            m.uid()
        );
        return Ok(None);
    }
    let mut text = Vec::new();
    f.take(aliases::MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| {
            Outcome::deferred(
                "4.3.0",
                format!("cannot read {path}: {}", crate::table::strerror(&e)),
            )
        })?;
    if text.len() as u64 > aliases::MAX_FILE {
        return Err(Outcome::bounced(
            "5.3.5",
            format!("{path} is larger than {} bytes", aliases::MAX_FILE),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// Alias expansion and user lookup for one recipient: pure decisions, blocking lookups.
struct Expander<'a> {
    s: &'a Settings,
    rw: &'a Rewriter,
    content: &'a [u8],
    seen: HashSet<String>,
    out: Vec<Action>,
}

/// Whether the `class` (alias, include) is in an allow_mail_to_* list.
fn allowed(list: &[String], class: &str) -> bool {
    list.iter().any(|c| c.eq_ignore_ascii_case(class))
}

impl Expander<'_> {
    fn push(&mut self, a: Action) {
        if self.out.len() < MAX_DESTINATIONS {
            self.out.push(a);
        } else if !self.out.iter().any(|a| matches!(a, Action::Fail { .. })) {
            self.out.push(Action::Fail {
                rcpt: a.rcpt().to_string(),
                outcome: Outcome::bounced(
                    "5.3.0",
                    format!("alias expansion produced more than {MAX_DESTINATIONS} destinations"),
                ),
            });
        }
    }

    fn fail(&mut self, rcpt: &str, outcome: Outcome) {
        self.push(Action::Fail {
            rcpt: rcpt.to_string(),
            outcome,
        });
    }

    fn lookup_alias(&self, key: &str) -> Result<Option<String>, LocalError> {
        if self.s.aliases.is_empty() {
            return Ok(None);
        }
        self.s.aliases.lookup(key)
    }

    /// Delivers `addr` (a local address) at nesting `depth`.
    fn recipient(&mut self, addr: &str, depth: usize, no_alias: bool) {
        if depth > MAX_DEPTH {
            self.fail(
                addr,
                Outcome::bounced(
                    "5.4.6",
                    format!(
                        "alias expansion of {addr} is nested too deeply (mail forwarding loop?)"
                    ),
                ),
            );
            return;
        }
        if maildir::is_loop(self.content, addr) {
            self.fail(
                addr,
                Outcome::bounced("5.4.6", format!("mail forwarding loop for {addr}")),
            );
            return;
        }
        let (local, domain) = addr.rsplit_once('@').unwrap_or((addr, ""));
        let local = local.to_lowercase();
        let (base, ext) = self.rw.split_extension(&local);
        let (base, ext) = (base.to_string(), ext.unwrap_or("").to_string());
        if !no_alias && !self.seen.contains(&base) {
            let mut found = None;
            let keys: Vec<&str> = if ext.is_empty() {
                vec![&local]
            } else {
                vec![&local, &base]
            };
            for k in keys {
                match self.lookup_alias(k) {
                    Ok(Some(v)) => {
                        found = Some((k.to_string(), v));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.fail(
                            addr,
                            Outcome::deferred("4.3.0", format!("alias lookup of {k}: {e}")),
                        );
                        return;
                    }
                }
            }
            if let Some((name, value)) = found {
                self.seen.insert(name.clone());
                self.seen.insert(base.clone());
                let owner = if self.s.owner_request_special {
                    match self.lookup_alias(&format!("owner-{name}")) {
                        Ok(Some(_)) => Some(self.rw.canonicalize(&format!("owner-{name}"))),
                        _ => None,
                    }
                } else {
                    None
                };
                // propagate_unmatched_extensions: an extension the alias did not match
                // travels on to its address members (team+x → bob+x).
                let prop = if name == base {
                    ext.clone()
                } else {
                    String::new()
                };
                self.members(
                    &aliases::members(&value),
                    addr,
                    "alias",
                    depth,
                    &owner,
                    &prop,
                    &Privs::alias(),
                );
                return;
            }
        }
        // `\user` (no_alias) skips the user's .forward too, as in Postfix.
        self.user(addr, &base, &ext, domain, depth, no_alias);
    }

    /// Expands alias members; `class` is `alias`, `forward` or `include` for the
    /// allow_mail_to_* lists; commands get `privs`.
    #[allow(clippy::too_many_arguments)]
    fn members(
        &mut self,
        list: &[String],
        alias: &str,
        class: &str,
        depth: usize,
        owner: &Option<String>,
        ext: &str,
        privs: &Privs,
    ) {
        for m in list {
            if let Some(cmd) = m.strip_prefix('|') {
                if allowed(&self.s.allow_commands, class) {
                    let (local, domain) = alias.rsplit_once('@').unwrap_or((alias, ""));
                    self.push(Action::Command {
                        cmd: cmd.trim().to_string(),
                        rcpt: alias.to_string(),
                        user: local.to_string(),
                        ext: ext
                            .trim_start_matches(|c| self.rw.delimiters().contains(c))
                            .to_string(),
                        domain: domain.to_string(),
                        privs: privs.clone(),
                    });
                } else {
                    self.fail(alias, Outcome::bounced("5.7.1", format!("mail to command is restricted (allow_mail_to_commands does not list {class}): {m}")));
                }
            } else if let Some(path) = m.strip_prefix(":include:") {
                self.include(path.trim(), alias, depth, owner, ext, privs);
            } else if m.starts_with('/') {
                if allowed(&self.s.allow_files, class) {
                    self.push(Action::File {
                        path: m.clone(),
                        rcpt: alias.to_string(),
                    });
                } else {
                    self.fail(alias, Outcome::bounced("5.7.1", format!("mail to file is restricted (allow_mail_to_files does not list {class}): {m}")));
                }
            } else if let Some(user) = m.strip_prefix('\\') {
                let a = self.rw.canonicalize(user);
                self.recipient(&a, depth + 1, true);
            } else {
                let mut a = self.rw.canonicalize(m);
                if !ext.is_empty() {
                    if let Some((l, d)) = a.rsplit_once('@') {
                        if !l.contains(|c| self.rw.delimiters().contains(c)) {
                            a = format!("{l}{ext}@{d}");
                        }
                    }
                }
                let ours = match self.rw.resolve(&a) {
                    Ok(r) => r.class == Class::Local && r.transport == self.s.service,
                    Err(_) => false,
                };
                if ours {
                    self.recipient(&a, depth + 1, false);
                } else {
                    self.push(Action::Forward {
                        addr: a,
                        owner: owner.clone(),
                    });
                }
            }
        }
    }

    fn include(
        &mut self,
        path: &str,
        alias: &str,
        depth: usize,
        owner: &Option<String>,
        ext: &str,
        privs: &Privs,
    ) {
        if !path.starts_with('/') {
            self.fail(
                alias,
                Outcome::bounced(
                    "5.3.5",
                    format!(":include: file name must be absolute: {path}"),
                ),
            );
            return;
        }
        if depth >= MAX_DEPTH {
            self.fail(
                alias,
                Outcome::bounced("5.4.6", format!(":include:{path} is nested too deeply")),
            );
            return;
        }
        let text = match std::fs::metadata(path) {
            Ok(m) if m.len() > aliases::MAX_FILE => {
                Err(format!("larger than {} bytes", aliases::MAX_FILE))
            }
            Ok(_) => std::fs::read(path).map_err(|e| crate::table::strerror(&e)),
            Err(e) => Err(crate::table::strerror(&e)),
        };
        match text {
            Ok(t) => {
                let t = String::from_utf8_lossy(&t);
                let list: Vec<String> = t
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .flat_map(aliases::members)
                    .collect();
                self.members(&list, alias, "include", depth + 1, owner, ext, privs);
            }
            // A missing or unreadable list is a configuration problem: keep the mail.
            Err(e) => self.fail(
                alias,
                Outcome::deferred("4.3.0", format!("cannot open include file {path}: {e}")),
            ),
        }
    }

    /// Expands the user's .forward file, the first of forward_path that exists; false when
    /// there is none, or when this file is already being expanded (it names its own user:
    /// the mailbox gets the copy). Commands in it run as the user, in its home.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        addr: &str,
        base: &str,
        ext: &str,
        domain: &str,
        depth: usize,
        home: &std::path::Path,
        uid: Option<u32>,
        privs: &Privs,
    ) -> bool {
        let delim = ext
            .chars()
            .next()
            .filter(|c| self.rw.delimiters().contains(*c));
        let delim = delim.map(String::from).unwrap_or_default();
        let bare_ext = ext.get(delim.len()..).unwrap_or("");
        let (local, _) = addr.rsplit_once('@').unwrap_or((addr, ""));
        let home_s = home.display().to_string();
        // An extension comes from the network: it may not steer the path elsewhere.
        let safe_ext = if bare_ext.contains('/') || bare_ext.contains("..") {
            ""
        } else {
            bare_ext
        };
        let delim = if safe_ext.is_empty() {
            ""
        } else {
            delim.as_str()
        };
        let attrs = [
            ("home", home_s.as_str()),
            ("user", base),
            ("local", local),
            ("domain", domain),
            ("recipient", addr),
            ("extension", safe_ext),
            ("recipient_delimiter", delim),
            ("shell", "/bin/sh"),
        ];
        for template in &self.s.forward_path {
            let Some(path) = expand_local(template, &attrs) else {
                continue;
            };
            if !path.starts_with('/') {
                continue;
            }
            match read_forward(&path, uid) {
                Ok(None) => continue,
                Err(o) => {
                    self.fail(addr, o);
                    return true;
                }
                Ok(Some(text)) => {
                    let key = format!("\0forward:{path}");
                    if !self.seen.insert(key) {
                        return false;
                    }
                    let list: Vec<String> = text
                        .lines()
                        .filter(|l| !l.trim_start().starts_with('#'))
                        .flat_map(aliases::members)
                        .collect();
                    if list.is_empty() {
                        // An empty .forward: the mailbox, as Postfix does.
                        return false;
                    }
                    self.members(&list, addr, "forward", depth + 1, &None, "", privs);
                    return true;
                }
            }
        }
        false
    }

    /// A hand-over to another agent; never back to this one (that would loop forever).
    fn pass(&mut self, transport: &str, nexthop: &str, addr: &str, param: &str) {
        if transport == self.s.service {
            self.fail(
                addr,
                Outcome::deferred(
                    "4.3.5",
                    format!("{param} names the local transport itself ({transport})"),
                ),
            );
        } else {
            self.push(Action::Pass {
                transport: transport.to_string(),
                nexthop: nexthop.to_string(),
                rcpt: addr.to_string(),
            });
        }
    }

    /// Step 3 and 4: a user's .forward or mailbox, or the unknown-user handling.
    fn user(
        &mut self,
        addr: &str,
        base: &str,
        ext: &str,
        domain: &str,
        depth: usize,
        skip_forward: bool,
    ) {
        if base.is_empty() || base.contains('/') || base.starts_with('.') || base.contains('\0') {
            self.fail(
                addr,
                Outcome::bounced("5.1.3", format!("unsafe local user name: \"{base}\"")),
            );
            return;
        }
        let known = if self.s.recipients.is_empty() {
            Ok(passwd::home(base).map(|h| h.display().to_string()))
        } else {
            self.s.recipients.lookup(base)
        };
        let known = match known {
            Ok(k) => k.is_some(),
            Err(e) => {
                self.fail(
                    addr,
                    Outcome::deferred(
                        "4.3.0",
                        format!("local_recipient_maps lookup of {base}: {e}"),
                    ),
                );
                return;
            }
        };
        if known {
            let pw = passwd::lookup(base);
            // A system user's mailbox belongs to the user (when we can give it: as root).
            let owner = pw
                .as_ref()
                .filter(|_| passwd::is_root())
                .map(|p| (p.uid, p.gid));
            let (home, owner, uid) = match &self.s.mailbox_base {
                Some(b) => (Some(b.join(base)), None, None),
                None => {
                    let uid = pw.as_ref().map(|p| p.uid);
                    (pw.map(|p| p.home), owner, uid)
                }
            };
            let privs = Privs {
                home: home
                    .as_ref()
                    .map(|h| h.display().to_string())
                    .unwrap_or_else(|| "/".to_string()),
                owner,
            };
            if !skip_forward {
                if let Some(home) = &home {
                    if self.forward(addr, base, ext, domain, depth, home, uid, &privs) {
                        return;
                    }
                }
            }
            if let Some((t, n)) = self.s.mailbox_transport.clone() {
                self.pass(&t, &n, addr, "mailbox_transport");
                return;
            }
            if !self.s.mailbox_command.is_empty() {
                self.push(Action::Command {
                    cmd: self.s.mailbox_command.clone(),
                    rcpt: addr.to_string(),
                    user: base.to_string(),
                    ext: ext
                        .trim_start_matches(|c| self.rw.delimiters().contains(c))
                        .to_string(),
                    domain: domain.to_string(),
                    privs,
                });
                return;
            }
            let hm = self.s.home_mailbox.trim();
            if hm.is_empty() {
                self.push(Action::Mbox {
                    path: self.s.mail_spool_directory.join(base),
                    rcpt: addr.to_string(),
                    owner,
                });
                return;
            }
            let Some(home) = home else {
                self.fail(addr, Outcome::deferred("4.3.0", format!("no home directory for {base}: not in the password database and local_mailbox_base is not set")));
                return;
            };
            if hm.split('/').any(|c| c == "..") {
                self.fail(
                    addr,
                    Outcome::deferred("4.3.5", format!("unsafe home_mailbox {hm}")),
                );
                return;
            }
            let path = home.join(hm.trim_start_matches('/'));
            if hm.ends_with('/') {
                self.push(Action::Maildir {
                    path,
                    rcpt: addr.to_string(),
                    owner,
                });
            } else {
                self.push(Action::Mbox {
                    path,
                    rcpt: addr.to_string(),
                    owner,
                });
            }
            return;
        }
        if let Some((t, n)) = self.s.fallback_transport.clone() {
            self.pass(&t, &n, addr, "fallback_transport");
        } else if !self.s.luser_relay.trim().is_empty() {
            let delim = ext.trim_start_matches(|c| self.rw.delimiters().contains(c));
            let (local, _) = addr.rsplit_once('@').unwrap_or((addr, ""));
            let mut v = self.s.luser_relay.trim().to_string();
            for (k, val) in [
                ("recipient", addr),
                ("extension", delim),
                ("domain", domain),
                ("local", local),
                ("user", base),
            ] {
                v = v
                    .replace(&format!("${{{k}}}"), val)
                    .replace(&format!("${k}"), val);
            }
            let a = self.rw.canonicalize(&v);
            if a.eq_ignore_ascii_case(addr) {
                self.fail(
                    addr,
                    Outcome::bounced(
                        "5.4.6",
                        format!("luser_relay {a} points back to the unknown user"),
                    ),
                );
            } else {
                self.push(Action::Forward {
                    addr: a,
                    owner: None,
                });
            }
        } else {
            self.fail(
                addr,
                Outcome::bounced("5.1.1", format!("unknown user: \"{base}\"")),
            );
        }
    }
}

/// The `local` delivery agent.
pub struct LocalTransport {
    pub settings: Arc<RwLock<Arc<Settings>>>,
    pub rewriter: Arc<dyn Fn() -> Arc<Rewriter> + Send + Sync>,
    pub queue: Queue,
    pub agents: AgentTable,
}

/// What to do for one recipient (decided off the async workers: lookups block).
fn plan(s: &Settings, rw: &Rewriter, content: &[u8], address: &str) -> Vec<Action> {
    let mut e = Expander {
        s,
        rw,
        content,
        seen: HashSet::new(),
        out: Vec::new(),
    };
    e.recipient(address, 0, false);
    e.out
}

/// One outcome for a recipient (`rcpt`) out of its destinations' outcomes.
fn combine(rcpt: &str, outs: Vec<Outcome>) -> Outcome {
    if let Some(d) = outs.iter().find(|o| matches!(o, Outcome::Deferred { .. })) {
        return d.clone();
    }
    let mut bounces = outs.iter().filter(|o| matches!(o, Outcome::Bounced { .. }));
    if let Some(b) = bounces.next() {
        if bounces.next().is_none() {
            return b.clone();
        }
        // Several destinations failed: the first decides what qmgr records, and the notice
        // lists each failing address, as Postfix's local(8) appends one bounce record each.
        let failed = outs
            .iter()
            .filter(|o| matches!(o, Outcome::Bounced { .. }))
            .flat_map(|o| match o.failed() {
                [] => vec![Failed {
                    address: rcpt.to_string(),
                    dsn: o.dsn().to_string(),
                    reason: o.text().to_string(),
                }],
                f => f.to_vec(),
            })
            .collect();
        return Outcome::Bounced {
            dsn: b.dsn().to_string(),
            reason: b.text().to_string(),
            failed,
        };
    }
    match outs.len() {
        0 => Outcome::bounced("5.3.0", "alias expands to nothing"),
        1 => outs
            .into_iter()
            .next()
            .unwrap_or_else(|| Outcome::sent("2.0.0", "delivered")),
        _ => {
            let texts: Vec<String> = outs.iter().map(|o| o.text().to_string()).collect();
            Outcome::sent("2.0.0", texts.join("; "))
        }
    }
}

impl LocalTransport {
    pub fn new(
        cfg: &Config,
        service: &str,
        rewriter: Arc<dyn Fn() -> Arc<Rewriter> + Send + Sync>,
        queue: Queue,
        agents: AgentTable,
    ) -> Self {
        LocalTransport {
            settings: Arc::new(RwLock::new(Arc::new(Settings::from_config(cfg, service)))),
            rewriter,
            queue,
            agents,
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Commits one forwarded copy: `Delivered-To: <alias>` first, the original content after.
async fn forward(
    queue: &Queue,
    job: &Job,
    r: &JobRcpt,
    sender: String,
    addrs: Vec<String>,
) -> Outcome {
    let mut content = format!("Delivered-To: {}\r\n", r.address).into_bytes();
    content.extend_from_slice(&job.content);
    let recipients = addrs
        .into_iter()
        .map(|a| {
            let mut rc = Recipient::new(a);
            rc.original = if r.original.is_empty() {
                r.address.clone()
            } else {
                r.original.clone()
            };
            rc.notify = r.notify;
            rc
        })
        .collect();
    let rec = Record {
        envelope: Envelope {
            sender,
            recipients,
            ret: job.ret,
            envid: job.envid.clone(),
            body_type: job.body_type,
            smtputf8: job.smtputf8,
            ..Default::default()
        },
        origin: Origin {
            protocol: "local".into(),
            service: "local".into(),
            ..Default::default()
        },
        meta: Default::default(),
    };
    match queue.enqueue(QueueName::Incoming, rec, content).await {
        Ok(id) => Outcome::sent("2.0.0", format!("forwarded as {id}")),
        Err(e) => Outcome::deferred("4.3.0", format!("cannot forward: {e}")),
    }
}

impl Transport for LocalTransport {
    fn deliver(&self, job: Job) -> BoxFuture<Vec<(usize, Outcome)>> {
        let s = self.settings();
        let rw = (self.rewriter)();
        let queue = self.queue.clone();
        let agents = self.agents.clone();
        Box::pin(async move {
            let mut out = Vec::with_capacity(job.recipients.len());
            for r in &job.recipients {
                let started = std::time::SystemTime::now();
                let (s2, rw2, content, addr) = (
                    s.clone(),
                    rw.clone(),
                    job.content.clone(),
                    r.address.clone(),
                );
                let actions = tokio::task::spawn_blocking(move || plan(&s2, &rw2, &content, &addr))
                    .await
                    .unwrap_or_else(|e| {
                        vec![Action::Fail {
                            rcpt: r.address.clone(),
                            outcome: Outcome::deferred(
                                "4.3.0",
                                format!("local delivery failed: {e}"),
                            ),
                        }]
                    });
                // Each destination is logged under its own address, with the queue's
                // recipient as orig_to, as Postfix's local(8) does (`to=<bob@…>,
                // orig_to=<postmaster@…>`); a hand-over to another agent is logged by that
                // agent.
                let orig = if r.original.is_empty() {
                    r.address.clone()
                } else {
                    r.original.clone()
                };
                let log_as = |dest: &str, o: &Outcome| {
                    let shown = JobRcpt {
                        address: dest.to_string(),
                        original: orig.clone(),
                        ..r.clone()
                    };
                    log_outcome(&job, &shown, "local", started, o);
                };
                let mut outs = Vec::new();
                // Forwarded addresses go out as one new message per envelope sender.
                let mut forwards: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for a in actions {
                    let dest = a.rcpt().to_string();
                    let passed = matches!(a, Action::Pass { .. });
                    let o = match a {
                        Action::Fail { outcome, .. } => outcome,
                        Action::Forward { addr, owner } => {
                            let sender = match owner {
                                Some(o) if !job.sender.is_empty() => o,
                                _ => job.sender.clone(),
                            };
                            let v = forwards.entry(sender).or_default();
                            if !v.iter().any(|x| x.eq_ignore_ascii_case(&addr)) {
                                v.push(addr);
                            }
                            continue;
                        }
                        Action::Maildir { path, rcpt, owner } => {
                            let (content, sender, host) =
                                (job.content.clone(), job.sender.clone(), s.hostname.clone());
                            tokio::task::spawn_blocking(move || {
                                maildir::deliver(&maildir::Delivery {
                                    maildir: &path,
                                    sender: &sender,
                                    recipient: &rcpt,
                                    content: &content,
                                    hostname: &host,
                                    owner,
                                })
                            })
                            .await
                            .unwrap_or_else(|e| {
                                Outcome::deferred("4.3.0", format!("maildir delivery failed: {e}"))
                            })
                        }
                        Action::Mbox { path, rcpt, owner } => {
                            mbox_deliver(&job, path, rcpt, "delivered to mailbox", owner).await
                        }
                        Action::File { path, rcpt } => {
                            if passwd::is_root() {
                                Outcome::bounced(
                                    "5.7.1",
                                    format!("relais does not deliver to files as root: {path}"),
                                )
                            } else if path.ends_with('/') {
                                let (content, sender, host) =
                                    (job.content.clone(), job.sender.clone(), s.hostname.clone());
                                tokio::task::spawn_blocking(move || {
                                    maildir::deliver(&maildir::Delivery {
                                        maildir: std::path::Path::new(&path),
                                        sender: &sender,
                                        recipient: &rcpt,
                                        content: &content,
                                        hostname: &host,
                                        owner: None,
                                    })
                                })
                                .await
                                .unwrap_or_else(|e| {
                                    Outcome::deferred("4.3.0", format!("file delivery failed: {e}"))
                                })
                            } else {
                                let what = format!("delivered to file: {path}");
                                mbox_deliver(&job, PathBuf::from(path), rcpt, &what, None).await
                            }
                        }
                        Action::Command {
                            cmd,
                            rcpt,
                            user,
                            ext,
                            domain,
                            privs,
                        } => {
                            // As root, a user's commands (.forward, mailbox_command) run
                            // with the user's rights, others with default_privs', as Postfix
                            // runs commands from root-owned alias tables; never as root.
                            let run_as = if !passwd::is_root() {
                                Ok(None)
                            } else if let Some(ids) = privs.owner.filter(|(uid, _)| *uid != 0) {
                                Ok(Some(ids))
                            } else {
                                match passwd::lookup(&s.default_privs) {
                                    Some(p) if p.uid != 0 => Ok(Some((p.uid, p.gid))),
                                    Some(_) => Err(Outcome::deferred(
                                        "4.3.5",
                                        format!(
                                            "default_privs {} is root: alias commands are not run",
                                            s.default_privs
                                        ),
                                    )),
                                    None => Err(Outcome::deferred(
                                        "4.3.5",
                                        format!("default_privs {}: unknown user", s.default_privs),
                                    )),
                                }
                            };
                            if let Err(o) = run_as {
                                o
                            } else {
                                let run_as = run_as.ok().flatten();
                                let msg = maildir_text(&job.sender, &rcpt, &job.content);
                                command::run(
                                    &command::Pipe {
                                        command: &cmd,
                                        sender: &job.sender,
                                        recipient: &rcpt,
                                        user: &user,
                                        extension: &ext,
                                        domain: &domain,
                                        home: &privs.home,
                                        timeout: s.command_time_limit,
                                        run_as,
                                    },
                                    msg,
                                )
                                .await
                            }
                        }
                        Action::Pass {
                            transport,
                            nexthop,
                            rcpt,
                        } => pass(&agents, &job, r, transport, nexthop, rcpt).await,
                    };
                    if !passed {
                        log_as(&dest, &o);
                    }
                    // A failing member is what the notice reports, with the recipient it
                    // was expanded from (qmgr still records the outcome under the recipient).
                    let o = if dest.eq_ignore_ascii_case(&r.address) {
                        o
                    } else {
                        o.for_final_rcpt(&dest)
                    };
                    outs.push(o);
                }
                for (sender, addrs) in forwards {
                    let o = forward(&queue, &job, r, sender, addrs.clone()).await;
                    for a in &addrs {
                        log_as(a, &o);
                    }
                    outs.push(o);
                }
                let nothing = outs.is_empty();
                let o = combine(&r.address, outs);
                if nothing {
                    log_as(&r.address, &o);
                }
                out.push((r.index, o));
            }
            out
        })
    }
}

/// The message as a mailbox or command sees it: envelope headers first, LF line ends.
fn maildir_text(sender: &str, rcpt: &str, content: &[u8]) -> Vec<u8> {
    let mut buf = format!("Return-Path: <{sender}>\nDelivered-To: {rcpt}\n").into_bytes();
    let mut i = 0;
    while i < content.len() {
        if !(content[i] == b'\r' && content.get(i + 1) == Some(&b'\n')) {
            buf.push(content[i]);
        }
        i += 1;
    }
    buf
}

async fn mbox_deliver(
    job: &Job,
    path: PathBuf,
    rcpt: String,
    what: &str,
    owner: Option<(u32, u32)>,
) -> Outcome {
    if maildir::is_loop(&job.content, &rcpt) {
        return Outcome::bounced("5.4.6", format!("mail forwarding loop for {rcpt}"));
    }
    let data = mbox::format(&job.sender, &rcpt, &job.content);
    let what = what.to_string();
    tokio::task::spawn_blocking(move || match mbox::append(&path, &data, owner) {
        Ok(()) => Outcome::sent("2.0.0", what),
        Err(e) => Outcome::deferred(
            "4.2.0",
            format!(
                "cannot update mailbox {}: {}",
                path.display(),
                crate::table::strerror(&e)
            ),
        ),
    })
    .await
    .unwrap_or_else(|e| Outcome::deferred("4.3.0", format!("mailbox delivery failed: {e}")))
}

/// Hands one recipient to another delivery agent (mailbox_transport, fallback_transport).
async fn pass(
    agents: &AgentTable,
    job: &Job,
    r: &JobRcpt,
    transport: String,
    nexthop: String,
    rcpt: String,
) -> Outcome {
    let agent = agents
        .read()
        .ok()
        .and_then(|t| t.get(&transport).map(|(a, _)| a.clone()));
    let Some(agent) = agent else {
        return Outcome::deferred("4.3.0", format!("mail transport unavailable: {transport}"));
    };
    let nexthop = if nexthop.is_empty() {
        rcpt.rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    } else {
        nexthop
    };
    let mut sub = job.clone();
    sub.transport = transport.clone();
    sub.nexthop = nexthop;
    sub.recipients = vec![JobRcpt {
        address: rcpt,
        ..r.clone()
    }];
    match agent.send(Deliver(sub)).await {
        Ok(v) => v
            .into_iter()
            .find(|(i, _)| *i == r.index)
            .map(|(_, o)| o)
            .unwrap_or_else(|| {
                Outcome::deferred("4.3.0", format!("{transport} reported no result"))
            }),
        Err(e) => Outcome::deferred(
            "4.3.0",
            format!("mail transport unavailable: {transport}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests;
