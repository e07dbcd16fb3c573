//! Maildir delivery as the Maildir specification says: write a uniquely named file in tmp/,
//! fsync it, rename it into new/, fsync the directory. A crash leaves either nothing in new/
//! or a complete message; tmp/ leftovers are never seen by readers.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::delivery::Outcome;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// One message to write into one mailbox.
pub struct Delivery<'a> {
    pub maildir: &'a Path,
    pub sender: &'a str,
    pub recipient: &'a str,
    /// Message content with CRLF line ends, as stored in the queue.
    pub content: &'a [u8],
    pub hostname: &'a str,
    /// (uid, gid) to give the Maildir and the message to: set by the local agent when it
    /// runs as root and delivers to a system user (Postfix writes as the user).
    pub owner: Option<(u32, u32)>,
}

fn mkdirs(maildir: &Path) -> std::io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(maildir.join(sub))?;
    }
    Ok(())
}

/// True when the message already carries `Delivered-To: <recipient>` in its header: delivering
/// it again would be a forwarding loop.
pub fn is_loop(content: &[u8], recipient: &str) -> bool {
    let (headers, _) = crate::cleanup::headers::split(content);
    headers.iter().any(|h| {
        h.is("Delivered-To")
            && h.text
                .split_once(':')
                .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case(recipient))
    })
}

/// Writes the message; deferral on any I/O error (a full disk is temporary).
pub fn deliver(d: &Delivery) -> Outcome {
    if is_loop(d.content, d.recipient) {
        return Outcome::bounced("5.4.6", format!("mail forwarding loop for {}", d.recipient));
    }
    match write(d) {
        Ok(_) => Outcome::sent("2.0.0", "delivered to maildir"),
        Err(e) => Outcome::deferred(
            "4.2.0",
            format!("maildir delivery failed: {}: {e}", d.maildir.display()),
        ),
    }
}

fn write(d: &Delivery) -> std::io::Result<PathBuf> {
    mkdirs(d.maildir)?;
    if let Some((uid, gid)) = d.owner {
        for dir in [
            d.maildir.to_path_buf(),
            d.maildir.join("tmp"),
            d.maildir.join("new"),
            d.maildir.join("cur"),
        ] {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(
        "{}.P{}Q{}M{}.{}",
        now.as_secs(),
        std::process::id(),
        seq,
        now.subsec_micros(),
        d.hostname
    );
    let tmp = d.maildir.join("tmp").join(&tmp_name);
    let mut f: File = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = (|| {
        if let Some((uid, gid)) = d.owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        let mut buf = Vec::with_capacity(d.content.len() + 128);
        let sender = if d.sender.is_empty() {
            String::new()
        } else {
            d.sender.to_string()
        };
        write!(
            buf,
            "Return-Path: <{sender}>\nDelivered-To: {}\n",
            d.recipient
        )?;
        // Maildir files use the local line convention (LF).
        let mut i = 0;
        while i < d.content.len() {
            if d.content[i] == b'\r' && d.content.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            buf.push(d.content[i]);
            i += 1;
        }
        f.write_all(&buf)?;
        f.sync_all()?;
        let meta = f.metadata()?;
        // The final name carries device and inode, unique on this file system.
        let name = format!(
            "{}.V{:x}I{:x}M{}.{}",
            now.as_secs(),
            meta.dev(),
            meta.ino(),
            now.subsec_micros(),
            d.hostname
        );
        let dest = d.maildir.join("new").join(name);
        fs::rename(&tmp, &dest)?;
        File::open(d.maildir.join("new"))?.sync_all()?;
        Ok(dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new_with_envelope_headers() {
        let d = tempfile::tempdir().unwrap();
        let md = d.path().join("user/");
        let out = deliver(&Delivery {
            maildir: &md,
            sender: "a@b.c",
            recipient: "user@localhost",
            content: b"Subject: x\r\n\r\nhello\r\n",
            hostname: "mail",
            owner: None,
        });
        assert_eq!(out, Outcome::sent("2.0.0", "delivered to maildir"));
        let files: Vec<_> = fs::read_dir(md.join("new")).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(
            text,
            "Return-Path: <a@b.c>\nDelivered-To: user@localhost\nSubject: x\n\nhello\n"
        );
        assert_eq!(fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn loops_bounce_and_io_errors_defer() {
        let d = tempfile::tempdir().unwrap();
        let looped = b"Delivered-To: USER@localhost\r\nSubject: x\r\n\r\nb\r\n";
        let md = d.path().join("m");
        let out = deliver(&Delivery {
            maildir: &md,
            sender: "",
            recipient: "user@localhost",
            content: looped,
            hostname: "h",
            owner: None,
        });
        assert!(matches!(out, Outcome::Bounced { .. }), "{out:?}");
        // A path under a regular file cannot be created: deferred, not lost.
        fs::write(d.path().join("file"), b"").unwrap();
        let bad = d.path().join("file/sub");
        let out = deliver(&Delivery {
            maildir: &bad,
            sender: "",
            recipient: "u@l",
            content: b"\r\n",
            hostname: "h",
            owner: None,
        });
        assert!(matches!(out, Outcome::Deferred { .. }), "{out:?}");
    }

    #[test]
    fn owner_gets_the_maildir_and_the_message() {
        // Only root can give files away; as another user there is nothing to check.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let md = d.path().join("Maildir/");
        let out = deliver(&Delivery {
            maildir: &md,
            sender: "a@b",
            recipient: "u@l",
            content: b"\r\n",
            hostname: "h",
            owner: Some((65534, 65534)),
        });
        assert!(matches!(out, Outcome::Sent { .. }), "{out:?}");
        let f = fs::read_dir(md.join("new"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        for p in [f, md.join("new"), md.clone()] {
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", p.display());
        }
    }
}
