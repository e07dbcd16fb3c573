//! The queue file system's free space, checked at MAIL FROM as Postfix's smtpd_check_queue()
//! (smtpd/smtpd_check.c) does it, so that a client is told `452 4.3.1 Insufficient system
//! storage` before it uploads a message the queue could not take.
//!
//! Postfix compares in file system blocks (which avoids overflow) and refuses when
//! `queue_minfree / bsize >= bavail` or `message_size_limit / bsize >= bavail / 1.5`. The SIZE=
//! the client announced plays no part: Postfix looked at it up to 2.0.15 (refusing a SIZE of
//! half the free space or more) and has used message_size_limit instead since 2.0.16, because
//! every accepted message may grow to that limit.

use super::reply::Reply;
use super::session::Session;
use super::CheckPoint;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

/// Postfix's smtpd_space_multf: free space must be at least this many times
/// message_size_limit.
pub const SPACE_MULTF: f64 = 1.5;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The queue file system cannot be measured (Postfix's smtpd exits on this).
    #[error("statvfs {path}: {reason}")]
    Statvfs { path: String, reason: String },
}

/// What the queue file system has, as Postfix's fsspace() reports it: the block size and the
/// blocks available to an unprivileged process (statvfs f_frsize and f_bavail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub block_size: u64,
    pub block_free: u64,
}

/// statvfs(2) of `path`. One system call that reads the file system's superblock counters;
/// cheap enough to make on a session's task.
pub fn fsspace(path: &Path) -> Result<FsSpace, StorageError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |e: std::io::Error| StorageError::Statvfs {
        path: path.display().to_string(),
        reason: crate::log::strerror(&e),
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: an all-zero statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a struct statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // f_frsize is the unit of the block counts; some old systems leave it 0 and mean f_bsize.
    let block_size = if st.f_frsize > 0 {
        st.f_frsize as u64
    } else {
        st.f_bsize as u64
    };
    Ok(FsSpace {
        block_size: block_size.max(1),
        block_free: st.f_bavail as u64,
    })
}

/// Postfix's test: too little room when queue_minfree, or 1.5 × message_size_limit, does not
/// fit in the free blocks (a limit of 0 only refuses a file system with no free block at all).
pub fn insufficient(space: FsSpace, queue_minfree: u64, message_size_limit: u64) -> bool {
    let bs = space.block_size.max(1);
    queue_minfree / bs >= space.block_free
        || (message_size_limit / bs) as f64 >= space.block_free as f64 / SPACE_MULTF
}

/// The warning Postfix's smtpd logs when it starts with a queue_minfree that cannot hold one
/// and a half messages of the largest size (it is a warning only; the value is not raised).
pub fn minfree_warning(queue_minfree: u64, message_size_limit: u64) -> Option<String> {
    (queue_minfree > 0
        && message_size_limit > 0
        && (queue_minfree as f64) / SPACE_MULTF < message_size_limit as f64)
        .then(|| {
            format!(
                "queue_minfree({queue_minfree}) should be at least \
                 {SPACE_MULTF}*message_size_limit({message_size_limit})"
            )
        })
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// At MAIL FROM, after the sender restrictions: `452 4.3.1 Insufficient system storage`
    /// when the queue file system is too full, logged as Postfix does (the NOQUEUE reject
    /// line, without from=<…> because Postfix has not recorded the sender yet, then its
    /// warning). None when there is room, or no queue on disk behind this session.
    pub(super) fn check_queue_space(&mut self) -> Option<Reply> {
        let space = match self.backend.queue_space()? {
            Ok(s) => s,
            Err(e) => {
                // Postfix's smtpd exits on this (msg_fatal) and the client loses the session;
                // a refusal the client may retry says the same without ending it.
                warn!("{e}");
                FsSpace {
                    block_size: 1,
                    block_free: 0,
                }
            }
        };
        if !insufficient(
            space,
            self.settings.queue_minfree,
            self.settings.message_size_limit,
        ) {
            return None;
        }
        let r = Reply::new(452, "4.3.1 Insufficient system storage");
        self.info.sender = None;
        self.log_whatsup(None, "reject", CheckPoint::Mail, &r.one_line(), None);
        warn!(
            "not enough free space in mail queue: {} bytes < {SPACE_MULTF}*message size limit",
            space.block_free.saturating_mul(space.block_size)
        );
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn fs(block_free: u64) -> FsSpace {
        FsSpace {
            block_size: 4096,
            block_free,
        }
    }

    #[test]
    fn queue_minfree_is_compared_in_whole_blocks() {
        // 100 free blocks: queue_minfree of 100 blocks refuses, one byte less (99 blocks
        // after truncation) does not.
        assert!(insufficient(fs(100), 100 * 4096, 0));
        assert!(!insufficient(fs(100), 100 * 4096 - 1, 0));
        assert!(!insufficient(fs(100), 0, 0));
    }

    #[test]
    fn free_space_must_hold_one_and_a_half_message_size_limits() {
        // 150 free blocks hold 1.5 × 99 blocks but not 1.5 × 100.
        assert!(insufficient(fs(150), 0, 100 * 4096));
        assert!(!insufficient(fs(150), 0, 100 * 4096 - 1));
        assert!(!insufficient(fs(150), 0, 99 * 4096));
    }

    #[test]
    fn no_size_limit_refuses_only_a_full_file_system() {
        assert!(insufficient(fs(0), 0, 0));
        assert!(!insufficient(fs(1), 0, 0));
    }

    #[test]
    fn a_small_queue_minfree_is_warned_about_not_raised() {
        assert_eq!(
            minfree_warning(1000, 10240000).as_deref(),
            Some("queue_minfree(1000) should be at least 1.5*message_size_limit(10240000)")
        );
        assert_eq!(minfree_warning(15360000, 10240000), None);
        assert_eq!(minfree_warning(0, 10240000), None);
        assert_eq!(minfree_warning(1000, 0), None);
    }

    #[test]
    fn statvfs_of_a_real_directory_and_of_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        let s = fsspace(d.path()).unwrap();
        assert!(s.block_size >= 512, "{s:?}");
        let e = fsspace(&d.path().join("nosuch")).unwrap_err().to_string();
        assert!(e.ends_with("/nosuch: No such file or directory"), "{e}");
        assert!(e.starts_with("statvfs "), "{e}");
    }
}
