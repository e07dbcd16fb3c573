//! The local agent's decisions (plan) and deliveries, on temporary directories.

use super::*;
use std::path::Path;

struct Env {
    dir: tempfile::TempDir,
    settings: Arc<Settings>,
    rw: Arc<Rewriter>,
}

fn env(extra: &str, files: &[(&str, &str)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let d = dir.path().display().to_string();
    let text = format!(
        "myhostname = mail.example\nmydomain = example\nmydestination = $myhostname, localhost\nrecipient_delimiter = +\nalias_maps = texthash:{d}/aliases\nlocal_recipient_maps = texthash:{d}/users $alias_maps\nlocal_mailbox_base = {d}/home\nhome_mailbox = Maildir/\n{}",
        extra.replace("@DIR@", &d)
    );
    let cfg = Config::from_text(Path::new("/etc/postfix"), &text).unwrap();
    Env {
        settings: Arc::new(Settings::from_config(&cfg, "local")),
        rw: Arc::new(Rewriter::from_config(&cfg).unwrap()),
        dir,
    }
}

const ALIASES: &str = "postmaster: root\nroot: bob\nteam: bob, carol@remote.example, \\alice\nowner-team: bob\nlist: :include:@DIR@/list\nloopy: loopy2\nloopy2: loopy\nself: self, bob\npipe: \"|cat > /dev/null\"\nfile: @DIR@/filebox\n";
const USERS: &str = "bob x\nalice x\nself x\n";

fn plan_of(e: &Env, addr: &str, content: &[u8]) -> Vec<Action> {
    plan(&e.settings, &e.rw, content, addr)
}

fn std_env(extra: &str) -> Env {
    let e = env(extra, &[("users", USERS)]);
    let d = e.dir.path().display().to_string();
    std::fs::write(e.dir.path().join("aliases"), ALIASES.replace("@DIR@", &d)).unwrap();
    std::fs::write(
        e.dir.path().join("list"),
        "# members\nalice\nremote@remote.example, bob\n",
    )
    .unwrap();
    e
}

fn maildir_of(e: &Env, user: &str) -> PathBuf {
    e.dir.path().join("home").join(user).join("Maildir/")
}

#[test]
fn users_aliases_and_extensions() {
    let e = std_env("");
    let bob = Action::Maildir {
        path: maildir_of(&e, "bob"),
        rcpt: "bob@mail.example".into(),
        owner: None,
    };
    assert_eq!(plan_of(&e, "bob@mail.example", b""), vec![bob.clone()]);
    // user+ext: the user's mailbox, Delivered-To keeps the full address.
    assert_eq!(
        plan_of(&e, "bob+tag@mail.example", b""),
        vec![Action::Maildir {
            path: maildir_of(&e, "bob"),
            rcpt: "bob+tag@mail.example".into(),
            owner: None,
        }]
    );
    // Recursive local aliases expand in place.
    assert_eq!(
        plan_of(&e, "postmaster@mail.example", b""),
        vec![bob.clone()]
    );
    assert_eq!(
        plan_of(&e, "PostMaster@localhost", b""),
        vec![Action::Maildir {
            path: maildir_of(&e, "bob"),
            rcpt: "bob@mail.example".into(),
            owner: None,
        }]
    );
    // Remote members are forwarded, with owner-team as the envelope sender.
    let team = plan_of(&e, "team@mail.example", b"");
    assert_eq!(
        team,
        vec![
            bob.clone(),
            Action::Forward {
                addr: "carol@remote.example".into(),
                owner: Some("owner-team@mail.example".into())
            },
            Action::Maildir {
                path: maildir_of(&e, "alice"),
                rcpt: "alice@mail.example".into(),
                owner: None,
            },
        ]
    );
    // :include: lists.
    let list = plan_of(&e, "list@mail.example", b"");
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.contains(&Action::Forward {
        addr: "remote@remote.example".into(),
        owner: None
    }));
    // An alias naming itself delivers to the user's own mailbox (no loop).
    let s = plan_of(&e, "self@mail.example", b"");
    assert_eq!(
        s,
        vec![
            Action::Maildir {
                path: maildir_of(&e, "self"),
                rcpt: "self@mail.example".into(),
                owner: None,
            },
            bob
        ]
    );
}

