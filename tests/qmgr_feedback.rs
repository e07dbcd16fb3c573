//! qmgr's concurrency feedback in the real binary: a destination that refuses connections
//! is declared dead after one failed cohort, and later mail for it is deferred without an
//! attempt, logged `status=deferred (delivery temporarily suspended: …)`.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sendmail(inst: &Instance, to: &str, subject: &str) {
    let mut child = Command::new(bin("sendmail"))
        .args([
            "-C",
            inst.conf().to_str().unwrap(),
            "-f",
            "carol@localhost",
            to,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    write!(child.stdin.take().unwrap(), "Subject: {subject}\n\nbody\n").unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn dead_destination_defers_without_attempts() {
    // Initial concurrency 1 and a failed cohort limit of 1: the first refused connection
    // kills the destination (one cohort = one delivery at window 1).
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{}\nsmtp_initial_destination_concurrency = 1\ndefault_destination_concurrency_failed_cohort_limit = 1\n",
        relayhost_to_nowhere()
    ));
    inst.start();
    sendmail(&inst, "a@dead.example", "first");
    assert!(
        inst.wait_log(
            "status=deferred (connect to 127.0.0.1[127.0.0.1]",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    sendmail(&inst, "b@dead.example", "second");
    sendmail(&inst, "c@dead.example", "third");
    assert!(
        wait_until(Duration::from_secs(20), || inst
            .log()
            .matches(
                "status=deferred (delivery temporarily suspended: connect to 127.0.0.1[127.0.0.1]"
            )
            .count()
            >= 2),
        "{}",
        inst.log()
    );
    let log = inst.log();
    // Only the first message was tried: one connection attempt in the log.
    assert_eq!(
        log.matches("status=deferred (connect to").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("postfix/qmgr[") && log.contains(": to=<b@dead.example>, relay=none, delay="),
        "{log}"
    );
    // Nothing is lost: all three wait in the deferred queue.
    assert!(
        wait_until(Duration::from_secs(10), || inst.queue_json().len() == 3),
        "{:?}",
        inst.queue_json()
    );
    inst.stop();
}
