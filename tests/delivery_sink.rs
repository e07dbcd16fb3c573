//! Issue 4 acceptance, bulk path: Postfix's smtp-source → relais → Postfix's smtp-sink through
//! `relayhost = [127.0.0.1]:port`; every message arrives and the queue is empty afterwards.

mod common;
mod delivery;
use common::*;
use delivery::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE: &str = "/usr/sbin/smtp-source";
const SINK: &str = "/usr/sbin/smtp-sink";

/// smtp-sink dumping every transaction to a file in `dir`; killed when dropped.
struct Sink(Child);

impl Sink {
    fn start(port: u16, dir: &std::path::Path) -> Sink {
        let mut cmd = Command::new(SINK);
        // As root, smtp-sink insists on dropping privileges.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(["-h", "sink.test", "-d"])
            .arg(format!("{}/%H%M%S.", dir.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink runs (tools/install-test-deps)");
        // Bounded wait for the listener.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtp-sink did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sink(child)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dumped(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn two_thousand_messages_over_twenty_sessions_all_reach_the_sink() {
    let sink_port = free_port();
    let dumps = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let _sink = Sink::start(sink_port, dumps.path());
    let mut inst = Instance::with_main_cf_extra(&format!(
        "relayhost = [127.0.0.1]:{sink_port}\nqueue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n"
    ));
    inst.start();
    let t0 = Instant::now();
    let out = Command::new(SOURCE)
        .args([
            "-d",
            "-s",
            "20",
            "-m",
            "2000",
            "-f",
            "source@src.test",
            "-t",
            "rcpt@sink.test",
        ])
        .arg(format!("127.0.0.1:{}", inst.smtp_port))
        .output()
        .expect("smtp-source runs");
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = wait_until(Duration::from_secs(300), || dumped(dumps.path()) >= 2000);
    let n = dumped(dumps.path());
    assert!(
        ok && n == 2000,
        "{n} of 2000 delivered after {:?}; queue:\n{}",
        t0.elapsed(),
        postqueue_p(&inst)
    );
    assert!(
        wait_queue_empty(&inst, Duration::from_secs(30)),
        "{}",
        postqueue_p(&inst)
    );
    // Each dump holds one transaction for the one recipient smtp-source named.
    let sample = std::fs::read_dir(dumps.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = String::from_utf8_lossy(&std::fs::read(sample).unwrap()).to_string();
    assert!(text.contains("rcpt@sink.test"), "{text}");
    // A message leaves the queue listing when its removal is written; its "removed" line
    // follows the flush a moment later.
    wait_until(Duration::from_secs(10), || {
        inst.log().matches(": removed").count() >= 2000
    });
    let log = inst.log();
    assert_eq!(log.matches("status=sent").count(), 2000, "sent lines");
    assert_eq!(log.matches(": removed").count(), 2000, "removed lines");
    inst.stop();
}