#[test]
fn unknown_users_loops_and_restrictions() {
    let e = std_env("");
    let p = plan_of(&e, "nobody@mail.example", b"");
    assert!(
        matches!(&p[..], [Action::Fail { outcome: Outcome::Bounced { dsn, reason, .. }, .. }] if dsn == "5.1.1" && reason == "unknown user: \"nobody\""),
        "{p:?}"
    );
    let p = plan_of(&e, "loopy@mail.example", b"");
    assert!(
        matches!(
            &p[..],
            [Action::Fail {
                outcome: Outcome::Bounced { .. },
                ..
            }]
        ),
        "{p:?}"
    );
    let p = plan_of(
        &e,
        "bob@mail.example",
        b"Delivered-To: bob@mail.example\r\n\r\nx\r\n",
    );
    assert!(
        matches!(&p[..], [Action::Fail { outcome: Outcome::Bounced { dsn, .. }, .. }] if dsn == "5.4.6"),
        "{p:?}"
    );
    // Commands and files allowed for aliases by default…
    assert!(matches!(
        &plan_of(&e, "pipe@mail.example", b"")[..],
        [Action::Command { .. }]
    ));
    assert!(matches!(
        &plan_of(&e, "file@mail.example", b"")[..],
        [Action::File { .. }]
    ));
    // …refused with a clear bounce when the class is not allowed.
    let e = std_env("allow_mail_to_commands = forward\nallow_mail_to_files =\n");
    let p = plan_of(&e, "pipe@mail.example", b"");
    assert!(
        matches!(&p[..], [Action::Fail { outcome: Outcome::Bounced { reason, .. }, .. }] if reason.contains("mail to command is restricted")),
        "{p:?}"
    );
    let p = plan_of(&e, "file@mail.example", b"");
    assert!(
        matches!(&p[..], [Action::Fail { outcome: Outcome::Bounced { reason, .. }, .. }] if reason.contains("mail to file is restricted")),
        "{p:?}"
    );
    // Unsafe user names never become paths.
    let p = plan_of(&e, "../etc@mail.example", b"");
    assert!(matches!(&p[..], [Action::Fail { .. }]), "{p:?}");
}

#[test]
fn luser_relay_fallback_and_mailbox_transport() {
    let e = std_env("luser_relay = catchall+$user@remote.example\n");
    assert_eq!(
        plan_of(&e, "nobody+x@mail.example", b""),
        vec![Action::Forward {
            addr: "catchall+nobody@remote.example".into(),
            owner: None
        }]
    );
    let e = std_env("luser_relay = x@remote.example\nfallback_transport = lmtp:unix:/run/lmtp\n");
    assert_eq!(
        plan_of(&e, "nobody@mail.example", b""),
        vec![Action::Pass {
            transport: "lmtp".into(),
            nexthop: "unix:/run/lmtp".into(),
            rcpt: "nobody@mail.example".into()
        }]
    );
    let e = std_env("mailbox_transport = lmtp:inet:127.0.0.1:24\n");
    assert_eq!(
        plan_of(&e, "bob@mail.example", b""),
        vec![Action::Pass {
            transport: "lmtp".into(),
            nexthop: "inet:127.0.0.1:24".into(),
            rcpt: "bob@mail.example".into()
        }]
    );
    let e = std_env("mailbox_transport = local\n");
    let p = plan_of(&e, "bob@mail.example", b"");
    assert!(
        matches!(
            &p[..],
            [Action::Fail {
                outcome: Outcome::Deferred { .. },
                ..
            }]
        ),
        "{p:?}"
    );
    // Empty home_mailbox: the mail spool's mbox file.
    let e = std_env("home_mailbox =\nmail_spool_directory = /var/spool/mail\n");
    assert_eq!(
        plan_of(&e, "bob@mail.example", b""),
        vec![Action::Mbox {
            path: PathBuf::from("/var/spool/mail/bob"),
            rcpt: "bob@mail.example".into(),
            owner: None,
        }]
    );
}

#[test]
fn passwd_users_without_local_mailbox_base() {
    // The system password database knows root; relais maps it to ~root/Maildir/.
    let e = env(
        "local_mailbox_base =\nlocal_recipient_maps = proxy:unix:passwd.byname\nalias_maps =\n",
        &[],
    );
    let home = passwd::home("root").unwrap();
    assert_eq!(
        plan_of(&e, "root@localhost", b""),
        vec![Action::Maildir {
            path: home.join("Maildir/"),
            rcpt: "root@localhost".into(),
            // As root, root's own mailbox is given to root (uid 0).
            owner: passwd::is_root().then_some((0, 0)),
        }]
    );
    let p = plan_of(&e, "no-such-user-relais@localhost", b"");
    assert!(
        matches!(
            &p[..],
            [Action::Fail {
                outcome: Outcome::Bounced { .. },
                ..
            }]
        ),
        "{p:?}"
    );
}

