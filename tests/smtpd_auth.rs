//! Scripted SMTP sessions for AUTH (RFC 4954) against relais's smtpd with the built-in
//! passwd-file SASL type, driven through `tokio::io::duplex`.

use base64::Engine;
use relais::envelope::{Envelope, Origin};
use relais::sasl::{Authenticator, SecurityOptions};
use relais::smtpd::{Backend, BoxFuture, Checked, Reply, Session, SessionInfo, Settings};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing_subscriber::prelude::*;

type Queued = (Envelope, Origin);

/// Accepts everything, records messages, and remembers what the recipient check saw.
#[derive(Default)]
struct TestBackend {
    queued: Mutex<Vec<Queued>>,
    checked: Mutex<Vec<SessionInfo>>,
}

impl Backend for TestBackend {
    fn new_queue_id(&self) -> String {
        "ID0001".into()
    }
    fn check_recipient(&self, s: &SessionInfo, _rcpt: &str) -> BoxFuture<'static, Checked> {
        self.checked.lock().unwrap().push(s.clone());
        Box::pin(async { Checked::permit() })
    }
    fn enqueue(
        &self,
        _id: String,
        env: Envelope,
        origin: Origin,
        _content: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>> {
        self.queued.lock().unwrap().push((env, origin));
        Box::pin(async { Ok(()) })
    }
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Outcome {
    backend: Arc<TestBackend>,
    replies: Vec<String>,
    log: String,
}

/// A passwd file with two users (passwords "secret" and "other") and settings using it.
fn settings(dir: &tempfile::TempDir) -> Settings {
    let p = dir.path().join("passwd");
    std::fs::write(
        &p,
        "# test users\ntest@exemple.fr:{PLAIN}secret\nbob@exemple.fr:{SHA512-CRYPT}$6$BwWIbTAbvtkwwmXc$eLcdo3mCSPbin1DM1TY8vPXw8CG7SZsA2ytloiRx/lW2RLma14FYdKuHq2Qxv/di8t9ZOO56k8x.tHqKxxJPl.\n",
    )
    .unwrap();
    let mut s = Settings::for_tests();
    s.error_sleep_time = Duration::ZERO;
    s.sasl = Some(Arc::new(Authenticator::passwd_file(p)));
    s
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Sends each line and checks that the last line of the reply starts with the expectation.
async fn run(s: Settings, steps: &[(&str, &str)]) -> Outcome {
    let backend = Arc::new(TestBackend::default());
    let buf = LogBuf::default();
    let sink: relais::log::Sink = Arc::new(Mutex::new(Box::new(buf.clone())));
    let sub = tracing_subscriber::registry().with(relais::log::PostfixLayer::new(
        "mail.example.com",
        "postfix/submission/smtpd",
        sink,
        false,
    ));
    let _g = tracing::subscriber::set_default(sub);
    let (client, server) = tokio::io::duplex(1 << 16);
    let info = SessionInfo::new("unknown", "192.0.2.1", 4321, "submission");
    let b: Arc<dyn Backend> = backend.clone();
    let task = tokio::spawn(Session::new(server, Arc::new(s), b, info).run());
    let (rd, mut wr) = tokio::io::split(client);
    let mut rd = BufReader::new(rd);
    let mut replies = Vec::new();
    replies.extend(read_reply(&mut rd).await);
    for (send, want) in steps {
        wr.write_all(format!("{send}\r\n").as_bytes())
            .await
            .unwrap();
        let lines = read_reply(&mut rd).await;
        let last = lines.last().cloned().unwrap_or_default();
        replies.extend(lines.clone());
        assert!(
            last.starts_with(want),
            "after {send:?}: expected {want:?}, got {lines:?}; so far {replies:?}"
        );
    }
    wr.write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut rest)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    Outcome {
        backend,
        replies,
        log,
    }
}

async fn read_reply(
    rd: &mut BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut l))
            .await
            .expect("reply within 10s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        let l = l.trim_end_matches(['\r', '\n']).to_string();
        let done = l.as_bytes().get(3) != Some(&b'-');
        lines.push(l);
        if done {
            break;
        }
    }
    lines
}

const EHLO: (&str, &str) = ("EHLO client.example.com", "250 CHUNKING");

