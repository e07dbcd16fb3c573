//! SASL client acceptance: the real relais binary relays through a smarthost that requires
//! AUTH: a small in-test SMTP server (AUTH PLAIN and LOGIN, 530 for MAIL before AUTH, which
//! records the credentials it got), and a second relais with its passwd-file SASL server.

mod common;
mod delivery;
use common::*;
use delivery::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAST: &str = "queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n";

#[derive(Default)]
struct Seen {
    /// Decoded `user:pass` of every AUTH attempt, and whether it was accepted.
    logins: Vec<(String, bool)>,
    /// Senders of accepted messages.
    mails: Vec<String>,
}

/// A smarthost requiring AUTH; accepts `good`'s credentials only. Stops when dropped.
struct AuthPeer {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AuthPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64d(s: &str) -> String {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default();
    String::from_utf8_lossy(&v).into_owned()
}

fn session(s: std::net::TcpStream, good: &str, seen: &Mutex<Seen>, deadline: Instant) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut authed = false;
    let mut from = String::new();
    let _ = w.write_all(b"220 smarthost.test ESMTP\r\n");
    let mut line = String::new();
    // Bounded by the read timeout and the overall deadline.
    while Instant::now() < deadline {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_string();
        let up = cmd.to_ascii_uppercase();
        let reply: String = if up.starts_with("EHLO") {
            "250-smarthost.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME".into()
        } else if let Some(blob) = up.strip_prefix("AUTH PLAIN ").map(|_| &cmd[11..]) {
            let d = b64d(blob);
            let mut parts = d.split('\0').skip(1);
            let cred = format!(
                "{}:{}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            );
            authed = cred == good;
            seen.lock().unwrap().logins.push((cred, authed));
            if authed {
                "235 2.7.0 Authentication successful".into()
            } else {
                "535 5.7.8 Error: authentication failed: bad credentials".into()
            }
        } else if up == "AUTH LOGIN" {
            let _ = w.write_all(b"334 VXNlcm5hbWU6\r\n");
            line.clear();
            let _ = r.read_line(&mut line);
            let u = b64d(&line);
            let _ = w.write_all(b"334 UGFzc3dvcmQ6\r\n");
            line.clear();
            let _ = r.read_line(&mut line);
            let cred = format!("{u}:{}", b64d(&line));
            authed = cred == good;
            seen.lock().unwrap().logins.push((cred, authed));
            if authed {
                "235 2.7.0 Authentication successful".into()
            } else {
                "535 5.7.8 Error: authentication failed".into()
            }
        } else if up.starts_with("MAIL FROM:") {
            if authed {
                from = cmd[10..]
                    .trim_matches(|c| c == '<' || c == '>' || c == ' ')
                    .to_string();
                "250 2.1.0 Ok".into()
            } else {
                "530 5.7.0 Authentication required".into()
            }
        } else if up.starts_with("RCPT TO:") {
            "250 2.1.5 Ok".into()
        } else if up == "DATA" {
            let _ = w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n");
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
            }
            seen.lock().unwrap().mails.push(from.clone());
            "250 2.0.0 Ok: queued".into()
        } else if up == "QUIT" {
            let _ = w.write_all(b"221 2.0.0 Bye\r\n");
            return;
        } else {
            "250 2.0.0 Ok".into()
        };
        let _ = w.write_all(format!("{reply}\r\n").as_bytes());
    }
}

