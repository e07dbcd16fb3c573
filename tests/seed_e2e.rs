//! Issue 7: the seed's mail system end to end. relais runs on the seed's own main.cf/master.cf
//! (../shared/fixtures/seed-config, copied by tools/seed-rewrite, which moves only paths,
//! listening addresses and adds relais_dns_servers), with the seed's SQLite database, a real
//! Dovecot (LMTP, SASL auth, IMAP) using the seed's SQL queries, a test CA, a DNS zone like seed
//! 003's and an outside relais MX for tutu.org. Each flow of the issue is one test; see
//! tests/seed/mod.rs for the set-up. Clients connect from [::1], which is outside the seed's
//! mynetworks (127.0.0.0/8, 192.168.0.0/16).

mod common;
mod delivery;
mod seed;
use common::*;
use seed::*;
use std::process::Command;
use std::time::Duration;

macro_rules! seed_or_skip {
    ($outside:expr) => {{
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
        Seed::start($outside)
    }};
}

/// Sends one message over port 25 from the outside (STARTTLS verified against the test CA)
/// with Python's smtplib; returns the script's output (the plaintext MAIL reply first).
fn send_inbound(s: &Seed, from: &str, rcpts: &[&str], message: &str) -> String {
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP("::1", {port}, timeout=30)
s.ehlo("client.outside.example")
code, msg = s.docmd("MAIL FROM:<{from}>")
print("plaintext MAIL:", code, msg.decode())
s.starttls(context=ctx)
s.ehlo("client.outside.example")
refused = s.sendmail({from:?}, {rcpts:?}, {message:?}.encode("utf-8"))
print("refused:", refused)
s.quit()
"#,
        ca = s.ca_file.display().to_string(),
        port = s.relais.smtp_port,
    );
    let (ok, out, err) = python(&script);
    assert!(
        ok,
        "SMTP client failed: {err}\n{out}\nrelais log:\n{}",
        s.relais.log()
    );
    out
}

fn message(subject: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@tutu.org>\r\nTo: Test Dupont <test@exemple.fr>\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <{subject}@tutu.org>\r\n{extra_headers}\r\n{body}\r\n"
    )
}

/// The one message in `msgs` whose Subject is `subject`.
fn with_subject<'a>(msgs: &'a [String], subject: &str) -> &'a str {
    let needle = format!("Subject: {subject}\r\n");
    msgs.iter()
        .find(|m| {
            m.replace("\r\n", "\n")
                .contains(&needle.replace("\r\n", "\n"))
        })
        .unwrap_or_else(|| panic!("no message with subject {subject:?} among {msgs:#?}"))
}

