//! The smtp/lmtp client against Postfix's smtp-sink and small in-test servers, on loopback.

use relais::config::Config;
use relais::delivery::Outcome;
use relais::dns::Dns;
use relais::smtp::{Client, Job, JobRcpt};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(extra: &str) -> Config {
    // No DNS in these tests: next-hops are IP literals; the DNS server port is a dead one.
    let text = format!(
        "myhostname = client.example.org\ninet_protocols = ipv4\nrelais_dns_servers = 127.0.0.1:9\nsmtp_helo_timeout = 5s\nsmtp_mail_timeout = 5s\nsmtp_rcpt_timeout = 5s\nsmtp_data_done_timeout = 5s\nsmtp_data_init_timeout = 5s\nsmtp_data_xfer_timeout = 5s\nsmtp_quit_timeout = 2s\nsmtp_connect_timeout = 3s\n{extra}\n"
    );
    Config::from_text(Path::new("/nonexistent"), &text).unwrap()
}

fn client(extra: &str) -> Client {
    let cfg = config(extra);
    let dns = Arc::new(Dns::from_config(&cfg).unwrap());
    Client::new(&cfg, dns)
}

fn job(nexthop: &str, rcpts: &[&str], content: &[u8]) -> Job {
    Job {
        queue_id: "4ABCDEF0123".into(),
        sender: "alice@example.com".into(),
        recipients: rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| JobRcpt {
                index: i + 10,
                address: r.to_string(),
                original: r.to_string(),
                ..Default::default()
            })
            .collect(),
        content: Arc::new(content.to_vec()),
        ret: None,
        envid: None,
        body_type: Default::default(),
        smtputf8: false,
        arrival: SystemTime::now(),
        active_since: None,
        nexthop: nexthop.into(),
        lmtp: false,
    }
}

const MSG: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: test\r\n\r\nHello Bob.\r\n.leading dot\r\n..two dots\r\n.\r\nend caf\xc3\xa9\r\n";

/// smtp-sink on a free port; killed on drop.
struct Sink {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sink(args: &[&str]) -> Option<Sink> {
    if !Path::new("/usr/sbin/smtp-sink").exists() {
        eprintln!("smtp-sink not installed; run tools/install-test-deps");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new("/usr/sbin/smtp-sink");
    cmd.arg("-d")
        .arg(format!("{}/%Y%m%d%H%M%S.", dir.path().display()));
    // smtp-sink refuses to run as root without -u.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
        let _ = std::process::Command::new("chmod")
            .args(["777", &dir.path().display().to_string()])
            .status();
    }
    cmd.args(args)
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Sink { child, port, dir });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("smtp-sink did not start");
}

