//! No loss on crash: every message acknowledged with `250 2.0.0 Ok: queued as ID` is in the
//! queue, content intact, after the daemon is killed with SIGKILL mid-stream and restarted;
//! and a clean stop/start keeps the queue as it was. Half the messages are small, half
//! large (14 KB): both go through the queue journal.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One SMTP reply (multi-line aware), or an error when the connection broke.
fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut all = String::new();
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(all);
        }
    }
    Err(std::io::ErrorKind::InvalidData.into())
}

fn cmd(w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
    w.write_all(format!("{line}\r\n").as_bytes())?;
    reply(r)
}

/// A client session sending up to `max` messages, each with a unique marker line; pushes
/// (queue ID, marker) for every 250 acknowledgement; stops at the first error or at `stop`.
fn client(
    port: u16,
    thread: usize,
    max: usize,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    reply(&mut r)?;
    cmd(&mut w, &mut r, "EHLO crash.example")?;
    for i in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let marker = format!("marker-t{thread}-m{i}-crash");
        if !cmd(&mut w, &mut r, "MAIL FROM:<sender@example.com>")?.starts_with("250") {
            break;
        }
        if !cmd(&mut w, &mut r, "RCPT TO:<rcpt@example.net>")?.starts_with("250") {
            break;
        }
        if !cmd(&mut w, &mut r, "DATA")?.starts_with("354") {
            break;
        }
        // Every other message is large (14 KB): both sizes must survive.
        let filler = if i % 2 == 1 { 2000 } else { 200 };
        let body = format!(
            "Subject: crash test {thread}/{i}\r\n\r\n{marker}\r\n{}\r\n.\r\n",
            "filler ".repeat(filler)
        );
        w.write_all(body.as_bytes())?;
        let rep = reply(&mut r)?;
        match rep.trim_end().strip_prefix("250 2.0.0 Ok: queued as ") {
            Some(id) => acked.lock().unwrap().push((id.to_string(), marker)),
            None => break,
        }
    }
    let _ = cmd(&mut w, &mut r, "QUIT");
    Ok(())
}

/// Every acknowledged ID is listed by `postqueue -j` and `postcat -q` shows its marker.
fn check_all_present(inst: &Instance, acked: &[(String, String)]) {
    let listed: std::collections::HashSet<String> = inst
        .queue_json()
        .iter()
        .filter_map(|e| e["queue_id"].as_str().map(str::to_string))
        .collect();
    for (id, marker) in acked {
        assert!(
            listed.contains(id),
            "acknowledged {id} lost; log:\n{}",
            inst.log()
        );
        let (ok, text) = inst.postcat(id);
        assert!(ok, "postcat -q {id} failed");
        assert!(
            text.contains(&format!("\n{marker}\n")) && text.contains("\nSubject: crash test "),
            "{id}: content damaged:\n{text}"
        );
        assert!(text.contains("recipient: rcpt@example.net"), "{text}");
    }
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_message() {
    let mut inst = Instance::with_main_cf_extra(&relayhost_to_nowhere());
    inst.start();
    let pid = inst.pid().expect("master.pid");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let (a, s, port) = (acked.clone(), stop.clone(), inst.smtp_port);
            std::thread::spawn(move || client(port, t, 200, a, s))
        })
        .collect();
    // Kill while all ten sessions are mid-stream, after a fair number of acknowledgements.
    assert!(
        wait_until(Duration::from_secs(60), || acked.lock().unwrap().len()
            >= 150),
        "only {} acknowledgements; log:\n{}",
        acked.lock().unwrap().len(),
        inst.log()
    );
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let killed_at = acked.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        // Each ends by a broken connection or its read timeout (10 s).
        let _ = t.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < 10 * 200,
        "the daemon was not killed mid-stream"
    );
    // The process is gone (no zombie master holding the queue).
    assert!(wait_until(Duration::from_secs(10), || unsafe {
        libc::kill(pid as i32, 0) != 0
    }));
    // Restart on the same directories.
    let t0 = Instant::now();
    inst.started = false;
    inst.start();
    assert_ne!(inst.pid(), Some(pid));
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(acked.len() >= killed_at);
    check_all_present(&inst, &acked);
    // The restarted daemon accepts mail again.
    let mut c = Smtp::connect(inst.smtp_port);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO again.example").starts_with("250"));
    inst.stop();
}

#[test]
fn clean_stop_and_start_keeps_the_queue() {
    let mut inst = Instance::with_main_cf_extra(&relayhost_to_nowhere());
    inst.start();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    client(inst.smtp_port, 0, 20, acked.clone(), stop).expect("session");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 20, "{}", inst.log());
    let before: Vec<serde_json::Value> = inst.queue_json();
    assert_eq!(before.len(), 20);
    inst.stop();
    let st = inst.relais(&["status"]);
    assert!(!st.status.success(), "still running after stop");
    // A clean stop leaves sled's mark that sled held every change at the close, so the next
    // start takes any difference from the journal for damage.
    {
        let db = sled::Config::new()
            .path(inst.queue().join("db"))
            .segment_size(relais::queue::spool::SEGMENT_SIZE)
            .open()
            .expect("spool free after stop");
        assert!(db
            .get(relais::queue::spool::CLOSED_CLEANLY)
            .unwrap()
            .is_some());
    }
    inst.start();
    check_all_present(&inst, &acked);
    let after = inst.queue_json();
    assert_eq!(after.len(), 20);
    for e in &after {
        let id = e["queue_id"].as_str().unwrap_or_default();
        let old = before
            .iter()
            .find(|b| b["queue_id"] == e["queue_id"])
            .unwrap_or_else(|| panic!("{id} not there before"));
        assert_eq!(old["message_size"], e["message_size"]);
        assert_eq!(old["arrival_time"], e["arrival_time"]);
        assert_eq!(old["sender"], e["sender"]);
    }
    inst.stop();
}