#[test]
fn flow1_inbound_starttls_lmtp_to_dovecot_read_back_over_imap() {
    let s = seed_or_skip!(false);
    let out = send_inbound(
        &s,
        "alice@tutu.org",
        &["test@exemple.fr"],
        &message(
            "flow1",
            "X-Seed-Flow: one\r\nX-Mailer: removed by header_checks\r\n",
            "Bonjour, un message entrant.",
        ),
    );
    // smtpd_tls_security_level = encrypt: plaintext MAIL is refused before STARTTLS.
    assert!(
        out.contains("plaintext MAIL: 530 5.7.0 Must issue a STARTTLS command first"),
        "{out}"
    );
    assert!(out.contains("refused: {}"), "{out}");
    s.wait_mailbox(1);
    let inbox = s.imap_inbox();
    assert_eq!(inbox.len(), 1, "{inbox:#?}");
    let m = with_subject(&inbox, "flow1");
    let head = header_block(m);
    for h in [
        "From: Alice <alice@tutu.org>",
        "To: Test Dupont <test@exemple.fr>",
        "Date: Mon, 23 Nov 2026 10:00:00 +0100",
        "Message-ID: <flow1@tutu.org>",
        "X-Seed-Flow: one",
        "Return-Path: <alice@tutu.org>",
        "Delivered-To: test@exemple.fr",
    ] {
        assert!(head.contains(h), "header {h:?} missing in\n{m}");
    }
    assert!(m.contains("Bonjour, un message entrant."), "{m}");
    // The seed's header_checks apply to every message (cleanup), inbound too.
    assert!(!head.contains("X-Mailer:"), "X-Mailer kept:\n{m}");
    // relais's Received: names the TLS version (smtpd_tls_received_header = yes).
    let received = head
        .split("\nReceived: ")
        .skip(1)
        .find(|r| r.contains("by mail.exemple.fr"))
        .unwrap_or_else(|| panic!("no Received: by mail.exemple.fr in\n{m}"));
    assert!(
        received.contains("(using TLSv1.3 with cipher ") && received.contains("with ESMTPS id "),
        "Received: {received}"
    );
    let log = s.relais.log();
    assert!(
        log.contains("to=<test@exemple.fr>, relay=")
            && log.contains("status=sent (250 2.0.0 <test@exemple.fr>"),
        "{log}"
    );
    assert!(
        log.contains("Anonymous TLS connection established from unknown[::1]: TLSv1."),
        "{log}"
    );
    assert!(
        s.dovecot.log().contains("saved mail to INBOX"),
        "{}",
        s.dovecot.log()
    );
    // The auth socket where smtpd_sasl_path = private/auth points answers for the seed's user
    // (what flows 5 and 6 need from Dovecot).
    let auth = s.relais.queue().join("private/auth");
    let out = run_bounded(
        Command::new("doveadm")
            .arg("-c")
            .arg(s.dovecot.dir.join("dovecot.conf"))
            .args(["auth", "test", "-a"])
            .arg(&auth)
            .args(["test@exemple.fr", PASSWORD]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("auth succeeded"),
        "doveadm auth test: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flow2_virtual_alias_reaches_the_mailbox_and_unknown_users_are_refused() {
    let s = seed_or_skip!(false);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP("::1", {port}, timeout=30)
s.starttls(context=ctx)
s.ehlo("client.outside.example")
print("MAIL", s.docmd("MAIL FROM:<alice@tutu.org>"))
print("UNKNOWN", s.docmd("RCPT TO:<inconnu@exemple.fr>"))
print("VALIAS", s.docmd("RCPT TO:<ycharbi@exemple.fr>"))
print("DATA", s.docmd("DATA"))
s.send(({msg:?} + ".\r\n").encode("utf-8"))
print("END", s.getreply())
s.quit()
"#,
        ca = s.ca_file.display().to_string(),
        port = s.relais.smtp_port,
        msg = message(
            "flow2",
            "To: ycharbi@exemple.fr\r\n",
            "pour l'alias virtuel"
        )
    );
    let (ok, out, err) = python(&script);
    assert!(ok, "{err}\n{out}");
    assert!(
        out.contains("UNKNOWN (550, b'5.1.1 <inconnu@exemple.fr>: Recipient address rejected: User unknown in virtual mailbox table')"),
        "{out}"
    );
    assert!(out.contains("VALIAS (250, b'2.1.5 Ok')"), "{out}");
    assert!(out.contains("END (250, b'2.0.0 Ok: queued as "), "{out}");
    s.wait_mailbox(1);
    let inbox = s.imap_inbox();
    let m = with_subject(&inbox, "flow2");
    assert!(m.contains("pour l'alias virtuel"), "{m}");
    let log = s.relais.log();
    assert!(
        log.contains("to=<test@exemple.fr>, orig_to=<ycharbi@exemple.fr>, relay="),
        "{log}"
    );
}

/// The seed's alias row (toto → test) through alias_maps, which local(8) consults for
/// mydestination (mail.exemple.fr). smtpd accepts toto (alias_maps is part of
/// local_recipient_maps); local(8) expands it to test@mail.exemple.fr, and as in Postfix 3.7
/// that bounces "unknown user: \"test\"" (NOTES.md item 4): `test` is not a Unix user.
#[test]
fn flow2_local_alias_is_expanded_through_alias_maps() {
    let s = seed_or_skip!(false);
    let out = send_inbound(
        &s,
        "alice@tutu.org",
        &["toto@mail.exemple.fr"],
        &message("flow2-alias", "", "pour toto"),
    );
    assert!(out.contains("refused: {}"), "{out}");
    assert!(
        s.relais.wait_log(
            "to=<test@mail.exemple.fr>, orig_to=<toto@mail.exemple.fr>",
            Duration::from_secs(30)
        ),
        "{}",
        s.relais.log()
    );
    assert!(
        s.relais.log().contains("unknown user: \"test\""),
        "{}",
        s.relais.log()
    );
}

#[test]
fn flow3_sender_and_recipient_blacklists_from_sqlite() {
    let s = seed_or_skip!(false);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP("::1", {port}, timeout=30)
s.starttls(context=ctx)
s.ehlo("client.outside.example")
print("MAIL1", s.docmd("MAIL FROM:<tata@tata.fr>"))
print("RCPT1", s.docmd("RCPT TO:<test@exemple.fr>"))
print("RSET", s.docmd("RSET"))
print("MAIL2", s.docmd("MAIL FROM:<alice@tutu.org>"))
print("RCPT2", s.docmd("RCPT TO:<root@mail.exemple.fr>"))
print("RCPT3", s.docmd("RCPT TO:<test@exemple.fr>"))
s.quit()
"#,
        ca = s.ca_file.display().to_string(),
        port = s.relais.smtp_port,
    );
    let (ok, out, err) = python(&script);
    assert!(ok, "{err}\n{out}");
    // smtpd_delay_reject = yes (default): the sender restriction answers at RCPT TO. The
    // reply is ASCII: without compatibility_level the seed has smtputf8_enable = no, so each
    // byte of "à" and "ê" becomes a space, as Postfix 3.7 does (NOTES.md item 1).
    assert!(out.contains("MAIL1 (250, b'2.1.0 Ok')"), "{out}");
    assert!(
        out.contains("RCPT1 (554, b'5.7.1 <tata@tata.fr>: Sender address rejected: Parle    ma main, ma t  te est malade.')"),
        "{out}"
    );
    assert!(
        out.contains("RCPT2 (554, b'5.7.1 <root@mail.exemple.fr>: Recipient address rejected: Access denied')"),
        "{out}"
    );
    assert!(out.contains("RCPT3 (250, b'2.1.5 Ok')"), "{out}");
    let log = s.relais.log();
    assert!(
        log.contains(
            "reject: RCPT from unknown[::1]: 554 5.7.1 <tata@tata.fr>: Sender address rejected"
        ),
        "{log}"
    );
}

