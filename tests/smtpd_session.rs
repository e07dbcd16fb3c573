//! Scripted SMTP sessions against relais's smtpd, driven through `tokio::io::duplex`, with a
//! test backend that accepts and records messages.

use relais::envelope::{Envelope, Origin};
use relais::smtpd::storage::{FsSpace, StorageError};
use relais::smtpd::{
    Backend, BareNewline, BoxFuture, Checked, Reply, Session, SessionInfo, Settings,
};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing_subscriber::prelude::*;

/// One queued message as the backend received it.
type Queued = (String, Envelope, Origin, Vec<u8>);

#[derive(Default)]
struct TestBackend {
    next: AtomicU32,
    queued: Mutex<Vec<Queued>>,
    /// The queue file system the session measures at MAIL FROM (None: no queue on disk).
    space: Option<FsSpace>,
    /// Messages still to refuse as the queue refuses one it cannot write.
    write_failures: AtomicU32,
}

impl Backend for TestBackend {
    fn new_queue_id(&self) -> String {
        format!("ID{:04}", self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn check_recipient(&self, _s: &SessionInfo, rcpt: &str) -> BoxFuture<'static, Checked> {
        let c = if rcpt.ends_with("@elsewhere.example") {
            Checked::reject(Reply::new(
                554,
                format!("5.7.1 <{rcpt}>: Relay access denied"),
            ))
        } else {
            Checked::permit()
        };
        Box::pin(async move { c })
    }
    fn enqueue(
        &self,
        id: String,
        env: Envelope,
        origin: Origin,
        content: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>> {
        let fail = self
            .write_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            // What the real backend answers when cleanup cannot write the queue.
            return Box::pin(async { Err(Reply::new(451, "4.3.0 Error: queue file write error")) });
        }
        if let Ok(mut q) = self.queued.lock() {
            q.push((id, env, origin, content));
        }
        Box::pin(async { Ok(()) })
    }
    fn queue_space(&self) -> Option<Result<FsSpace, StorageError>> {
        self.space.map(Ok)
    }
}

impl TestBackend {
    fn bodies(&self) -> Vec<Vec<u8>> {
        self.queued
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.3.clone())
            .collect()
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

/// One step of a script: bytes to send, then the replies expected (each a prefix of the last
/// line of one reply).
struct Step {
    send: Vec<u8>,
    expect: Vec<String>,
}

fn cmd(line: &str, expect: &str) -> Step {
    Step {
        send: format!("{line}\r\n").into_bytes(),
        expect: vec![expect.to_string()],
    }
}

fn raw(bytes: &[u8], expect: &[&str]) -> Step {
    Step {
        send: bytes.to_vec(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

struct Outcome {
    backend: Arc<TestBackend>,
    /// Every reply line the server sent, CRLF removed.
    replies: Vec<String>,
    log: String,
    /// Whether the server closed the connection by the end of the script.
    closed: bool,
}

fn settings() -> Settings {
    let mut s = Settings::for_tests();
    s.error_sleep_time = Duration::ZERO;
    s
}

async fn run(s: Settings, steps: Vec<Step>) -> Outcome {
    run_with(TestBackend::default(), s, steps).await
}

async fn run_with(backend: TestBackend, s: Settings, steps: Vec<Step>) -> Outcome {
    let backend = Arc::new(backend);
    let buf = LogBuf::default();
    let sink: relais::log::Sink = Arc::new(Mutex::new(Box::new(buf.clone())));
    let sub = tracing_subscriber::registry().with(relais::log::PostfixLayer::new(
        "mail.example.com",
        "postfix/smtpd",
        sink,
        false,
    ));
    let _g = tracing::subscriber::set_default(sub);
    let (client, server) = tokio::io::duplex(1 << 16);
    let info = SessionInfo::new("unknown", "192.0.2.1", 4321, "smtp");
    let b: Arc<dyn Backend> = backend.clone();
    let task = tokio::spawn(Session::new(server, Arc::new(s), b, info).run());
    let (rd, mut wr) = tokio::io::split(client);
    let mut rd = BufReader::new(rd);
    let mut replies = Vec::new();
    let mut closed = false;
    let (greet, _) = read_reply(&mut rd).await;
    assert!(greet[0].starts_with("220 "), "{greet:?}");
    replies.extend(greet);
    for step in steps {
        if !step.send.is_empty() {
            // The server may have hung up already; that is what some scripts test.
            let _ = wr.write_all(&step.send).await;
        }
        for want in &step.expect {
            let (lines, eof) = read_reply(&mut rd).await;
            let last = lines.last().cloned().unwrap_or_default();
            replies.extend(lines.clone());
            assert!(
                last.starts_with(want.as_str()),
                "expected {want:?}, got {lines:?} (eof={eof}); so far {replies:?}"
            );
        }
    }
    // Is the connection closed? Read what is left with a short timeout.
    let mut rest = Vec::new();
    if let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), rd.read_to_end(&mut rest)).await
    {
        closed = true;
    }
    if closed {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    } else {
        drop(wr);
        drop(rd);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    for l in String::from_utf8_lossy(&rest).lines() {
        replies.push(l.to_string());
    }
    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    Outcome {
        backend,
        replies,
        log,
        closed,
    }
}

type Rd = BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>;

/// Reads one complete (possibly multi-line) reply; `true` when the server closed instead.
async fn read_reply(rd: &mut Rd) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    for _ in 0..100 {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut l))
            .await
            .expect("reply within 10s")
            .unwrap_or(0);
        if n == 0 {
            return (lines, true);
        }
        let l = l.trim_end_matches(['\r', '\n']).to_string();
        let done = l.as_bytes().get(3) != Some(&b'-');
        lines.push(l);
        if done {
            return (lines, false);
        }
    }
    (lines, false)
}

fn ehlo() -> Step {
    cmd("EHLO client.example.com", "250 CHUNKING")
}

#[tokio::test]
async fn ehlo_advertises_postfix_extensions_in_order() {
    let o = run(settings(), vec![ehlo(), cmd("QUIT", "221 2.0.0 Bye")]).await;
    assert_eq!(
        &o.replies[1..11],
        &[
            "250-mail.example.com",
            "250-PIPELINING",
            "250-SIZE 10240000",
            "250-VRFY",
            "250-ETRN",
            "250-ENHANCEDSTATUSCODES",
            "250-8BITMIME",
            "250-DSN",
            "250-SMTPUTF8",
            "250 CHUNKING"
        ]
    );
    assert_eq!(o.replies[0], "220 mail.example.com ESMTP relais");
    assert!(o.closed);
    assert!(
        o.log.contains("connect from unknown[192.0.2.1]"),
        "{}",
        o.log
    );
    assert!(
        o.log
            .contains("disconnect from unknown[192.0.2.1] ehlo=1 quit=1 commands=2"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn basic_commands_as_postfix() {
    let mut s = settings();
    s.disable_vrfy = true;
    let o = run(
        s,
        vec![
            cmd("EHLO client.example.com", "250 CHUNKING"),
            cmd("HELO client.example.com", "250 mail.example.com"),
            cmd("NOOP", "250 2.0.0 Ok"),
            cmd("RSET", "250 2.0.0 Ok"),
            cmd("VRFY bob@example.net", "502 5.5.1 VRFY command is disabled"),
            cmd("ETRN example.net", "459 <example.net>: service unavailable"),
            cmd("STARTTLS", "502 5.5.1 Error: command not implemented"),
            cmd(
                "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=",
                "503 5.5.1 Error: authentication not enabled",
            ),
            cmd("HELP", "214 2.0.0"),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert!(!o.replies.iter().any(|l| l == "250-VRFY"));
    assert!(o.closed);
    assert!(
        o.log
            .contains("warning: reject: ETRN example.net... from unknown[192.0.2.1]"),
        "{}",
        o.log
    );
    assert!(o.log.contains(
        "disconnect from unknown[192.0.2.1] helo=1 ehlo=1 starttls=0/1 auth=0/1 rset=1 noop=1 vrfy=0/1 etrn=0/1 quit=1 help=1 commands=6/10"
    ), "{}", o.log);
}

#[tokio::test]
async fn successful_transaction_is_queued() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd(
                "MAIL FROM:<alice@example.com> SIZE=120 BODY=7BIT",
                "250 2.1.0 Ok",
            ),
            cmd(
                "RCPT TO:<bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.net",
                "250 2.1.5 Ok",
            ),
            cmd("DATA", "354 End data with <CR><LF>.<CR><LF>"),
            raw(
                b"Subject: test\r\n\r\nhello\r\n..dot\r\n.\r\n",
                &["250 2.0.0 Ok: queued as ID0001"],
            ),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    let q = o.backend.queued.lock().unwrap();
    assert_eq!(q.len(), 1);
    let (id, env, origin, body) = &q[0];
    assert_eq!(id, "ID0001");
    assert_eq!(env.sender, "alice@example.com");
    assert_eq!(env.recipients.len(), 1);
    assert_eq!(env.recipients[0].address, "bob@example.net");
    assert!(env.recipients[0].notify.failure && env.recipients[0].notify.delay);
    assert!(!env.recipients[0].notify.success);
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("rfc822;bob@example.net")
    );
    assert_eq!(env.body_type, relais::envelope::BodyType::SevenBit);
    assert_eq!(origin.protocol, "ESMTP");
    assert_eq!(origin.helo.as_deref(), Some("client.example.com"));
    assert_eq!(origin.client_addr, "192.0.2.1");
    assert_eq!(body, b"Subject: test\r\n\r\nhello\r\n.dot\r\n");
    assert!(
        o.log.contains("ID0001: client=unknown[192.0.2.1]"),
        "{}",
        o.log
    );
    assert!(
        o.log
            .contains("ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn mail_params_ret_envid_smtputf8_auth() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd(
                "MAIL FROM:<a@example.com> RET=HDRS ENVID=abc123 SMTPUTF8 BODY=8BITMIME",
                "250 2.1.0 Ok",
            ),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354"),
            raw(b"x\r\n.\r\n", &["250 2.0.0 Ok: queued as"]),
        ],
    )
    .await;
    let q = o.backend.queued.lock().unwrap();
    let env = &q[0].1;
    assert_eq!(env.ret, Some(relais::envelope::Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("abc123"));
    assert!(env.smtputf8);
    assert_eq!(env.body_type, relais::envelope::BodyType::EightBitMime);
}

#[tokio::test]
async fn bad_sequence_replies() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd(
                "RCPT TO:<bob@example.net>",
                "503 5.5.1 Error: need MAIL command",
            ),
            cmd("DATA", "503 5.5.1 Error: need RCPT command"),
            cmd("MAIL FROM:<alice@example.com>", "250 2.1.0 Ok"),
            cmd("DATA", "554 5.5.1 Error: no valid recipients"),
            cmd(
                "MAIL FROM:<alice@example.com>",
                "503 5.5.1 Error: nested MAIL command",
            ),
            cmd("RSET", "250 2.0.0 Ok"),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert!(
        o.log
            .contains("ehlo=1 mail=1/2 rcpt=0/1 data=0/2 rset=1 quit=1 commands=4/8"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn error_replies_and_long_lines() {
    let long_noop = format!("NOOP {}", "a".repeat(2100));
    let long_junk = "X".repeat(2100);
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd(
                "MAIL FROM:<not an address>",
                "501 5.1.7 Bad sender address syntax",
            ),
            cmd("MAIL FROM:", "501 5.5.4 Syntax: MAIL FROM:<address>"),
            cmd("MAIL FROM:<a@b> FOO=bar", "555 5.5.4 Unsupported option"),
            cmd("XYZZY", "500 5.5.2 Error: command not recognized"),
            cmd(&long_noop, "250 2.0.0 Ok"),
            cmd(&long_junk, "500 5.5.2 Error: command not recognized"),
            cmd("MAIL FROM:<a@b>", "250 2.1.0 Ok"),
            cmd(
                "RCPT TO:<not an address>",
                "501 5.1.3 Bad recipient address syntax",
            ),
            cmd("RCPT TO:", "501 5.5.4 Syntax: RCPT TO:<address>"),
            cmd("RCPT TO:<b@c> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
            cmd("DATA extra", "501 5.5.4 Syntax: DATA"),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert!(o.log.contains(
        "warning: Illegal address syntax from unknown[192.0.2.1] in MAIL command: <not an address>"
    ), "{}", o.log);
    assert!(o.log.contains(
        "warning: unknown[192.0.2.1]: request longer than 2048: NOOP aaaaaaaaaaaaaaaaaaaaaaaaa...\n"
    ), "{}", o.log);
    assert!(o.log.contains(
        "warning: unknown[192.0.2.1]: request longer than 2048: XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX...\n"
    ), "{}", o.log);
}

#[tokio::test]
async fn relay_denied_is_logged_and_data_refused() {
    let o = run(
        settings(),
        vec![
            cmd("EHLO relay-test.example.com", "250 CHUNKING"),
            cmd("MAIL FROM:<spammer@example.com>", "250 2.1.0 Ok"),
            cmd(
                "RCPT TO:<victim@elsewhere.example>",
                "554 5.7.1 <victim@elsewhere.example>: Relay access denied",
            ),
            cmd("DATA", "554 5.5.1 Error: no valid recipients"),
            raw(
                b"Subject: x\r\n\r\nx\r\n.\r\n",
                &["221 2.7.0 Error: I can break rules, too. Goodbye."],
            ),
        ],
    )
    .await;
    assert!(o.closed);
    assert!(o.backend.queued.lock().unwrap().is_empty());
    assert!(o.log.contains("NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 <victim@elsewhere.example>: Relay access denied; from=<spammer@example.com> to=<victim@elsewhere.example> proto=ESMTP helo=<relay-test.example.com>"), "{}", o.log);
    assert!(
        o.log
            .contains("warning: non-SMTP command from unknown[192.0.2.1]: Subject: x"),
        "{}",
        o.log
    );
    assert!(
        o.log
            .contains("ehlo=1 mail=1 rcpt=0/1 data=0/1 unknown=0/1 commands=2/5"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn http_request_ends_session() {
    let o = run(
        settings(),
        vec![cmd(
            "GET / HTTP/1.0",
            "221 2.7.0 Error: I can break rules, too. Goodbye.",
        )],
    )
    .await;
    assert!(o.closed);
    assert!(
        o.log
            .contains("warning: non-SMTP command from unknown[192.0.2.1]: GET / HTTP/1.0"),
        "{}",
        o.log
    );
    assert!(
        o.log
            .contains("disconnect from unknown[192.0.2.1] unknown=0/1 commands=0/1"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn size_declared_too_large_sticks_until_rset() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd(
                "MAIL FROM:<alice@example.com> SIZE=999999999",
                "552 5.3.4 Message size exceeds fixed limit",
            ),
            cmd(
                "MAIL FROM:<alice@example.com>",
                "552 5.3.4 Message size exceeds fixed limit",
            ),
            cmd("RSET", "250 2.0.0 Ok"),
            cmd("MAIL FROM:<alice@example.com>", "250 2.1.0 Ok"),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert!(o.log.contains("NOQUEUE: reject: MAIL from unknown[192.0.2.1]: 552 5.3.4 Message size exceeds fixed limit; from=<alice@example.com> proto=ESMTP helo=<client.example.com>"), "{}", o.log);
    assert!(
        o.log.contains("ehlo=1 mail=1/3 rset=1 quit=1 commands=4/6"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn message_too_large_after_data_is_read_to_the_end() {
    let mut s = settings();
    s.message_size_limit = 1000;
    let big = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(900)).repeat(3);
    let mut data = big.into_bytes();
    data.extend_from_slice(b".\r\n");
    let o = run(
        s,
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354"),
            raw(&data, &["552 5.3.4 Message size exceeds fixed limit"]),
            // The session goes on, and the transaction is over.
            cmd(
                "RCPT TO:<b@example.net>",
                "503 5.5.1 Error: need MAIL command",
            ),
            cmd("QUIT", "221"),
        ],
    )
    .await;
    assert!(o.backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn recipient_limit() {
    let mut s = settings();
    s.recipient_limit = 2;
    let o = run(
        s,
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b1@example.net>", "250 2.1.5 Ok"),
            cmd("RCPT TO:<b2@example.net>", "250 2.1.5 Ok"),
            cmd(
                "RCPT TO:<b3@example.net>",
                "452 4.5.3 Error: too many recipients",
            ),
            cmd("DATA", "354"),
            raw(b"x\r\n.\r\n", &["250 2.0.0 Ok: queued as ID0001"]),
        ],
    )
    .await;
    assert_eq!(o.backend.queued.lock().unwrap()[0].1.recipients.len(), 2);
}

#[tokio::test]
async fn helo_required() {
    let mut s = settings();
    s.helo_required = true;
    run(
        s,
        vec![
            cmd(
                "MAIL FROM:<a@example.com>",
                "503 5.5.1 Error: send HELO/EHLO first",
            ),
            cmd("HELO", "501 Syntax: HELO hostname"),
            cmd("HELO client", "250 mail.example.com"),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
        ],
    )
    .await;
}

#[tokio::test]
async fn pipelined_commands_answered_in_order_in_one_batch() {
    // Message content sent before the 354 breaks RFC 2920; this test is about reply order,
    // so it turns smtpd_forbid_unauth_pipelining off (the violation is only logged).
    let mut s = settings();
    s.forbid_unauth_pipelining = false;
    let o = run(
        s,
        vec![
            ehlo(),
            raw(
                b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<c@example.net>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.net>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n",
                &[
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "554 5.7.1",
                    "250 2.1.5 Ok",
                    "354",
                    "250 2.0.0 Ok: queued as ID0001",
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354",
                    "250 2.0.0 Ok: queued as ID0002",
                    "221 2.0.0 Bye",
                ],
            ),
        ],
    )
    .await;
    let q = o.backend.queued.lock().unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].1.recipients.len(), 2);
    assert_eq!(q[0].3, b"Subject: p\r\n\r\nbody\r\n");
    assert_eq!(q[1].1.sender, "");
    assert_eq!(q[1].3, b"second\r\n");
}

/// Every bare-LF / bare-CR imitation of end-of-data, followed by a pipelined second message:
/// the imitation must stay inside the first message, and exactly two messages are queued.
#[tokio::test]
async fn bare_newline_never_ends_data() {
    let fakes: &[&[u8]] = &[
        b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n",
    ];
    for mode in [BareNewline::Normalize, BareNewline::No] {
        for fake in fakes {
            let mut s = settings();
            s.bare_newline = mode;
            let mut data = b"Subject: one\r\n\r\nA".to_vec();
            data.extend_from_slice(fake);
            data.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n");
            let o = run(
                s,
                vec![
                    ehlo(),
                    cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
                    cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
                    cmd("DATA", "354"),
                    raw(&data, &["250 2.0.0 Ok: queued as ID0001"]),
                    cmd("MAIL FROM:<second@example.com>", "250 2.1.0 Ok"),
                    cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
                    cmd("DATA", "354"),
                    raw(b"two\r\n.\r\n", &["250 2.0.0 Ok: queued as ID0002"]),
                ],
            )
            .await;
            let q = o.backend.queued.lock().unwrap();
            assert_eq!(q.len(), 2, "fake {fake:?}");
            assert_eq!(q[0].1.sender, "a@example.com");
            assert_eq!(q[1].1.sender, "second@example.com");
            let body = &q[0].3;
            // The smuggled commands are content of the first message.
            assert!(
                body.windows(28)
                    .any(|w| w == b"MAIL FROM:<evil@example.com>"),
                "fake {fake:?}: {:?}",
                String::from_utf8_lossy(body)
            );
            // No bare CR or LF reaches the queue: every line ends in CRLF.
            for (i, b) in body.iter().enumerate() {
                if *b == b'\n' {
                    assert!(i > 0 && body[i - 1] == b'\r', "bare LF in {body:?}");
                }
                if *b == b'\r' {
                    assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR in {body:?}");
                }
            }
            assert!(
                body.ends_with(b"smuggled\r\n"),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(q[1].3, b"two\r\n");
        }
    }
}

#[tokio::test]
async fn bare_lf_in_data_stored_as_crlf() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354"),
            raw(b"l1\nl2\rl3\r\n.\r\n", &["250 2.0.0 Ok: queued as ID0001"]),
        ],
    )
    .await;
    assert_eq!(o.backend.bodies(), vec![b"l1\r\nl2\r\nl3\r\n".to_vec()]);
}

#[tokio::test]
async fn bare_lf_rejected_when_forbidden() {
    let mut s = settings();
    s.bare_newline = BareNewline::Reject;
    let o = run(
        s.clone(),
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354"),
            raw(
                b"l1\n.\nMAIL FROM:<x@y>\r\n",
                &["521 5.5.2 mail.example.com Error: bare <LF> received"],
            ),
        ],
    )
    .await;
    assert!(o.closed);
    assert!(o.backend.queued.lock().unwrap().is_empty());
    // Every imitation of end-of-data is refused, none ends the message.
    for (fake, what) in [
        (&b"\n.\n"[..], "<LF>"),
        (b"\r.\r", "<CR>"),
        (b"\n.\r\n", "<LF>"),
        (b"\r\n.\n", "<LF>"),
        (b"\r\n.\r", "<CR>"),
    ] {
        let mut data = b"Subject: one\r\n\r\nA".to_vec();
        data.extend_from_slice(fake);
        data.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\n.\r\n");
        let reply = format!("521 5.5.2 mail.example.com Error: bare {what} received");
        let o = run(
            s.clone(),
            vec![
                ehlo(),
                cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
                cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
                cmd("DATA", "354"),
                raw(&data, &[reply.as_str()]),
            ],
        )
        .await;
        assert!(o.closed, "{fake:?}");
        assert!(o.backend.queued.lock().unwrap().is_empty(), "{fake:?}");
    }
    // In commands too.
    let o = run(
        s,
        vec![raw(
            b"EHLO x\n",
            &["521 5.5.2 mail.example.com Error: bare <LF> received"],
        )],
    )
    .await;
    assert!(o.closed);
}

#[tokio::test]
async fn bdat_chunks_and_last() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            raw(b"BDAT 12\r\nSubject: c\r\n", &["250 2.0.0 Ok: 12 bytes"]),
            // A chunk may contain what looks like commands and end-of-data: it is content.
            raw(
                b"BDAT 17 LAST\r\n\r\n.\r\nQUIT\r\nbare\nx",
                &["250 2.0.0 Ok: queued as ID0001"],
            ),
            raw(b"BDAT 3\r\nabc", &["503 5.5.1 Error: need RCPT command"]),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert_eq!(
        o.backend.bodies(),
        vec![b"Subject: c\r\n\r\n.\r\nQUIT\r\nbare\r\nx\r\n".to_vec()]
    );
    assert!(o.log.contains("bdat=2/3"), "{}", o.log);
}

#[tokio::test]
async fn bdat_size_limit_and_syntax() {
    let mut s = settings();
    s.message_size_limit = 10;
    let o = run(
        s,
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            raw(b"BDAT 8\r\n12345678", &["250 2.0.0 Ok: 8 bytes"]),
            raw(
                b"BDAT 8 LAST\r\n12345678",
                &["552 5.3.4 Message size exceeds fixed limit"],
            ),
            cmd("NOOP", "250 2.0.0 Ok"),
            cmd("BDAT x", "501 5.5.4 Syntax: BDAT count [LAST]"),
        ],
    )
    .await;
    assert!(o.closed);
    assert!(o.backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn timeout_in_command_and_in_data() {
    let mut s = settings();
    s.timeout = Duration::from_millis(200);
    let o = run(
        s.clone(),
        vec![
            ehlo(),
            raw(b"", &["421 4.4.2 mail.example.com Error: timeout exceeded"]),
        ],
    )
    .await;
    assert!(o.closed);
    assert!(
        o.log.contains("timeout after EHLO from unknown[192.0.2.1]"),
        "{}",
        o.log
    );
    let o = run(
        s,
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354"),
            raw(
                b"partial line",
                &["421 4.4.2 mail.example.com Error: timeout exceeded"],
            ),
        ],
    )
    .await;
    assert!(
        o.log.contains("timeout after DATA from unknown[192.0.2.1]"),
        "{}",
        o.log
    );
    assert!(o.backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn hard_error_limit() {
    let mut s = settings();
    s.hard_error_limit = 3;
    let o = run(
        s,
        vec![
            cmd("FOO", "500"),
            cmd("FOO", "500"),
            cmd("FOO", "500"),
            raw(b"", &["421 4.7.0 mail.example.com Error: too many errors"]),
        ],
    )
    .await;
    assert!(o.closed);
}

#[tokio::test]
async fn junk_commands_count_as_errors_past_the_limit() {
    let mut s = settings();
    s.junk_command_limit = 2;
    s.hard_error_limit = 2;
    let o = run(
        s,
        vec![
            cmd("NOOP", "250"),
            cmd("NOOP", "250"),
            cmd("NOOP", "250"),
            cmd("NOOP", "250"),
            raw(b"", &["421 4.7.0 mail.example.com Error: too many errors"]),
        ],
    )
    .await;
    assert!(o.closed);
}

#[tokio::test]
async fn soft_error_limit_slows_replies() {
    let mut s = settings();
    s.soft_error_limit = 1;
    s.error_sleep_time = Duration::from_millis(300);
    let start = std::time::Instant::now();
    run(s, vec![cmd("FOO", "500"), cmd("NOOP", "250")]).await;
    assert!(start.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn lost_connection_after_data_is_logged() {
    let o = run(
        settings(),
        vec![
            ehlo(),
            cmd("MAIL FROM:<a@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<b@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354"),
            raw(b"some content\r\n", &[]),
        ],
    )
    .await;
    assert!(
        o.log
            .contains("lost connection after DATA from unknown[192.0.2.1]"),
        "{}",
        o.log
    );
    assert!(o.backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_input_without_newline_is_bounded() {
    // 1 MB of junk without a line end: read in line_length_limit pieces and dropped.
    let junk = vec![b'z'; 1 << 20];
    let o = run(
        settings(),
        vec![
            raw(&junk, &[]),
            cmd("", "500 5.5.2 Error: command not recognized"),
            cmd("QUIT", "221"),
        ],
    )
    .await;
    assert!(
        o.log.contains("request longer than 2048: zzzzzz"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn etrn_with_fast_flush_domain() {
    let mut s = settings();
    s.fast_flush_domains = vec!["example.net".into()];
    run(
        s,
        vec![
            ehlo(),
            cmd("ETRN example.net", "250 Queuing started"),
            cmd("ETRN", "500 Syntax: ETRN domain"),
            cmd("ETRN example.org", "459 <example.org>: service unavailable"),
            cmd("MAIL FROM:<a@b.example>", "250"),
            cmd(
                "ETRN example.net",
                "503 Error: MAIL transaction in progress",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn vrfy_enabled_uses_recipient_check() {
    run(
        settings(),
        vec![
            cmd("VRFY", "501 5.5.4 Syntax: VRFY address"),
            cmd("VRFY <bob@example.net>", "252 2.0.0 bob@example.net"),
            cmd("VRFY x@elsewhere.example", "554 5.7.1"),
        ],
    )
    .await;
}

#[tokio::test]
async fn postmaster_without_domain_is_accepted() {
    let o = run(
        settings(),
        vec![
            cmd("MAIL FROM:<>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<postmaster>", "250 2.1.5 Ok"),
            cmd("RCPT TO:<a..b>", "501 5.1.3 Bad recipient address syntax"),
            cmd("DATA", "354"),
            raw(b"x\r\n.\r\n", &["250 2.0.0 Ok"]),
        ],
    )
    .await;
    let q = o.backend.queued.lock().unwrap();
    assert_eq!(q[0].1.recipients[0].address, "postmaster");
    assert_eq!(q[0].2.protocol, "SMTP");
}

#[tokio::test]
async fn ehlo_follows_settings() {
    let mut s = settings();
    s.smtputf8 = false;
    s.disable_vrfy = true;
    s.message_size_limit = 0;
    let o = run(
        s,
        vec![
            ehlo(),
            cmd(
                "MAIL FROM:<a@example.com> SMTPUTF8",
                "555 5.5.4 Unsupported option: SMTPUTF8",
            ),
            cmd(
                "MAIL FROM:<a@example.com> SIZE=999999999999",
                "250 2.1.0 Ok",
            ),
        ],
    )
    .await;
    assert!(o.replies.iter().any(|l| l == "250-SIZE"));
    assert!(!o
        .replies
        .iter()
        .any(|l| l.contains("SMTPUTF8") && l.starts_with("250")));
    assert!(!o.replies.iter().any(|l| l == "250-VRFY"));
}

/// Postfix's smtpd_check_queue at MAIL FROM: fewer free blocks than 1.5 × message_size_limit
/// (10240000 bytes: 2500 blocks of 4096, so 3750 free blocks are needed) is `452 4.3.1
/// Insufficient system storage`, logged as Postfix logs it; the session goes on.
#[tokio::test]
async fn too_little_queue_space_refuses_mail_from_as_postfix() {
    let backend = TestBackend {
        space: Some(FsSpace {
            block_size: 4096,
            block_free: 3750,
        }),
        ..Default::default()
    };
    let o = run_with(
        backend,
        settings(),
        vec![
            ehlo(),
            cmd(
                "MAIL FROM:<alice@example.com> SIZE=100",
                "452 4.3.1 Insufficient system storage",
            ),
            cmd("RSET", "250 2.0.0 Ok"),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    let lines: Vec<&str> = o.log.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("NOQUEUE: reject: MAIL from "))
        .unwrap_or_else(|| panic!("{}", o.log));
    assert!(
        lines[at].ends_with(
            "]: NOQUEUE: reject: MAIL from unknown[192.0.2.1]: 452 4.3.1 Insufficient system storage; proto=ESMTP helo=<client.example.com>"
        ),
        "{}",
        lines[at]
    );
    assert!(
        lines[at + 1].ends_with(
            "]: warning: not enough free space in mail queue: 15360000 bytes < 1.5*message size limit"
        ),
        "{}",
        o.log
    );

    // One block more is enough.
    let backend = TestBackend {
        space: Some(FsSpace {
            block_size: 4096,
            block_free: 3751,
        }),
        ..Default::default()
    };
    let o = run_with(
        backend,
        settings(),
        vec![
            ehlo(),
            cmd("MAIL FROM:<alice@example.com> SIZE=100", "250 2.1.0 Ok"),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert!(!o.log.contains("Insufficient"), "{}", o.log);
}

/// A message the queue cannot write gets Postfix's 451 at the end of DATA or of BDAT, and
/// the session goes on: the next message is accepted.
#[tokio::test]
async fn a_queue_write_error_is_451_and_the_session_goes_on() {
    let backend = TestBackend {
        write_failures: AtomicU32::new(2),
        ..Default::default()
    };
    let o = run_with(
        backend,
        settings(),
        vec![
            ehlo(),
            cmd("MAIL FROM:<alice@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<bob@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354 "),
            raw(
                b"Subject: one\r\n\r\nbody\r\n.\r\n",
                &["451 4.3.0 Error: queue file write error"],
            ),
            cmd("MAIL FROM:<alice@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<bob@example.net>", "250 2.1.5 Ok"),
            raw(
                b"BDAT 22 LAST\r\nSubject: two\r\n\r\nbody\r\n",
                &["451 4.3.0 Error: queue file write error"],
            ),
            cmd("RSET", "250 2.0.0 Ok"),
            cmd("MAIL FROM:<alice@example.com>", "250 2.1.0 Ok"),
            cmd("RCPT TO:<bob@example.net>", "250 2.1.5 Ok"),
            cmd("DATA", "354 "),
            raw(
                b"Subject: three\r\n\r\nbody\r\n.\r\n",
                &["250 2.0.0 Ok: queued as "],
            ),
            cmd("QUIT", "221 2.0.0 Bye"),
        ],
    )
    .await;
    assert!(!o.closed || o.replies.iter().any(|r| r.starts_with("221")));
    let q = o.backend.queued.lock().unwrap();
    assert_eq!(q.len(), 1, "{:?}", o.replies);
    assert!(q[0].3.starts_with(b"Subject: three"));
}
