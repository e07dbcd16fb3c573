//! The seed's Postfix configuration (../shared/fixtures/seed-config), copied with only its paths
//! rewritten: relais accepts it, and `relais check` names every setting it does not honour,
//! by file and line, without failing.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/seed-config")
}

/// Copies the seed files, pointing /etc/postfix at the copy and the queue into it.
fn seed_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(seed_dir()).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let text = text.replace("/etc/postfix", &d.path().display().to_string());
        std::fs::write(d.path().join(p.file_name().unwrap()), text).unwrap();
    }
    let main = d.path().join("main.cf");
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "\nqueue_directory = {}/spool\n",
        d.path().display()
    ));
    std::fs::write(&main, text).unwrap();
    d
}

#[test]
fn relais_check_lists_what_it_does_not_honour() {
    if !seed_dir().exists() {
        eprintln!("seed fixtures not present; skipping");
        return;
    }
    let d = seed_copy();
    let out = Command::new(common::bin("relais"))
        .arg("-c")
        .arg(d.path())
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check failed on the seed config:\n{err}"
    );
    let main = format!("{}/main.cf, line", d.path().display());
    let master = format!("{}/master.cf, line", d.path().display());
    for needle in [
        // Security-relevant settings say what relais does instead.
        "smtpd_milters = unix:/var/run/opendkim/opendkim.sock unix:/spamass/spamass.sock is not honoured: relais has no milter client yet",
        "service smtp/inet: TLS keys cannot be loaded",
        "the service will not be started rather than accept mail in plaintext",
        "tls_medium_cipherlist = ",
        // The second append_dot_mydomain is pointed out.
        "append_dot_mydomain is set again at line",
        // Unsupported master.cf commands, by line.
        "service maildrop/unix: command pipe is not supported by relais; the service is not started",
        "service tlsmgr/unix: command tlsmgr is not supported",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        err.lines()
            .any(|l| l.contains(&main) && l.contains("milter_default_action")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains(&master) && l.contains("mailman")),
        "{err}"
    );
    // Every warning names its file and line.
    for l in err.lines() {
        assert!(
            l.starts_with("relais: warning: ") && l.contains(", line "),
            "warning without file and line: {l}"
        );
    }
}