fn dumps(dir: &Path) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter(|d| !d.is_empty())
            .collect();
        if !v.is_empty() || Instant::now() > deadline {
            v.sort();
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn delivers_to_smtp_sink_byte_for_byte() {
    let Some(s) = sink(&[]) else { return };
    let c = client("smtp_connection_cache_time_limit = 0s");
    let mut j = job(
        &format!("[127.0.0.1]:{}", s.port),
        &["bob@example.net", "carol@example.net"],
        MSG,
    );
    j.body_type = relais::envelope::BodyType::EightBitMime;
    let out = c.deliver(j).await;
    assert_eq!(out.len(), 2);
    for (i, (idx, o)) in out.iter().enumerate() {
        assert_eq!(*idx, 10 + i);
        assert!(matches!(o, Outcome::Sent { .. }), "{o:?}");
        assert_eq!(o.dsn(), "2.0.0");
        assert!(o.text().starts_with("250 2.0.0 Ok"), "{o:?}");
    }
    let d = dumps(s.dir.path());
    assert_eq!(d.len(), 1, "one message for both recipients");
    let dump = String::from_utf8_lossy(&d[0]).to_string();
    // smtp-sink offers no SIZE, so none is sent; it offers 8BITMIME and DSN.
    assert!(
        dump.contains("X-Mail-Args: <alice@example.com> BODY=8BITMIME\n"),
        "{dump}"
    );
    assert!(
        dump.contains("X-Rcpt-Args: <bob@example.net> ORCPT=rfc822;bob@example.net"),
        "{dump}"
    );
    assert!(dump.contains("X-Rcpt-Args: <carol@example.net>"), "{dump}");
    assert!(dump.contains("X-Helo-Args: client.example.org"), "{dump}");
    // The content arrives unchanged once smtp-sink has undone the dot-stuffing; its dump has
    // LF line ends and one empty line after each message.
    let expected = String::from_utf8_lossy(MSG).replace("\r\n", "\n") + "\n";
    let start = dump.find("From: Alice").expect("content in dump");
    assert_eq!(&d[0][start..], expected.as_bytes(), "{dump}");
}

#[tokio::test]
async fn smtp_sink_hard_reject_bounces_with_postfix_reason() {
    let Some(s) = sink(&[
        "-f",
        "RCPT",
        "-B",
        "550 5.1.1 Recipient address rejected: User unknown",
    ]) else {
        return;
    };
    let c = client("");
    let out = c
        .deliver(job(
            &format!("[127.0.0.1]:{}", s.port),
            &["x@example.net"],
            MSG,
        ))
        .await;
    assert_eq!(
        out[0].1,
        Outcome::bounced(
            "5.1.1",
            "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 Recipient address rejected: User unknown (in reply to RCPT TO command)"
        )
    );
}

#[tokio::test]
async fn smtp_sink_soft_reject_defers() {
    let Some(s) = sink(&["-r", "MAIL"]) else {
        return;
    };
    let c = client("");
    let out = c
        .deliver(job(
            &format!("[127.0.0.1]:{}", s.port),
            &["x@example.net"],
            MSG,
        ))
        .await;
    let o = &out[0].1;
    assert!(matches!(o, Outcome::Deferred { .. }), "{o:?}");
    assert!(o.dsn().starts_with('4'), "{o:?}");
    assert!(
        o.text().starts_with("host 127.0.0.1[127.0.0.1] said: 450")
            && o.text().ends_with("(in reply to MAIL FROM command)"),
        "{o:?}"
    );
}

#[tokio::test]
async fn connection_refused_defers_with_relay_none() {
    let port = free_port();
    let c = client("");
    let out = c
        .deliver(job(&format!("[127.0.0.1]:{port}"), &["x@example.net"], MSG))
        .await;
    assert_eq!(
        out[0].1,
        Outcome::deferred(
            "4.4.1",
            format!("connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused")
        )
    );
}

/// What the in-test server saw.
#[derive(Default, Debug)]
struct Seen {
    connections: usize,
    commands: Vec<String>,
    bodies: Vec<Vec<u8>>,
    /// Bytes of each client write that carried MAIL FROM (to check pipelining).
    mail_batches: Vec<String>,
}

#[derive(Clone)]
struct ServerOpts {
    ehlo: Vec<&'static str>,
    greeting: Option<&'static str>,
    lmtp: bool,
    /// Reply to RCPT by address substring.
    rcpt: Vec<(&'static str, &'static str)>,
    /// LMTP: reply after data per address substring.
    after_data: Vec<(&'static str, &'static str)>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            ehlo: vec!["PIPELINING", "8BITMIME"],
            greeting: Some("220 test ESMTP"),
            lmtp: false,
            rcpt: vec![],
            after_data: vec![],
        }
    }
}

