//! The smtpd listener actor on 127.0.0.1: sessions, the per-client connection limit, reload.

use actix::Actor;
use relais::config::Config;
use relais::envelope::{Envelope, Origin};
use relais::smtpd::{Backend, BoxFuture, Checked, Reload, Reply, SessionInfo, Smtpd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Accept;
impl Backend for Accept {
    fn new_queue_id(&self) -> String {
        "ABC123".into()
    }
    fn check_recipient(&self, _: &SessionInfo, _: &str) -> BoxFuture<'static, Checked> {
        Box::pin(async { Checked::permit() })
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

async fn first_line(s: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut l))
        .await
        .expect("line within 5s")
        .expect("read");
    l
}

#[actix_rt::test]
async fn limits_connections_per_client_and_reloads() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Config::from_text(
        Path::new("/nonexistent"),
        "myhostname = mail.example.com\nmail_name = relais\nsmtpd_client_connection_count_limit = 1\nmynetworks = 192.0.2.0/24\n",
    )
    .unwrap();
    let smtpd = Smtpd::new(listener, &cfg, "smtp", Arc::new(Accept)).start();

    let mut c1 = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(
        first_line(&mut c1).await,
        "220 mail.example.com ESMTP relais\r\n"
    );

    let mut c2 = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(
        first_line(&mut c2).await,
        "421 4.7.0 mail.example.com Error: too many connections from 127.0.0.1\r\n"
    );
    drop(c2);

    c1.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(first_line(&mut c1).await, "221 2.0.0 Bye\r\n");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c1.read_to_end(&mut rest)).await;

    let cfg2 = cfg.with_overrides([("smtpd_banner", "$myhostname ESMTP reloaded")]);
    smtpd.send(Reload(cfg2)).await.unwrap();

    // The first session's slot is released when its task ends, just after the close.
    let mut banner = String::new();
    for _ in 0..50 {
        let mut c3 = BufReader::new(TcpStream::connect(addr).await.unwrap());
        banner = first_line(&mut c3).await;
        if banner.starts_with("220") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(banner, "220 mail.example.com ESMTP reloaded\r\n");
}

#[actix_rt::test]
async fn mynetworks_clients_are_exempt_from_the_limit() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Config::from_text(
        Path::new("/nonexistent"),
        "myhostname = mail.example.com\nmail_name = relais\nsmtpd_client_connection_count_limit = 1\nmynetworks = 127.0.0.0/8\n",
    )
    .unwrap();
    let _smtpd = Smtpd::new(listener, &cfg, "smtp", Arc::new(Accept)).start();
    let mut c1 = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut c2 = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(first_line(&mut c1).await.starts_with("220 "));
    assert!(first_line(&mut c2).await.starts_with("220 "));
}
