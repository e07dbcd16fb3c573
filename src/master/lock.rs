//! The master's pid file and lock: `$queue_directory/pid/master.pid`, held with flock(2) for
//! the life of the daemon, so two masters can never share one queue directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("the mail system is already running: PID: {0}")]
    Running(u32),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Held while the daemon runs; dropping it releases the lock (the file stays, as in Postfix).
#[derive(Debug)]
pub struct PidLock {
    _file: File,
    pub path: PathBuf,
}

pub fn pid_path(queue_dir: &Path) -> PathBuf {
    queue_dir.join("pid").join("master.pid")
}

impl PidLock {
    pub fn acquire(queue_dir: &Path) -> Result<PidLock, LockError> {
        let path = pid_path(queue_dir);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            return Err(LockError::Running(s.trim().parse().unwrap_or(0)));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        // Postfix writes the pid right-aligned in 10 columns; tools only parse it.
        writeln!(file, "{:>10}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(PidLock { _file: file, path })
    }
}

/// The pid of the running master, if one holds the lock.
pub fn running_pid(queue_dir: &Path) -> Option<u32> {
    let path = pid_path(queue_dir);
    let mut file = File::open(&path).ok()?;
    // SAFETY: flock on a descriptor we own; a shared probe that we release immediately.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Whether process `pid` still exists and has not exited. A zombie counts as gone: it has
/// released every descriptor and lock, and a daemon started by `relais start` may be
/// reparented to an init that reaps it late (or, in a container, never).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
    {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S …"; comm may hold spaces and parentheses, the state
    // follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => !matches!(
            st.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(running_pid(d.path()), None);
        let l = PidLock::acquire(d.path()).unwrap();
        // flock locks belong to the open file description, so a second open conflicts even in
        // the same process, which is what protects the queue from a second master.
        match PidLock::acquire(d.path()) {
            Err(LockError::Running(pid)) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Running, got {other:?}"),
        }
        assert_eq!(running_pid(d.path()), Some(std::process::id()));
        drop(l);
        assert_eq!(running_pid(d.path()), None);
    }

    #[test]
    fn a_zombie_is_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited (bounded wait for that).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            !process_alive(pid),
            "exited child {pid} still counts as alive"
        );
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