/// Serves one session on any stream: bounded in commands and time.
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    o: ServerOpts,
    seen: Arc<Mutex<Seen>>,
) {
    let (r, mut w) = tokio::io::split(io);
    let mut r = BufReader::new(r);
    seen.lock().unwrap().connections += 1;
    let Some(g) = o.greeting else {
        // Say nothing, hold the connection a while.
        tokio::time::sleep(Duration::from_secs(5)).await;
        return;
    };
    w.write_all(format!("{g}\r\n").as_bytes()).await.unwrap();
    let mut accepted: Vec<String> = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        let n = match tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        if n == 0 {
            return;
        }
        let cmd = line.trim_end().to_string();
        seen.lock().unwrap().commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("MAIL FROM") {
            // Whatever the client pipelined with MAIL is already in the buffer.
            let buffered = String::from_utf8_lossy(r.buffer()).to_string();
            seen.lock()
                .unwrap()
                .mail_batches
                .push(format!("{cmd}\r\n{buffered}"));
        }
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
            let mut s = String::from("250-test\r\n");
            for (i, e) in o.ehlo.iter().enumerate() {
                let sep = if i + 1 == o.ehlo.len() { ' ' } else { '-' };
                s.push_str(&format!("250{sep}{e}\r\n"));
            }
            if o.ehlo.is_empty() {
                s = "250 test\r\n".into();
            }
            s
        } else if upper.starts_with("MAIL") {
            accepted.clear();
            "250 2.1.0 Ok\r\n".into()
        } else if upper.starts_with("RCPT") {
            let rep = o
                .rcpt
                .iter()
                .find(|(k, _)| cmd.contains(k))
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| "250 2.1.5 Ok".into());
            if rep.starts_with('2') {
                accepted.push(cmd.clone());
            }
            format!("{rep}\r\n")
        } else if upper == "DATA" {
            if accepted.is_empty() {
                "554 5.5.1 Error: no valid recipients\r\n".into()
            } else {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .unwrap();
                let mut body = Vec::new();
                for _ in 0..100_000 {
                    let mut l = Vec::new();
                    match tokio::time::timeout(Duration::from_secs(10), r.read_until(b'\n', &mut l))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    body.extend_from_slice(&l);
                }
                seen.lock().unwrap().bodies.push(body);
                final_replies(&o, &accepted)
            }
        } else if upper.starts_with("BDAT") {
            let n: usize = upper
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
                .min(10_000_000);
            let mut body = vec![0u8; n];
            if r.read_exact(&mut body).await.is_err() {
                return;
            }
            seen.lock().unwrap().bodies.push(body);
            final_replies(&o, &accepted)
        } else if upper == "RSET" {
            accepted.clear();
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "502 5.5.2 Error: command not recognized\r\n".into()
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn final_replies(o: &ServerOpts, accepted: &[String]) -> String {
    if !o.lmtp {
        return "250 2.0.0 Ok: queued as ABC\r\n".into();
    }
    accepted
        .iter()
        .map(|a| {
            o.after_data
                .iter()
                .find(|(k, _)| a.contains(k))
                .map(|(_, v)| format!("{v}\r\n"))
                .unwrap_or_else(|| "250 2.0.0 Ok delivered\r\n".into())
        })
        .collect()
}

/// A TCP test server for up to `max_conns` connections.
async fn tcp_server(o: ServerOpts, max_conns: usize) -> (u16, Arc<Mutex<Seen>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        for _ in 0..max_conns {
            let Ok(Ok((sock, _))) = tokio::time::timeout(Duration::from_secs(20), l.accept()).await
            else {
                return;
            };
            tokio::spawn(serve(sock, o.clone(), s2.clone()));
        }
    });
    (port, seen)
}

#[tokio::test]
async fn per_recipient_outcomes_with_pipelining() {
    let (port, seen) = tcp_server(
        ServerOpts {
            rcpt: vec![
                ("soft@", "450 4.2.0 Mailbox busy"),
                ("hard@", "550 5.1.1 No such user"),
            ],
            ..Default::default()
        },
        4,
    )
    .await;
    let c = client("smtp_connection_cache_time_limit = 0s");
    let out = c
        .deliver(job(
            &format!("[127.0.0.1]:{port}"),
            &["ok@example.net", "soft@example.net", "hard@example.net"],
            MSG,
        ))
        .await;
    assert!(matches!(out[0].1, Outcome::Sent { .. }), "{out:?}");
    assert_eq!(out[0].1.text(), "250 2.0.0 Ok: queued as ABC");
    assert_eq!(
        out[1].1,
        Outcome::deferred(
            "4.2.0",
            "host 127.0.0.1[127.0.0.1] said: 450 4.2.0 Mailbox busy (in reply to RCPT TO command)"
        )
    );
    assert_eq!(
        out[2].1,
        Outcome::bounced(
            "5.1.1",
            "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 No such user (in reply to RCPT TO command)"
        )
    );
    let seen = seen.lock().unwrap();
    // MAIL, the three RCPTs and DATA came in one write.
    let batch = &seen.mail_batches[0];
    assert!(batch.contains("RCPT TO:<hard@example.net>"), "{batch}");
    assert!(batch.ends_with("DATA\r\n"), "{batch}");
    // Dot-stuffed on the wire, CRLF everywhere.
    let body = &seen.bodies[0];
    let wire = String::from_utf8_lossy(body);
    assert!(
        wire.contains("\r\n..leading dot\r\n...two dots\r\n..\r\n"),
        "{wire}"
    );
}

