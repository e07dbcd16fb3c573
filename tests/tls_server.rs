//! Server-side TLS acceptance against real clients: SNI (tls_server_sni_maps) and
//! smtpd_tls_chain_files with RSA and ECDSA keys checked with `openssl s_client`, certificate
//! reload on `relais reload` without dropping an open session, and client certificates
//! (permit_tls_clientcerts with relay_clientcerts, permit_tls_all_clientcerts) with Python.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `openssl s_client -starttls smtp` output (stdout and stderr, spaces removed).
fn s_client(port: u16, extra: &[&str]) -> String {
    let out = run_bounded(
        Command::new("openssl")
            .args(["s_client", "-starttls", "smtp", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra),
        Duration::from_secs(30),
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(' ', "")
}

fn rsa_self_signed(dir: &Path, cn: &str) -> (String, String) {
    let (k, c) = (dir.join("rsa.key"), dir.join("rsa.pem"));
    let out = run_bounded(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
            ])
            .arg(&k)
            .arg("-out")
            .arg(&c)
            .arg("-subj")
            .arg(format!("/CN={cn}")),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (k.display().to_string(), c.display().to_string())
}

#[test]
fn sni_and_rsa_ecdsa_chain_files_and_reload() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("relais test CA");
    let (dk, dc, _) = ca.issue(&["default.test"], pki.path(), "default");
    let (ak, ac, _) = ca.issue(&["a.test"], pki.path(), "a");
    let (bk, bc, _) = ca.issue(&["b.test", "*.b.test"], pki.path(), "b");
    // b: one file holding the key then the chain, as Postfix allows.
    let b_one = pki.path().join("b-all.pem");
    std::fs::write(
        &b_one,
        format!(
            "{}{}",
            std::fs::read_to_string(&bk).unwrap(),
            std::fs::read_to_string(&bc).unwrap()
        ),
    )
    .unwrap();
    let (rk, rc) = rsa_self_signed(pki.path(), "rsa.default.test");
    let mut inst = Instance::with_main_cf_extra(&format!(
        "relais_tls_self_signed = no\nsmtpd_tls_chain_files = {}, {}, {rk}, {rc}\n\
         tls_server_sni_maps = inline:{{ {{ a.test = {} {} }}, {{ .b.test = {} }}, {{ b.test = {} }} }}\n",
        dk.display(),
        dc.display(),
        ak.display(),
        ac.display(),
        b_one.display(),
        b_one.display()
    ));
    inst.start();
    let p = inst.smtp_port;
    let o = s_client(p, &["-servername", "a.test"]);
    assert!(o.contains("CN=a.test"), "{o}");
    let o = s_client(p, &["-servername", "mx.b.test"]);
    assert!(o.contains("CN=b.test"), "{o}");
    let o = s_client(p, &["-servername", "unknown.test"]);
    assert!(o.contains("CN=default.test"), "{o}");
    // The client's signature algorithms choose between the RSA and ECDSA defaults.
    let o = s_client(p, &["-sigalgs", "rsa_pss_rsae_sha256"]);
    assert!(o.contains("CN=rsa.default.test"), "{o}");
    let o = s_client(p, &["-sigalgs", "ecdsa_secp256r1_sha256"]);
    assert!(o.contains("CN=default.test"), "{o}");

    // A session open across `relais reload` keeps going; new sessions get the new files.
    let mut open = Smtp::connect(p);
    assert!(open.reply().starts_with("220"));
    assert!(open.cmd("EHLO c.test").starts_with("250"));
    let (nk, nc, _) = ca.issue(&["a2.test"], pki.path(), "a-new");
    std::fs::copy(&nk, &ak).unwrap();
    std::fs::copy(&nc, &ac).unwrap();
    let out = inst.relais(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(20), || s_client(
            p,
            &["-servername", "a.test"]
        )
        .contains("CN=a2.test")),
        "the renewed certificate is not served after reload\n{}",
        inst.log()
    );
    assert!(open.cmd("NOOP").starts_with("250"));
    assert!(open.cmd("QUIT").starts_with("221"));
    inst.stop();
}

fn python(script: &str) -> (bool, String) {
    let out = run_bounded(
        Command::new("python3").arg("-c").arg(script),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A Python smtplib session: EHLO and STARTTLS, with or without a client certificate, then
/// `rest` (Python lines using `s`); its output.
fn starttls_session(port: u16, cert: Option<(&Path, &Path)>, rest: &str) -> (bool, String) {
    let load = match cert {
        Some((k, c)) => format!(
            "ctx.load_cert_chain({:?}, {:?})",
            c.display().to_string(),
            k.display().to_string()
        ),
        None => String::new(),
    };
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
{load}
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.ehlo("client.test"); s.starttls(context=ctx)
{rest}
"#
    ))
}

/// RCPT TO a remote domain over STARTTLS, with or without a client certificate: the reply.
fn relay_attempt(port: u16, cert: Option<(&Path, &Path)>) -> String {
    let (ok, out) = starttls_session(
        port,
        cert,
        "s.ehlo(\"client.test\")\ns.mail(\"a@client.test\")\nprint(s.rcpt(\"x@remote.example\"))\ns.quit()",
    );
    assert!(ok, "{out}");
    out
}