fn auth_peer(good: &str) -> AuthPeer {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, st2, good) = (seen.clone(), stop.clone(), good.to_string());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !st2.load(Ordering::SeqCst) && Instant::now() < deadline {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    session(s, &good, &s2, deadline);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    AuthPeer {
        port,
        seen,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn relays_through_a_smarthost_that_requires_auth() {
    let peer = auth_peer("relayuser:s3cret");
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relayhost = [127.0.0.1]:{p}\nsmtp_sasl_auth_enable = yes\n\
         smtp_sasl_security_options = noanonymous\n\
         smtp_sender_dependent_authentication = yes\n\
         smtp_sasl_password_maps = inline:{{ {{ [127.0.0.1]:{p} = relayuser:s3cret }}, {{ bad@client.test = relayuser:wrong }} }}\n",
        p = peer.port
    ));
    a.start();
    submit(a.smtp_port, "ok@client.test", &["u@far.test"], "auth", "x");
    submit(a.smtp_port, "bad@client.test", &["v@far.test"], "auth", "y");
    assert!(
        a.wait_log("to=<u@far.test>", Duration::from_secs(60))
            && a.wait_log("to=<v@far.test>", Duration::from_secs(60)),
        "{}",
        a.log()
    );
    let log = a.log();
    let line = |who: &str| {
        log.lines()
            .find(|l| l.contains(&format!("to=<{who}>")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("u@far.test").contains("status=sent"), "{log}");
    // A refused login defers with the server's reply; the password is never logged.
    let v = line("v@far.test");
    assert!(
        v.contains("status=deferred (SASL authentication failed; server 127.0.0.1[127.0.0.1] said: 535 5.7.8 Error: authentication failed: bad credentials)"),
        "{v}"
    );
    assert!(!log.contains("s3cret") && !log.contains("wrong"), "{log}");
    let seen = peer.seen.lock().unwrap();
    assert_eq!(seen.mails, vec!["ok@client.test"]);
    assert!(seen.logins.contains(&("relayuser:s3cret".into(), true)));
    assert!(seen.logins.contains(&("relayuser:wrong".into(), false)));
    drop(seen);
    a.stop();
}

#[test]
fn noplaintext_default_refuses_plain_and_login() {
    let peer = auth_peer("relayuser:s3cret");
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relayhost = [127.0.0.1]:{p}\nsmtp_sasl_auth_enable = yes\n\
         smtp_sasl_password_maps = inline:{{ {{ [127.0.0.1]:{p} = relayuser:s3cret }} }}\n",
        p = peer.port
    ));
    a.start();
    submit(a.smtp_port, "ok@client.test", &["u@far.test"], "auth", "x");
    assert!(
        a.wait_log(
            "status=deferred (SASL authentication failed; cannot authenticate to server 127.0.0.1[127.0.0.1]: no mechanism available)",
            Duration::from_secs(60)
        ),
        "{}",
        a.log()
    );
    assert!(peer.seen.lock().unwrap().logins.is_empty());
    a.stop();
}

/// relais → relais with AUTH (B: built-in passwd-file type, AUTH on the submission service of
/// the default conf): B relays only for authenticated clients; A logs in over STARTTLS with
/// smtp_sasl_password_maps.
#[test]
fn relais_to_relais_submission_with_auth() {
    let mut b = Instance::with_main_cf_extra(&format!(
        "{}\nsmtpd_sasl_type = passwd-file\nsmtpd_sasl_path = $config_directory/sasl_passwd\n\
         smtpd_sasl_security_options = noanonymous\nmynetworks = 192.0.2.0/24\n\
         smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n",
        relayhost_to_nowhere()
    ));
    std::fs::write(b.conf().join("sasl_passwd"), "relayuser:{PLAIN}s3cret\n").unwrap();
    b.start();
    let mut a = Instance::with_main_cf_extra(&format!(
        "{FAST}relayhost = [127.0.0.1]:{p}\nsmtp_tls_security_level = encrypt\nsmtp_sasl_auth_enable = yes\n\
         smtp_sasl_tls_security_options = noanonymous\n\
         smtp_sasl_password_maps = inline:{{ {{ [127.0.0.1]:{p} = relayuser:s3cret }} }}\n",
        p = b.submission_port
    ));
    a.start();
    submit(a.smtp_port, "ok@client.test", &["u@far.test"], "auth", "x");
    assert!(
        a.wait_log(
            "to=<u@far.test>, relay=127.0.0.1[127.0.0.1]",
            Duration::from_secs(60)
        ),
        "{}",
        a.log()
    );
    assert!(a.log().contains("status=sent"), "{}\n{}", a.log(), b.log());
    assert!(!a.log().contains("s3cret"), "{}", a.log());
    a.stop();
    b.stop();
}
