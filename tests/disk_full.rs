//! The real binary and a short queue file system: Postfix's space check at MAIL FROM
//! (queue_minfree, 1.5 × message_size_limit: `452 4.3.1 Insufficient system storage`), and a
//! queue on a small tmpfs filled over SMTP until the queue cannot take more — `451 4.3.0
//! Error: queue file write error`, logged as Postfix's cleanup logs it, the session going
//! on, no acknowledged message lost — then given room again.
//!
//! The tmpfs tests mount one (tests run as root) and skip, saying so, when they cannot.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
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

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        assert!(c.read().starts_with("220 "));
        assert!(c.cmd("EHLO client.example").starts_with("250"));
        c
    }

    fn read(&mut self) -> String {
        reply(&mut self.r).unwrap_or_default()
    }

    fn cmd(&mut self, line: &str) -> String {
        if self.w.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        self.read()
    }

    /// One message of about `kb` KB with a unique marker line: the final reply (or the
    /// refusal of MAIL, RCPT or DATA).
    fn send(&mut self, marker: &str, kb: usize) -> String {
        let r = self.cmd("MAIL FROM:<sender@example.com>");
        if !r.starts_with("250") {
            return r;
        }
        let r = self.cmd("RCPT TO:<rcpt@example.net>");
        if !r.starts_with("250") {
            return r;
        }
        let r = self.cmd("DATA");
        if !r.starts_with("354") {
            return r;
        }
        let mut body = format!("Subject: disk full {marker}\r\n\r\n{marker}\r\n");
        let line = format!("{}\r\n", "x".repeat(78));
        for _ in 0..kb * 1024 / line.len() {
            body.push_str(&line);
        }
        body.push_str(".\r\n");
        if self.w.write_all(body.as_bytes()).is_err() {
            return String::new();
        }
        self.read()
    }
}

/// The queue ID in `250 2.0.0 Ok: queued as ID`.
fn queued_id(r: &str) -> Option<String> {
    r.trim_end()
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .map(str::to_string)
}

#[test]
fn queue_minfree_larger_than_the_free_space_refuses_mail_from() {
    // 1000 TiB: more than any test machine has.
    let mut inst = Instance::with_main_cf_extra("queue_minfree = 1099511627776000");
    inst.start();
    let mut c = Client::connect(inst.smtp_port);
    let r = c.cmd("MAIL FROM:<a@b.example>");
    assert_eq!(r, "452 4.3.1 Insufficient system storage\r\n");
    let r = c.cmd("MAIL FROM:<a@b.example> SIZE=1000");
    assert_eq!(r, "452 4.3.1 Insufficient system storage\r\n");
    // The session goes on: the client may try again later, or now.
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(
        inst.wait_log(
            "not enough free space in mail queue",
            Duration::from_secs(5)
        ),
        "{}",
        inst.log()
    );
    let log = inst.log();
    // Postfix's log_whatsup line; the sender is not recorded yet when Postfix checks space.
    let rejects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NOQUEUE: reject: MAIL from "))
        .collect();
    assert_eq!(rejects.len(), 2, "{log}");
    for l in &rejects {
        assert!(
            l.contains(
                "]: 452 4.3.1 Insufficient system storage; proto=ESMTP helo=<client.example>"
            ),
            "{l}"
        );
        assert!(!l.contains("from=<"), "{l}");
    }
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("warning: not enough free space in mail queue: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(
        warnings[0].ends_with(" bytes < 1.5*message size limit"),
        "{}",
        warnings[0]
    );
    // Each refusal line comes before its warning, as in Postfix.
    let first_reject = log.find("NOQUEUE: reject: MAIL from ").unwrap();
    let first_warning = log.find("not enough free space in mail queue").unwrap();
    assert!(first_reject < first_warning, "{log}");
    // queue_minfree is far above 1.5 × message_size_limit: no start-up warning.
    assert!(
        !log.contains("should be at least 1.5*message_size_limit"),
        "{log}"
    );
    inst.stop();
}

