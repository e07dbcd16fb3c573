//! The real `relais` binary on a temporary directory: start, status, reload, stop, and a
//! second master refused on the same queue; `relais stop` returning only when the daemon has
//! gone and `relais start` waiting for one that is stopping; why a start failed, in the
//! maillog.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn start_status_reload_stop_and_single_master() {
    let mut inst = Instance::new();
    let st = inst.relais(&["status"]);
    assert_eq!(st.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&st.stderr).contains("is not running"));

    inst.start();
    let pid = inst.pid().expect("pid file");
    let st = inst.relais(&["status"]);
    assert!(st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains(&format!("is running: PID: {pid}")));
    assert!(
        inst.wait_log("daemon started -- version", Duration::from_secs(5)),
        "{}",
        inst.log()
    );

    // A second master on the same queue directory refuses, whether started in the background
    // or in the foreground.
    let again = inst.relais(&["start"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let fg = inst.relais(&["start-fg"]);
    assert!(!fg.status.success());
    assert!(
        String::from_utf8_lossy(&fg.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&fg.stderr)
    );
    // Both refusals are in the maillog too: the command's, as postfix-script logs it, and
    // the second master's own fatal line.
    let log = inst.log();
    assert!(
        log.lines().any(|l| l.contains(" postfix/postfix-script[")
            && l.ends_with(&format!(
                "]: fatal: the relais mail system is already running: PID: {pid}"
            ))),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" postfix/master[")
            && !l.contains(&format!("[{pid}]"))
            && l.ends_with(&format!(
                "]: fatal: the mail system is already running: PID: {pid}"
            ))),
        "{log}"
    );

    let rl = inst.relais(&["reload"]);
    assert!(rl.status.success());
    assert!(
        inst.wait_log("reload -- version", Duration::from_secs(5)),
        "{}",
        inst.log()
    );
    assert_eq!(inst.pid(), Some(pid), "reload must not restart the master");

    inst.stop();
    let st = inst.relais(&["status"]);
    assert_eq!(st.status.code(), Some(1));
    assert!(inst.wait_log("terminating on signal", Duration::from_secs(5)));
}

#[test]
fn check_reports_bad_values_with_file_and_line() {
    let inst = Instance::with_main_cf_extra("smtpd_timeout = soon\nno_such_parameter = 1");
    let out = inst.relais(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("main.cf, line") && err.contains("bad value for smtpd_timeout"),
        "{err}"
    );
    assert!(
        err.contains("unused parameter: no_such_parameter=1"),
        "{err}"
    );
}

/// `relais stop` returns when the daemon has gone: its process exited and every lock it held
/// released (sled's on the database included), so that `relais start` right after succeeds.
#[test]
fn stop_returns_when_the_daemon_has_gone_and_start_follows_at_once() {
    let mut inst = Instance::new();
    for round in 0..3 {
        inst.start();
        let pid = inst.pid().expect("pid file");
        let t0 = std::time::Instant::now();
        let out = inst.relais(&["stop"]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        inst.started = false;
        eprintln!("round {round}: stop took {:?}", t0.elapsed());
        assert!(
            !relais::master::lock::process_alive(pid),
            "round {round}: PID {pid} still there after stop"
        );
        assert_eq!(relais::master::lock::running_pid(&inst.queue()), None);
        // The database is free: sled's own lock was released before stop returned.
        let db = sled::Config::new()
            .path(inst.queue().join("db"))
            .segment_size(relais::queue::spool::SEGMENT_SIZE)
            .open();
        assert!(db.is_ok(), "round {round}: {:?}", db.err());
        drop(db);
    }
    inst.start();
    let log = inst.log();
    assert_eq!(
        log.matches("]: stopping the relais mail system").count(),
        3,
        "postfix-script's lines are in the maillog:\n{log}"
    );
    inst.stop();
}

/// A start while the previous master is still stopping (it holds the lock and has said it is
/// stopping) waits for it, then starts. The stopping master is played by flock(1) holding
/// pid/master.pid for three seconds.
#[test]
fn start_waits_for_a_master_that_is_still_stopping() {
    let mut inst = Instance::new();
    let piddir = inst.queue().join("pid");
    std::fs::create_dir_all(&piddir).unwrap();
    let pidfile = piddir.join("master.pid");
    std::fs::write(&pidfile, "").unwrap();
    let mut holder = match std::process::Command::new("flock")
        .arg("-x")
        .arg(&pidfile)
        .args(["sleep", "3"])
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: cannot run flock(1): {e}");
            return;
        }
    };
    let hpid = holder.id();
    std::fs::write(&pidfile, format!("{hpid:>10}\n")).unwrap();
    std::fs::write(piddir.join("master.stopping"), format!("{hpid}\n")).unwrap();
    assert!(
        wait_until(
            Duration::from_secs(5),
            || relais::master::lock::running_pid(&inst.queue()) == Some(hpid)
        ),
        "flock did not take the lock"
    );
    let t0 = std::time::Instant::now();
    let out = inst.relais(&["start"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = holder.wait();
    assert!(out.status.success(), "{err}\n{}", inst.log());
    inst.started = true;
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "start did not wait: {:?}",
        t0.elapsed()
    );
    assert!(
        err.contains("relais/relais-script: waiting for the relais mail system to terminate"),
        "{err}"
    );
    let pid = inst.pid().expect("pid file");
    assert_ne!(pid, hpid);
    assert!(inst
        .log()
        .contains("waiting for the relais mail system to terminate"));
    inst.stop();
}

/// A port the master cannot bind is fatal at start, as in Postfix, and the maillog says so
/// (`postfix/master[pid]: fatal: bind 127.0.0.1 port N: Address already in use`).
#[test]
fn a_port_in_use_is_fatal_at_start_and_said_in_the_maillog() {
    let inst = Instance::new();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", inst.submission_port)).unwrap();
    let out = inst.relais(&["start"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "]: fatal: bind 127.0.0.1 port {}: Address already in use",
        inst.submission_port
    );
    assert!(err.contains(&want[3..]), "{err}");
    let log = inst.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" postfix/master[") && l.ends_with(&want)),
        "{log}"
    );
    assert!(relais::master::lock::running_pid(&inst.queue()).is_none());
}

/// A queue that cannot be opened is fatal, and the maillog says why.
#[test]
fn a_queue_that_cannot_be_opened_is_said_in_the_maillog() {
    let inst = Instance::new();
    std::fs::create_dir_all(inst.queue()).unwrap();
    // A file where sled's directory should be.
    std::fs::write(inst.queue().join("db"), "not a directory").unwrap();
    let out = inst.relais(&["start"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let log = inst.log();
    let fatal = log
        .lines()
        .find(|l| l.contains(" postfix/master[") && l.contains("]: fatal: "))
        .unwrap_or_else(|| panic!("no fatal line in the maillog:\n{log}"));
    assert!(fatal.contains("Not a directory"), "{fatal}");
    assert!(
        log.contains("]: fatal: the daemon exited at start"),
        "{log}"
    );
}
