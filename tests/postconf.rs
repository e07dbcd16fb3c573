//! postconf against Postfix 3.7's golden outputs, on copies of the seed configuration.
//!
//! Each golden file records a command, its stdout, stderr and exit status and, for edits,
//! the unified diff of main.cf and master.cf. The seed is copied to a temporary directory with
//! its `/etc/postfix` references pointed at the copy; outputs and files are compared after
//! rewriting the copy's path back to `/etc/postfix`, as the captures were.

use std::path::{Path, PathBuf};
use std::process::Command;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/seed-config"
);
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/postfix-reference"
);

struct Golden {
    command: String,
    stdout: String,
    stderr: String,
    status: i32,
    main_diff: Option<String>,
    master_diff: Option<String>,
}

/// Takes `n` bytes after the header line that starts `rest`.
fn section<'a>(rest: &'a str, header: &str) -> (String, &'a str) {
    let start = rest
        .find(header)
        .unwrap_or_else(|| panic!("no {header} section"));
    let after = &rest[start + header.len()..];
    let n: usize = after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .expect("byte count");
    let header_line = after.lines().next().unwrap_or("");
    let body_start = after.find('\n').expect("header end") + 1;
    let body = after[body_start..body_start + n].to_string();
    let mut tail = &after[body_start + n..];
    if header_line.contains("no final newline") || header_line.contains("without final") {
        // The capture added one newline after a stream that had none.
        tail = tail.strip_prefix('\n').unwrap_or(tail);
    }
    (body, tail)
}

fn golden(name: &str) -> Golden {
    let text = std::fs::read_to_string(Path::new(GOLDEN).join(name)).expect("golden file");
    let command = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("$ "))
        .expect("command line")
        .to_string();
    let (stdout, rest) = section(&text, "==== stdout (");
    let (stderr, rest) = section(rest, "==== stderr (");
    let st = rest.find("==== exit status: ").expect("exit status");
    let status: i32 = rest[st + 18..]
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status");
    let diff_of = |file: &str| -> Option<String> {
        let h = format!("==== {file}: diff -u (before, after) ====\n");
        let i = rest.find(&h)?;
        let body = &rest[i + h.len()..];
        let end = body.find("\n==== ").map(|e| e + 1).unwrap_or(body.len());
        Some(body[..end].to_string())
    };
    Golden {
        command,
        stdout,
        stderr,
        status,
        main_diff: diff_of("main.cf"),
        master_diff: diff_of("master.cf"),
    }
}

/// A temporary copy of the seed configuration.
struct Copy {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Copy {
    fn new() -> Copy {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("conf");
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(SEED).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text.replace("/etc/postfix", dir.to_str().unwrap());
            std::fs::write(dir.join(&name), text).unwrap();
        }
        Copy { _tmp: tmp, dir }
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// Text with the copy's path written back as /etc/postfix.
    fn unrewrite(&self, s: &str) -> String {
        s.replace(self.d(), "/etc/postfix")
    }

    fn read(&self, file: &str) -> String {
        self.unrewrite(&std::fs::read_to_string(self.dir.join(file)).unwrap())
    }

    fn raw(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(file)).unwrap()
    }

