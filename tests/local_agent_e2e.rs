//! The local delivery agent in the real binary: mydestination users (relais's
//! local_mailbox_base mapping, no root needed), aliases with owner- and extensions,
//! forwarding as a new message, unknown users and Delivered-To loops bouncing.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sendmail(inst: &Instance, from: &str, to: &str, body: &[u8]) {
    let mut child = Command::new(bin("sendmail"))
        .args(["-C", inst.conf().to_str().unwrap(), "-f", from, to])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    assert!(child.wait().unwrap().success());
}

fn local_new(inst: &Instance, user: &str) -> Vec<std::path::PathBuf> {
    let dir = inst
        .queue()
        .join("localusers")
        .join(user)
        .join("Maildir/new");
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[test]
fn local_users_aliases_forwarding_and_bounces() {
    let mut inst = Instance::with_main_cf_extra(
        "mydestination = mail.test\nmyorigin = mail.test\nrecipient_delimiter = +\nalias_maps = texthash:$config_directory/aliases\nlocal_recipient_maps = texthash:$config_directory/users $alias_maps\nlocal_mailbox_base = $queue_directory/localusers\nhome_mailbox = Maildir/\ntransport_maps = inline:{ { other.example = discard:forwarded copy dropped } }\n",
    );
    std::fs::write(
        inst.conf().join("aliases"),
        "postmaster: root\nroot: bob\nteam: bob, \\alice, remote@other.example\nowner-team: bob\n",
    )
    .unwrap();
    std::fs::write(inst.conf().join("users"), "bob x\nalice x\n").unwrap();
    inst.start();
    // smtpd refuses unknown local users at RCPT (no backscatter), knows aliases and users.
    let mut c = Smtp::connect(inst.smtp_port);
    c.reply();
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<x@remote.example>").starts_with("250"));
    let r = c.cmd("RCPT TO:<ghost@mail.test>");
    assert!(r.starts_with("550 5.1.1 <ghost@mail.test>: Recipient address rejected: User unknown in local recipient table"), "{r}");
    for ok in ["bob+x@mail.test", "postmaster@mail.test", "TEAM@mail.test"] {
        let r = c.cmd(&format!("RCPT TO:<{ok}>"));
        assert!(r.starts_with("250"), "{ok}: {r}");
    }
    c.cmd("QUIT");
    sendmail(
        &inst,
        "carol@localhost",
        "bob@mail.test",
        b"Subject: one\n\nhello bob\n",
    );
    sendmail(
        &inst,
        "carol@localhost",
        "postmaster@mail.test",
        b"Subject: two\n\nto postmaster\n",
    );
    sendmail(
        &inst,
        "carol@localhost",
        "team+news@mail.test",
        b"Subject: three\n\nto the team\n",
    );
    assert!(
        wait_until(Duration::from_secs(20), || local_new(&inst, "bob").len()
            >= 3
            && !local_new(&inst, "alice").is_empty()),
        "bob {:?} alice {:?}\n{}",
        local_new(&inst, "bob"),
        local_new(&inst, "alice"),
        inst.log()
    );
    let texts: Vec<String> = local_new(&inst, "bob")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        texts.iter().any(|t| t
            .starts_with("Return-Path: <carol@localhost>\nDelivered-To: bob@mail.test\n")
            && t.contains("hello bob")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("to postmaster")),
        "{texts:?}"
    );
    // The remote member got a new message from owner-team, with Delivered-To: the alias.
    assert!(
        inst.wait_log(
            "status=sent (forwarded copy dropped)",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    // As Postfix's local(8), one line per member under its expanded address.
    let log = inst.log();
    for member in ["bob+news@mail.test", "alice@mail.test"] {
        assert!(
            log.contains(&format!(
                "to=<{member}>, orig_to=<team+news@mail.test>, relay=local,"
            )) && log.contains("status=sent (delivered to maildir)"),
            "{member}: {log}"
        );
    }
    assert!(
        log.contains("to=<remote+news@other.example>, orig_to=<team+news@mail.test>, relay=local,")
            && log.contains("status=sent (forwarded as "),
        "{log}"
    );
    assert!(
        log.contains("to=<bob@mail.test>, orig_to=<postmaster@mail.test>, relay=local,"),
        "{log}"
    );
    assert!(log.contains("from=<owner-team@mail.test>"), "{log}");
    assert!(
        log.contains("to=<remote+news@other.example>, orig_to=<team+news@mail.test>, relay=none"),
        "{log}"
    );

    // Unknown user and a forwarding loop: both bounce back to carol (a virtual mailbox).
    sendmail(
        &inst,
        "carol@localhost",
        "ghost@mail.test",
        b"Subject: four\n\nboo\n",
    );
    sendmail(
        &inst,
        "carol@localhost",
        "bob@mail.test",
        b"Delivered-To: bob@mail.test\nSubject: five\n\nlooped\n",
    );
    let carol = || inst.maildir_new("carol");
    assert!(
        wait_until(Duration::from_secs(20), || carol().len() >= 2),
        "{}",
        inst.log()
    );
    let notices: String = carol()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        notices.contains("<ghost@mail.test>: unknown user: \"ghost\""),
        "{notices}"
    );
    assert!(
        notices.contains("<bob@mail.test>: mail forwarding loop for bob@mail.test"),
        "{notices}"
    );
    assert!(
        inst.wait_log(
            "status=bounced (unknown user: \"ghost\")",
            Duration::from_secs(5)
        ),
        "{}",
        inst.log()
    );
    inst.stop();
}

#[test]
fn mailbox_transport_and_fallback_transport_hand_over() {
    let mut inst = Instance::with_main_cf_extra(
        "mydestination = mail.test\nmyorigin = mail.test\nalias_maps =\nlocal_recipient_maps =\nlocal_mailbox_base = $queue_directory/localusers\nmailbox_transport = discard:handed to mailbox_transport\nfallback_transport = discard:handed to fallback_transport\n",
    );
    inst.start();
    // root is in the password database: mailbox_transport; the other is unknown: fallback.
    sendmail(
        &inst,
        "carol@localhost",
        "root@mail.test",
        b"Subject: m\n\nx\n",
    );
    sendmail(
        &inst,
        "carol@localhost",
        "no-such-user-relais@mail.test",
        b"Subject: f\n\nx\n",
    );
    assert!(
        inst.wait_log(
            "status=sent (handed to fallback_transport)",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    assert!(
        inst.wait_log(
            "status=sent (handed to mailbox_transport)",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    let log = inst.log();
    assert!(
        log.contains("postfix/discard[") && log.contains("to=<root@mail.test>, relay=none,"),
        "{log}"
    );
    // The hand-over is logged once, by the agent that did the work.
    assert!(!log.contains("relay=local"), "{log}");
    inst.stop();
}

/// A failing alias member is reported as Postfix 3.7's bounce(8) does: the member, the
/// recipient it was expanded from, and in the delivery report the member as Final-Recipient
/// with the ORCPT (or, without one, the recipient) as Original-Recipient.
#[test]
fn failing_alias_member_is_named_in_the_notice() {
    let mut inst = Instance::with_main_cf_extra(
        "mydestination = mail.test\nmyorigin = mail.test\nalias_maps = texthash:$config_directory/aliases\nlocal_recipient_maps = texthash:$config_directory/users $alias_maps\nlocal_mailbox_base = $queue_directory/localusers\nhome_mailbox = Maildir/\n",
    );
    std::fs::write(inst.conf().join("aliases"), "toto: test\n").unwrap();
    std::fs::write(inst.conf().join("users"), "bob x\n").unwrap();
    inst.start();
    // One through sendmail (no ORCPT), one over SMTP with an ORCPT.
    sendmail(
        &inst,
        "carol@localhost",
        "toto@mail.test",
        b"Subject: by sendmail\n\npour toto\n",
    );
    let mut c = Smtp::connect(inst.smtp_port);
    c.reply();
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<carol@localhost>").starts_with("250"));
    let r = c.cmd("RCPT TO:<toto@mail.test> ORCPT=rfc822;toto@mail.test");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd("Subject: by smtp\r\n\r\npour toto\r\n.");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let carol = || inst.maildir_new("carol");
    assert!(
        wait_until(Duration::from_secs(20), || carol().len() >= 2),
        "{}",
        inst.log()
    );
    // The log line stays Postfix's: the member, with the recipient as orig_to.
    let log = inst.log();
    assert!(
        log.contains("to=<test@mail.test>, orig_to=<toto@mail.test>, relay=local, ")
            && log.contains("status=bounced (unknown user: \"test\")"),
        "{log}"
    );
    let mut orcpts = Vec::new();
    for p in carol() {
        let raw = std::fs::read(&p).unwrap();
        let part = |ctype: &str| notice_part(&raw, ctype);
        let text = part("text/plain");
        assert!(
            text.contains(
                "\n<test@mail.test> (expanded from <toto@mail.test>): unknown user: \"test\"\n"
            ),
            "{text}"
        );
        let report = part("message/delivery-status");
        let fields: Vec<&str> = report
            .split("\n\n")
            .nth(1)
            .expect("a per-recipient block")
            .lines()
            .collect();
        assert_eq!(
            fields[0], "Final-Recipient: rfc822; test@mail.test",
            "{report}"
        );
        assert_eq!(
            &fields[2..4],
            ["Action: failed", "Status: 5.1.1"],
            "{report}"
        );
        orcpts.push(fields[1].to_string());
    }
    orcpts.sort();
    // The ORCPT as given over SMTP, and the one cleanup records (as Postfix's dsn_orig_rcpt)
    // for the sendmail submission that gave none: the same text.
    assert_eq!(
        orcpts,
        [
            "Original-Recipient: rfc822;toto@mail.test",
            "Original-Recipient: rfc822;toto@mail.test"
        ]
    );
    inst.stop();
}

/// A bounce notice's part of MIME type `ctype`, LF line ends.
fn notice_part(raw: &[u8], ctype: &str) -> String {
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("notice parses");
    assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
    msg.parts
        .iter()
        .find(|p| {
            p.content_type().is_some_and(|ct| {
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
                    .eq_ignore_ascii_case(ctype)
            })
        })
        .map(|p| String::from_utf8_lossy(p.contents()).replace("\r\n", "\n"))
        .unwrap_or_else(|| panic!("no {ctype} part in {}", String::from_utf8_lossy(raw)))
}

/// When several members of one alias fail, Postfix 3.7's notice lists each of them (text
/// paragraph and delivery-status block), not the members that were delivered; qmgr still
/// keeps one recipient with one status.
#[test]
fn each_failing_alias_member_is_named_in_the_notice() {
    let mut inst = Instance::with_main_cf_extra(
        "mydestination = mail.test\nmyorigin = mail.test\nalias_maps = texthash:$config_directory/aliases\nlocal_recipient_maps = texthash:$config_directory/users $alias_maps\nlocal_mailbox_base = $queue_directory/localusers\nhome_mailbox = Maildir/\n",
    );
    std::fs::write(inst.conf().join("aliases"), "trio: test, bob, nemo\n").unwrap();
    std::fs::write(inst.conf().join("users"), "bob x\n").unwrap();
    inst.start();
    let mut c = Smtp::connect(inst.smtp_port);
    c.reply();
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<carol@localhost>").starts_with("250"));
    let r = c.cmd("RCPT TO:<trio@mail.test> ORCPT=rfc822;trio@mail.test");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd("Subject: to three\r\n\r\npour trio\r\n.");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let carol = || inst.maildir_new("carol");
    assert!(
        wait_until(Duration::from_secs(20), || !carol().is_empty()),
        "{}",
        inst.log()
    );
    assert_eq!(local_new(&inst, "bob").len(), 1, "{}", inst.log());
    // The log lines stay one per member, under the member with the recipient as orig_to.
    let log = inst.log();
    for m in ["test", "nemo"] {
        assert!(
            log.contains(&format!(
                "to=<{m}@mail.test>, orig_to=<trio@mail.test>, relay=local, "
            )) && log.contains(&format!("status=bounced (unknown user: \"{m}\")")),
            "{log}"
        );
    }
    assert!(
        log.contains("to=<bob@mail.test>, orig_to=<trio@mail.test>, relay=local, "),
        "{log}"
    );
    let notices = carol();
    assert_eq!(notices.len(), 1, "{log}");
    let raw = std::fs::read(&notices[0]).unwrap();
    let text = notice_part(&raw, "text/plain");
    for m in ["test", "nemo"] {
        assert!(
            text.contains(&format!(
                "\n<{m}@mail.test> (expanded from <trio@mail.test>): unknown user: \"{m}\"\n"
            )),
            "{text}"
        );
    }
    assert!(!text.contains("bob@"), "{text}");
    let report = notice_part(&raw, "message/delivery-status");
    // The per-message block, then one per failing member in delivery order.
    let blocks: Vec<Vec<&str>> = report
        .split("\n\n")
        .skip(1)
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().collect())
        .collect();
    assert_eq!(blocks.len(), 2, "{report}");
    for (b, m) in blocks.iter().zip(["test", "nemo"]) {
        assert_eq!(
            &b[..4],
            [
                format!("Final-Recipient: rfc822; {m}@mail.test").as_str(),
                "Original-Recipient: rfc822;trio@mail.test",
                "Action: failed",
                "Status: 5.1.1"
            ],
            "{report}"
        );
        assert!(
            b.contains(&format!("Diagnostic-Code: X-Postfix; unknown user: \"{m}\"").as_str()),
            "{report}"
        );
    }
    inst.stop();
}

/// A user's .forward in the real binary: alice keeps a copy (`\alice`) and passes one to
/// bob; each delivery is logged under its own address, bob's with alice as orig_to.
#[test]
fn a_dot_forward_file_splits_delivery() {
    let mut inst = Instance::with_main_cf_extra(
        "mydestination = mail.test\nmyorigin = mail.test\nalias_maps =\nlocal_recipient_maps = texthash:$config_directory/users\nlocal_mailbox_base = $queue_directory/localusers\nhome_mailbox = Maildir/\n",
    );
    std::fs::write(inst.conf().join("users"), "bob x\nalice x\n").unwrap();
    let home = inst.queue().join("localusers/alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".forward"), "# mine\nbob, \\alice\n").unwrap();
    inst.start();
    sendmail(
        &inst,
        "carol@localhost",
        "alice@mail.test",
        b"Subject: fwd\n\nfor alice\n",
    );
    assert!(
        wait_until(Duration::from_secs(20), || local_new(&inst, "bob").len()
            == 1
            && local_new(&inst, "alice").len() == 1),
        "bob {:?} alice {:?}\n{}",
        local_new(&inst, "bob"),
        local_new(&inst, "alice"),
        inst.log()
    );
    let bob = std::fs::read_to_string(&local_new(&inst, "bob")[0]).unwrap();
    assert!(
        bob.starts_with("Return-Path: <carol@localhost>\nDelivered-To: bob@mail.test\n")
            && bob.contains("for alice"),
        "{bob}"
    );
    let log = inst.log();
    assert!(
        log.contains("to=<bob@mail.test>, orig_to=<alice@mail.test>, relay=local")
            && log.contains("to=<alice@mail.test>, relay=local"),
        "{log}"
    );
    inst.stop();
}
