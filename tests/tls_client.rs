//! Outbound TLS acceptance: relais → relais over loopback at each smtp_tls_security_level,
//! chosen per destination by smtp_tls_policy_maps, with a test CA (rcgen). The peers are
//! real relais instances: B has a certificate from the CA we trust, C one from an unknown CA,
//! D offers no STARTTLS. Names resolve through a test DNS zone (hickory-server).

mod common;
mod delivery;
use common::*;
use delivery::*;
use std::time::Duration;

const FAST: &str = "queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n";

/// A receiving relais that relays what it gets to a closed port (it stays in its queue).
fn peer(tls: &str) -> Instance {
    let mut i = Instance::with_main_cf_extra(&format!(
        "{}\nrelais_tls_self_signed = no\n{tls}\n",
        relayhost_to_nowhere()
    ));
    i.start();
    i
}

#[test]
fn outbound_tls_levels_per_destination() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("relais test CA");
    let other = TestCa::new("unknown CA");
    let ca_file = pki.path().join("ca.pem");
    ca.write_ca(&ca_file);
    let (bk, bc, _) = ca.issue(&["mx.example.test"], pki.path(), "b");
    let (ck, cc, _) = other.issue(&["mx.example.test"], pki.path(), "c");
    let b = peer(&format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
        bc.display(),
        bk.display()
    ));
    let c = peer(&format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
        cc.display(),
        ck.display()
    ));
    let d = peer("smtpd_tls_security_level = none\n");

    let zone = "
$ORIGIN example.test.
$TTL 60
@        IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@        IN NS  ns
ns       IN A   127.0.0.1
mx       IN A   127.0.0.1
alias    IN A   127.0.0.1
";
    let dns = DnsZone::start("example.test.", zone);
    let (bp, bs) = (b.smtp_port, b.submission_port);
    let (cp, cs) = (c.smtp_port, c.submission_port);
    let dp = d.smtp_port;
    // Destination (recipient domain) → next-hop, and next-hop → TLS policy.
    let routes = [
        ("may-good.test", format!("[mx.example.test]:{bp}"), None),
        (
            "verify-good.test",
            format!("[mx.example.test]:{bs}"),
            Some("verify"),
        ),
        (
            "verify-name.test",
            format!("[alias.example.test]:{bp}"),
            Some("verify"),
        ),
        (
            "secure-dot.test",
            format!("[alias.example.test]:{bs}"),
            Some("secure match=.example.test"),
        ),
        (
            "secure-ca.test",
            format!("[mx.example.test]:{cp}"),
            Some("secure match=mx.example.test"),
        ),
        ("may-ca.test", format!("[mx.example.test]:{cs}"), None),
        (
            "encrypt-none.test",
            format!("[mx.example.test]:{dp}"),
            Some("encrypt"),
        ),
    ];
    let transport: Vec<String> = routes
        .iter()
        .map(|(dom, nh, _)| format!("{{ {dom} = smtp:{nh} }}"))
        .collect();
    let policy: Vec<String> = routes
        .iter()
        .filter_map(|(_, nh, p)| p.map(|p| format!("{{ {nh} = {p} }}")))
        .collect();
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relais_dns_servers = 127.0.0.1:{}\ntransport_maps = inline:{{ {} }}\n\
         smtp_tls_security_level = may\nsmtp_tls_loglevel = 1\nsmtp_tls_CAfile = {}\n\
         smtp_tls_policy_maps = inline:{{ {} }}\n",
        dns.port,
        transport.join(", "),
        ca_file.display(),
        policy.join(", ")
    ));
    a.start();
    let rcpts: Vec<String> = routes.iter().map(|(d, _, _)| format!("u@{d}")).collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    submit(
        a.smtp_port,
        "sender@client.test",
        &rcpt_refs,
        "tls levels",
        "hello",
    );

    let sent =
        |dom: &str, port: u16| format!("to=<u@{dom}>, relay=mx.example.test[127.0.0.1]:{port}, ");
    // may with a CA-signed certificate: Trusted (no name check at may).
    assert!(
        a.wait_log(&sent("may-good.test", bp), Duration::from_secs(60)),
        "{}",
        a.log()
    );
    let log = a.log();
    assert!(
        log.contains(&format!(
            "Trusted TLS connection established to mx.example.test[127.0.0.1]:{bp}: TLSv1.3 with cipher TLS_"
        )),
        "{log}"
    );
    // verify, name = MX host name in the certificate: Verified and sent.
    assert!(
        a.wait_log(&sent("verify-good.test", bs), Duration::from_secs(30)),
        "{}",
        a.log()
    );
    assert!(a.log().contains(&format!(
        "Verified TLS connection established to mx.example.test[127.0.0.1]:{bs}: TLSv1.3 with cipher"
    )));
    // secure with match=.example.test: the certificate's mx.example.test is under it.
    assert!(
        a.wait_log(
            &format!("to=<u@secure-dot.test>, relay=alias.example.test[127.0.0.1]:{bs}, "),
            Duration::from_secs(30)
        ),
        "{}",
        a.log()
    );
    // may with an unknown CA: Untrusted, still sent.
    assert!(
        a.wait_log(&sent("may-ca.test", cs), Duration::from_secs(30)),
        "{}",
        a.log()
    );
    assert!(a.log().contains(&format!(
        "Untrusted TLS connection established to mx.example.test[127.0.0.1]:{cs}: TLSv1.3"
    )));
    for dom in [
        "may-good.test",
        "verify-good.test",
        "secure-dot.test",
        "may-ca.test",
    ] {
        // A first attempt may meet a peer whose listener a parallel test held a moment
        // (ports are picked free, then bound): what matters is that it was sent over TLS.
        let log = a.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("to=<u@{dom}>")) && l.contains("status=sent")),
            "{dom}: {log}"
        );
    }

    // The refusals: deferred with Postfix's reasons, visible in postqueue -j.
    let expect = [
        ("verify-name.test", "Server certificate not verified"),
        ("secure-ca.test", "Server certificate not trusted"),
        (
            "encrypt-none.test",
            "TLS is required, but was not offered by host mx.example.test[127.0.0.1]",
        ),
    ];
    for (dom, why) in expect {
        assert!(
            a.wait_log(&format!("to=<u@{dom}>"), Duration::from_secs(30)),
            "{}",
            a.log()
        );
        let line = a
            .log()
            .lines()
            .find(|l| l.contains(&format!("to=<u@{dom}>")))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("status=deferred") && line.contains(why),
            "{dom}: {line}"
        );
    }
    let q = serde_json::to_string(&a.queue_json()).unwrap();
    for (dom, why) in expect {
        assert!(q.contains(&format!("u@{dom}")), "{q}");
        assert!(q.contains(why), "{why} not in {q}");
    }
    // Nothing went to D in plaintext.
    assert!(
        !d.log().contains("from=<sender@client.test>"),
        "{}",
        d.log()
    );
    a.stop();
}