    /// Runs a golden command line through sh with the real binary and the copy.
    fn run_shell(&self, command: &str) -> (String, String, i32) {
        let cmd = command.split("    (").next().unwrap().trim();
        let cmd = cmd.strip_prefix("postconf ").expect("postconf command");
        let cmd = cmd.replace("/etc/postfix", self.d());
        let full = format!("'{}' {cmd}", env!("CARGO_BIN_EXE_postconf"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(&full)
            .env_remove("MAIL_CONFIG")
            .output()
            .expect("run postconf");
        (
            self.unrewrite(&String::from_utf8_lossy(&out.stdout)),
            self.unrewrite(&String::from_utf8_lossy(&out.stderr)),
            out.status.code().unwrap_or(-1),
        )
    }

    fn run(&self, args: &[&str]) -> (String, String, i32) {
        let out = Command::new(env!("CARGO_BIN_EXE_postconf"))
            .arg("-c")
            .arg(&self.dir)
            .args(args)
            .env_remove("MAIL_CONFIG")
            .output()
            .expect("run postconf");
        (
            self.unrewrite(&String::from_utf8_lossy(&out.stdout)),
            self.unrewrite(&String::from_utf8_lossy(&out.stderr)),
            out.status.code().unwrap_or(-1),
        )
    }
}

/// `diff -u` with Postfix's capture labels, or None when the files are identical.
fn unified_diff(file: &str, before: &str, after: &str) -> Option<String> {
    if before == after {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::write(&a, before).unwrap();
    std::fs::write(&b, after).unwrap();
    let out = Command::new("diff")
        .arg("-u")
        .arg("--label")
        .arg(format!("a/{file}"))
        .arg("--label")
        .arg(format!("b/{file}"))
        .arg(&a)
        .arg(&b)
        .output()
        .expect("diff");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn seed(file: &str) -> String {
    std::fs::read_to_string(Path::new(SEED).join(file)).unwrap()
}

/// Runs one golden capture on a fresh copy and compares everything it recorded.
fn check_golden(name: &str, fix_stdout: impl Fn(String) -> String) {
    let g = golden(name);
    let c = Copy::new();
    let (stdout, stderr, status) = c.run_shell(&g.command);
    assert_eq!(stdout, fix_stdout(g.stdout.clone()), "{name}: stdout");
    assert_eq!(stderr, g.stderr, "{name}: stderr");
    assert_eq!(status, g.status, "{name}: exit status");
    for (file, want) in [("main.cf", &g.main_diff), ("master.cf", &g.master_diff)] {
        let got = unified_diff(file, &seed(file), &c.read(file));
        assert_eq!(&got, want, "{name}: {file} diff");
    }
}

#[test]
fn golden_show_outputs() {
    for name in [
        "postconf-M-seed.txt",
        "postconf-M-smtp-inet.txt",
        "postconf-F-smtp-inet.txt",
        "postconf-P-seed.txt",
        "postconf-P-submission-inet.txt",
        "postconf-n-seed.txt",
        "postconf-h-myhostname.txt",
        "postconf-d-named-params.txt",
        "postconf-seed-warnings.txt",
    ] {
        check_golden(name, |s| s);
    }
    // relais's mail_name default is "relais" where Postfix's is "Postfix".
    check_golden("postconf-x-smtpd_banner.txt", |s| {
        s.replace("ESMTP Postfix", "ESMTP relais")
    });
}

#[test]
fn golden_edits_change_only_the_intended_lines() {
    for name in [
        "postconf-e-message_size_limit.txt",
        "postconf-X-biff.txt",
        "postconf-hash-biff.txt",
        "postconf-Me-add-test-unix.txt",
        "postconf-MX-smtps-inet.txt",
        "postconf-Fe-smtp-inet-process_limit.txt",
        "postconf-Pe-submission-inet-tls-level.txt",
        "postconf-PX-smtps-inet-syslog_name.txt",
        "postconf-Fe-smtp-inet-maxproc.txt",
    ] {
        check_golden(name, |s| s);
    }
}

#[test]
fn comment_out_master_entry() {
    let c = Copy::new();
    let (out, err, st) = c.run(&["-M#", "relay/unix"]);
    assert_eq!((out.as_str(), err.as_str(), st), ("", "", 0));
    let got = unified_diff("master.cf", &seed("master.cf"), &c.read("master.cf")).unwrap();
    assert!(got.contains(
        "-relay     unix  -       -       y       -       -       smtp\n-        -o syslog_name=postfix/$service_name\n+#relay     unix  -       -       y       -       -       smtp\n+#        -o syslog_name=postfix/$service_name\n"
    ), "{got}");
    let added = got
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .count();
    assert_eq!(added, 2, "{got}");
    // The commented service is gone from -M.
    let (m, _, _) = c.run(&["-M", "relay/unix"]);
    assert_eq!(m, "");
}

#[test]
fn bad_edits_leave_files_byte_identical() {
    let cases: &[&[&str]] = &[
        &["-e", "nonsense"],
        &["-e", " = value"],
        &["-X", "biff = no"],
        &["-Fe", "smtp/inet/maxproc = 20"],
        &["-Fe", "nosuch/unix/chroot = y"],
        &["-Fe", "smtp/inet/chroot = maybe"],
        &["-Fe", "smtp/inet/wakeup = soon"],
        &["-Fe", "smtp/inet = y"],
        &["-Me", "test/unix = test unix - - n"],
        &["-Me", "test/unix = test tcp - - n - 1 discard"],
        &["-Pe", "nosuch/inet/smtpd_tls_security_level = encrypt"],
        &["-Pe", "smtps/inet/smtpd_banner = two words"],
        &["-PX", "smtps/inet/no_such_override"],
        &["-MX", "smtps"],
    ];
    for args in cases {
        let c = Copy::new();
        let (before_main, before_master) = (c.raw("main.cf"), c.raw("master.cf"));
        let (out, err, st) = c.run(args);
        assert_ne!(st, 0, "{args:?} should fail");
        assert_eq!(out, "", "{args:?}");
        assert!(err.starts_with("postconf: fatal: "), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert_eq!(c.raw("main.cf"), before_main, "{args:?}: main.cf changed");
        assert_eq!(
            c.raw("master.cf"),
            before_master,
            "{args:?}: master.cf changed"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&c.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{args:?}: temp files left");
    }
}

#[test]
fn parameters_defaults_and_unknown_names() {
    let c = Copy::new();
    // -n: exactly the seed's settings, values as written, plus config_directory (-c given).
    let (n, _, _) = c.run(&["-n"]);
    assert!(n.contains("config_directory = /etc/postfix\n"));
    // Without -n: the table's defaults overlaid with main.cf, sorted.
    let (all, _, st) = c.run(&[]);
    assert_eq!(st, 0);
    let names: Vec<&str> = all.lines().map(|l| l.split(" =").next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(all.contains("\nmessage_size_limit = 31457280\n"));
    assert!(all.contains("\nmail_name = relais\n"));
    assert!(all.contains("\nsmtpd_timeout = ${stress?{10}:{300}}s\n"));
    // -d: the table, with computed defaults.
    let (d, _, _) = c.run(&["-d"]);
    assert!(d.contains("\nmessage_size_limit = 10240000\n"));
    assert!(d.contains("\nmail_name = relais\n"));
    assert!(d.contains("\nconfig_directory = /etc/postfix\n"));
    let host = d
        .lines()
        .find_map(|l| l.strip_prefix("myhostname = "))
        .expect("computed myhostname");
    assert!(host.contains('.'), "{host}");
    // Unknown names warn on stderr and still exit 0.
    let (o, e, st) = c.run(&["no_such_parameter", "biff"]);
    assert_eq!(o, "biff = no\n");
    assert_eq!(
        e,
        "postconf: warning: no_such_parameter: unknown parameter\n"
    );
    assert_eq!(st, 0);
}

#[test]
fn mail_config_environment_selects_the_directory() {
    let c = Copy::new();
    let out = Command::new(env!("CARGO_BIN_EXE_postconf"))
        .args(["-h", "myhostname"])
        .env("MAIL_CONFIG", &c.dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mail.exemple.fr\n");
    let out = Command::new(env!("CARGO_BIN_EXE_postconf"))
        .args(["-n", "config_directory"])
        .env("MAIL_CONFIG", &c.dir)
        .output()
        .unwrap();
    assert_eq!(
        c.unrewrite(&String::from_utf8_lossy(&out.stdout)),
        "config_directory = /etc/postfix\n"
    );
}

#[test]
fn edit_appends_missing_parameters_and_replaces_continued_lines() {
    let c = Copy::new();
    let (_, err, st) = c.run(&[
        "-e",
        "smtpd_client_restrictions = permit_mynetworks, reject",
        "zz_after = 1",
    ]);
    assert_eq!(st, 0, "{err}");
    // Not in relais's table: written as asked, with a warning.
    assert_eq!(err, "postconf: warning: zz_after: unknown parameter\n");
    let before = seed("main.cf");
    let after = c.read("main.cf");
    let diff = unified_diff("main.cf", &before, &after).unwrap();
    let removed: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let added: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(
        added,
        vec![
            "+smtpd_client_restrictions = permit_mynetworks, reject",
            "+zz_after = 1"
        ]
    );
    // The old logical line and its continuation lines (but not the comment inside) go.
    assert!(
        removed[0].starts_with("-smtpd_client_restrictions ="),
        "{diff}"
    );
    assert!(removed
        .iter()
        .all(|l| !l.trim_start_matches('-').trim_start().starts_with('#')));
    let (v, _, _) = c.run(&["-h", "smtpd_client_restrictions"]);
    assert_eq!(v, "permit_mynetworks, reject\n");
}

#[test]
fn repeated_settings_are_all_edited_with_a_warning_and_options_may_follow_operands() {
    let c = Copy::new();
    // The seed sets append_dot_mydomain twice; options after the operand still count.
    let out = Command::new(env!("CARGO_BIN_EXE_postconf"))
        .args(["append_dot_mydomain = yes", "-e", "-c"])
        .arg(&c.dir)
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        c.unrewrite(&String::from_utf8_lossy(&out.stderr)),
        "postconf: warning: /etc/postfix/main.cf: multiple entries for \"append_dot_mydomain\"\n"
    );
    let after = c.read("main.cf");
    assert_eq!(after.matches("append_dot_mydomain = yes\n").count(), 2);
    assert!(!after.contains("append_dot_mydomain     = no"));
    let (v, _, _) = c.run(&["-h", "append_dot_mydomain"]);
    assert_eq!(v, "yes\n");
}
