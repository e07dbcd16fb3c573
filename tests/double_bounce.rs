//! Bounces of bounces: a failed null-sender message becomes a double bounce to the
//! postmaster (notify_classes = 2bounce), a failed double bounce is discarded with a log
//! line, and without 2bounce the failed bounce is dropped: never a loop.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sendmail(inst: &Instance, from: &str, to: &str) {
    let mut child = Command::new(bin("sendmail"))
        .args(["-C", inst.conf().to_str().unwrap(), "-f", from, to])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: a bounce that bounces\n\nlost\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
}

const ROUTES: &str = "myorigin = localhost\ntransport_maps = inline:{ { bounce.example = error:5.1.1 No such user here } }\n";

fn queue_empty(inst: &Instance) -> bool {
    wait_until(Duration::from_secs(20), || inst.queue_json().is_empty())
}

#[test]
fn failed_bounce_goes_to_postmaster() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{ROUTES}notify_classes = resource, software, 2bounce\n"
    ));
    inst.start();
    sendmail(&inst, "<>", "nobody@bounce.example");
    assert!(
        wait_until(Duration::from_secs(20), || !inst
            .maildir_new("postmaster")
            .is_empty()),
        "{}",
        inst.log()
    );
    let text = std::fs::read_to_string(&inst.maildir_new("postmaster")[0]).unwrap();
    assert!(
        text.starts_with("Return-Path: <double-bounce@localhost>\n"),
        "{text}"
    );
    assert!(
        text.contains("Subject: Postmaster Copy: Undelivered Mail")
            && text.contains("To: postmaster@localhost"),
        "{text}"
    );
    assert!(
        text.contains("<nobody@bounce.example>: No such user here")
            && text.contains("text/rfc822-headers"),
        "{text}"
    );
    assert!(
        text.contains("Subject: a bounce that bounces") && !text.contains("\nlost\n"),
        "headers only: {text}"
    );
    assert!(
        inst.log()
            .contains(": postmaster non-delivery notification: "),
        "{}",
        inst.log()
    );
    assert!(queue_empty(&inst), "{:?}", inst.queue_json());
    inst.stop();
}

#[test]
fn failed_double_bounce_is_discarded_and_no_2bounce_drops() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "{ROUTES}notify_classes = 2bounce\n2bounce_notice_recipient = pm@bounce.example\n"
    ));
    inst.start();
    sendmail(&inst, "<>", "nobody@bounce.example");
    assert!(
        inst.wait_log(
            ": undeliverable postmaster notification discarded",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    assert!(queue_empty(&inst), "{:?}", inst.queue_json());
    // Exactly one postmaster notice was made: nothing loops.
    assert_eq!(
        inst.log()
            .matches("postmaster non-delivery notification: ")
            .count(),
        1,
        "{}",
        inst.log()
    );
    inst.stop();

    let mut inst = Instance::with_main_cf_extra(ROUTES);
    inst.start();
    sendmail(&inst, "<>", "nobody@bounce.example");
    assert!(
        inst.wait_log(
            "undeliverable bounce notification discarded (notify_classes has no 2bounce)",
            Duration::from_secs(20)
        ),
        "{}",
        inst.log()
    );
    assert!(queue_empty(&inst), "{:?}", inst.queue_json());
    inst.stop();
}