#[test]
fn may_falls_back_to_plaintext_when_the_handshake_fails() {
    // The peer offers STARTTLS but only TLS 1.3 while we allow only TLS 1.2 at may: the
    // handshake fails, the mail goes in plaintext on a new connection.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("relais test CA");
    let (k, c, _) = ca.issue(&["127.0.0.1"], pki.path(), "b");
    let b = peer(&format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_protocols = !TLSv1.2\n",
        c.display(),
        k.display()
    ));
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relayhost = [127.0.0.1]:{}\nsmtp_tls_security_level = may\nsmtp_tls_protocols = !TLSv1.3\nsmtp_tls_loglevel = 1\n",
        b.smtp_port
    ));
    a.start();
    submit(
        a.smtp_port,
        "s@client.test",
        &["u@far.test"],
        "fallback",
        "x",
    );
    assert!(
        a.wait_log(
            "to=<u@far.test>, relay=127.0.0.1[127.0.0.1]",
            Duration::from_secs(60)
        ),
        "{}",
        a.log()
    );
    let log = a.log();
    assert!(log.contains("retrying without TLS"), "{log}");
    assert!(log.contains("status=sent"), "{log}");
    a.stop();
}

#[test]
fn legacy_enforce_tls_defers_without_starttls() {
    let d = peer("smtpd_tls_security_level = none\n");
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relayhost = [127.0.0.1]:{}\nsmtp_enforce_tls = yes\nsmtp_enforce_peername = no\n",
        d.smtp_port
    ));
    a.start();
    submit(a.smtp_port, "s@client.test", &["u@far.test"], "legacy", "x");
    assert!(
        a.wait_log(
            "status=deferred (TLS is required, but was not offered by host 127.0.0.1[127.0.0.1])",
            Duration::from_secs(60)
        ),
        "{}",
        a.log()
    );
    a.stop();
}

#[test]
fn client_certificate_lets_relais_relay_through_relais() {
    // B relays only for clients whose certificate fingerprint is in relay_clientcerts; A
    // presents that certificate (smtp_tls_cert_file) over STARTTLS.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("relais test CA");
    let (sk, sc, _) = ca.issue(&["127.0.0.1"], pki.path(), "server");
    let (ck, cc, der) = ca.issue(&["client.test"], pki.path(), "client");
    let fp = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let b = peer(&format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_ask_ccert = yes\n\
         mynetworks = 192.0.2.0/24\nrelay_clientcerts = inline:{{ {fp}=a }}\n\
         smtpd_relay_restrictions = permit_tls_clientcerts, reject_unauth_destination\n",
        sc.display(),
        sk.display()
    ));
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relayhost = [127.0.0.1]:{}\nsmtp_tls_security_level = encrypt\n\
         smtp_tls_cert_file = {}\nsmtp_tls_key_file = {}\n",
        b.smtp_port,
        cc.display(),
        ck.display()
    ));
    a.start();
    submit(a.smtp_port, "s@client.test", &["u@far.test"], "ccert", "x");
    assert!(
        a.wait_log(
            "to=<u@far.test>, relay=127.0.0.1[127.0.0.1]",
            Duration::from_secs(60)
        ),
        "{}",
        a.log()
    );
    assert!(a.log().contains("status=sent"), "{}\n{}", a.log(), b.log());
    assert!(
        b.log()
            .contains("Untrusted TLS connection established from"),
        "{}",
        b.log()
    );
    a.stop();
}
