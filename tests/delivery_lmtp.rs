//! Issue 4 acceptance, LMTP: relais hands local mail over `virtual_transport = lmtp:unix:…` to
//! a real Dovecot (Debian's dovecot-core + dovecot-lmtpd, tools/install-test-deps) started by
//! the test with its own small configuration, and the message lands in the user's Maildir.

mod common;
mod delivery;
use common::*;
use delivery::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DOVECOT: &str = "/usr/sbin/dovecot";

/// A Dovecot serving LMTP only, on `<dir>/lmtp`; stopped when dropped.
struct Dovecot {
    child: Child,
    dir: PathBuf,
}

impl Dovecot {
    fn start(dir: &Path, users: &[&str]) -> Dovecot {
        let mail = dir.join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        // Dovecot never delivers as root: mail belongs to nobody (65534).
        let (uid, gid) = (65534u32, 65534u32);
        std::os::unix::fs::chown(&mail, Some(uid), Some(gid)).unwrap();
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}::{uid}:{gid}::{}/{u}::\n", mail.display()))
            .collect();
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        let d = dir.display();
        let conf = format!(
            "base_dir = {d}/run
state_dir = {d}/state
instance_name = relais-test-{pid}
log_path = {d}/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
auth_username_format = %Lu
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
mail_location = maildir:{d}/mail/%u
service lmtp {{
  unix_listener {d}/lmtp {{
    mode = 0666
  }}
}}
",
            pid = std::process::id()
        );
        std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot runs (tools/install-test-deps installs dovecot-core dovecot-lmtpd)");
        let sock = dir.join("lmtp");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen: {}",
                std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn maildir_new(&self, user: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("mail").join(user).join("new"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the dovecot master stop its children; then reap it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lmtp_to_dovecot_lands_in_the_users_maildir() {
    if unsafe { libc::geteuid() } != 0 {
        // Dovecot's master must start as root to switch to the mail user.
        eprintln!("skipped: dovecot needs root here");
        return;
    }
    assert!(Path::new(DOVECOT).exists(), "run tools/install-test-deps");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dove = Dovecot::start(dir.path(), &["bob@localhost", "dan@localhost"]);
    let mut inst = Instance::with_main_cf_extra(&format!(
        "virtual_transport = lmtp:unix:{}/lmtp\nqueue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n",
        dir.path().display()
    ));
    inst.start();
    submit(
        inst.smtp_port,
        "sender@example.org",
        &["bob@localhost", "dan@localhost"],
        "to dovecot",
        "delivered over LMTP",
    );
    assert!(
        wait_until(Duration::from_secs(30), || dove
            .maildir_new("bob@localhost")
            .len()
            == 1
            && dove.maildir_new("dan@localhost").len() == 1),
        "relais:\n{}\ndovecot:\n{}",
        inst.log(),
        dove.log()
    );
    let text = std::fs::read_to_string(&dove.maildir_new("bob@localhost")[0]).unwrap();
    assert!(
        text.contains("Subject: to dovecot") && text.contains("delivered over LMTP"),
        "{text}"
    );
    assert!(text.contains("Return-Path: <sender@example.org>"), "{text}");
    assert!(wait_queue_empty(&inst, Duration::from_secs(20)));
    let log = inst.log();
    assert!(
        log.contains("to=<bob@localhost>, relay=")
            && log.contains("status=sent (250 2.0.0 <bob@localhost>"),
        "{log}"
    );
    assert!(dove.log().contains("saved mail to INBOX"), "{}", dove.log());
    inst.stop();
}