#[test]
fn flow4_unauthenticated_relay_is_denied_seed_swaks_check() {
    let s = seed_or_skip!(false);
    let port = s.relais.smtp_port.to_string();
    // The seed's own check, `swaks --server … --to toto@tutu.org`: without --tls it meets
    // smtpd_tls_security_level = encrypt first (NOTES.md item 2).
    let plain = run_bounded(
        Command::new("swaks").args([
            "--server",
            "::1",
            "--port",
            &port,
            "--to",
            "toto@tutu.org",
            "--from",
            "someone@tutu.org",
            "--helo",
            "client.outside.example",
        ]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(!plain.status.success(), "{text}");
    assert!(
        text.contains("<** 530 5.7.0 Must issue a STARTTLS command first"),
        "{text}"
    );
    let tls = run_bounded(
        Command::new("swaks").args([
            "--server",
            "::1",
            "--port",
            &port,
            "--tls",
            "--to",
            "toto@tutu.org",
            "--from",
            "someone@tutu.org",
            "--helo",
            "client.outside.example",
        ]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&tls.stdout);
    assert!(!tls.status.success(), "{text}");
    // swaks marks a failure inside TLS with "<~*".
    assert!(
        text.contains("<~* 554 5.7.1 <toto@tutu.org>: Relay access denied"),
        "{text}"
    );
    assert!(text.contains("TLS started"), "{text}");
    assert!(s.relais.queue_json().is_empty());
}

/// AUTH PLAIN as test@exemple.fr (UTF-8 password, base64 by hand: smtplib's login() only
/// takes ASCII) then one message to toto@tutu.org carrying the headers header_checks removes.
fn submit_authenticated(s: &Seed, port: u16, wrapper: bool, subject: &str) -> String {
    let connect = if wrapper {
        format!("s = smtplib.SMTP_SSL('::1', {port}, context=ctx, timeout=30)")
    } else {
        format!("s = smtplib.SMTP('::1', {port}, timeout=30)\ns.starttls(context=ctx)")
    };
    let script = format!(
        r#"
import smtplib, ssl, base64
ctx = ssl.create_default_context(cafile={ca:?})
{connect}
s.ehlo("laptop.exemple.fr")
tok = base64.b64encode(("\0test@exemple.fr\0" + {pw:?}).encode("utf-8")).decode()
print("AUTH", s.docmd("AUTH", "PLAIN " + tok))
msg = "From: test@exemple.fr\r\nTo: toto@tutu.org\r\nSubject: {subject}\r\nX-Originating-IP: [192.0.2.7]\r\nX-Mailer: Seed Mailer 1.0\r\nUser-Agent: Thunderbird\r\n\r\nsortant\r\n"
print("refused:", s.sendmail("test@exemple.fr", ["toto@tutu.org"], msg))
s.quit()
"#,
        ca = s.ca_file.display().to_string(),
        pw = PASSWORD,
    );
    let (ok, out, err) = python(&script);
    assert!(ok, "{err}\n{out}\nrelais log:\n{}", s.relais.log());
    assert!(out.contains("AUTH (235, "), "{out}");
    out
}

fn check_outbound(s: &Seed, subject: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || s
            .outside_mail()
            .iter()
            .any(|m| m.contains(&format!("Subject: {subject}")))),
        "not delivered to the outside MX\nqueue:\n{}\nrelais log:\n{}",
        String::from_utf8_lossy(&s.relais.tool("postqueue", &["-p"]).stdout),
        s.relais.log()
    );
    let got = s.outside_mail();
    let m = got
        .iter()
        .find(|m| m.contains(&format!("Subject: {subject}")))
        .unwrap();
    let head = header_block(m);
    for gone in [
        "with ESMTPSA",
        "X-Originating-IP:",
        "X-Mailer:",
        "User-Agent:",
    ] {
        assert!(!head.contains(gone), "{gone} should be removed:\n{m}");
    }
    assert!(m.contains("sortant"), "{m}");
    let log = s.relais.log();
    assert!(
        log.contains(&format!(
            "to=<toto@tutu.org>, relay=monserveur1.tutu.org[{}]:25",
            s.outside_ip
        )) || log.contains(&format!(
            "to=<toto@tutu.org>, relay=monserveur2.tutu.org[{}]:25",
            s.outside_ip
        )),
        "{log}"
    );
    assert!(
        log.contains("TLS connection established to monserveur"),
        "{log}"
    );
}

#[test]
fn flow5_submission_auth_and_delivery_by_mx_over_tls() {
    let s = seed_or_skip!(true);
    let out = submit_authenticated(&s, s.relais.submission_port, false, "flow5");
    assert!(out.contains("refused: {}"), "{out}");
    check_outbound(&s, "flow5");
}

#[test]
fn flow6_smtps_wrapper_mode_with_auth() {
    let s = seed_or_skip!(true);
    let out = submit_authenticated(&s, s.relais.smtps_port, true, "flow6");
    assert!(out.contains("refused: {}"), "{out}");
    check_outbound(&s, "flow6");
}

#[test]
fn flow6_smtps_without_auth_is_refused_by_the_client_restrictions() {
    let s = seed_or_skip!(false);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP_SSL("::1", {port}, context=ctx, timeout=30)
s.ehlo("laptop.exemple.fr")
print("MAIL", s.docmd("MAIL FROM:<test@exemple.fr>"))
print("RCPT", s.docmd("RCPT TO:<test@exemple.fr>"))
print("RCPT2", s.docmd("RCPT TO:<toto@tutu.org>"))
s.quit()
"#,
        ca = s.ca_file.display().to_string(),
        port = s.relais.smtps_port,
    );
    let (ok, out, err) = python(&script);
    assert!(ok, "{err}\n{out}");
    // -o smtpd_client_restrictions=permit_mynetworks,permit_sasl_authenticated,reject: a
    // client outside mynetworks that did not authenticate is refused, even for a local
    // mailbox (the answer comes at RCPT TO, smtpd_delay_reject = yes).
    assert!(
        out.contains("RCPT (554, b'5.7.1 <unknown[::1]>: Client host rejected: Access denied')"),
        "{out}"
    );
    assert!(
        out.contains("RCPT2 (554, b'5.7.1 <unknown[::1]>: Client host rejected: Access denied')"),
        "{out}"
    );
    assert!(s.relais.queue_json().is_empty());
}

