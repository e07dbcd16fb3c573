//! Replays the golden Postfix 3.7 transcripts (../shared/fixtures/postfix-reference/
//! smtpd-transcript-*.txt) against relais's smtpd: every client line is sent (pipelined),
//! and the server's output must match Postfix's byte for byte.

use relais::config::Config;
use relais::envelope::{Envelope, Origin};
use relais::smtpd::{Backend, BoxFuture, Checked, Reply, Session, SessionInfo, Settings};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/postfix-reference"
);

struct Golden {
    /// The reply the relay check gives victim@example.net.
    deny: Reply,
}

impl Backend for Golden {
    fn new_queue_id(&self) -> String {
        "5B89E9AA104".into()
    }
    fn check_recipient(&self, _: &SessionInfo, rcpt: &str) -> BoxFuture<'static, Checked> {
        let c = if rcpt == "victim@example.net" {
            Checked::reject(self.deny.clone())
        } else {
            Checked::permit()
        };
        Box::pin(async move { c })
    }
    fn enqueue(
        &self,
        _: String,
        _: Envelope,
        _: Origin,
        _: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>> {
        Box::pin(async { Ok(()) })
    }
}

/// A client line as the transcript describes it (two over-long lines are described in words).
fn client_line(l: &str) -> String {
    if l.starts_with("NOOP aaaa[...]") {
        format!("NOOP {}", "a".repeat(2100))
    } else if l.starts_with("XXXX[...]") {
        "X".repeat(2100)
    } else {
        l.to_string()
    }
}

async fn replay(name: &str, extra_cf: &str, deny: Reply) {
    let path = format!("{DIR}/smtpd-transcript-{name}.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: {path} not found");
        return;
    };
    // The reference is Postfix 3.7, where smtpd_forbid_unauth_pipelining defaults to no; the
    // replay also sends the whole client side at once, which that check would refuse.
    let cf = format!(
        "compatibility_level = 3.6\nmyhostname = mail.exemple.fr\nmail_name = Postfix\ndisable_vrfy_command = yes\nsmtpd_forbid_unauth_pipelining = no\n{extra_cf}"
    );
    let cfg = Config::from_text(Path::new("/nonexistent"), &cf).unwrap();
    let mut s = Settings::from_config(&cfg, "smtp");
    s.error_sleep_time = Duration::ZERO;
    let mut send = Vec::new();
    let mut expect = Vec::new();
    let mut closes = false;
    for l in text.lines() {
        if let Some(c) = l.strip_prefix("C: ") {
            send.extend_from_slice(client_line(c).as_bytes());
            send.extend_from_slice(b"\r\n");
        } else if l == "C:" {
            send.extend_from_slice(b"\r\n");
        } else if let Some(r) = l.strip_prefix("S: ") {
            if r == "<connection closed by server>" {
                closes = true;
            } else {
                expect.extend_from_slice(r.as_bytes());
                expect.extend_from_slice(b"\r\n");
            }
        }
    }
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let info = SessionInfo::new("unknown", "127.0.0.1", 40000, "smtp");
    let task =
        tokio::spawn(Session::new(server, Arc::new(s), Arc::new(Golden { deny }), info).run());
    // The server may hang up before reading everything (HTTP, header lines): ignore errors.
    let _ = client.write_all(&send).await;
    let mut got = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    assert!(res.is_ok(), "{name}: server did not close");
    assert!(closes || got.ends_with(b"221 2.0.0 Bye\r\n"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expect),
        "transcript {name}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

fn relay_554() -> Reply {
    Reply::new(554, "5.7.1 <victim@example.net>: Relay access denied")
}

#[tokio::test]
async fn golden_basic_commands() {
    replay("basic-commands", "", relay_554()).await;
}

#[tokio::test]
async fn golden_data_accepted() {
    replay("data-accepted", "", relay_554()).await;
}

#[tokio::test]
async fn golden_data_before_rcpt() {
    replay("data-before-rcpt", "", relay_554()).await;
}

#[tokio::test]
async fn golden_error_replies() {
    replay("error-replies", "", relay_554()).await;
}

#[tokio::test]
async fn golden_etrn_fast_flush() {
    replay(
        "etrn-fast-flush-enabled",
        "fast_flush_domains = example.net\n",
        relay_554(),
    )
    .await;
}

#[tokio::test]
async fn golden_http_get() {
    replay("http-get", "", relay_554()).await;
}

#[tokio::test]
async fn golden_relay_denied_454() {
    let deny = Reply::new(454, "4.7.1 <victim@example.net>: Relay access denied");
    replay("relay-access-denied-454-default", "", deny).await;
}

#[tokio::test]
async fn golden_relay_denied_554() {
    replay("relay-access-denied-554", "", relay_554()).await;
}

#[tokio::test]
async fn golden_relay_denied_then_message_sent() {
    replay("relay-denied-then-message-sent-anyway", "", relay_554()).await;
}

#[tokio::test]
async fn golden_size_too_large() {
    replay("size-too-large", "", relay_554()).await;
}
