//! `postmap` against the golden captures from Postfix 3.7 (postmap-*.txt): stdout, stderr
//! and exit status byte for byte, with /etc/postfix rewritten to a temporary config dir.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const REF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/postfix-reference"
);

struct Capture {
    command: String,
    stdout: String,
    stderr: String,
    status: i32,
}

/// Reads N bytes after a `==== name (N bytes…) ====` header.
fn section<'a>(text: &'a str, name: &str) -> (&'a str, &'a str) {
    let head = format!("==== {name} (");
    let at = text
        .find(&head)
        .unwrap_or_else(|| panic!("no {name} section"));
    let rest = &text[at + head.len()..];
    let n: usize = rest[..rest.find(' ').unwrap()].parse().unwrap();
    let body = &rest[rest.find("====\n").unwrap() + 5..];
    (&body[..n], &body[n..])
}

fn read_capture(name: &str) -> Capture {
    let text = std::fs::read_to_string(Path::new(REF).join(name)).unwrap();
    let command = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("$ ")
        .unwrap()
        .to_string();
    let (stdout, rest) = section(&text, "stdout");
    let (stderr, rest) = section(rest, "stderr");
    let status = rest
        .trim()
        .strip_prefix("==== exit status: ")
        .and_then(|s| s.strip_suffix(" ===="))
        .unwrap()
        .parse()
        .unwrap();
    Capture {
        command,
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        status,
    }
}

/// Splits a shell command line with single quotes (enough for the captures).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmd.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            _ => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// printf's escapes used in the captures.
fn printf(arg: &str) -> String {
    arg.replace("\\n", "\n")
}

/// Runs a capture's command against `dir` and compares every stream.
fn check(name: &str, dir: &Path) {
    let cap = read_capture(name);
    let d = dir.to_str().unwrap();
    let cmd = cap.command.replace("/etc/postfix", d);
    let (stdin, cmd) = match cmd.split_once(" | ") {
        Some((left, right)) => {
            let w = words(left);
            assert_eq!(w[0], "printf");
            (Some(printf(&w[1])), right.to_string())
        }
        None => (None, cmd),
    };
    let w = words(&cmd);
    assert_eq!(w[0], "postmap");
    let mut child = Command::new(env!("CARGO_BIN_EXE_postmap"))
        .args(&w[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        cap.stdout.replace("/etc/postfix", d),
        "{name}: stdout"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        cap.stderr.replace("/etc/postfix", d),
        "{name}: stderr"
    );
    assert_eq!(o.status.code(), Some(cap.status), "{name}: exit status");
}

#[test]
fn postmap_matches_postfix_captures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.cf"), "").unwrap();
    for (table, file) in [
        ("postmap-table-access.txt", "access"),
        ("postmap-table-client_access.cidr.txt", "client_access.cidr"),
    ] {
        std::fs::copy(Path::new(REF).join(table), dir.join(file)).unwrap();
    }
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/seed-config/header_checks"
        ),
        dir.join("header_checks"),
    )
    .unwrap();

    // The build comes first: the hash queries read its output.
    check("postmap-build-hash.txt", dir);
    assert!(dir.join("access.db").is_file());
    let mut names: Vec<String> = std::fs::read_dir(REF)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("postmap-q-"))
        .collect();
    names.sort();
    assert!(names.len() >= 14, "{names:?}");
    for name in names {
        check(&name, dir);
    }
}
