//! Issue 3 acceptance with real SMTP clients against the real `relais` binary: Python's
//! smtplib, swaks (relay refusal and open-relay tricks from outside mynetworks) and Postfix's
//! own load generator `smtp-source`, whose 1,000 messages must all be listed by `postqueue -j`.

mod common;
use common::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// Runs a Python 3 script (bounded); its stdout, or a failure with stderr and the log.
fn python(inst: &Instance, script: &str) -> String {
    let out = run_bounded(
        Command::new("python3").arg("-c").arg(script),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "python failed: {}\n--- log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        inst.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// swaks against the instance's smtp port from `source`; (exit success, transcript).
fn swaks(inst: &Instance, source: &str, args: &[&str]) -> (bool, String) {
    let server = format!("127.0.0.1:{}", inst.smtp_port);
    let out = run_bounded(
        Command::new("swaks")
            .args(["--server", &server, "--local-interface", source])
            .args(["--from", "sender@example.com", "--helo", "client.example"])
            .args(["--timeout", "20"])
            .args(args),
        Duration::from_secs(60),
    );
    let mut t = String::from_utf8_lossy(&out.stdout).into_owned();
    t.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), t)
}

/// The server's answer to `RCPT TO:<…>` in a swaks transcript (`<-  ` or `<** ` line after it).
fn rcpt_reply(transcript: &str) -> String {
    let mut lines = transcript.lines();
    while let Some(l) = lines.next() {
        if l.starts_with(" -> RCPT TO:") {
            return lines
                .next()
                .map(|r| r.get(4..).unwrap_or("").trim().to_string())
                .unwrap_or_default();
        }
    }
    String::new()
}

#[test]
fn python_smtplib_delivers_to_a_local_user() {
    let mut inst = Instance::new();
    inst.start();
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, local_hostname="client.example", timeout=20)
code, caps = s.ehlo()
assert code == 250, (code, caps)
assert s.has_extn("pipelining") and s.has_extn("8bitmime"), caps
msg = "From: alice@example.com\r\nTo: bob@localhost\r\nSubject: smtplib test\r\n\r\nmarker-smtplib-7f3a\r\n.dot line\r\n"
refused = s.sendmail("alice@example.com", ["bob@localhost"], msg)
assert refused == {{}}, refused
code, text = s.noop()
print(code)
s.quit()
"#,
        port = inst.smtp_port
    );
    assert_eq!(python(&inst, &script).trim(), "250");
    assert!(
        wait_until(Duration::from_secs(20), || inst.maildir_new("bob").len()
            == 1),
        "not delivered into bob's Maildir; log:\n{}",
        inst.log()
    );
    let text = std::fs::read_to_string(&inst.maildir_new("bob")[0]).unwrap();
    assert!(
        text.starts_with("Return-Path: <alice@example.com>\nDelivered-To: bob@localhost\n"),
        "{text}"
    );
    assert!(
        text.contains("\nSubject: smtplib test\n")
            && text.contains("\n\nmarker-smtplib-7f3a\n.dot line\n"),
        "{text}"
    );
    assert!(
        text.contains("Received: from client.example (") && text.contains("with ESMTP id "),
        "{text}"
    );
    assert!(
        inst.wait_log(": removed", Duration::from_secs(10)),
        "{}",
        inst.log()
    );
    inst.stop();
}

#[test]
fn python_smtplib_from_outside_mynetworks_cannot_relay() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "mynetworks = 127.0.0.1/32\n{}",
        relayhost_to_nowhere()
    ));
    inst.start();
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, local_hostname="client.example", timeout=20,
                 source_address=("127.0.0.2", 0))
s.ehlo()
print(s.mail("sender@example.com")[0])
code, text = s.rcpt("toto@tutu.org")
print(code, text.decode())
code, text = s.rcpt("bob@localhost")
print(code, text.decode())
s.quit()
"#,
        port = inst.smtp_port
    );
    let out = python(&inst, &script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "250",
            "454 4.7.1 <toto@tutu.org>: Relay access denied",
            "250 2.1.5 Ok"
        ],
        "{out}"
    );
    // The refusal is logged the Postfix way, with the client's real address.
    assert!(
        inst.wait_log(
            "reject: RCPT from unknown[127.0.0.2]: 454 4.7.1 <toto@tutu.org>: Relay access denied;",
            Duration::from_secs(5)
        ),
        "{}",
        inst.log()
    );
    // The same client from inside mynetworks (127.0.0.1) may relay.
    let script = script.replace("\"127.0.0.2\"", "\"127.0.0.1\"");
    let out = python(&inst, &script);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["250", "250 2.1.5 Ok", "250 2.1.5 Ok"],
        "{out}"
    );
    inst.stop();
}