/// Queue IDs and their marks from `postqueue -p`.
fn queue_ids(s: &Seed) -> Vec<(String, char)> {
    delivery::queue_ids(&s.relais)
}

fn postsuper(s: &Seed, args: &[&str]) -> String {
    let out = s.relais.tool("postsuper", args);
    assert!(
        out.status.success(),
        "postsuper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Three messages to toto@tutu.org, through sendmail (pickup), waiting in the queue while the
/// outside MX is down.
fn queue_three(s: &Seed) -> Vec<String> {
    for i in 1..=3 {
        s.sendmail(
            "test@exemple.fr",
            "toto@tutu.org",
            &format!("From: test@exemple.fr\nTo: toto@tutu.org\nSubject: en attente {i}\n\nmessage {i} en file\n"),
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let q = s.relais.queue_json();
            q.len() == 3
                && q.iter().all(|m| {
                    m["queue_name"] == "deferred"
                        && m["recipients"][0]["delay_reason"].as_str().is_some()
                })
        }),
        "three deferred messages expected:\n{:#?}\n{}",
        s.relais.queue_json(),
        s.relais.log()
    );
    let mut ids: Vec<String> = queue_ids(s).into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(ids.len(), 3);
    ids
}

#[test]
fn flow7_queue_management_table_with_the_outside_mx_down() {
    let s = seed_or_skip!(false);
    let ids = queue_three(&s);
    // postqueue -p lists them with the reason.
    let p = String::from_utf8_lossy(&s.relais.tool("postqueue", &["-p"]).stdout).into_owned();
    for id in &ids {
        assert!(p.contains(id.as_str()), "{p}");
    }
    assert!(
        p.contains("toto@tutu.org") && p.contains("-- ") && p.contains("in 3 Requests."),
        "{p}"
    );

    // postsuper -h ID / -H ID.
    let err = postsuper(&s, &["-h", &ids[0]]);
    assert!(
        err.contains("postsuper: Placed on hold: 1 message"),
        "{err}"
    );
    assert!(
        queue_ids(&s).contains(&(ids[0].clone(), '!')),
        "{:?}",
        queue_ids(&s)
    );
    let err = postsuper(&s, &["-H", &ids[0]]);
    assert!(
        err.contains("postsuper: Released from hold: 1 message"),
        "{err}"
    );
    assert!(
        !queue_ids(&s).iter().any(|(_, mark)| *mark == '!'),
        "{:?}",
        queue_ids(&s)
    );

    // postsuper -r ALL.
    let err = postsuper(&s, &["-r", "ALL"]);
    assert!(err.contains("postsuper: Requeued: 3 messages"), "{err}");

    // The requeued messages are tried again at once, and wait again.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let q = s.relais.queue_json();
            q.len() == 3 && q.iter().all(|m| m["queue_name"] == "deferred")
        }),
        "{:#?}",
        s.relais.queue_json()
    );

    // Like Postfix, a requeued message goes through cleanup again and gets a new ID.
    let mut ids: Vec<String> = queue_ids(&s).into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(ids.len(), 3, "{ids:?}");

    // postcat -q ID.
    let out = s.relais.tool("postcat", &["-q", &ids[1]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "postcat -q {}: {}",
        ids[1],
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Subject: en attente") && text.contains("toto@tutu.org"),
        "{text}"
    );

    // postsuper -d ID, then -d ALL.
    let err = postsuper(&s, &["-d", &ids[2]]);
    assert!(err.contains("postsuper: Deleted: 1 message"), "{err}");
    assert!(
        wait_until(Duration::from_secs(20), || queue_ids(&s).len() == 2),
        "{:?}",
        queue_ids(&s)
    );
    let err = postsuper(&s, &["-d", "ALL"]);
    assert!(err.contains("postsuper: Deleted: 2 messages"), "{err}");
    assert!(
        delivery::wait_queue_empty(&s.relais, Duration::from_secs(20)),
        "{}",
        delivery::postqueue_p(&s.relais)
    );
    // Why they waited: the seed's smtp_tls_security_level = encrypt never sends in plaintext,
    // and the MX (preferences 10, 10, 20) did not answer.
    let log = s.relais.log();
    assert!(
        log.contains("to=<toto@tutu.org>") && log.contains("status=deferred"),
        "{log}"
    );
}

