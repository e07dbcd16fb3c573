//! Queue IDs in Postfix's two forms.
//!
//! Short form (default): five upper-case hex digits of the microsecond of arrival followed by
//! six hex digits of a counter, e.g. `527309AA1A6` (Postfix puts the inode number there; we
//! use sled's restart-safe id generator, so two IDs never repeat across restarts unless the
//! 24-bit counter wraps *and* the microsecond matches, which the insert checks for anyway).
//!
//! Long form (`enable_long_queue_ids = yes`): seconds (6 chars) and microseconds (4 chars) in
//! Postfix's base-52 alphabet, a `z`, then the counter in base 51, e.g. `4Gt0Zd3YwtzB7`.
//! Long IDs sort by arrival time, as Postfix's do.

use std::time::{SystemTime, UNIX_EPOCH};

/// Postfix's 52-character alphabet for long queue IDs: digits and letters without vowels.
const B52: &[u8] = b"0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz";
// `z` separates the time part from the counter, so the counter may not use it.
const B51: &[u8] = b"0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxy";

fn encode(mut n: u64, alphabet: &[u8], pad: usize) -> String {
    let base = alphabet.len() as u64;
    let mut out = Vec::new();
    while n > 0 {
        out.push(alphabet[(n % base) as usize]);
        n /= base;
    }
    while out.len() < pad {
        out.push(alphabet[0]);
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Makes a queue ID from the current time and a unique counter value.
pub fn make(counter: u64, long: bool) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    make_at(now.as_secs(), now.subsec_micros(), counter, long)
}

/// Makes a queue ID for a given time (for tests and for `make`).
pub fn make_at(secs: u64, usec: u32, counter: u64, long: bool) -> String {
    if long {
        format!(
            "{}{}z{}",
            encode(secs, B52, 6),
            encode(u64::from(usec), B52, 4),
            encode(counter, B51, 1)
        )
    } else {
        format!("{:05X}{:06X}", usec & 0xFFFFF, counter & 0xFF_FFFF)
    }
}

/// Postfix's `mail_queue_id_ok`: only letters and digits, bounded length. Anything else
/// (a `/`, a dot) could name a file outside the queue in Postfix and is refused here too.
pub fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_looks_like_postfix() {
        let id = make_at(1_795_421_655, 0x52730, 0x9AA1A6, false);
        assert_eq!(id, "527309AA1A6");
        assert!(valid(&id));
    }

    #[test]
    fn long_form_sorts_by_time() {
        let a = make_at(1_795_421_655, 10, 99, true);
        let b = make_at(1_795_421_656, 5, 1, true);
        assert!(a < b, "{a} {b}");
        assert!(a.contains('z'));
        assert!(valid(&a));
    }

    #[test]
    fn validity() {
        assert!(!valid("bad/id"));
        assert!(!valid(""));
        assert!(valid("NOSUCHID"));
    }
}
