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
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1 || test -x /usr/sbin/{tool}")])
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
    lim.rlim_cur as u64
}

/// A TCP connection to 127.0.0.1:port from the loopback address `from` (bound first, which
/// std cannot do: tokio's TcpSocket can).
fn connect_from(from: &str, port: u16) -> std::io::Result<TcpStream> {
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
        .map(|_| connect_from("127.0.0.1", port).unwrap())
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
        wait_until(Duration::from_secs(10), || count(&inst.log(), "disconnect from") >= 7),
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
    assert!(
        inst.log()
            .contains(&format!("warning: Connection concurrency limit exceeded: 6 from unknown[127.0.0.1] for service {port}")),
        "{}",
        inst.log()
    );
    eprintln!("count limit test: {:?}", started.elapsed());

    // anvil's statistics, every anvil_status_update_time (1 s here).
    let stats = format!(": statistics: max connection count ");
    assert!(
        wait_until(Duration::from_secs(5), || inst.log().lines().any(|l| l.contains("postfix/anvil[")
            && l.contains(&stats)
            && l.contains(&format!(" for ({port}:127.0.0.1) at ")))),
        "{}",
        inst.log()
    );
    inst.stop();
    assert!(started.elapsed() < Duration::from_secs(30));
}