#[tokio::test]
async fn ehlo_advertises_auth_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(settings(&dir), &[EHLO]).await;
    assert!(
        o.replies.contains(&"250-AUTH PLAIN LOGIN".to_string()),
        "{:?}",
        o.replies
    );
    assert!(!o.replies.iter().any(|l| l.contains("AUTH=")));

    let mut s = settings(&dir);
    s.broken_sasl_auth_clients = true;
    let o = run(s, &[EHLO]).await;
    assert!(o.replies.contains(&"250-AUTH PLAIN LOGIN".to_string()));
    assert!(o.replies.contains(&"250-AUTH=PLAIN LOGIN".to_string()));

    let mut s = settings(&dir);
    s.sasl = None;
    let o = run(
        s,
        &[
            EHLO,
            (
                "AUTH PLAIN AHRlc3RAZXhlbXBsZS5mcgBzZWNyZXQ=",
                "503 5.5.1 Error: authentication not enabled",
            ),
            (
                "MAIL FROM:<a@exemple.fr> AUTH=<>",
                "503 5.5.4 Error: authentication disabled",
            ),
        ],
    )
    .await;
    assert!(!o.replies.iter().any(|l| l.contains("AUTH")));

    // smtpd_tls_auth_only: nothing before STARTTLS.
    let mut s = settings(&dir);
    s.tls_auth_only = true;
    let o = run(
        s,
        &[
            EHLO,
            ("AUTH LOGIN", "503 5.5.1 Error: authentication not enabled"),
        ],
    )
    .await;
    assert!(!o.replies.iter().any(|l| l.starts_with("250-AUTH")));

    // noplaintext leaves no mechanism: AUTH is not offered.
    let mut s = settings(&dir);
    let (o_, _) = SecurityOptions::parse(&["noplaintext".into(), "noanonymous".into()]);
    s.sasl = Some(Arc::new(
        Authenticator::passwd_file(dir.path().join("passwd")).with_options(o_, o_),
    ));
    let o = run(
        s,
        &[
            EHLO,
            (
                "AUTH PLAIN",
                "535 5.7.8 Error: authentication failed: Invalid authentication mechanism: 'PLAIN'",
            ),
        ],
    )
    .await;
    assert!(!o.replies.iter().any(|l| l.starts_with("250-AUTH")));
}

#[tokio::test]
async fn plain_with_initial_response_then_mail() {
    let dir = tempfile::tempdir().unwrap();
    let ir = b64(b"\0test@exemple.fr\0secret");
    let o = run(
        settings(&dir),
        &[
            EHLO,
            (
                &format!("AUTH PLAIN {ir}"),
                "235 2.7.0 Authentication successful",
            ),
            (
                &format!("AUTH PLAIN {ir}"),
                "503 5.5.1 Error: already authenticated",
            ),
            (
                "MAIL FROM:<test@exemple.fr> AUTH=test+40exemple.fr",
                "250 2.1.0 Ok",
            ),
            ("RCPT TO:<x@example.net>", "250 2.1.5 Ok"),
            ("DATA", "354"),
            ("Subject: t\r\n\r\nhi\r\n.", "250 2.0.0 Ok"),
        ],
    )
    .await;
    assert!(
        o.log.contains("ID0001: client=unknown[192.0.2.1], sasl_method=PLAIN, sasl_username=test@exemple.fr, sasl_sender=test@exemple.fr"),
        "{}",
        o.log
    );
    let q = o.backend.queued.lock().unwrap();
    assert_eq!(q[0].1.sasl_user.as_deref(), Some("test@exemple.fr"));
    assert_eq!(q[0].1.protocol, "ESMTPA");
    let c = o.backend.checked.lock().unwrap();
    assert_eq!(c[0].sasl_user.as_deref(), Some("test@exemple.fr"));
    assert!(o.log.contains(" auth=1/2 "), "{}", o.log);
}