#[test]
fn client_certificates_allow_relay() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("client CA");
    let other = TestCa::new("other CA");
    let (sk, sc, _) = ca.issue(&["mx.test"], pki.path(), "server");
    let (k1, c1, der1) = ca.issue(&["listed.client.test"], pki.path(), "c1");
    let (k2, c2, _) = other.issue(&["unlisted.client.test"], pki.path(), "c2");
    let (k3, c3, _) = ca.issue(&["trusted.client.test"], pki.path(), "c3");
    let ca_file = pki.path().join("ca.pem");
    ca.write_ca(&ca_file);
    let fp = ring::digest::digest(&ring::digest::SHA256, &der1)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let base = format!(
        "{}\nrelais_tls_self_signed = no\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
         smtpd_tls_ask_ccert = yes\nmynetworks = 192.0.2.0/24\n",
        relayhost_to_nowhere(),
        sc.display(),
        sk.display()
    );
    // permit_tls_clientcerts: only the listed fingerprint relays.
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{base}relay_clientcerts = inline:{{ {fp}=client1 }}\n\
         smtpd_relay_restrictions = permit_tls_clientcerts, reject_unauth_destination\n"
    ));
    inst.start();
    let p = inst.smtp_port;
    let r = relay_attempt(p, Some((&k1, &c1)));
    assert!(r.contains("(250"), "{r}");
    let r = relay_attempt(p, Some((&k2, &c2)));
    assert!(r.contains("Relay access denied"), "{r}");
    let r = relay_attempt(p, None);
    assert!(r.contains("Relay access denied"), "{r}");
    assert!(
        inst.log().contains("TLS connection established from")
            && inst
                .log()
                .contains("Anonymous TLS connection established from"),
        "{}",
        inst.log()
    );
    inst.stop();

    // permit_tls_all_clientcerts: any certificate from smtpd_tls_CAfile's CA relays.
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{base}smtpd_tls_CAfile = {}\n\
         smtpd_relay_restrictions = permit_tls_all_clientcerts, reject_unauth_destination\n",
        ca_file.display()
    ));
    inst.start();
    let p = inst.smtp_port;
    let r = relay_attempt(p, Some((&k3, &c3)));
    assert!(r.contains("(250"), "{r}");
    let r = relay_attempt(p, Some((&k2, &c2)));
    assert!(r.contains("Relay access denied"), "{r}");
    assert!(
        inst.log()
            .contains("Trusted TLS connection established from")
            && inst
                .log()
                .contains("Untrusted TLS connection established from"),
        "{}",
        inst.log()
    );
    inst.stop();
}

/// After STARTTLS, the client's next command, as Python's smtplib sees the answer to it.
fn ehlo_after_starttls(port: u16, cert: Option<(&Path, &Path)>) -> String {
    starttls_session(port, cert, "print(s.ehlo(\"client.test\"))").1
}

/// smtpd_tls_req_ccert at security level encrypt, as Postfix: the handshake completes, the
/// client's next command gets `421 4.7.1 host Error: …` and the log says why; a trusted
/// certificate goes on. At level may it is refused with Postfix's warning.
#[test]
fn required_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("client CA");
    let other = TestCa::new("other CA");
    let (sk, sc, _) = ca.issue(&["mx.test"], pki.path(), "server");
    let (k1, c1, _) = ca.issue(&["trusted.client.test"], pki.path(), "c1");
    let (k2, c2, _) = other.issue(&["untrusted.client.test"], pki.path(), "c2");
    let ca_file = pki.path().join("ca.pem");
    ca.write_ca(&ca_file);
    let base = format!(
        "relais_tls_self_signed = no\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
         smtpd_tls_CAfile = {}\nsmtpd_tls_req_ccert = yes\n",
        sc.display(),
        sk.display(),
        ca_file.display()
    );
    let mut inst =
        Instance::with_main_cf_extra(&format!("{base}smtpd_tls_security_level = encrypt\n"));
    inst.start();
    let p = inst.smtp_port;
    let r = ehlo_after_starttls(p, None);
    assert!(
        r.contains("421")
            && r.contains("4.7.1")
            && r.contains("Error: No client certificate presented"),
        "{r}"
    );
    let r = ehlo_after_starttls(p, Some((&k2, &c2)));
    assert!(r.contains("Error: Client certificate not trusted"), "{r}");
    let r = ehlo_after_starttls(p, Some((&k1, &c1)));
    assert!(r.starts_with("(250"), "{r}");
    let log = inst.log();
    assert!(
        log.contains(
            "NOQUEUE: abort: TLS from localhost[127.0.0.1]: No client certificate presented"
        ) || log.contains(
            "NOQUEUE: abort: TLS from unknown[127.0.0.1]: No client certificate presented"
        ),
        "{log}"
    );
    assert!(log.contains(": Client certificate not trusted"), "{log}");
    inst.stop();

    let mut inst = Instance::with_main_cf_extra(&format!("{base}smtpd_tls_security_level = may\n"));
    inst.start();
    let r = ehlo_after_starttls(inst.smtp_port, None);
    assert!(r.starts_with("(250"), "{r}");
    assert!(
        inst.log()
            .contains("Can't require client certs unless TLS is required"),
        "{}",
        inst.log()
    );
    inst.stop();
}
