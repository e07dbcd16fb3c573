//! Appending to a UNIX mbox file: the mail spool (mail_spool_directory) and `/file` alias
//! destinations. The file is locked (flock), the message is written with a `From ` line,
//! `>From ` quoting and a closing blank line, and fsynced; on any error the file is cut
//! back to its old length so a half message never stays behind.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// The bytes appended for one message (LF line ends, as mbox readers expect).
pub fn format(sender: &str, recipient: &str, content: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(content.len() + 200);
    let from = if sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        sender
    };
    let date = chrono::Local::now().format("%a %b %e %H:%M:%S %Y");
    let _ = write!(
        buf,
        "From {from}  {date}\nReturn-Path: <{sender}>\nDelivered-To: {recipient}\n"
    );
    for line in content.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"From ") {
            buf.push(b'>');
        }
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
    buf.push(b'\n');
    buf
}

/// Appends `data` to `path` (created 0600 if missing; a symbolic link is refused). `owner`
/// (uid, gid) is given a mailbox this call creates (the local agent running as root).
pub fn append(path: &Path, data: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if let Some((uid, gid)) = owner {
        use std::os::unix::fs::MetadataExt;
        if meta.len() == 0 && meta.uid() != uid {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
    }
    // Bounded wait for the lock: a reader holding it for long defers us instead of
    // blocking a delivery thread forever.
    let fd = f.as_raw_fd();
    let mut locked = false;
    for _ in 0..100 {
        // SAFETY: fd is an open descriptor owned by `f` for the whole call.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            locked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !locked {
        return Err(std::io::Error::other(
            "mailbox is locked by another process",
        ));
    }
    let before = f.metadata()?.len();
    let r = f.write_all(data).and_then(|_| f.sync_all());
    if r.is_err() {
        let _ = f.set_len(before);
    }
    // The lock goes with the descriptor when `f` is dropped.
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_quoting_and_append() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mbox");
        let m = format("a@b", "u@l", b"Subject: x\r\n\r\nFrom here\r\nok\r\n");
        append(&p, &m, None).unwrap();
        append(&p, &m, None).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.matches("\nFrom a@b  ").count() + usize::from(text.starts_with("From a@b  ")),
            2
        );
        assert!(
            text.contains(
                "Return-Path: <a@b>\nDelivered-To: u@l\nSubject: x\n\n>From here\nok\n\n"
            ),
            "{text}"
        );
        std::os::unix::fs::symlink(&p, d.path().join("link")).unwrap();
        assert!(append(&d.path().join("link"), b"x", None).is_err());
    }
}
