//! The real `relais` binary on a temporary directory: start, status, reload, stop, and a
//! second master refused on the same queue.

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