#[tokio::test]
async fn login_with_challenges_and_a_real_hash() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        settings(&dir),
        &[
            EHLO,
            ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
            (&b64(b"BOB@exemple.fr"), "334 UGFzc3dvcmQ6"),
            (&b64(b"secret"), "235 2.7.0 Authentication successful"),
        ],
    )
    .await;
    // The file's spelling of the name is the login.
    assert!(o.replies.iter().any(|l| l.starts_with("235")));
    // LOGIN with the user name as initial response.
    let o2 = run(
        settings(&dir),
        &[
            EHLO,
            (
                &format!("AUTH LOGIN {}", b64(b"bob@exemple.fr")),
                "334 UGFzc3dvcmQ6",
            ),
            (&b64(b"secret"), "235 2.7.0 Authentication successful"),
        ],
    )
    .await;
    assert!(
        o2.log
            .contains("disconnect from unknown[192.0.2.1] ehlo=1 auth=1 quit=1"),
        "{}",
        o2.log
    );
    let _ = o;
}

#[tokio::test]
async fn failures_are_logged_for_fail2ban() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        settings(&dir),
        &[
            EHLO,
            (
                &format!("AUTH PLAIN {}", b64(b"\0test@exemple.fr\0wrong")),
                "535 5.7.8 Error: authentication failed: authentication failure",
            ),
            (
                &format!("AUTH PLAIN {}", b64(b"\0nobody@exemple.fr\0secret")),
                "535 5.7.8 Error: authentication failed: authentication failure",
            ),
        ],
    )
    .await;
    let line = o
        .log
        .lines()
        .find(|l| l.contains("SASL PLAIN authentication failed"))
        .unwrap_or_else(|| panic!("{}", o.log));
    assert!(
        line.contains("postfix/smtpd[")
            && line.contains("]: warning: unknown[192.0.2.1]: SASL PLAIN authentication failed: authentication failure, sasl_username=test@exemple.fr"),
        "{line}"
    );
    // fail2ban's postfix-sasl failregex (filter.d/postfix.conf, mode aggressive/auth).
    // fail2ban's postfix-sasl failregex, without its negative look-ahead (which excludes
    // "Connection lost to authentication server" and "Invalid authentication mechanism").
    let msg = line.split("warning: ").nth(1).unwrap();
    let re = regex::Regex::new(r"^[^\[]*\[(?P<host>[^\]]+)\](?::\d+)?: SASL ((?i)LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5) authentication failed:").unwrap();
    let c = re
        .captures(msg)
        .unwrap_or_else(|| panic!("fail2ban would not match: {msg}"));
    assert_eq!(&c["host"], "192.0.2.1");
    assert!(o.log.contains(" auth=0/2 "), "{}", o.log);
}

#[tokio::test]
async fn edge_cases_cancel_base64_long_line_transaction_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&dir);
    s.sasl_response_limit = 64;
    let o = run(
        s,
        &[
            EHLO,
            ("AUTH", "501 5.5.4 Syntax: AUTH mechanism"),
            ("AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism"),
            ("AUTH CRAM-MD5", "535 5.7.8 Error: authentication failed: Invalid authentication mechanism: 'CRAM-MD5'"),
            ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
            ("*", "501 5.7.0 Authentication aborted"),
            ("AUTH PLAIN not!base64", "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response"),
            ("AUTH PLAIN", "334"),
            ("%%%%", "535 5.7.8 Error: authentication failed: Invalid base64 data in continued response"),
            ("AUTH PLAIN", "334"),
            (&"A".repeat(500), "500 5.5.6 SASL response limit exceeded"),
            // Not `authzid NUL authcid NUL password`.
            (&format!("AUTH PLAIN {}", b64(b"just text")), "535 5.7.8 Error: authentication failed: Invalid authentication data"),
            // Acting for another user is refused.
            (&format!("AUTH PLAIN {}", b64(b"bob@exemple.fr\0test@exemple.fr\0secret")), "535 5.7.8 Error: authentication failed: authorization denied"),
            ("MAIL FROM:<a@exemple.fr>", "250 2.1.0 Ok"),
            (&format!("AUTH PLAIN {}", b64(b"\0test@exemple.fr\0secret")), "503 5.5.1 Error: MAIL transaction in progress"),
            ("RSET", "250 2.0.0 Ok"),
            // The session still works after all that.
            (&format!("AUTH PLAIN {}", b64(b"\0test@exemple.fr\0secret")), "235 2.7.0 Authentication successful"),
        ],
    )
    .await;
    assert!(
        o.log
            .contains("warning: unknown[192.0.2.1]: SASL LOGIN authentication aborted"),
        "{}",
        o.log
    );
}
