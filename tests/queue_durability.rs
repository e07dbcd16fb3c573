//! The queue keeps its promise, tried from outside on the real binary:
//! - 250 to end-of-data is written only after the queue journal's `fdatasync` (strace);
//! - a flipped byte in the record store (sled's log), in a journal segment (a body, a
//!   header), and a truncated file cost at most the messages whose own bytes were hit, each
//!   reported in the maillog, and the rest is delivered; `postsuper -s` finds damage done
//!   while the daemon runs.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One message over SMTP; returns its queue ID.
fn send(port: u16, marker: &str, filler: usize) -> String {
    let mut c = Smtp::connect(port);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO durable.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<rcpt@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd(&format!(
        "Subject: {marker}\r\n\r\n{marker}\r\n{}\r\n.",
        "filler ".repeat(filler)
    ));
    let id = r
        .trim_end()
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not queued: {r}"))
        .to_string();
    c.cmd("QUIT");
    id
}

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The 250 for a message comes after an fdatasync of a journal segment that began after the
/// message's last bytes were read: what makes it durable. (sled's own flush on Linux is
/// `sync_file_range`, which this test does not count.)
#[test]
fn the_250_follows_the_journal_fdatasync() {
    if !have_strace() {
        eprintln!("SKIP: strace is not installed (tools/install-test-deps installs it)");
        return;
    }
    let inst = Instance::with_main_cf_extra(&relayhost_to_nowhere());
    let trace = inst.dir.path().join("strace.out");
    let mut child: Child = Command::new("strace")
        .args(["-f", "-y", "-tt", "-s", "400", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=fdatasync,fsync,sync_file_range,write,writev,sendto,sendmsg,read,recvfrom",
        ])
        .arg(bin("relais"))
        .arg("-c")
        .arg(inst.conf())
        .arg("start-fg")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", inst.smtp_port)).is_ok()
    });
    let marker = "durability-marker-4f2a";
    let id = if up {
        Some(send(inst.smtp_port, marker, 10))
    } else {
        None
    };
    let _ = inst.relais(&["stop"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let id = id.unwrap_or_else(|| panic!("relais did not start under strace: {}", inst.log()));
    let out = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let body_read = lines
        .iter()
        .position(|l| (l.contains(" read(") || l.contains("recvfrom(")) && l.contains(marker))
        .unwrap_or_else(|| panic!("the body's read is not in the trace"));
    let reply = lines
        .iter()
        .position(|l| l.contains(&format!("queued as {id}")))
        .unwrap_or_else(|| panic!("the 250 is not in the trace"));
    assert!(body_read < reply);
    // An fdatasync of a segment that completed in between. strace splits a call that another
    // thread interrupts into "<unfinished ...>" and "<... fdatasync resumed>"; take the pid's
    // unfinished call's path.
    let mut synced = false;
    for (i, l) in lines.iter().enumerate().take(reply).skip(body_read + 1) {
        let complete = l.contains("fdatasync(") && l.contains(".seg>") && l.ends_with("= 0");
        let resumed = l.contains("<... fdatasync resumed>") && l.ends_with("= 0") && {
            let pid = l.split_whitespace().next().unwrap_or_default();
            lines[body_read + 1..i].iter().rev().any(|p| {
                p.starts_with(pid)
                    && p.contains("fdatasync(")
                    && p.contains(".seg>")
                    && p.contains("<unfinished")
            })
        };
        if complete || resumed {
            synced = true;
            break;
        }
    }
    assert!(
        synced,
        "no journal fdatasync between the body's read and the 250:\n{}",
        lines[body_read..=reply].join("\n")
    );
}

fn ids_and_queues(inst: &Instance) -> Vec<(String, String)> {
    inst.queue_json()
        .iter()
        .map(|e| {
            (
                e["queue_id"].as_str().unwrap_or_default().to_string(),
                e["queue_name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn flip(file: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
}

fn segments(inst: &Instance) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(inst.queue().join("db.bodies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Damage to every kind of queue file, one after the other, each after a clean stop (the
/// hardest case: the operator's bad day, not a crash): only the hit messages go, to the
/// corrupt queue with a maillog warning; every other acknowledged message is delivered.
#[test]
fn damaged_queue_files_cost_only_the_hit_messages() {
    let sink_port = free_port();
    let mut inst = Instance::with_main_cf_extra(&format!(
        "relayhost = [127.0.0.1]:{sink_port}\nqueue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n"
    ));
    inst.start();
    let mut sent = Vec::new();
    for i in 0..30 {
        // Small and large (a few KB) bodies alike.
        let filler = if i % 3 == 0 { 3000 } else { 20 };
        sent.push(send(inst.smtp_port, &format!("damage-{i}"), filler));
    }
    assert!(wait_until(Duration::from_secs(30), || ids_and_queues(
        &inst
    )
    .iter()
    .filter(|(_, q)| q == "deferred")
    .count()
        == 30));
    inst.stop();

    // 1. sled's log: a byte flipped in the middle, then the file cut by 4 KB.
    let log = inst.queue().join("db/db");
    let len = std::fs::metadata(&log).unwrap().len();
    flip(&log, len / 2);
    inst.start();
    let got = ids_and_queues(&inst);
    assert_eq!(
        got.len(),
        30,
        "after a flipped byte in sled's log: {got:?}\n{}",
        inst.log()
    );
    inst.stop();
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len.saturating_sub(4096))
        .unwrap();
    inst.start();
    let got = ids_and_queues(&inst);
    assert_eq!(
        got.len(),
        30,
        "after sled's log was cut: {got:?}\n{}",
        inst.log()
    );
    inst.stop();

    // 2. A journal segment: one byte of a body (the message "damage-7").
    let seg = segments(&inst)[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    let hit = bytes
        .windows(9)
        .position(|w| w == b"damage-7\r")
        .expect("damage-7 in the journal") as u64;
    flip(&seg, hit + 1);
    inst.start();
    let got = ids_and_queues(&inst);
    let corrupt: Vec<_> = got.iter().filter(|(_, q)| q == "corrupt").collect();
    assert_eq!(corrupt.len(), 1, "{got:?}\n{}", inst.log());
    assert_eq!(corrupt[0].0, sent[7]);
    assert!(
        inst.log()
            .contains(&format!("{}: corrupt queue file", sent[7])),
        "reported: {}",
        inst.log()
    );
    inst.stop();

    // 3. The whole sled database lost (an operator's rm, a broken disk block): rebuilt from
    // the journal, the corrupt message still corrupt.
    std::fs::remove_dir_all(inst.queue().join("db")).unwrap();
    inst.start();
    let got = ids_and_queues(&inst);
    assert_eq!(got.len(), 30, "{got:?}\n{}", inst.log());
    assert_eq!(got.iter().filter(|(_, q)| q == "corrupt").count(), 1);

    // 4. Damage while the daemon runs: `postsuper -s` (Postfix's structure check and repair)
    // finds it and moves the hit message to the corrupt queue.
    let seg = segments(&inst)
        .into_iter()
        .find(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(10)
                .any(|w| w == b"damage-13\r")
        })
        .expect("damage-13 in the journal");
    let bytes = std::fs::read(&seg).unwrap();
    let hit = bytes.windows(10).position(|w| w == b"damage-13\r").unwrap() as u64;
    flip(&seg, hit + 1);
    let out = inst.tool("postsuper", &["-s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("queue structure check:") && err.contains("corrupt=1"),
        "{err}"
    );
    let got = ids_and_queues(&inst);
    assert_eq!(
        got.iter().filter(|(_, q)| q == "corrupt").count(),
        2,
        "{got:?}"
    );
    assert!(got.contains(&(sent[13].clone(), "corrupt".to_string())));

    // Everything else is delivered once a next hop listens.
    let mut cmd = Command::new("/usr/sbin/smtp-sink");
    // As root, smtp-sink insists on dropping privileges.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let sink = cmd
        .args(["-c", &format!("127.0.0.1:{sink_port}"), "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut sink) = sink else {
        eprintln!("SKIP delivery part: smtp-sink missing (tools/install-test-deps)");
        return;
    };
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", sink_port)).is_ok()
    }));
    let _ = inst.tool("postqueue", &["-f"]);
    let delivered = wait_until(Duration::from_secs(60), || ids_and_queues(&inst).len() == 2);
    let _ = sink.kill();
    let _ = sink.wait();
    assert!(
        delivered,
        "left: {:?}\n{}",
        ids_and_queues(&inst),
        inst.log()
    );
    inst.stop();
}
