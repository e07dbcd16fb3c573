//! smtpd's per-client limits inside a session, driven through `tokio::io::duplex`: improper
//! pipelining and pre-greeting talkers (smtpd_forbid_unauth_pipelining), the anvil rate
//! limits at MAIL FROM and RCPT TO, the tarpit after smtpd_soft_error_limit errors, and the
//! connection rate limit of the listener.

use relais::anvil::AnvilClient;
use relais::envelope::{Envelope, Origin};
use relais::smtpd::{Backend, BoxFuture, Checked, Reply, Session, SessionInfo, Settings};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing_subscriber::prelude::*;

#[derive(Default)]
struct Accept {
    next: AtomicU32,
    queued: AtomicU32,
    /// What the recipient check saw of reject_unauth_pipelining's flag.
    saw_ill_pipelining: AtomicBool,
}

impl Backend for Accept {
    fn new_queue_id(&self) -> String {
        format!("ID{:04}", self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn check_recipient(&self, s: &SessionInfo, _rcpt: &str) -> BoxFuture<'static, Checked> {
        if s.ill_pipelining {
            self.saw_ill_pipelining.store(true, Ordering::SeqCst);
        }
        Box::pin(async { Checked::permit() })
    }
    fn enqueue(
        &self,
        _id: String,
        _env: Envelope,
        _origin: Origin,
        _content: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>> {
        self.queued.fetch_add(1, Ordering::SeqCst);
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
impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn settings() -> Settings {
    let mut s = Settings::for_tests();
    s.error_sleep_time = Duration::ZERO;
    s
}

/// A session under test: the client side of the duplex, the log, the backend.
struct Client {
    rd: BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    wr: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    log: LogBuf,
    backend: Arc<Accept>,
    _guard: tracing::subscriber::DefaultGuard,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a session; `early` is written before the server runs (a pre-greeting talker).
async fn start(s: Settings, anvil: Option<AnvilClient>, early: &[u8]) -> Client {
    let log = LogBuf::default();
    let sink: relais::log::Sink = Arc::new(Mutex::new(Box::new(log.clone())));
    let sub = tracing_subscriber::registry().with(relais::log::PostfixLayer::new(
        "mail.example.com",
        "postfix/smtpd",
        sink,
        false,
    ));
    let guard = tracing::subscriber::set_default(sub);
    let (client, server) = tokio::io::duplex(1 << 16);
    let (rd, mut wr) = tokio::io::split(client);
    if !early.is_empty() {
        wr.write_all(early).await.unwrap();
    }
    let backend = Arc::new(Accept::default());
    let info = SessionInfo::new("unknown", "192.0.2.1", 4321, "smtp");
    let b: Arc<dyn Backend> = backend.clone();
    let mut session = Session::new(server, Arc::new(s), b, info);
    if let Some(a) = anvil {
        session = session.with_anvil(a, "192.0.2.1".parse().unwrap());
    }
    // The session runs on this thread's runtime and logs through the guard set above.
    let task = tokio::spawn(session.run());
    Client {
        rd: BufReader::new(rd),
        wr,
        log,
        backend,
        _guard: guard,
        task,
    }
}

impl Client {
    /// One whole reply, lines joined with \n; empty at end of input. Bounded by a timeout.
    async fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.rd.read_line(&mut line))
                .await
                .expect("server answered in time")
                .unwrap_or(0);
            if n == 0 {
                return all.join("\n");
            }
            let line = line.trim_end().to_string();
            let more = line.len() > 3 && line.as_bytes()[3] == b'-';
            all.push(line);
            if !more {
                return all.join("\n");
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may have hung up already; that is what some tests check.
        let _ = self.wr.write_all(bytes).await;
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Waits for the session's end; the log then holds its disconnect line.
    async fn finish(self) -> (String, Arc<Accept>) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        (self.log.text(), self.backend)
    }
}

#[tokio::test]
async fn a_client_that_talks_before_the_greeting_is_refused() {
    let mut c = start(settings(), None, b"EHLO early.example\r\nQUIT\r\n").await;
    assert_eq!(
        c.reply().await,
        "554 5.5.0 Error: SMTP protocol synchronization"
    );
    assert_eq!(
        c.reply().await,
        "",
        "the server hangs up without a greeting"
    );
    let (log, _) = c.finish().await;
    assert!(
        log.contains("postfix/smtpd[") && log.contains(
            ": improper command pipelining after CONNECT from unknown[192.0.2.1]: EHLO early.example\\r\\nQUIT\\r\\n\n"
        ),
        "{log}"
    );
    assert!(
        log.contains("disconnect from unknown[192.0.2.1] commands=0\n"),
        "{log}"
    );
}

#[tokio::test]
async fn without_the_forbid_setting_a_pre_greeting_talker_is_only_flagged() {
    let mut s = settings();
    s.forbid_unauth_pipelining = false;
    let mut c = start(s, None, b"EHLO early.example\r\n").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.reply().await.starts_with("250-mail.example.com"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").await.starts_with("250 "));
    assert!(c.cmd("RCPT TO:<b@example.net>").await.starts_with("250 "));
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    let (log, backend) = c.finish().await;
    assert!(
        log.contains("improper command pipelining after CONNECT from unknown[192.0.2.1]: EHLO early.example\\r\\n"),
        "{log}"
    );
    assert!(
        backend.saw_ill_pipelining.load(Ordering::SeqCst),
        "the flag reject_unauth_pipelining tests is set"
    );
}

#[tokio::test]
async fn commands_pipelined_without_ehlo_are_refused() {
    let mut c = start(settings(), None, b"").await;
    assert!(c.reply().await.starts_with("220 "));
    c.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\n")
        .await;
    assert_eq!(
        c.reply().await,
        "554 5.5.0 Error: SMTP protocol synchronization"
    );
    assert_eq!(c.reply().await, "");
    let (log, _) = c.finish().await;
    assert!(
        log.contains("improper command pipelining after HELO from unknown[192.0.2.1]: MAIL FROM:<a@example.com>\\r\\n"),
        "{log}"
    );
}

#[tokio::test]
async fn rfc2920_pipelining_after_ehlo_is_accepted() {
    let mut c = start(settings(), None, b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.contains("PIPELINING"));
    // MAIL, RCPT and RSET may be followed by more; DATA ends the group.
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{r}");
    }
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.reply().await.starts_with("221 "));
    let (log, backend) = c.finish().await;
    assert!(!log.contains("improper command pipelining"), "{log}");
    assert_eq!(backend.queued.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn content_sent_before_the_354_is_refused() {
    let mut c = start(settings(), None, b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        .await;
    for want in [
        "250 2.1.0",
        "250 2.1.5",
        "554 5.5.0 Error: SMTP protocol synchronization",
    ] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{r}");
    }
    let (log, backend) = c.finish().await;
    assert!(
        log.contains("improper command pipelining after DATA from unknown[192.0.2.1]: Subject: x\\r\\n\\r\\nbody\\r\\n.\\r\\n"),
        "{log}"
    );
    assert_eq!(backend.queued.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn message_rate_limit_refuses_mail_from_with_450() {
    let mut s = settings();
    s.message_rate_limit = 2;
    let anvil = AnvilClient::local(Duration::from_secs(60));
    let mut c = start(s, Some(anvil), b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    for _ in 0..2 {
        assert!(c.cmd("MAIL FROM:<a@example.com>").await.starts_with("250 "));
        assert!(c.cmd("RSET").await.starts_with("250 "));
    }
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>").await,
        "450 4.7.1 Error: too much mail from 192.0.2.1"
    );
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    let (log, _) = c.finish().await;
    assert!(
        log.contains("warning: Message delivery request rate limit exceeded: 3 from unknown[192.0.2.1] for service smtp"),
        "{log}"
    );
    assert!(log.contains(" mail=2/3 "), "{log}");
}

#[tokio::test]
async fn recipient_rate_limit_refuses_rcpt_to_with_450_across_sessions() {
    let mut s = settings();
    s.recipient_rate_limit = 3;
    let anvil = AnvilClient::local(Duration::from_secs(60));
    // Two recipients in a first session, then the third and fourth in a second one: the rate
    // is the client's, not the session's.
    let mut c = start(s.clone(), Some(anvil.clone()), b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").await.starts_with("250 "));
    assert!(c.cmd("RCPT TO:<b@example.net>").await.starts_with("250 "));
    assert!(c.cmd("RCPT TO:<c@example.net>").await.starts_with("250 "));
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    c.finish().await;
    let mut c = start(s, Some(anvil), b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").await.starts_with("250 "));
    assert!(c.cmd("RCPT TO:<d@example.net>").await.starts_with("250 "));
    assert_eq!(
        c.cmd("RCPT TO:<e@example.net>").await,
        "450 4.7.1 Error: too many recipients from 192.0.2.1"
    );
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    let (log, _) = c.finish().await;
    assert!(
        log.contains("warning: Recipient address rate limit exceeded: 4 from unknown[192.0.2.1] for service smtp"),
        "{log}"
    );
}

#[tokio::test]
async fn exempt_or_unlimited_clients_are_not_counted() {
    // No anvil handed to the session (what the listener does for clients in
    // smtpd_client_event_limit_exceptions): the limits do not apply.
    let mut s = settings();
    s.message_rate_limit = 1;
    let mut c = start(s, None, b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    for _ in 0..3 {
        assert!(c.cmd("MAIL FROM:<a@example.com>").await.starts_with("250 "));
        assert!(c.cmd("RSET").await.starts_with("250 "));
    }
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    c.finish().await;
}

/// Postfix's tarpit: once the client has made smtpd_soft_error_limit errors, every reply
/// waits smtpd_error_sleep_time; a delivered message forgives the errors.
#[tokio::test]
async fn replies_are_delayed_after_the_soft_error_limit() {
    let mut s = settings();
    s.soft_error_limit = 2;
    s.hard_error_limit = 20;
    s.error_sleep_time = Duration::from_millis(1000);
    let mut c = start(s, None, b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    let t = Instant::now();
    assert!(c.cmd("BOGUS1").await.starts_with("500 "));
    assert!(c.cmd("BOGUS2").await.starts_with("500 "));
    let fast = t.elapsed();
    // Two errors made: from now on, each reply (errors and successes alike) waits.
    let t = Instant::now();
    assert!(c.cmd("NOOP").await.starts_with("250 "));
    let slow1 = t.elapsed();
    let t = Instant::now();
    assert!(c.cmd("MAIL FROM:<a@example.com>").await.starts_with("250 "));
    assert!(c.cmd("RCPT TO:<b@example.net>").await.starts_with("250 "));
    let slow2 = t.elapsed();
    assert!(c.cmd("DATA").await.starts_with("354 "));
    assert!(c
        .cmd("Subject: x\r\n\r\nbody\r\n.")
        .await
        .starts_with("250 2.0.0 Ok: queued"));
    // The message was received: the errors are forgiven.
    let t = Instant::now();
    assert!(c.cmd("NOOP").await.starts_with("250 "));
    let after = t.elapsed();
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    c.finish().await;
    // Margins: a delay is at least the full second (a sleep never ends early); an undelayed
    // reply is given half a second, which a loaded machine still meets by far.
    assert!(
        fast < Duration::from_millis(500),
        "first errors took {fast:?}"
    );
    assert!(slow1 >= Duration::from_millis(1000), "NOOP took {slow1:?}");
    assert!(
        slow2 >= Duration::from_millis(2000),
        "MAIL+RCPT took {slow2:?}"
    );
    assert!(
        after < Duration::from_millis(500),
        "NOOP after delivery took {after:?}"
    );
}

#[actix_rt::test]
async fn connection_rate_limit_refuses_with_421() {
    use actix::Actor;
    use std::io::{BufRead, BufReader as StdBufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = relais::config::Config::from_text(
        std::path::Path::new("/nonexistent"),
        "myhostname = mail.example.com\nmail_name = relais\nsmtpd_client_connection_rate_limit = 2\nsmtpd_client_event_limit_exceptions =\n",
    )
    .unwrap();
    let _smtpd =
        relais::smtpd::Smtpd::new(listener, &cfg, "smtp", Arc::new(Accept::default())).start();
    let banner = |port: u16| {
        tokio::task::spawn_blocking(move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut line = String::new();
            StdBufReader::new(s).read_line(&mut line).unwrap();
            line
        })
    };
    // One after the other (each closes before the next): the count never exceeds one, the
    // rate reaches three.
    assert!(banner(port).await.unwrap().starts_with("220 "));
    assert!(banner(port).await.unwrap().starts_with("220 "));
    assert_eq!(
        banner(port).await.unwrap(),
        "421 4.7.0 mail.example.com Error: too many connections from 127.0.0.1\r\n"
    );
}
