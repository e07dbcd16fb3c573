//! The default conf/ delivers its local domain into Maildir: submitted with the real
//! `sendmail`, picked up, cleaned, queued, delivered by the virtual agent, removed.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn maildir_files(inst: &Instance, user: &str) -> Vec<std::path::PathBuf> {
    let dir = inst
        .queue()
        .join("mailboxes/localhost")
        .join(user)
        .join("new");
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn wait_files(inst: &Instance, user: &str, n: usize) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = maildir_files(inst, user);
        if f.len() >= n || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Submits `body` with the real sendmail, as `from`, to `to`.
fn sendmail(inst: &Instance, from: &str, to: &str, body: &[u8]) {
    let mut child = Command::new(bin("sendmail"))
        .args(["-C", inst.conf().to_str().unwrap(), "-f", from, to])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn sendmail_to_local_user_lands_in_maildir() {
    let mut inst = Instance::new();
    inst.start();
    sendmail(
        &inst,
        "alice@example.com",
        "bob@localhost",
        b"Subject: hello\nTo: bob@localhost\n\nFirst line.\n..leading dot kept\n",
    );
    let files = wait_files(&inst, "bob", 1);
    assert_eq!(
        files.len(),
        1,
        "no delivery: {files:?}; log:\n{}",
        inst.log()
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.starts_with(
            "Return-Path: <alice@example.com>\nDelivered-To: bob@localhost\nReceived: by "
        ),
        "{text}"
    );
    assert!(
        text.contains("\nSubject: hello\n")
            && text.contains("\nMessage-ID: <")
            && text.contains("\n\nFirst line.\n..leading dot kept\n"),
        "{text}"
    );
    assert!(
        inst.wait_log(": removed", Duration::from_secs(10)),
        "{}",
        inst.log()
    );
    let log = inst.log();
    assert!(
        log.contains("postfix/pickup[") && log.contains(": uid="),
        "{log}"
    );
    assert!(
        log.contains(": from=<alice@example.com>, size=") && log.contains("nrcpt=1 (queue active)"),
        "{log}"
    );
    assert!(
        log.contains(": to=<bob@localhost>, relay=virtual, delay=")
            && log.contains("status=sent (delivered to maildir)"),
        "{log}"
    );
    // The queue is empty afterwards.
    let q = inst.tool("postqueue", &["-p"]);
    assert_eq!(String::from_utf8_lossy(&q.stdout), "Mail queue is empty\n");
    inst.stop();
}

#[test]
fn undeliverable_mail_bounces_to_a_local_sender() {
    let mut inst = Instance::with_main_cf_extra(
        "transport_maps = inline:{ { bounce.example = error:5.1.1 No such user here } }",
    );
    inst.start();
    sendmail(
        &inst,
        "carol@localhost",
        "nobody@bounce.example",
        b"Subject: lost\n\nbody of the lost message\n",
    );
    let files = wait_files(&inst, "carol", 1);
    assert_eq!(
        files.len(),
        1,
        "no bounce notice: {files:?}\n{}",
        inst.log()
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.starts_with("Return-Path: <>\n"), "{text}");
    assert!(
        text.contains("Subject: Undelivered Mail Returned to Sender")
            && text.contains("report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("<nobody@bounce.example>: No such user here")
            && text.contains("Status: 5.1.1"),
        "{text}"
    );
    assert!(text.contains("body of the lost message"), "{text}");
    let log = inst.log();
    assert!(
        log.contains("to=<nobody@bounce.example>, relay=none")
            && log.contains("dsn=5.1.1, status=bounced (No such user here)"),
        "{log}"
    );
    assert!(
        log.contains("postfix/bounce[") && log.contains(": sender non-delivery notification: "),
        "{log}"
    );
    inst.stop();
}

/// As in Postfix, qmgr routes an address of a virtual mailbox domain to virtual_transport
/// even when virtual_mailbox_maps does not list it; virtual(8) bounces it with its own words.
#[test]
fn an_unlisted_virtual_mailbox_user_is_bounced_by_the_virtual_agent() {
    let mut inst = Instance::with_main_cf_extra(
        "virtual_mailbox_maps = inline:{ carol@localhost=localhost/carol/ }",
    );
    inst.start();
    sendmail(
        &inst,
        "carol@localhost",
        "Nobody@localhost",
        b"Subject: to nobody\n\nhello\n",
    );
    let files = wait_files(&inst, "carol", 1);
    assert_eq!(files.len(), 1, "no bounce notice\n{}", inst.log());
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("<Nobody@localhost>: unknown user: \"nobody@localhost\"")
            && text.contains("Status: 5.1.1"),
        "{text}"
    );
    let log = inst.log();
    assert!(
        log.contains("to=<Nobody@localhost>, relay=virtual")
            && log.contains("dsn=5.1.1, status=bounced (unknown user: \"nobody@localhost\")"),
        "{log}"
    );
    inst.stop();
}

/// always_bcc, sender_bcc_maps and recipient_bcc_maps add blind copies in cleanup, as in
/// Postfix, each as if given NOTIFY=NEVER: a copy that bounces sends the sender nothing.
#[test]
fn automatic_bcc_recipients_get_copies_and_their_failures_stay_silent() {
    let mut inst = Instance::with_main_cf_extra(
        "always_bcc = archive@localhost\nsender_bcc_maps = inline:{ { alice@localhost = alice-sent@localhost } }\nrecipient_bcc_maps = inline:{ { bob@localhost = lost@bounce.example } }\ntransport_maps = inline:{ { bounce.example = error:5.1.1 gone } }\n",
    );
    inst.start();
    sendmail(
        &inst,
        "alice@localhost",
        "bob@localhost",
        b"Subject: copies\n\nfor bob\n",
    );
    for user in ["bob", "archive", "alice-sent"] {
        let f = wait_files(&inst, user, 1);
        assert_eq!(f.len(), 1, "{user}: {f:?}\n{}", inst.log());
        let text = std::fs::read_to_string(&f[0]).unwrap();
        assert!(text.contains("for bob"), "{user}: {text}");
    }
    let log = inst.log();
    assert!(
        log.contains("to=<lost@bounce.example>") && log.contains("status=bounced (gone)"),
        "{log}"
    );
    // NOTIFY=NEVER for the copy: no notice reaches alice.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert!(maildir_files(&inst, "alice").is_empty(), "{}", inst.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A null sender gets no sender_bcc copy, always_bcc still applies.
    sendmail(
        &inst,
        "<>",
        "carol@localhost",
        b"Subject: null\n\nfrom nobody\n",
    );
    assert_eq!(wait_files(&inst, "carol", 1).len(), 1, "{}", inst.log());
    assert_eq!(wait_files(&inst, "archive", 2).len(), 2, "{}", inst.log());
    assert_eq!(maildir_files(&inst, "alice-sent").len(), 1);
    inst.stop();
}
