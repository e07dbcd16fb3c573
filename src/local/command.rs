//! Delivery to `|command` alias destinations: `/bin/sh -c command` with the message on
//! standard input, a small fixed environment, a time limit (command_time_limit), and the
//! exit status mapped as Postfix's local(8) does (0 delivered, sysexits temporary codes
//! deferred, anything else bounced).

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use crate::delivery::Outcome;

/// What a command delivery needs to know.
pub struct Pipe<'a> {
    pub command: &'a str,
    pub sender: &'a str,
    pub recipient: &'a str,
    pub user: &'a str,
    pub extension: &'a str,
    pub domain: &'a str,
    pub home: &'a str,
    pub timeout: Duration,
    /// (uid, gid) to run as (default_privs when relais runs as root).
    pub run_as: Option<(u32, u32)>,
}

/// Output kept for the bounce text; more is read and thrown away so the child never blocks.
const KEEP_OUTPUT: usize = 500;

pub async fn run(p: &Pipe<'_>, message: Vec<u8>) -> Outcome {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(p.command)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SHELL", "/bin/sh")
        .env("SENDER", p.sender)
        .env("RECIPIENT", p.recipient)
        .env("USER", p.user)
        .env("LOGNAME", p.user)
        .env("LOCAL", p.user)
        .env("EXTENSION", p.extension)
        .env("DOMAIN", p.domain)
        .env("HOME", p.home)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((uid, gid)) = p.run_as {
        // Dropping from root: the standard library also clears supplementary groups.
        cmd.uid(uid).gid(gid);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::deferred("4.3.0", format!("cannot run command {}: {e}", p.command))
        }
    };
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let work = async {
        let feed = async {
            if let Some(mut s) = stdin.take() {
                // A command that exits without reading everything is not an error by itself.
                let _ = s.write_all(&message).await;
                let _ = s.shutdown().await;
            }
        };
        let drain = |r: Option<_>| async move {
            let mut kept = Vec::new();
            if let Some(mut r) = r {
                let mut buf = [0u8; 4096];
                loop {
                    let n: usize = match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if kept.len() < KEEP_OUTPUT {
                        kept.extend_from_slice(&buf[..n.min(KEEP_OUTPUT - kept.len())]);
                    }
                }
            }
            kept
        };
        let (_, out, err, status) = tokio::join!(
            feed,
            drain(
                stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)
            ),
            drain(
                stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)
            ),
            child.wait()
        );
        let mut text = out;
        text.extend_from_slice(&err);
        (status, text)
    };
    let (status, output) = match tokio::time::timeout(p.timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            // kill_on_drop reaps the child; the message is retried later.
            return Outcome::deferred(
                "4.3.0",
                format!("Command time limit exceeded: \"{}\"", p.command),
            );
        }
    };
    let output = String::from_utf8_lossy(&output)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let with_output = |s: String| {
        if output.is_empty() {
            s
        } else {
            format!("{s}. Command output: {output}")
        }
    };
    match status {
        Ok(s) if s.success() => {
            Outcome::sent("2.0.0", format!("delivered to command: {}", p.command))
        }
        Ok(s) => match s.code() {
            // sysexits: EX_TEMPFAIL, EX_OSERR, EX_IOERR, EX_CANTCREAT, EX_UNAVAILABLE is permanent.
            Some(c @ (71 | 74 | 75)) => Outcome::deferred(
                "4.3.0",
                with_output(format!("Command died with status {c}: \"{}\"", p.command)),
            ),
            Some(c) => Outcome::bounced(
                "5.3.0",
                with_output(format!("Command died with status {c}: \"{}\"", p.command)),
            ),
            None => Outcome::deferred(
                "4.3.0",
                with_output(format!("Command killed by signal: \"{}\"", p.command)),
            ),
        },
        Err(e) => Outcome::deferred("4.3.0", format!("command {}: {e}", p.command)),
    }
}