fn job(rcpts: &[&str], content: &[u8]) -> Job {
    Job {
        queue_id: "ABC123".into(),
        transport: "local".into(),
        nexthop: "mail.example".into(),
        sender: "alice@remote.example".into(),
        recipients: rcpts
            .iter()
            .enumerate()
            .map(|(i, a)| JobRcpt {
                index: i,
                address: a.to_string(),
                original: a.to_string(),
                ..Default::default()
            })
            .collect(),
        content: Arc::new(content.to_vec()),
        ret: None,
        envid: None,
        body_type: Default::default(),
        smtputf8: false,
        arrival: std::time::SystemTime::now(),
        activated: std::time::SystemTime::now(),
    }
}

#[tokio::test]
async fn delivers_forwards_and_runs_commands() {
    let e = std_env("");
    let d = e.dir.path().display().to_string();
    let out_file = format!("{d}/piped");
    if passwd::is_root() {
        // Commands run as default_privs (nobody) when we are root: let it write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(e.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let extra_aliases = format!("pipe2: \"|cat > {out_file}; echo $RECIPIENT >> {out_file}\"\nfail: \"|echo no such mailbox; exit 67\"\ntemp: \"|exit 75\"\n");
    let mut a = std::fs::read_to_string(e.dir.path().join("aliases")).unwrap();
    a.push_str(&extra_aliases);
    std::fs::write(e.dir.path().join("aliases"), a).unwrap();
    let queue = Queue::memory();
    let rw = e.rw.clone();
    let t = LocalTransport {
        settings: Arc::new(RwLock::new(e.settings.clone())),
        rewriter: Arc::new(move || rw.clone()),
        queue: queue.clone(),
        agents: Default::default(),
    };
    let out = t
        .deliver(job(
            &[
                "team@mail.example",
                "pipe2@mail.example",
                "fail@mail.example",
                "temp@mail.example",
                "file@mail.example",
                "ghost@mail.example",
            ],
            b"Subject: s\r\n\r\nFrom me\r\n",
        ))
        .await;
    let by: std::collections::HashMap<usize, Outcome> = out.into_iter().collect();
    // team: bob's and alice's Maildirs, and one forwarded message from owner-team.
    assert!(
        matches!(&by[&0], Outcome::Sent { detail, .. } if detail.contains("forwarded as ")),
        "{:?}",
        by[&0]
    );
    for u in ["bob", "alice"] {
        let n = std::fs::read_dir(maildir_of(&e, u).join("new"))
            .unwrap()
            .count();
        assert_eq!(n, 1, "{u}");
    }
    let fwd = queue.list(QueueName::Incoming).await.unwrap();
    assert_eq!(fwd.len(), 1);
    let env = &fwd[0].record.envelope;
    assert_eq!(env.sender, "owner-team@mail.example");
    assert_eq!(env.recipients[0].address, "carol@remote.example");
    assert_eq!(env.recipients[0].original, "team@mail.example");
    let content = queue.content(&fwd[0].id).await.unwrap().unwrap();
    assert!(content.starts_with(b"Delivered-To: team@mail.example\r\nSubject: s\r\n"));
    // pipe2: the command got the message with envelope headers and its environment.
    assert!(matches!(by[&1], Outcome::Sent { .. }), "{:?}", by[&1]);
    let piped = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(piped, "Return-Path: <alice@remote.example>\nDelivered-To: pipe2@mail.example\nSubject: s\n\nFrom me\npipe2@mail.example\n");
    assert!(
        matches!(&by[&2], Outcome::Bounced { reason, .. } if reason.contains("status 67") && reason.contains("no such mailbox")),
        "{:?}",
        by[&2]
    );
    // A command of the alias itself fails: the notice names the recipient, no member.
    assert!(by[&2].failed().is_empty());
    assert!(matches!(by[&3], Outcome::Deferred { .. }), "{:?}", by[&3]);
    if passwd::is_root() {
        // /file destinations are refused as root (relais does not write as another user).
        assert!(
            matches!(&by[&4], Outcome::Bounced { reason, .. } if reason.contains("as root")),
            "{:?}",
            by[&4]
        );
        assert!(
            matches!(&by[&5], Outcome::Bounced { dsn, .. } if dsn == "5.1.1"),
            "{:?}",
            by[&5]
        );
        return;
    }
    // file: an mbox with From_ quoting.
    assert!(matches!(by[&4], Outcome::Sent { .. }), "{:?}", by[&4]);
    let mbox = std::fs::read_to_string(e.dir.path().join("filebox")).unwrap();
    assert!(
        mbox.starts_with("From alice@remote.example  ")
            && mbox.contains("\nDelivered-To: file@mail.example\n")
            && mbox.contains("\n>From me\n"),
        "{mbox}"
    );
    assert!(
        matches!(&by[&5], Outcome::Bounced { dsn, .. } if dsn == "5.1.1"),
        "{:?}",
        by[&5]
    );
}

#[test]
fn several_failing_destinations_are_each_kept_for_the_notice() {
    // The alias's own command and a member fail, another member is delivered: the first
    // failure is the recipient's status, and the notice gets both failures in order.
    let outs = vec![
        Outcome::bounced("5.3.0", "Command died with status 1: \"false\""),
        Outcome::sent("2.0.0", "delivered to maildir"),
        Outcome::bounced("5.1.1", "unknown user: \"test\"").for_final_rcpt("test@mail.example"),
    ];
    let o = combine("toto@mail.example", outs.clone());
    assert_eq!((o.dsn(), o.status_word()), ("5.3.0", "bounced"));
    assert_eq!(o.text(), outs[0].text());
    let f: Vec<_> = o
        .failed()
        .iter()
        .map(|f| (f.address.as_str(), f.dsn.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        f,
        [
            (
                "toto@mail.example",
                "5.3.0",
                "Command died with status 1: \"false\""
            ),
            ("test@mail.example", "5.1.1", "unknown user: \"test\"")
        ]
    );
    // One failure alone stays as it was; a deferral still defers the whole recipient.
    assert_eq!(combine("toto@mail.example", outs[2..].to_vec()), outs[2]);
    let mut d = outs.clone();
    d.push(Outcome::deferred("4.2.0", "later"));
    assert_eq!(combine("toto@mail.example", d).status_word(), "deferred");
}

fn maildir_action(e: &Env, user: &str, rcpt: &str) -> Action {
    Action::Maildir {
        path: maildir_of(e, user),
        rcpt: rcpt.into(),
        owner: None,
    }
}

/// A user's .forward, as Postfix's local(8) reads it: forward_path's first existing file,
/// `.forward+ext` for an extension; `\user` and a reference to the user itself deliver to
/// the mailbox; commands run in the user's home; `\user` from an alias skips the .forward;
/// a file that is a symbolic link or belongs to someone else is ignored.
#[test]
fn dot_forward_files() {
    let e = std_env("");
    let home = e.dir.path().join("home/bob");
    std::fs::create_dir_all(&home).unwrap();
    let bob = maildir_action(&e, "bob", "bob@mail.example");
    assert_eq!(plan_of(&e, "bob@mail.example", b""), vec![bob.clone()]);
    std::fs::write(
        home.join(".forward"),
        "# keep a copy\ncarol@remote.example, \\bob\n\"|vacation bob\"\n",
    )
    .unwrap();
    let p = plan_of(&e, "bob@mail.example", b"");
    assert_eq!(p.len(), 3, "{p:?}");
    assert_eq!(
        p[0],
        Action::Forward {
            addr: "carol@remote.example".into(),
            owner: None
        }
    );
    assert_eq!(p[1], bob);
    match &p[2] {
        Action::Command {
            cmd, rcpt, privs, ..
        } => {
            assert_eq!(cmd, "vacation bob");
            assert_eq!(rcpt, "bob@mail.example");
            assert_eq!(privs.home, home.display().to_string());
        }
        other => panic!("{other:?}"),
    }
    // .forward+ext for an extension that has one; the plain .forward otherwise.
    std::fs::write(home.join(".forward+list"), "dave@remote.example\n").unwrap();
    assert_eq!(
        plan_of(&e, "bob+list@mail.example", b""),
        vec![Action::Forward {
            addr: "dave@remote.example".into(),
            owner: None
        }]
    );
    assert_eq!(plan_of(&e, "bob+other@mail.example", b"").len(), 3);
    // An extension cannot steer the path out of the home directory.
    std::fs::create_dir_all(home.join(".forward+x")).unwrap();
    std::fs::write(home.join("stolen"), "mallory@remote.example\n").unwrap();
    assert_eq!(plan_of(&e, "bob+x/../stolen@mail.example", b"").len(), 3);
    // Naming its own user: the mailbox, not a loop.
    std::fs::write(home.join(".forward"), "bob\n").unwrap();
    assert_eq!(plan_of(&e, "bob@mail.example", b""), vec![bob.clone()]);
    // A symbolic link is not followed.
    std::fs::remove_file(home.join(".forward")).unwrap();
    std::os::unix::fs::symlink(home.join("stolen"), home.join(".forward")).unwrap();
    assert_eq!(plan_of(&e, "bob@mail.example", b""), vec![bob.clone()]);
    std::fs::remove_file(home.join(".forward")).unwrap();
    if passwd::is_root() {
        // Someone else's file is ignored.
        std::fs::write(home.join(".forward"), "mallory@remote.example\n").unwrap();
        std::os::unix::fs::chown(home.join(".forward"), Some(4242), None).unwrap();
        assert_eq!(plan_of(&e, "bob@mail.example", b""), vec![bob.clone()]);
        std::fs::remove_file(home.join(".forward")).unwrap();
    }
    // `\alice` in an alias skips alice's .forward.
    let ahome = e.dir.path().join("home/alice");
    std::fs::create_dir_all(&ahome).unwrap();
    std::fs::write(ahome.join(".forward"), "elsewhere@remote.example\n").unwrap();
    assert!(
        plan_of(&e, "team@mail.example", b"").contains(&maildir_action(
            &e,
            "alice",
            "alice@mail.example"
        ))
    );
    assert_eq!(
        plan_of(&e, "alice@mail.example", b""),
        vec![Action::Forward {
            addr: "elsewhere@remote.example".into(),
            owner: None
        }]
    );
}

#[test]
fn forward_path_expansion() {
    let attrs = [
        ("home", "/h"),
        ("extension", ""),
        ("recipient_delimiter", "+"),
    ];
    assert_eq!(
        expand_local("$home/.forward${recipient_delimiter}${extension}", &attrs),
        None
    );
    assert_eq!(
        expand_local("$home/.forward", &attrs).as_deref(),
        Some("/h/.forward")
    );
    assert_eq!(
        expand_local(
            "${home}/f${extension?+$extension}${extension:.none}",
            &attrs
        )
        .as_deref(),
        Some("/h/f.none")
    );
    let attrs = [("home", "/h"), ("extension", "x")];
    assert_eq!(
        expand_local(
            "${home}/f${extension?+$extension}${extension:.none}",
            &attrs
        )
        .as_deref(),
        Some("/h/f+x")
    );
    assert_eq!(expand_local("$unknown/x", &attrs), None);
    assert_eq!(expand_local("$$home", &attrs).as_deref(), Some("$home"));
    assert_eq!(expand_local("${home", &attrs), None);
}

/// mailbox_command delivers a known user's mail: sh -c, the message on its input, the
/// user's environment, kept as written (no $name expansion of main.cf).
#[tokio::test]
async fn mailbox_command_delivers_with_the_users_environment() {
    let e = std_env("mailbox_command = cat > \"$HOME/got\"; echo \"$USER $EXTENSION $RECIPIENT\" >> \"$HOME/got\"\n");
    let home = e.dir.path().join("home/bob");
    std::fs::create_dir_all(&home).unwrap();
    if passwd::is_root() {
        // Users of local_mailbox_base have no uid: their commands run as default_privs.
        use std::os::unix::fs::PermissionsExt;
        for d in [e.dir.path(), &e.dir.path().join("home"), &home] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
    assert!(matches!(
        &plan_of(&e, "bob@mail.example", b"")[..],
        [Action::Command { cmd, .. }] if cmd.contains("$HOME/got")
    ));
    let rw = e.rw.clone();
    let t = LocalTransport {
        settings: Arc::new(RwLock::new(e.settings.clone())),
        rewriter: Arc::new(move || rw.clone()),
        queue: Queue::memory(),
        agents: Default::default(),
    };
    let out = t
        .deliver(job(&["bob+x@mail.example"], b"Subject: s\r\n\r\nhello\r\n"))
        .await;
    assert!(
        matches!(&out[0].1, Outcome::Sent { detail, .. } if detail.starts_with("delivered to command: cat")),
        "{out:?}"
    );
    let got = std::fs::read_to_string(home.join("got")).unwrap();
    assert!(got.contains("Delivered-To: bob+x@mail.example\n"), "{got}");
    assert!(got.ends_with("hello\nbob x bob+x@mail.example\n"), "{got}");
}