#[test]
fn free_space_below_one_and_a_half_message_size_limit_refuses_mail_from() {
    let mut inst = Instance::with_main_cf_extra("message_size_limit = 1099511627776000");
    inst.start();
    let mut c = Client::connect(inst.smtp_port);
    // SIZE= or not: Postfix compares the free space with the limit, not with SIZE=.
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example> SIZE=10"),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>"),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(
        inst.wait_log(
            "]: 452 4.3.1 Insufficient system storage; proto=ESMTP",
            Duration::from_secs(5)
        ),
        "{}",
        inst.log()
    );
    inst.stop();
}

#[test]
fn with_room_mail_is_accepted_and_a_small_queue_minfree_is_warned_about() {
    let mut inst =
        Instance::with_main_cf_extra(&format!("queue_minfree = 1000\n{}", relayhost_to_nowhere()));
    inst.start();
    // Postfix's smtpd warns when it starts and keeps the value.
    assert!(
        inst.wait_log(
            "warning: queue_minfree(1000) should be at least 1.5*message_size_limit(10240000)",
            Duration::from_secs(5)
        ),
        "{}",
        inst.log()
    );
    let mut c = Client::connect(inst.smtp_port);
    assert!(c
        .cmd("MAIL FROM:<a@b.example> SIZE=1000")
        .starts_with("250 2.1.0"));
    assert!(c.cmd("RSET").starts_with("250"));
    // Over message_size_limit: the permanent refusal comes first, as in Postfix.
    assert!(c
        .cmd("MAIL FROM:<a@b.example> SIZE=10240001")
        .starts_with("552 5.3.4 Message size exceeds fixed limit"));
    // Postfix keeps that SIZE= until RSET (mail_reset) after such a refusal, and so does relais.
    assert!(c.cmd("RSET").starts_with("250"));
    let r = c.send("accepted-with-room", 50);
    assert!(queued_id(&r).is_some(), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(!inst.log().contains("Insufficient system storage"));
    inst.stop();
}

/// A tmpfs mounted for one test; unmounted when dropped, after killing a master still
/// running on it (a busy file system cannot be unmounted; lazily detached as a last resort).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// None, with a message saying why the test is skipped, when it cannot be mounted.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {} (needs root): {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "remount {} size={size}", self.dir.display());
    }

    /// Bytes available, as statvfs says (what smtpd's check sees).
    fn avail(&self) -> u64 {
        let s = relais::smtpd::storage::fsspace(&self.dir).unwrap();
        s.block_free * s.block_size
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(pid) = relais::master::lock::running_pid(&self.dir) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            wait_until(Duration::from_secs(10), || {
                !relais::master::lock::process_alive(pid)
            });
        }
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// An instance whose queue_directory is `dir/qfs` (the maillog, TLS keys and mailboxes stay
/// in its spool directory, off the small file system).
fn instance_on(inst: &Instance, qfs: &Path) {
    let main = inst.conf().join("main.cf");
    let text = std::fs::read_to_string(&main).unwrap();
    let from = format!("queue_directory = {}\n", inst.queue().display());
    assert!(text.contains(&from), "{text}");
    let text = text.replace(&from, &format!("queue_directory = {}\n", qfs.display()));
    std::fs::write(&main, text).unwrap();
}

/// What filling the queue found.
struct Filled {
    acked: Vec<(String, String)>,
    refusal: String,
    client: Client,
}

