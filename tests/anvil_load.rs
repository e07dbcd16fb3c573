//! anvil and smtpd's per-client limits against the real binary under real client load:
//! Postfix's smtp-source, many idle connections, Python's smtplib for STARTTLS. Every test
//! is bounded in time and kills what it starts (the Instance's Drop).

mod common;

use common::{run_bounded, wait_until, Instance};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} >/dev/null 2>&1 || test -x /usr/sbin/{tool}"),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn smtp_source() -> &'static str {
    if std::path::Path::new("/usr/sbin/smtp-source").exists() {
        "/usr/sbin/smtp-source"
    } else {
        "smtp-source"
    }
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit; the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A TCP connection to 127.0.0.1:port from the loopback address `from` (bound first, which
/// std cannot do: tokio's TcpSocket can).
fn connect_from(from: &str, port: u16) -> std::io::Result<TcpStream> {
    if from == "127.0.0.1" {
        // The kernel's own choice: no bind needed.
        let s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        return Ok(s);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local: IpAddr = from.parse().expect("an address");
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(local, 0))?;
        tokio::time::timeout(Duration::from_secs(10), sock.connect(to))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
    })?;
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

fn first_line(s: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

/// A child process killed if the test ends early.
struct Child(Option<std::process::Child>);

impl Child {
    /// Waits (bounded) for the exit: (success, stderr).
    fn wait(&mut self, timeout: Duration) -> (bool, String) {
        let Some(mut c) = self.0.take() else {
            return (false, String::new());
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (st.success(), err);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("child did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn connection_count_limit_holds_under_smtp_source_load_and_loses_nothing() {
    if !have("smtp-source") {
        eprintln!("smtp-source not installed (tools/install-test-deps); skipping");
        return;
    }
    let started = Instant::now();
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{}\nsmtpd_client_connection_count_limit = 4\nsmtpd_client_event_limit_exceptions =\nanvil_status_update_time = 1s\n",
        common::relayhost_to_nowhere()
    ));
    inst.start();
    let port = inst.smtp_port;

    // Deterministic part: six sessions held open at once, the limit is four.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| connect_from("127.0.0.1", port).unwrap_or_else(|e| panic!("connect: {e}")))
        .collect();
    let greetings: Vec<String> = held.iter().map(first_line).collect();
    let ok = greetings.iter().filter(|g| g.starts_with("220 ")).count();
    let refused: Vec<&String> = greetings.iter().filter(|g| g.starts_with("421 ")).collect();
    assert_eq!((ok, refused.len()), (4, 2), "{greetings:?}");
    assert!(refused[0].ends_with("Error: too many connections from 127.0.0.1\r\n"));
    assert!(inst.wait_log(
        &format!("Connection concurrency limit exceeded: 5 from unknown[127.0.0.1] for service {port}"),
        Duration::from_secs(5)
    ), "{}", inst.log());

    // smtp-source while four sessions are held: refused at the banner (smtp-source gives up
    // on a 421 greeting).
    let out = run_bounded(
        Command::new(smtp_source()).args(["-s", "1", "-m", "1", &format!("127.0.0.1:{port}")]),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("rejected at server banner: 421 4.7.0 ")
            && stderr.contains("Error: too many connections from 127.0.0.1"),
        "{stderr}"
    );
    drop(held);
    // The server sees the four held sessions end.
    assert!(
        wait_until(Duration::from_secs(10), || count(
            &inst.log(),
            "disconnect from"
        ) >= 7),
        "{}",
        inst.log()
    );

    // Load at the limit: four parallel sessions that keep their connection (-d), 100
    // messages. None is refused and every message is queued.
    let out = run_bounded(
        Command::new(smtp_source()).args([
            "-d",
            "-s",
            "4",
            "-m",
            "100",
            "-f",
            "load@example.com",
            "-t",
            "rcpt@example.org",
            &format!("127.0.0.1:{port}"),
        ]),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(inst.queue_json().len(), 100, "no message lost");

    // Over the limit: six smtp-source clients, each holding one session for four seconds or
    // more (5 messages, 1 s apart). Four are started and seen connected first, then two
    // more: those two are the excess and are refused; the four deliver everything.
    let spawn = || {
        Command::new(smtp_source())
            .args([
                "-d",
                "-s",
                "1",
                "-m",
                "5",
                "-w",
                "1",
                "-f",
                "load@example.com",
                "-t",
                "rcpt@example.org",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("smtp-source runs")
    };
    let connects = count(&inst.log(), "connect from unknown[127.0.0.1]");
    let refused_before = count(
        &inst.log(),
        "warning: Connection concurrency limit exceeded: ",
    );
    let mut first: Vec<Child> = (0..4).map(|_| Child(Some(spawn()))).collect();
    assert!(
        wait_until(Duration::from_secs(5), || count(
            &inst.log(),
            "connect from unknown[127.0.0.1]"
        ) >= connects + 4),
        "{}",
        inst.log()
    );
    let mut extra: Vec<Child> = (0..2).map(|_| Child(Some(spawn()))).collect();
    for c in extra.iter_mut() {
        let (ok, err) = c.wait(Duration::from_secs(10));
        assert!(!ok && err.contains("421 4.7.0"), "{err}");
    }
    for c in first.iter_mut() {
        let (ok, err) = c.wait(Duration::from_secs(20));
        assert!(ok, "{err}");
    }
    assert_eq!(inst.queue_json().len(), 120, "no message lost");
    // Two refusals, counted 5 or 6 (the first refused session may be gone before the second
    // arrives).
    let log = inst.log();
    let refusals = count(&log, "warning: Connection concurrency limit exceeded: ") - refused_before;
    assert_eq!(refusals, 2, "{log}");
    eprintln!("count limit test: {:?}", started.elapsed());

    // anvil's statistics, every anvil_status_update_time (1 s here).
    let stats = ": statistics: max connection count ";
    assert!(
        wait_until(Duration::from_secs(5), || inst
            .log()
            .lines()
            .any(|l| l.contains("postfix/anvil[")
                && l.contains(stats)
                && l.contains(&format!(" for ({port}:127.0.0.1) at ")))),
        "{}",
        inst.log()
    );
    inst.stop();
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn message_and_recipient_rate_limits_hold_under_smtp_source() {
    if !have("smtp-source") {
        eprintln!("smtp-source not installed (tools/install-test-deps); skipping");
        return;
    }
    let started = Instant::now();
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{}\nsmtpd_client_message_rate_limit = 5\nsmtpd_client_recipient_rate_limit = 8\nsmtpd_client_event_limit_exceptions =\n",
        common::relayhost_to_nowhere()
    ));
    inst.start();
    let port = inst.smtp_port;
    let source = |messages: &str| {
        run_bounded(
            Command::new(smtp_source()).args([
                "-d",
                "-s",
                "1",
                "-m",
                messages,
                "-r",
                "2",
                "-f",
                "load@example.com",
                "-t",
                "rcpt@example.org",
                &format!("127.0.0.1:{port}"),
            ]),
            Duration::from_secs(20),
        )
    };
    // Four messages of two recipients: 4 MAIL FROM, 8 RCPT TO, exactly at both limits.
    let out = source("4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(inst.queue_json().len(), 4);
    // The fifth message: MAIL FROM is the fifth (allowed), its first RCPT TO the ninth.
    let out = source("1");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success()
            && err.contains("450 4.7.1 Error: too many recipients from 127.0.0.1"),
        "{err}"
    );
    // The sixth: MAIL FROM is one too many.
    let out = source("1");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("450 4.7.1 Error: too much mail from 127.0.0.1"),
        "{err}"
    );
    let log = inst.log();
    assert!(log.contains(&format!("warning: Recipient address rate limit exceeded: 9 from unknown[127.0.0.1] for service {port}")), "{log}");
    assert!(log.contains(&format!("warning: Message delivery request rate limit exceeded: 6 from unknown[127.0.0.1] for service {port}")), "{log}");
    let q = inst.queue_json();
    assert_eq!(q.len(), 4, "only the four accepted messages are queued");
    for m in &q {
        assert_eq!(m["recipients"].as_array().map(|r| r.len()), Some(2), "{m}");
    }
    inst.stop();
    // anvil logs its statistics when it stops.
    let log = inst.log();
    assert!(
        log.contains(&format!(
            "]: statistics: max message rate 6/60s for ({port}:127.0.0.1) at "
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "]: statistics: max recipient rate 9/60s for ({port}:127.0.0.1) at "
        )),
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_thousand_idle_connections_do_not_stop_other_clients() {
    let have_fds = raise_nofile();
    if have_fds < 1200 {
        eprintln!("RLIMIT_NOFILE hard limit {have_fds} < 1200; skipping");
        return;
    }
    let started = Instant::now();
    let mut inst = Instance::with_main_cf_extra(
        "smtpd_client_connection_count_limit = 1000\nsmtpd_client_event_limit_exceptions =\n",
    );
    inst.start();
    let port = inst.smtp_port;
    // 1,000 sessions from 127.0.0.1 that say nothing after the greeting.
    let mut idle = Vec::with_capacity(1000);
    for i in 0..1000 {
        let s = connect_from("127.0.0.1", port).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        idle.push(s);
    }
    for (i, s) in idle.iter().enumerate() {
        let g = first_line(s);
        assert!(g.starts_with("220 "), "session {i}: {g:?}");
    }
    let held = started.elapsed();
    // The 1,001st from the same address is refused at once.
    let t = Instant::now();
    let s = connect_from("127.0.0.1", port).unwrap_or_else(|e| panic!("connect: {e}"));
    assert!(first_line(&s).starts_with("421 4.7.0 "));
    let refused_in = t.elapsed();
    // Another client is served: a whole transaction, bounded in time.
    let t = Instant::now();
    let s = connect_from("127.0.0.2", port).unwrap();
    let mut c = common::Smtp {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
    };
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO other.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert!(
        c.cmd("RCPT TO:<user@localhost>").starts_with("250 "),
        "{}",
        inst.log()
    );
    assert!(c.cmd("DATA").starts_with("354 "));
    assert!(c
        .cmd("Subject: other\r\n\r\nserved\r\n.")
        .starts_with("250 2.0.0 Ok: queued"));
    assert!(c.cmd("QUIT").starts_with("221 "));
    let served_in = t.elapsed();
    eprintln!(
        "1000 idle sessions held in {held:?}; 1001st refused in {refused_in:?}; other client served in {served_in:?}"
    );
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    assert!(refused_in < Duration::from_secs(5), "{refused_in:?}");
    assert!(
        inst.log().contains("file descriptor limit: "),
        "{}",
        inst.log()
    );
    drop(idle);
    inst.stop();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn new_tls_session_rate_limit() {
    let mut inst = Instance::with_main_cf_extra(
        "smtpd_client_new_tls_session_rate_limit = 1\nsmtpd_client_event_limit_exceptions =\n",
    );
    inst.start();
    let port = inst.smtp_port;
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
for i in range(3):
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
    s.ehlo("client.example")
    code, msg = s.docmd("STARTTLS")
    if code != 220:
        print(code, msg.decode())
        s.close()
        continue
    s.sock = ctx.wrap_socket(s.sock)
    s.file = None
    try:
        c2, m2 = s.docmd("EHLO", "client.example")
        print(code, c2, m2.decode().splitlines()[0])
    except Exception as e:
        print(code, type(e).__name__)
    s.close()
"#
    );
    let out = run_bounded(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // First: a new TLS session, allowed.
    assert!(lines[0].starts_with("220 250 "), "{text}");
    // Second: allowed to start (one so far), one too many once done: 421 and hang up.
    assert!(
        lines[1].starts_with("220 421 4.7.0 ")
            && lines[1].contains("Error: too many new TLS sessions from unknown[127.0.0.1]"),
        "{text}"
    );
    // Third: refused before the handshake.
    assert_eq!(
        lines[2], "454 4.7.0 Error: too many new TLS sessions from unknown[127.0.0.1]",
        "{text}"
    );
    let log = inst.log();
    assert!(log.contains(&format!("warning: New TLS session rate limit exceeded: 2 from unknown[127.0.0.1] for service {port}")), "{log}");
    assert!(
        log.contains(&format!(
            "warning: Refusing STARTTLS request from unknown[127.0.0.1] for service {port}"
        )),
        "{log}"
    );
    inst.stop();
}

#[test]
fn connection_rate_limit_against_the_real_binary() {
    let mut inst = Instance::with_main_cf_extra(
        "smtpd_client_connection_rate_limit = 3\nsmtpd_client_event_limit_exceptions = 127.0.0.2\n",
    );
    inst.start();
    let port = inst.smtp_port;
    for _ in 0..3 {
        let s = connect_from("127.0.0.1", port).unwrap_or_else(|e| panic!("connect: {e}"));
        assert!(first_line(&s).starts_with("220 "));
    }
    let s = connect_from("127.0.0.1", port).unwrap_or_else(|e| panic!("connect: {e}"));
    let g = first_line(&s);
    assert!(
        g.starts_with("421 4.7.0 ")
            && g.ends_with("Error: too many connections from 127.0.0.1\r\n"),
        "{g}"
    );
    assert!(inst.wait_log(
        &format!("warning: Connection rate limit exceeded: 4 from unknown[127.0.0.1] for service {port}"),
        Duration::from_secs(5)
    ), "{}", inst.log());
    // An exempt client is not limited.
    for _ in 0..5 {
        let s = connect_from("127.0.0.2", port).unwrap();
        assert!(first_line(&s).starts_with("220 "));
    }
    inst.stop();
}

#[test]
fn new_tls_session_rate_limit_in_wrapper_mode() {
    let mut inst = Instance::with_main_cf_extra(
        "smtpd_client_new_tls_session_rate_limit = 1\nsmtpd_client_event_limit_exceptions =\n",
    );
    inst.start();
    let port = inst.smtps_port;
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
for i in range(3):
    raw = socket.create_connection(("127.0.0.1", {port}), timeout=10)
    try:
        s = ctx.wrap_socket(raw)
        f = s.makefile("rb")
        print(f.readline().decode().strip())
        s.close()
    except Exception as e:
        print("no TLS:", type(e).__name__)
        raw.close()
"#
    );
    let out = run_bounded(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines[0].starts_with("220 "), "{text}");
    // The second handshake is one too many: 421 instead of the greeting.
    assert!(
        lines[1].starts_with("421 4.7.0 ")
            && lines[1].ends_with("Error: too many new TLS sessions from unknown[127.0.0.1]"),
        "{text}"
    );
    // The third is refused before any handshake.
    assert!(lines[2].starts_with("no TLS:"), "{text}");
    let log = inst.log();
    assert!(
        log.contains("postfix/smtps/smtpd[")
            && log.contains(&format!(
                "warning: Refusing TLS service request from unknown[127.0.0.1] for service {port}"
            )),
        "{log}"
    );
    inst.stop();
}

#[test]
fn reject_unauth_pipelining_in_data_restrictions() {
    // The seed's smtpd_data_restrictions, with the session kept open after improper
    // pipelining (as Postfix before 3.9) so that the restriction is what refuses.
    let mut inst = Instance::with_main_cf_extra(
        "smtpd_data_restrictions = reject_unauth_pipelining, permit\nsmtpd_forbid_unauth_pipelining = no\n",
    );
    inst.start();
    let mut c = common::Smtp::connect(inst.smtp_port);
    assert!(c.reply().starts_with("220 "));
    // HELO (no PIPELINING announced) followed at once by MAIL FROM.
    c.send_raw(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\n");
    assert!(c.reply().starts_with("250 "));
    assert!(c.reply().starts_with("250 2.1.0"));
    assert!(c.cmd("RCPT TO:<user@localhost>").starts_with("250 "));
    assert_eq!(
        c.cmd("DATA"),
        "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining\r\n"
    );
    assert!(c.cmd("QUIT").starts_with("221 "));
    let log = inst.log();
    assert!(
        log.contains("improper command pipelining after HELO from unknown[127.0.0.1]: MAIL FROM:<a@example.com>\\r\\n"),
        "{log}"
    );
    assert!(
        log.contains("reject: DATA from unknown[127.0.0.1]: 503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining;"),
        "{log}"
    );
    inst.stop();
}
