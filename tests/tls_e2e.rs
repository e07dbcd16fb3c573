//! STARTTLS and wrapper mode with the default conf's self-signed certificate, against real
//! clients (Python's smtplib/ssl, openssl s_client), plus the STARTTLS injection defence.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn python(script: &str) -> (bool, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn starttls_and_smtps_deliver_with_a_tls_received_header() {
    let mut inst = Instance::new();
    inst.start();
    assert!(
        inst.queue().join("tls/cert.pem").exists(),
        "no self-signed certificate generated"
    );
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", {p}, timeout=20)
s.ehlo("client.example.com")
assert s.has_extn("starttls"), s.esmtp_features
s.starttls(context=ctx)
s.ehlo("client.example.com")
assert not s.has_extn("starttls")
s.sendmail("alice@example.com", ["bob@localhost"], "Subject: over tls\r\n\r\nsecret\r\n")
s.quit()
w = smtplib.SMTP_SSL("127.0.0.1", {w}, context=ctx, timeout=20)
w.ehlo("client.example.com")
w.sendmail("alice@example.com", ["carol@localhost"], "Subject: wrapped\r\n\r\nwrapped\r\n")
w.quit()
print("ok")
"#,
        p = inst.smtp_port,
        w = inst.smtps_port
    );
    let (ok, out) = python(&script);
    assert!(ok, "{out}\n{}", inst.log());
    assert!(
        inst.wait_log(
            "to=<carol@localhost>, relay=virtual",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    assert!(
        inst.wait_log("to=<bob@localhost>, relay=virtual", Duration::from_secs(20)),
        "{}",
        inst.log()
    );
    let dir = inst.queue().join("mailboxes/localhost/bob/new");
    let f = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(f).unwrap();
    assert!(
        text.contains("(using TLSv1.3 with cipher TLS_") && text.contains("with ESMTPS id "),
        "{text}"
    );
    assert!(
        inst.log().contains(
            "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher"
        ),
        "{}",
        inst.log()
    );
    inst.stop();
}

#[test]
fn commands_pipelined_with_starttls_are_discarded() {
    let mut inst = Instance::new();
    inst.start();
    // STARTTLS and a plaintext MAIL FROM in the same packet: the MAIL must not be answered,
    // neither in plaintext nor inside the TLS session (CVE-2011-0411).
    let child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{}", inst.smtp_port),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    if child.is_err() {
        eprintln!("openssl not installed; skipping the s_client part");
    }
    let mut s = Smtp::connect(inst.smtp_port);
    assert!(s.reply().starts_with("220 "));
    assert!(s.cmd("EHLO client.example.com").contains("250-STARTTLS"));
    s.send_raw(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n");
    let r = s.reply();
    assert!(r.starts_with("220 2.0.0 Ready to start TLS"), "{r}");
    // No further plaintext reply arrives: the server now waits for a TLS ClientHello.
    s.w.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.r.get_mut().read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "server answered the injected command in plaintext: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(s);
    if let Ok(mut c) = child {
        let mut stdin = c.stdin.take().unwrap();
        stdin
            .write_all(b"EHLO client.example.com\r\nQUIT\r\n")
            .unwrap();
        drop(stdin);
        let mut out = String::new();
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let _ = c.wait();
        assert!(
            out.contains("250 CHUNKING") && !out.contains("STARTTLS\r\n250"),
            "{out}"
        );
    }
    inst.stop();
}

#[test]
fn encrypt_level_requires_starttls_before_mail() {
    let mut inst = Instance::with_main_cf_extra("smtpd_tls_security_level = encrypt");
    inst.start();
    let mut s = Smtp::connect(inst.smtp_port);
    s.reply();
    assert!(s.cmd("EHLO client.example.com").contains("STARTTLS"));
    let r = s.cmd("MAIL FROM:<a@example.com>");
    assert!(
        r.starts_with("530 5.7.0 Must issue a STARTTLS command first"),
        "{r}"
    );
    s.cmd("QUIT");
    inst.stop();
}
