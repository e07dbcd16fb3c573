//! SMTP AUTH end to end: the real relais binary with real clients (swaks, Python smtplib)
//! against a real Dovecot auth server (Debian's dovecot-core, started by the test on its own
//! temporary base_dir) and against the built-in passwd-file type with hashes made by
//! `doveadm pw`.

mod common;

use common::{doveadm_pw, relayhost_to_nowhere, run_bounded, DovecotAuth, Instance, Smtp};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn swaks(args: &[&str]) -> Output {
    run_bounded(
        Command::new("swaks").args(args).args(["--timeout", "30"]),
        Duration::from_secs(90),
    )
}

/// Runs a Python 3 script with `args` in sys.argv[1:].
fn python(script: &str, args: &[&str]) -> Output {
    run_bounded(
        Command::new("python3").arg("-c").arg(script).args(args),
        Duration::from_secs(120),
    )
}

#[test]
fn dovecot_auth_socket_plain_login_and_failure() {
    if !is_root() {
        eprintln!("skipped: dovecot needs root here");
        return;
    }
    assert!(
        Path::new(DovecotAuth::BIN).exists(),
        "run tools/install-test-deps"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let hash = doveadm_pw("SHA512-CRYPT", "s3cret");
    let dove = DovecotAuth::start(dir.path(), &[("test@exemple.fr", &hash)]);
    let mut inst = Instance::with_main_cf_extra(&format!(
        "smtpd_sasl_type = dovecot\nsmtpd_sasl_path = {}\n{}\n",
        dove.socket().display(),
        relayhost_to_nowhere()
    ));
    // smtps reaches the same Dovecot over inet:, set by a master.cf -o override.
    let mcf = inst.conf().join("master.cf");
    let master = std::fs::read_to_string(&mcf).unwrap().replace(
        "  -o smtpd_tls_wrappermode=yes\n",
        &format!(
            "  -o smtpd_tls_wrappermode=yes\n  -o smtpd_sasl_path=inet:127.0.0.1:{}\n",
            dove.inet_port
        ),
    );
    std::fs::write(&mcf, master).unwrap();
    inst.start();
    let sub = inst.submission_port.to_string();
    let server = format!("127.0.0.1:{sub}");
    for mech in ["PLAIN", "LOGIN"] {
        let o = swaks(&[
            "--server",
            &server,
            "--tls",
            "--auth",
            mech,
            "--auth-user",
            "test@exemple.fr",
            "--auth-password",
            "s3cret",
            "--from",
            "test@exemple.fr",
            "--to",
            "bob@localhost",
            "--header",
            &format!("Subject: via dovecot {mech}"),
        ]);
        let t = text(&o);
        assert!(
            o.status.success(),
            "swaks --auth {mech}: {t}\n{}\n{}",
            inst.log(),
            dove.log()
        );
        assert!(t.contains("235 2.7.0 Authentication successful"), "{t}");
        assert!(
            inst.wait_log(
                &format!("sasl_method={mech}, sasl_username=test@exemple.fr"),
                Duration::from_secs(10)
            ),
            "{}",
            inst.log()
        );
    }
    // smtps with the inet: socket.
    let o = swaks(&[
        "--server",
        &format!("127.0.0.1:{}", inst.smtps_port),
        "--tls-on-connect",
        "--auth",
        "PLAIN",
        "--auth-user",
        "test@exemple.fr",
        "--auth-password",
        "s3cret",
        "--to",
        "bob@localhost",
    ]);
    assert!(
        o.status.success(),
        "smtps over inet: {}\n{}",
        text(&o),
        inst.log()
    );
    // A wrong password: 535 and the warning fail2ban reads.
    let o = swaks(&[
        "--server",
        &server,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "test@exemple.fr",
        "--auth-password",
        "wrong",
        "--to",
        "bob@localhost",
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("535 5.7.8 Error: authentication failed:"), "{t}");
    assert!(
        inst.wait_log(
            "]: warning: unknown[127.0.0.1]: SASL PLAIN authentication failed: ",
            Duration::from_secs(10)
        ),
        "{}",
        inst.log()
    );
    let log = inst.log();
    let line = log
        .lines()
        .find(|l| l.contains("SASL PLAIN authentication failed"))
        .unwrap();
    assert!(line.contains("postfix/submission/smtpd["), "{line}");
    eprintln!("failure as logged: {line}");
    assert!(log.contains(" auth=0/1 "), "{log}");
    // The three accepted messages are delivered, marked ESMTPSA.
    assert!(
        common::wait_until(Duration::from_secs(30), || inst.maildir_new("bob").len()
            == 3),
        "{}",
        inst.log()
    );
    for f in inst.maildir_new("bob") {
        let m = std::fs::read_to_string(f).unwrap();
        assert!(m.contains("with ESMTPSA id"), "{m}");
    }
    inst.stop();
}

/// Sends one message with Python's smtplib: argv = mode (starttls|ssl), port, user, password.
const SMTPLIB_LOGIN: &str = r#"
import smtplib, ssl, sys
mode, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl._create_unverified_context()
if mode == "ssl":
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
else:
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.example.com")
    assert not s.has_extn("auth"), "AUTH offered before STARTTLS"
    s.starttls(context=ctx)
s.ehlo("client.example.com")
assert "PLAIN" in s.esmtp_features.get("auth", ""), s.esmtp_features
s.login(user, pw)
s.sendmail(user, ["bob@localhost"], "Subject: smtplib %s %s\r\n\r\nhello\r\n" % (mode, user))
s.quit()
print("sent")
"#;

#[test]
fn builtin_passwd_file_with_doveadm_hashes_and_python_clients() {
    let mut inst = Instance::new();
    let users = [
        ("sha@localhost", "SHA512-CRYPT"),
        ("blf@localhost", "BLF-CRYPT"),
        ("argon@localhost", "ARGON2ID"),
    ];
    let file: String = users
        .iter()
        .map(|(u, s)| format!("{u}:{}\n", doveadm_pw(s, &format!("pw-{u}"))))
        .collect();
    std::fs::write(inst.conf().join("sasl_passwd"), file).unwrap();
    inst.start();
    let sub = inst.submission_port.to_string();
    let smtps = inst.smtps_port.to_string();
    for (u, _) in users {
        let pw = format!("pw-{u}");
        let o = python(SMTPLIB_LOGIN, &["starttls", &sub, u, &pw]);
        assert!(o.status.success(), "{u}: {}\n{}", text(&o), inst.log());
    }
    let o = python(
        SMTPLIB_LOGIN,
        &["ssl", &smtps, "sha@localhost", "pw-sha@localhost"],
    );
    assert!(o.status.success(), "SMTP_SSL: {}\n{}", text(&o), inst.log());
    // A wrong password is refused with smtplib's SMTPAuthenticationError.
    let o = python(SMTPLIB_LOGIN, &["ssl", &smtps, "blf@localhost", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("SMTPAuthenticationError"), "{}", text(&o));
    assert!(common::wait_until(Duration::from_secs(30), || inst
        .maildir_new("bob")
        .len()
        == 4));
    let mut received = String::new();
    for f in inst.maildir_new("bob") {
        received.push_str(&std::fs::read_to_string(f).unwrap());
    }
    assert_eq!(received.matches("with ESMTPSA id").count(), 4, "{received}");
    let log = inst.log();
    for (u, _) in users {
        assert!(
            log.contains(&format!("sasl_method=PLAIN, sasl_username={u}")),
            "{log}"
        );
    }
    inst.stop();
}

#[test]
fn tls_auth_only_hides_and_refuses_auth_before_starttls() {
    let mut inst = Instance::new();
    inst.start();
    let mut c = Smtp::connect(inst.submission_port);
    assert!(c.reply().starts_with("220"));
    let ehlo = c.cmd("EHLO client.example.com");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let r = c.cmd("AUTH PLAIN AHRlc3RAbG9jYWxob3N0AHJlbGFpcy10ZXN0");
    assert!(
        r.starts_with("503 5.5.1 Error: authentication not enabled"),
        "{r}"
    );
    c.cmd("QUIT");
    // The smtp service (port 25's row) has no AUTH at all.
    let mut c = Smtp::connect(inst.smtp_port);
    c.reply();
    assert!(!c.cmd("EHLO client.example.com").contains("AUTH"));
    c.cmd("QUIT");
    // After STARTTLS it is offered: the sample user of the default conf logs in.
    let o = swaks(&[
        "--server",
        &format!("127.0.0.1:{}", inst.submission_port),
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        "test@localhost",
        "--auth-password",
        "relais-test",
        "--to",
        "bob@localhost",
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), inst.log());
    inst.stop();
}

/// argv = port, then lines "AUTH user pw" / "MAIL addr" / "RCPT addr" / "RSET"; prints one
/// "code text" line per command.
const SMTPLIB_SCRIPT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
s = smtplib.SMTP_SSL("127.0.0.1", port, context=ssl._create_unverified_context(), timeout=30)
s.ehlo("client.example.com")
for cmd in sys.argv[2:]:
    w = cmd.split(" ")
    if w[0] == "AUTH":
        try:
            s.login(w[1], w[2]); print("235")
        except smtplib.SMTPAuthenticationError as e:
            print(e.smtp_code, e.smtp_error.decode())
    elif w[0] == "MAIL":
        c, t = s.mail(w[1]); print(c, t.decode())
    elif w[0] == "RCPT":
        c, t = s.rcpt(w[1]); print(c, t.decode())
    elif w[0] == "RSET":
        c, t = s.rset(); print(c, t.decode())
s.quit()
"#;

#[test]
fn sender_login_maps_and_authenticated_relay() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "mynetworks = 192.0.2.0/24\n\
         smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination\n\
         smtpd_sender_login_maps = inline:{{ test@localhost=test@localhost, {{ shared@localhost = other@localhost, test@localhost }} }}\n\
         smtpd_sender_restrictions = reject_sender_login_mismatch\n{}\n",
        relayhost_to_nowhere()
    ));
    std::fs::write(
        inst.conf().join("sasl_passwd"),
        format!(
            "test@localhost:{}\nother@localhost:{{PLAIN}}other-pw\n",
            doveadm_pw("SHA512-CRYPT", "relais-test")
        ),
    )
    .unwrap();
    inst.start();
    let port = inst.smtps_port.to_string();
    // Not logged in: relaying is refused, and an address with an owner needs a login.
    let o = python(
        SMTPLIB_SCRIPT,
        &[
            &port,
            "MAIL other@example.org",
            "RCPT x@example.net",
            "RSET",
            "MAIL test@localhost",
            "RCPT bob@localhost",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{}\n{}", text(&o), inst.log());
    assert!(
        lines[1].starts_with("554 5.7.1 <x@example.net>: Relay access denied"),
        "{out}"
    );
    assert_eq!(
        lines[4],
        "553 5.7.1 <test@localhost>: Sender address rejected: not logged in"
    );
    // Logged in: another user's address is refused, owned ones pass and relaying is allowed.
    let o = python(
        SMTPLIB_SCRIPT,
        &[
            &port,
            "AUTH test@localhost relais-test",
            "MAIL other@localhost",
            "RCPT bob@localhost",
            "RSET",
            "MAIL test@localhost",
            "RCPT x@example.net",
            "RSET",
            "MAIL shared@localhost",
            "RCPT bob@localhost",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "{}\n{}", text(&o), inst.log());
    assert_eq!(lines[0], "235");
    assert_eq!(
        lines[2],
        "553 5.7.1 <other@localhost>: Sender address rejected: not owned by user test@localhost"
    );
    assert!(lines[5].starts_with("250"), "{out}");
    assert!(lines[8].starts_with("250"), "{out}");
    let log = inst.log();
    assert!(
        log.contains("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 553 5.7.1 <other@localhost>: Sender address rejected: not owned by user test@localhost"),
        "{log}"
    );
    inst.stop();
}