#[tokio::test]
async fn bdat_when_chunking_offered() {
    let (port, seen) = tcp_server(
        ServerOpts {
            ehlo: vec!["PIPELINING", "CHUNKING", "SIZE 1000000", "DSN", "SMTPUTF8"],
            ..Default::default()
        },
        2,
    )
    .await;
    let c = client("smtp_connection_cache_time_limit = 0s");
    let mut j = job(&format!("[127.0.0.1]:{port}"), &["b@example.net"], MSG);
    j.envid = Some("id 1".into());
    j.ret = Some(relais::envelope::Ret::Hdrs);
    j.recipients[0].notify = relais::envelope::Notify {
        success: true,
        failure: true,
        explicit: true,
        ..Default::default()
    };
    let out = c.deliver(j).await;
    assert!(matches!(out[0].1, Outcome::Sent { .. }), "{out:?}");
    let seen = seen.lock().unwrap();
    let cmds = seen.commands.join("\n");
    assert!(
        cmds.contains(&format!(
            "MAIL FROM:<alice@example.com> SIZE={} RET=HDRS ENVID=id+201",
            MSG.len()
        )),
        "{cmds}"
    );
    assert!(
        cmds.contains("RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net"),
        "{cmds}"
    );
    assert!(cmds.contains(&format!("BDAT {} LAST", MSG.len())), "{cmds}");
    assert!(!cmds.contains("\nDATA"), "{cmds}");
    // BDAT carries the content as it is: no dot-stuffing.
    assert_eq!(seen.bodies[0], MSG);
}

#[tokio::test]
async fn size_limit_and_smtputf8_bounce_without_sending() {
    let (port, seen) = tcp_server(
        ServerOpts {
            ehlo: vec!["PIPELINING", "SIZE 50"],
            ..Default::default()
        },
        4,
    )
    .await;
    let c = client("smtp_connection_cache_time_limit = 0s");
    let out = c
        .deliver(job(&format!("[127.0.0.1]:{port}"), &["b@example.net"], MSG))
        .await;
    assert_eq!(
        out[0].1,
        Outcome::bounced(
            "5.3.4",
            format!(
                "message size {} exceeds size limit 50 of server 127.0.0.1[127.0.0.1]",
                MSG.len()
            )
        )
    );
    let mut j = job(&format!("[127.0.0.1]:{port}"), &["b@example.net"], b"x\r\n");
    j.smtputf8 = true;
    let out = c.deliver(j).await;
    assert_eq!(
        out[0].1,
        Outcome::bounced(
            "5.6.7",
            "SMTPUTF8 is required, but was not offered by host 127.0.0.1[127.0.0.1]"
        )
    );
    let seen = seen.lock().unwrap();
    assert!(
        !seen.commands.iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        seen.commands
    );
}

#[tokio::test]
async fn greeting_timeout_defers_with_postfix_reason() {
    let (port, _seen) = tcp_server(
        ServerOpts {
            greeting: None,
            ..Default::default()
        },
        1,
    )
    .await;
    let c = client("smtp_helo_timeout = 1s");
    let t0 = Instant::now();
    let out = c
        .deliver(job(&format!("[127.0.0.1]:{port}"), &["b@example.net"], MSG))
        .await;
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert_eq!(
        out[0].1,
        Outcome::deferred(
            "4.4.2",
            "conversation with 127.0.0.1[127.0.0.1] timed out while receiving the initial server greeting"
        )
    );
}

