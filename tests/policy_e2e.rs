//! The access policy through the real relais binary: access(5) actions that change the
//! message (HOLD → hold queue, DISCARD → dropped, REDIRECT, BCC, PREPEND, FILTER through
//! qmgr's routing), and the no-open-relay list checked with swaks as a real client.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn swaks(port: u16, from: &str, to: &str, quit_after: Option<&str>) -> String {
    let mut c = Command::new("swaks");
    c.args([
        "--server",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--helo",
        "client.example.com",
        "--from",
        from,
        "--to",
        to,
        "--timeout",
        "20",
    ]);
    if let Some(q) = quit_after {
        c.args(["--quit-after", q]);
    }
    let out = run_bounded(&mut c, Duration::from_secs(60));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server's reply to RCPT in a swaks transcript (`<~ ` or `<** ` lines after `~> RCPT`).
fn rcpt_reply(t: &str) -> String {
    let mut after = false;
    for l in t.lines() {
        if l.contains("> RCPT TO") {
            after = true;
            continue;
        }
        if after && (l.starts_with("<~") || l.starts_with("<**") || l.starts_with("<-")) {
            return l.trim_start_matches(['<', '~', '*', '-', ' ']).to_string();
        }
    }
    String::new()
}

#[test]
fn access_actions_change_the_message() {
    let mut inst = Instance::with_main_cf_extra(
        "smtpd_recipient_restrictions = check_recipient_access inline:{ \
           { held@localhost = HOLD }, { trap@localhost = DISCARD }, \
           { moved@localhost = REDIRECT other@localhost }, \
           { copied@localhost = BCC archive@localhost }, \
           { tagged@localhost = PREPEND X-Policy-Tag: yes }, \
           { filtered@localhost = FILTER error:filtered by policy } \
         }, permit_mynetworks, reject_unauth_destination\n",
    );
    inst.start();
    let p = inst.smtp_port;
    for to in [
        "held@localhost",
        "trap@localhost",
        "moved@localhost",
        "copied@localhost",
        "tagged@localhost",
        "filtered@localhost",
    ] {
        let t = swaks(p, "sender@localhost", to, None);
        assert!(t.contains("250 2.0.0 Ok: queued as"), "{to}: {t}");
    }
    assert!(
        inst.wait_log("hold: RCPT from unknown[127.0.0.1]: <held@localhost>: Recipient address triggers HOLD action; from=<sender@localhost> to=<held@localhost> proto=ESMTP helo=<client.example.com>", Duration::from_secs(10)),
        "{}",
        inst.log()
    );
    // HOLD: in the hold queue (postqueue -j queue_name).
    assert!(
        wait_until(Duration::from_secs(10), || inst
            .queue_json()
            .iter()
            .any(|m| m["queue_name"] == "hold")),
        "{:?}",
        inst.queue_json()
    );
    assert!(inst.log().contains("discard: RCPT from unknown[127.0.0.1]: <trap@localhost>: Recipient address triggers DISCARD action"));
    assert!(inst.maildir_new("trap").is_empty());
    // REDIRECT and BCC deliver to the new addresses.
    assert!(
        wait_until(Duration::from_secs(15), || !inst
            .maildir_new("other")
            .is_empty()),
        "{}",
        inst.log()
    );
    assert!(inst.maildir_new("moved").is_empty());
    assert!(
        wait_until(Duration::from_secs(15), || !inst
            .maildir_new("archive")
            .is_empty()
            && !inst.maildir_new("copied").is_empty()),
        "{}",
        inst.log()
    );
    // PREPEND: the header is in the delivered message.
    assert!(wait_until(Duration::from_secs(15), || !inst
        .maildir_new("tagged")
        .is_empty()));
    let m = std::fs::read_to_string(&inst.maildir_new("tagged")[0]).unwrap();
    assert!(
        m.contains("\nX-Policy-Tag: yes\r\n") || m.contains("\nX-Policy-Tag: yes\n"),
        "{m}"
    );
    // FILTER: every recipient goes to the filter's transport (here the error transport).
    assert!(
        inst.wait_log(
            "to=<filtered@localhost>, relay=none",
            Duration::from_secs(15)
        ) && inst.wait_log("filtered by policy", Duration::from_secs(5)),
        "{}",
        inst.log()
    );
    assert!(inst.maildir_new("filtered").is_empty());
}

#[test]
fn no_open_relay_with_swaks() {
    // 127.0.0.1 is an outsider here: mynetworks does not contain it.
    let mut inst = Instance::with_main_cf_extra(
        "mynetworks = 192.0.2.0/24\nmydestination = localhost.localdomain\n",
    );
    inst.start();
    let p = inst.smtp_port;
    let ok = rcpt_reply(&swaks(p, "a@example.com", "user@localhost", Some("RCPT")));
    assert!(ok.starts_with("250"), "own recipient: {ok}");
    let ok = rcpt_reply(&swaks(p, "a@example.com", "USER@LOCALHOST", Some("RCPT")));
    assert!(
        ok.starts_with("250"),
        "case variant of our own domain: {ok}"
    );
    for trick in [
        "toto@tutu.org",
        "toto@TUTU.ORG",
        "toto@tutu.org.",
        "toto%tutu.org@localhost",
        "tutu.org!toto@localhost",
        "\"toto@tutu.org\"@localhost",
        "\"toto%tutu.org\"@localhost",
        "@localhost:toto@tutu.org",
        "toto@[192.0.2.1]",
        "toto@[127.0.0.1]",
        "toto%tutu.org",
        "tutu.org!toto",
    ] {
        let t = swaks(p, "a@example.com", trick, Some("RCPT"));
        let r = rcpt_reply(&t);
        assert!(
            r.starts_with('4') || r.starts_with('5'),
            "{trick} was not refused: {r:?}\n{t}"
        );
    }
    assert!(inst.log().contains("Relay access denied"));
    assert!(inst.queue_json().is_empty());
}