/// Fills the queue file system over SMTP: four sessions at once send 50 KB messages (bodies
/// in segment files) and 1 KB ones (kept in sled itself) in turn, so that every file of the
/// queue meets the full disk, each until three messages in a row are refused. Bounded: 4000
/// messages, 240 s. `refusal` is the first refusal of session 0, whose session is returned
/// for more commands.
fn fill(port: u16) -> Filled {
    let sessions: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut acked = Vec::new();
                let mut first = None;
                let mut refused = 0;
                let deadline = Instant::now() + Duration::from_secs(240);
                for i in 0..1000 {
                    assert!(
                        Instant::now() < deadline,
                        "no refusal after {i} messages in 240 s"
                    );
                    let marker = format!("marker-t{t}-m{i}-full");
                    let r = client.send(&marker, if i % 2 == 0 { 50 } else { 1 });
                    match queued_id(&r) {
                        Some(id) => {
                            acked.push((id, marker));
                            refused = 0;
                        }
                        None => {
                            assert!(client.cmd("RSET").starts_with("250"), "after {r}");
                            first.get_or_insert(r);
                            refused += 1;
                            if refused == 3 {
                                return (acked, first.unwrap_or_default(), client);
                            }
                        }
                    }
                }
                panic!("1000 messages from one session fit on the small file system");
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut out = None;
    for s in sessions {
        let (acked, refusal, client) = s.join().expect("filling session");
        all.extend(acked);
        out.get_or_insert((refusal, client));
    }
    let (refusal, client) = out.expect("four sessions");
    Filled {
        acked: all,
        refusal,
        client,
    }
}

/// Every acknowledged message is in the queue with its content.
fn assert_all_queued(inst: &Instance, acked: &[(String, String)]) {
    let listed: std::collections::HashSet<String> = inst
        .queue_json()
        .iter()
        .filter_map(|e| e["queue_id"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !listed.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost: {lost:?}\n{}",
        lost.len(),
        acked.len(),
        inst.log()
    );
    // Content of a sample (postcat per message would take long).
    for (id, marker) in acked.iter().step_by(25) {
        let (ok, text) = inst.postcat(id);
        assert!(
            ok && text.contains(&format!("\n{marker}\n")),
            "{id}: {text}"
        );
    }
}

/// A queue on a 24 MB tmpfs, message_size_limit = 0 so that the space check at MAIL FROM
/// (which then refuses only a file system with no free block) lets the writes themselves
/// fail: each acknowledged message stays, the refused one gets Postfix's 451 and its
/// cleanup warning, and the session goes on.
#[test]
fn a_full_queue_file_system_gets_451_and_loses_no_acknowledged_message() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "message_size_limit = 0\n{}",
        relayhost_to_nowhere()
    ));
    let qfs = inst.dir.path().join("qfs");
    let Some(fs) = Tmpfs::mount(&qfs, "24m") else {
        return;
    };
    instance_on(&inst, &qfs);
    inst.start();
    let t0 = Instant::now();
    let mut f = fill(inst.smtp_port);
    eprintln!(
        "filled the 24 MB queue file system with {} messages (50 KB and 1 KB) in {:?}; first refusal: {}; {} bytes left",
        f.acked.len(),
        t0.elapsed(),
        f.refusal.trim_end(),
        fs.avail()
    );
    assert!(
        f.acked.len() >= 50,
        "only {} accepted; log:\n{}",
        f.acked.len(),
        inst.log()
    );
    assert!(
        f.refusal == "451 4.3.0 Error: queue file write error\r\n"
            || f.refusal == "452 4.3.1 Insufficient system storage\r\n",
        "refusal: {:?}\n{}",
        f.refusal,
        inst.log()
    );
    if f.refusal.starts_with("451") {
        let log = inst.log();
        assert!(
            log.lines().any(|l| l.contains("postfix/cleanup[")
                && l.contains(": warning: ")
                && (l.ends_with(": write queue file: No space left on device")
                    // sled failed first and the queue is reopening its spool.
                    || l.ends_with(": write queue file: the queue database is being reopened"))),
            "no Postfix cleanup warning in the log:\n{log}"
        );
    }
    // The session goes on after the refusal.
    assert!(f.client.cmd("RSET").starts_with("250 2.0.0 Ok"));
    let r = f.client.cmd("MAIL FROM:<sender@example.com>");
    assert!(r.starts_with("250") || r.starts_with("452 4.3.1"), "{r}");
    assert!(f.client.cmd("RSET").starts_with("250"));
    assert!(f.client.cmd("QUIT").starts_with("221"));
    assert_all_queued(&inst, &f.acked);

    // Stopped on the full disk, restarted with room: everything acknowledged is still there.
    inst.stop();
    fs.resize("64m");
    inst.start();
    assert_all_queued(&inst, &f.acked);
    let mut c = Client::connect(inst.smtp_port);
    let r = c.send("after-restart", 50);
    assert!(queued_id(&r).is_some(), "{r}\n{}", inst.log());
    inst.stop();
    drop(fs);
}