#[tokio::test]
async fn helo_fallback_when_ehlo_refused() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        let Ok((sock, _)) = l.accept().await else {
            return;
        };
        let (r, mut w) = tokio::io::split(sock);
        let mut r = BufReader::new(r);
        w.write_all(b"220 old\r\n").await.unwrap();
        for _ in 0..20 {
            let mut line = String::new();
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await,
                Ok(Ok(n)) if n > 0
            ) {
                return;
            }
            let cmd = line.trim_end().to_string();
            log2.lock().unwrap().push(cmd.clone());
            let rep: &[u8] = if cmd.starts_with("EHLO") {
                b"502 5.5.2 Error: command not recognized\r\n"
            } else if cmd == "DATA" {
                b"354 go\r\n"
            } else if cmd == "." {
                b"250 queued\r\n"
            } else if cmd == "QUIT" {
                b"221 bye\r\n"
            } else if cmd.starts_with("HELO") || cmd.starts_with("MAIL") || cmd.starts_with("RCPT")
            {
                b"250 ok\r\n"
            } else {
                continue;
            };
            w.write_all(rep).await.unwrap();
        }
    });
    let c = client("smtp_connection_cache_time_limit = 0s");
    let out = c
        .deliver(job(
            &format!("[127.0.0.1]:{port}"),
            &["b@example.net"],
            b"hi\r\n",
        ))
        .await;
    assert_eq!(out[0].1, Outcome::sent("2.0.0", "250 queued"));
    let log = log.lock().unwrap();
    assert_eq!(log[1], "HELO client.example.org");
    // Without EHLO there are no extensions: plain MAIL and RCPT.
    assert_eq!(log[2], "MAIL FROM:<alice@example.com>");
    assert_eq!(log[3], "RCPT TO:<b@example.net>");
}