#[test]
fn flow7_postqueue_f_delivers_once_the_outside_mx_is_back() {
    let mut s = seed_or_skip!(false);
    let ids = queue_three(&s);
    postsuper(&s, &["-d", &ids[0]]);
    s.outside_start();
    let out = s.relais.tool("postqueue", &["-f"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(30), || s.outside_mail().len() == 2),
        "{} delivered\n{}",
        s.outside_mail().len(),
        s.relais.log()
    );
    assert!(delivery::wait_queue_empty(
        &s.relais,
        Duration::from_secs(20)
    ));
    s.outside_stop();
}

#[test]
fn flow7_postconf_and_postmap_commands_of_the_seed() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // No daemon is needed: configuration and table tools only.
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    let out = run_bounded(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/seed-rewrite"))
            .arg(SEED)
            .arg(&conf),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    build_db(&conf.join("bdd/postfix.sqlite"));
    let c = conf.to_str().unwrap();
    let run = |tool: &str, args: &[&str]| {
        let out = run_bounded(
            Command::new(bin(tool)).arg("-c").arg(c).args(args),
            Duration::from_secs(30),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // postconf -n: the seed's settings, as written (the later append_dot_mydomain wins).
    let (rc, n) = run("postconf", &["-n"]);
    assert_eq!(rc, Some(0));
    for l in [
        "virtual_transport = lmtp:unix:private/dovecot-lmtp\n",
        "smtpd_tls_security_level = encrypt\n",
        "smtpd_sasl_path = private/auth\n",
        "myhostname = mail.exemple.fr\n",
        "append_dot_mydomain = no\n",
        &format!("virtual_mailbox_maps = sqlite:{c}/sqlite-utilisateurs.cf\n"),
    ] {
        assert!(n.contains(l), "postconf -n lacks {l:?}:\n{n}");
    }
    // postconf -d: the defaults, not the seed's values.
    let (rc, d) = run("postconf", &["-d"]);
    assert_eq!(rc, Some(0));
    assert!(d.lines().any(|l| l == "smtpd_tls_security_level ="), "{d}");
    assert!(d.contains("virtual_transport = virtual\n"), "{d}");
    // postconf -p: everything, the seed's values included.
    let (rc, p) = run("postconf", &["-p"]);
    assert_eq!(rc, Some(0));
    assert!(p.contains("smtpd_tls_security_level = encrypt\n"), "{p}");
    assert!(p.contains("message_size_limit = 31457280\n"), "{p}");
    assert!(
        p.lines().count() > n.lines().count(),
        "-p lists defaults too"
    );

    // postmap -q, the seed's two examples: both are misses ("test@exemple" lacks its .fr,
    // jmador.yo is not a domain of the base): no output, exit status 1.
    let users = format!("sqlite:{c}/sqlite-utilisateurs.cf");
    let domains = format!("sqlite:{c}/sqlite-domaines.cf");
    assert_eq!(
        run("postmap", &["-q", "test@exemple", &users]),
        (Some(1), String::new())
    );
    assert_eq!(
        run("postmap", &["-q", "jmador.yo", &domains]),
        (Some(1), String::new())
    );
    // And the hits.
    assert_eq!(
        run("postmap", &["-q", "test@exemple.fr", &users]),
        (Some(0), "exemple.fr/test/\n".to_string())
    );
    assert_eq!(
        run("postmap", &["-q", "exemple.fr", &domains]),
        (Some(0), "exemple.fr\n".to_string())
    );
}

#[test]
fn flow8_gtube_goes_through_and_is_logged() {
    let s = seed_or_skip!(false);
    let out = send_inbound(
        &s,
        "alice@tutu.org",
        &["test@exemple.fr"],
        &message("flow8", "", &format!("Test de pourriel :\r\n{GTUBE}")),
    );
    assert!(out.contains("refused: {}"), "{out}");
    s.wait_mailbox(1);
    let inbox = s.imap_inbox();
    let m = with_subject(&inbox, "flow8");
    // No SpamAssassin (its milter is absent, milter_default_action = accept): delivered to the
    // INBOX unchanged, not filed into Spam.
    assert!(m.contains(GTUBE), "{m}");
    assert!(!m.contains("X-Spam-Flag"), "{m}");
    let log = s.relais.log();
    let id_line = log
        .lines()
        .find(|l| l.contains("message-id=<flow8@tutu.org>"))
        .unwrap_or_else(|| panic!("no message-id log line:\n{log}"));
    let id = id_line
        .split(": ")
        .nth(1)
        .unwrap_or_else(|| panic!("{id_line}"))
        .to_string();
    assert!(
        log.lines().any(
            |l| l.contains(&format!("{id}: to=<test@exemple.fr>")) && l.contains("status=sent")
        ),
        "{log}"
    );
}

/// The outside world itself: its MX takes STARTTLS mail for toto@tutu.org with a certificate
/// the test CA vouches for, and the DNS zone gives tutu.org seed 003's MX layout (what flows 5,
/// 6 and 7 deliver through once relais's client speaks TLS).
#[test]
fn outside_world_mx_takes_tls_mail_for_the_outside_domain() {
    let mut s = seed_or_skip!(true);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP({ip:?}, 25, timeout=30)
s.starttls(context=ctx)
print("refused:", s.sendmail("test@exemple.fr", ["toto@tutu.org"], "Subject: outside\r\n\r\nsortant\r\n"))
s.quit()
"#,
        ca = s.ca_file.display().to_string(),
        ip = s.outside_ip,
    );
    let (ok, out, err) = python(&script);
    assert!(ok, "{err}\n{out}");
    assert!(
        wait_until(Duration::from_secs(20), || s.outside_mail().len() == 1),
        "{}",
        s.outside.as_ref().unwrap().log()
    );
    // relais's own resolver, configured by the seed's rewritten main.cf (relais_dns_servers).
    let cfg = relais::config::Config::load(&s.conf()).unwrap();
    let dns = relais::dns::Dns::from_config(&cfg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mx, addrs) = rt.block_on(async {
        (
            dns.mx("tutu.org").await.unwrap(),
            dns.addrs("monserveur1.tutu.org").await.unwrap(),
        )
    });
    let relais::dns::Mx::Records(mut recs) = mx else {
        panic!("tutu.org has no MX records: {mx:?}");
    };
    recs.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
    let got: Vec<(u16, &str)> = recs
        .iter()
        .map(|r| (r.preference, r.host.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (10, "monserveur1.tutu.org"),
            (10, "monserveur2.tutu.org"),
            (20, "monserveur-fallback.tutu.org")
        ]
    );
    assert_eq!(
        addrs,
        vec![s.outside_ip.parse::<std::net::IpAddr>().unwrap()]
    );
    s.outside_stop();
}