#[test]
fn swaks_relay_denied_and_open_relay_tricks_refused() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "mynetworks = 127.0.0.1/32\n{}",
        relayhost_to_nowhere()
    ));
    inst.start();
    let (ok, t) = swaks(
        &inst,
        "127.0.0.2",
        &["--to", "toto@tutu.org", "--quit-after", "RCPT"],
    );
    assert!(!ok, "swaks should report the refused recipient:\n{t}");
    assert_eq!(
        rcpt_reply(&t),
        "454 4.7.1 <toto@tutu.org>: Relay access denied",
        "{t}"
    );
    // Sender-specified routing must never turn relais into an open relay, whatever its form.
    for trick in [
        "toto%tutu.org@localhost",     // percent hack
        "\"toto@tutu.org\"@localhost", // quoted local part holding an address
        "\"toto%tutu.org\"@localhost", // quoted percent hack
        "@localhost:toto@tutu.org",    // RFC 821 source route
        "tutu.org!toto@localhost",     // UUCP bang path
        "toto%tutu.org",               // bare percent hack (completed with $myorigin)
        "tutu.org!toto",               // bare bang path
        "toto@tutu.org@localhost",     // nested @
        "toto@[192.0.2.1]",            // address literal elsewhere
        "toto@TUTU.ORG.",              // case and trailing dot
    ] {
        let (ok, t) = swaks(&inst, "127.0.0.2", &["--to", trick, "--quit-after", "RCPT"]);
        let reply = rcpt_reply(&t);
        assert!(!ok, "{trick} accepted:\n{t}");
        assert!(
            reply.starts_with("454 4.7.1 <") && reply.ends_with(">: Relay access denied")
                || reply.starts_with("501 5.1.3 "),
            "{trick}: {reply}\n{t}"
        );
    }
    let (ok, t) = swaks(
        &inst,
        "127.0.0.2",
        &["--to", "bob@localhost", "--quit-after", "RCPT"],
    );
    assert!(ok, "{t}");
    assert_eq!(rcpt_reply(&t), "250 2.1.5 Ok", "{t}");
    // And a whole message from outside to the local user is delivered.
    let (ok, t) = swaks(
        &inst,
        "127.0.0.2",
        &["--to", "bob@localhost", "--body", "marker-swaks-51c2"],
    );
    assert!(ok, "{t}");
    assert!(t.contains("<-  250 2.0.0 Ok: queued as "), "{t}");
    assert!(
        wait_until(Duration::from_secs(20), || inst.maildir_new("bob").len()
            == 1),
        "{}",
        inst.log()
    );
    let text = std::fs::read_to_string(&inst.maildir_new("bob")[0]).unwrap();
    assert!(text.contains("marker-swaks-51c2"), "{text}");
    // Nothing that was refused reached the queue: it holds no message at all.
    assert!(
        wait_until(Duration::from_secs(10), || inst.queue_json().is_empty()),
        "{:?}",
        inst.queue_json()
    );
    inst.stop();
}

#[test]
fn smtp_source_1000_messages_all_listed_by_postqueue() {
    let mut inst = Instance::with_main_cf_extra(&relayhost_to_nowhere());
    inst.start();
    let out = run_bounded(
        Command::new("/usr/sbin/smtp-source").args([
            "-s",
            "20",
            "-m",
            "1000",
            "-c",
            "-f",
            "sender@example.com",
            "-t",
            "rcpt@example.net",
            "-l",
            "5120",
            &format!("127.0.0.1:{}", inst.smtp_port),
        ]),
        Duration::from_secs(240),
    );
    assert!(
        out.status.success(),
        "smtp-source failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        inst.log()
    );
    // smtp-source reports trouble (a non-2xx reply, a lost session) on stderr.
    assert!(
        out.stderr.is_empty(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut entries = Vec::new();
    let all = wait_until(Duration::from_secs(60), || {
        entries = inst.queue_json();
        entries.len() >= 1000
    });
    assert!(all, "only {} messages in the queue", entries.len());
    assert_eq!(entries.len(), 1000);
    let mut ids = HashSet::new();
    for e in &entries {
        let id = e["queue_id"].as_str().expect("queue_id");
        assert!(ids.insert(id.to_string()), "duplicate id {id}");
        assert!(
            ["incoming", "active", "deferred"].contains(&e["queue_name"].as_str().unwrap_or("")),
            "{e}"
        );
        assert_eq!(e["sender"], "sender@example.com", "{e}");
        let rcpts = e["recipients"].as_array().expect("recipients");
        assert_eq!(rcpts.len(), 1, "{e}");
        assert_eq!(rcpts[0]["address"], "rcpt@example.net", "{e}");
        // 5120 bytes of payload plus smtp-source's and our headers, counted with CRLF.
        let size = e["message_size"].as_u64().expect("message_size");
        assert!((5120..5120 + 1024).contains(&size), "{e}");
        assert!(
            e["arrival_time"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000),
            "{e}"
        );
    }
    // message_size is the content as stored, each line counted with CRLF (what Postfix's
    // record-based size comes to for short lines): check it exactly on a sample.
    for e in entries.iter().step_by(100) {
        let id = e["queue_id"].as_str().unwrap_or_default();
        let (ok, text) = inst.postcat(id);
        assert!(ok, "postcat -q {id} failed");
        let start = text
            .find("*** MESSAGE CONTENTS ")
            .expect("contents section");
        let body = &text[start..];
        let body = &body[body.find('\n').map_or(0, |i| i + 1)..];
        let end = body.find("*** HEADER EXTRACTED ").unwrap_or(body.len());
        let crlf: usize = body[..end].lines().map(|l| l.len() + 2).sum();
        assert_eq!(e["message_size"].as_u64(), Some(crlf as u64), "{id}");
        assert!(
            body.contains("From: <sender@example.com>") && body.contains("To: <rcpt@example.net>"),
            "{text}"
        );
    }
    // Nothing was delivered: the relayhost is a closed port.
    assert!(!inst.log().contains("status=sent"), "{}", inst.log());
    inst.stop();
}