/// After the queue file system filled up, mail is accepted again within seconds of space
/// coming back, without a restart.
#[test]
fn mail_is_accepted_again_when_space_returns_without_restart() {
    let mut inst = Instance::with_main_cf_extra(&format!(
        "message_size_limit = 0\n{}",
        relayhost_to_nowhere()
    ));
    let qfs = inst.dir.path().join("qfs");
    let Some(fs) = Tmpfs::mount(&qfs, "24m") else {
        return;
    };
    instance_on(&inst, &qfs);
    inst.start();
    let pid = relais::master::lock::running_pid(&qfs).expect("master pid");
    let mut f = fill(inst.smtp_port);
    assert!(f.refusal.starts_with("45"), "{}", f.refusal);
    assert!(f.client.cmd("QUIT").starts_with("221"));
    // The disk stays full a little while, as an administrator's would (qmgr works meanwhile).
    std::thread::sleep(Duration::from_secs(3));
    fs.resize("64m");
    let t0 = Instant::now();
    let mut last = String::new();
    let accepted = wait_until(Duration::from_secs(10), || {
        let mut c = Client::connect(inst.smtp_port);
        last = c.send(&format!("after-space-{}", t0.elapsed().as_millis()), 50);
        let _ = c.cmd("QUIT");
        queued_id(&last).is_some()
    });
    assert!(
        accepted,
        "still refused {:?} after space returned: {}\n{}",
        t0.elapsed(),
        last.trim_end(),
        inst.log()
    );
    eprintln!("accepted again {:?} after space returned", t0.elapsed());
    assert_eq!(
        relais::master::lock::running_pid(&qfs),
        Some(pid),
        "the daemon was restarted"
    );
    assert_all_queued(&inst, &f.acked);
    inst.stop();
    drop(fs);
}

/// A queue file system with too little room for the queue to open: if relais cannot start,
/// the maillog says why (Postfix's `postfix/master[pid]: fatal: …`), not only its standard
/// error. (Once the queue starts with little room, it simply starts.)
#[test]
fn a_start_on_a_nearly_full_file_system_says_why_in_the_maillog() {
    let mut inst = Instance::with_main_cf_extra(&relayhost_to_nowhere());
    let qfs = inst.dir.path().join("qfs");
    let Some(fs) = Tmpfs::mount(&qfs, "24m") else {
        return;
    };
    instance_on(&inst, &qfs);
    // A queue with mail in it, stopped.
    inst.start();
    let mut c = Client::connect(inst.smtp_port);
    for i in 0..20 {
        let r = c.send(&format!("before-{i}"), if i % 2 == 0 { 50 } else { 1 });
        assert!(queued_id(&r).is_some(), "{r}");
    }
    let _ = c.cmd("QUIT");
    inst.stop();
    // Leave about 1 MB.
    let avail = fs.avail();
    std::fs::write(qfs.join("filler"), vec![0u8; (avail - (1 << 20)) as usize]).unwrap();
    let before = fs.avail();
    let out = inst.relais(&["start"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        eprintln!("relais started with {before} bytes free");
        inst.started = true;
        inst.stop();
    } else {
        let log = inst.log();
        let fatal = log
            .lines()
            .find(|l| l.contains(" postfix/master[") && l.contains("]: fatal: "))
            .unwrap_or_else(|| {
                panic!("no fatal line from the master in the maillog:\n{log}\nstderr: {err}")
            });
        assert!(fatal.contains("No space left on device"), "{fatal}");
        assert!(
            log.lines().any(|l| l.contains(" postfix/postfix-script[")
                && l.contains("]: fatal: the daemon exited at start")),
            "{log}"
        );
        eprintln!("start with {before} bytes free refused as expected: {fatal}");
    }
    drop(fs);
}
