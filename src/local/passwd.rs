//! The system password file, through libc (so NSS sources work as for any program).

use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// A password database entry: home directory and ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pw {
    pub home: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The password database entry of a user, if it knows the name.
pub fn lookup(name: &str) -> Option<Pw> {
    // A name with a NUL cannot be in the password file; refuse rather than truncate it.
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: an all-zero passwd is a valid out-parameter (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes strings into `buf`
    // only, and `result` is either null or points at `pw`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated by getpwnam_r, alive here.
    let dir = unsafe { CStr::from_ptr(pw.pw_dir) };
    Some(Pw {
        home: PathBuf::from(dir.to_string_lossy().into_owned()),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// The home directory of a user, if the password database knows the name.
pub fn home(name: &str) -> Option<PathBuf> {
    lookup(name).map(|p| p.home)
}

/// True when this process runs as root (then mailboxes are given to their users, commands
/// run as default_privs, and file destinations are refused).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_known_and_garbage_is_not() {
        assert!(super::home("root").is_some());
        assert!(super::home("no-such-user-relais-x").is_none());
        assert!(super::home("a\0b").is_none());
    }
}