#[tokio::test]
async fn connection_cache_reuses_one_session_for_two_jobs() {
    let (port, seen) = tcp_server(ServerOpts::default(), 4).await;
    let c = client("smtp_connection_cache_time_limit = 5s");
    let nh = format!("[127.0.0.1]:{port}");
    let out1 = c.deliver(job(&nh, &["a@example.net"], MSG)).await;
    assert_eq!(c.cached_sessions(), 1);
    let out2 = c.clone().deliver(job(&nh, &["b@example.net"], MSG)).await;
    assert!(matches!(out1[0].1, Outcome::Sent { .. }), "{out1:?}");
    assert!(matches!(out2[0].1, Outcome::Sent { .. }), "{out2:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.connections, 1, "{:?}", seen.commands);
    let ehlos = seen
        .commands
        .iter()
        .filter(|c| c.starts_with("EHLO"))
        .count();
    assert_eq!(ehlos, 1);
    // A clean transaction needs no RSET before reuse.
    assert!(
        !seen.commands.iter().any(|c| c == "RSET"),
        "{:?}",
        seen.commands
    );
    assert_eq!(seen.bodies.len(), 2);
}

#[tokio::test]
async fn cache_sends_rset_after_open_transaction_and_expires() {
    let (port, seen) = tcp_server(
        ServerOpts {
            rcpt: vec![("nobody@", "550 5.1.1 No such user")],
            ..Default::default()
        },
        4,
    )
    .await;
    let c = client("smtp_connection_cache_time_limit = 1s");
    let nh = format!("[127.0.0.1]:{port}");
    // Without pipelining DATA would not be sent; with it, DATA is refused (no recipients).
    let out = c.deliver(job(&nh, &["nobody@example.net"], MSG)).await;
    assert!(matches!(out[0].1, Outcome::Bounced { .. }), "{out:?}");
    let out = c.deliver(job(&nh, &["a@example.net"], MSG)).await;
    assert!(matches!(out[0].1, Outcome::Sent { .. }), "{out:?}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.connections, 1);
        assert!(
            seen.commands.iter().any(|c| c == "RSET"),
            "{:?}",
            seen.commands
        );
    }
    // After the idle limit the session is closed with QUIT and a new job connects again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.cached_sessions(), 0);
    assert!(seen.lock().unwrap().commands.iter().any(|c| c == "QUIT"));
    let out = c.deliver(job(&nh, &["a@example.net"], MSG)).await;
    assert!(matches!(out[0].1, Outcome::Sent { .. }), "{out:?}");
    assert_eq!(seen.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn lmtp_over_unix_socket_one_reply_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("private")).unwrap();
    let sock = dir.path().join("private/lmtp");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let opts = ServerOpts {
        ehlo: vec!["PIPELINING", "ENHANCEDSTATUSCODES"],
        lmtp: true,
        greeting: Some("220 lmtp ready"),
        after_data: vec![
            ("full@", "452 4.2.2 Mailbox full"),
            ("gone@", "550 5.1.1 User unknown"),
        ],
        ..Default::default()
    };
    tokio::spawn(async move {
        if let Ok(Ok((s, _))) = tokio::time::timeout(Duration::from_secs(10), l.accept()).await {
            serve(s, opts, s2).await;
        }
    });
    let c = client(&format!(
        "queue_directory = {}\nsmtp_connection_cache_time_limit = 0s",
        dir.path().display()
    ));
    let mut j = job(
        "unix:private/lmtp",
        &["ok@example.org", "full@example.org", "gone@example.org"],
        MSG,
    );
    j.lmtp = true;
    let out = c.deliver(j).await;
    assert_eq!(out[0].1, Outcome::sent("2.0.0", "250 2.0.0 Ok delivered"));
    let peer = format!("client.example.org[{}]", sock.display());
    assert_eq!(
        out[1].1,
        Outcome::deferred(
            "4.2.2",
            format!("host {peer} said: 452 4.2.2 Mailbox full (in reply to end of DATA command)")
        )
    );
    assert_eq!(
        out[2].1,
        Outcome::bounced(
            "5.1.1",
            format!("host {peer} said: 550 5.1.1 User unknown (in reply to end of DATA command)")
        )
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.commands[0], "LHLO client.example.org");
}

/// A log sink for the Postfix-shaped lines.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn log_lines_have_postfix_shape() {
    use tracing_subscriber::prelude::*;
    let buf = Buf::default();
    let sink: relais::log::Sink = Arc::new(Mutex::new(Box::new(buf.clone())));
    let sub = tracing_subscriber::registry().with(relais::log::PostfixLayer::new(
        "mail.example.org",
        "postfix/master",
        sink,
        false,
    ));
    let _g = tracing::subscriber::set_default(sub);
    let (port, _seen) = tcp_server(ServerOpts::default(), 2).await;
    let dead = free_port();
    let c = client("smtp_connection_cache_time_limit = 0s").with_tag("postfix/relay/smtp");
    let mut j = job(&format!("[127.0.0.1]:{port}"), &["bob@example.net"], MSG);
    j.recipients[0].original = "bobby@example.net".into();
    c.deliver(j).await;
    c.deliver(job(&format!("[127.0.0.1]:{dead}"), &["x@example.net"], MSG))
        .await;
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let sent = regex::Regex::new(&format!(
        r"mail postfix/relay/smtp\[\d+\]: 4ABCDEF0123: to=<bob@example\.net>, orig_to=<bobby@example\.net>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{port}, delay=[0-9.]+, delays=[0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+, dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued as ABC\)\n"
    ))
    .unwrap();
    assert!(sent.is_match(&out), "{out}");
    assert!(
        out.contains(&format!(
            "postfix/relay/smtp[{}]: connect to 127.0.0.1[127.0.0.1]:{dead}: Connection refused\n",
            std::process::id()
        )),
        "{out}"
    );
    let deferred = regex::Regex::new(&format!(
        r"4ABCDEF0123: to=<x@example\.net>, relay=none, delay=[0-9.]+, delays=[0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+, dsn=4\.4\.1, status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused\)\n"
    ))
    .unwrap();
    assert!(deferred.is_match(&out), "{out}");
    let _ = std::io::stderr().flush();
}
