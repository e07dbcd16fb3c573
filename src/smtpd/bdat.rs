//! BDAT (RFC 3030 CHUNKING): read exactly the announced number of bytes, whatever they are.
//! A refused chunk is still read and dropped, so its bytes are never taken for commands.
//! Line endings are normalized to CRLF like DATA content, so the queue holds one form only.

use super::reply::Reply;
use super::session::{Flow, Session};
use super::state::{Chunked, State};
use super::SmtpdError;
use tokio::io::{AsyncRead, AsyncWrite};

/// How much of a chunk is read at once.
const PIECE: usize = 64 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn cmd_bdat(&mut self, args: &str) -> Result<Flow, SmtpdError> {
        let Some((size, last)) = parse_bdat(args) else {
            // Without a size we cannot tell the chunk from the next command: hang up.
            self.reply(Reply::new(501, "5.5.4 Syntax: BDAT count [LAST]"))
                .await;
            self.state = State::Closed;
            return Ok(Flow::Close);
        };
        let (tx, mut chunked) = match std::mem::take(&mut self.state) {
            State::Rcpt(tx) => (tx, Chunked::default()),
            State::Chunking(tx, c) => (tx, c),
            other => {
                let r = match other {
                    State::Mail(_) => Reply::new(554, "5.5.1 Error: no valid recipients"),
                    _ => Reply::new(503, "5.5.1 Error: need RCPT command"),
                };
                self.state = other;
                self.discard(size).await?;
                self.reply(r).await;
                return Ok(Flow::Continue);
            }
        };
        if chunked.received == 0 && !chunked.checked {
            chunked.checked = true;
            self.state = State::Rcpt(tx);
            let refused = self.check_at(super::CheckPoint::Data, "").await;
            let State::Rcpt(t) = std::mem::take(&mut self.state) else {
                return Ok(Flow::Continue);
            };
            if let Some(r) = refused {
                // The chunk is read and dropped; the transaction stays open.
                self.state = State::Rcpt(t);
                self.discard(size).await?;
                self.reply(r).await;
                return Ok(Flow::Continue);
            }
            return self.bdat_chunk(t, chunked, size, last).await;
        }
        self.bdat_chunk(tx, chunked, size, last).await
    }

    async fn bdat_chunk(
        &mut self,
        tx: Box<super::state::Transaction>,
        mut chunked: Chunked,
        size: u64,
        last: bool,
    ) -> Result<Flow, SmtpdError> {
        let limit = self.settings.message_size_limit;
        let mut left = size;
        // Bounded: each round consumes at least one byte of the chunk.
        while left > 0 {
            let piece = self.read_raw(left.min(PIECE as u64) as usize).await?;
            left -= piece.len() as u64;
            chunked.received += piece.len() as u64;
            if limit > 0 && chunked.received > limit {
                chunked.too_big = true;
                chunked.body = Vec::new();
            }
            if !chunked.too_big {
                normalize_into(&mut chunked.body, &piece, &mut chunked.pending_cr);
            }
        }
        if chunked.too_big {
            self.reset_transaction();
            self.reply(Reply::new(552, "5.3.4 Message size exceeds fixed limit"))
                .await;
            return Ok(Flow::Continue);
        }
        if !last {
            self.state = State::Chunking(tx, chunked);
            self.reply(Reply::new(250, format!("2.0.0 Ok: {size} bytes")))
                .await;
            return Ok(Flow::Continue);
        }
        let mut body = chunked.body;
        if chunked.pending_cr || (!body.is_empty() && !body.ends_with(b"\r\n")) {
            body.extend_from_slice(b"\r\n");
        }
        self.stage = "END-OF-MESSAGE";
        self.finish_message(tx, body).await;
        Ok(Flow::Continue)
    }

    /// Reads and drops `n` bytes.
    async fn discard(&mut self, mut n: u64) -> Result<(), SmtpdError> {
        while n > 0 {
            let piece = self.read_raw(n.min(PIECE as u64) as usize).await?;
            n -= piece.len() as u64;
        }
        Ok(())
    }
}

/// `count [LAST]`.
fn parse_bdat(args: &str) -> Option<(u64, bool)> {
    let mut it = args.split_ascii_whitespace();
    let n = it.next()?;
    if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = n.parse().ok()?;
    let last = match it.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if it.next().is_some() {
        return None;
    }
    Some((size, last))
}

/// Appends `input` to `out` with every bare LF and bare CR turned into CRLF. A CR at the end
/// of `input` is held in `pending_cr` until the next byte shows what it is.
pub(super) fn normalize_into(out: &mut Vec<u8>, input: &[u8], pending_cr: &mut bool) {
    for &b in input {
        if *pending_cr {
            *pending_cr = false;
            out.extend_from_slice(b"\r\n");
            if b == b'\n' {
                continue;
            }
        }
        match b {
            b'\r' => *pending_cr = true,
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdat_args() {
        assert_eq!(parse_bdat("10"), Some((10, false)));
        assert_eq!(parse_bdat("0 last"), Some((0, true)));
        assert_eq!(parse_bdat(""), None);
        assert_eq!(parse_bdat("-1"), None);
        assert_eq!(parse_bdat("10 LAST x"), None);
        assert_eq!(parse_bdat("99999999999999999999"), None);
    }

    #[test]
    fn normalizes_across_pieces() {
        let mut out = Vec::new();
        let mut cr = false;
        normalize_into(&mut out, b"a\r", &mut cr);
        normalize_into(&mut out, b"\nb\nc\rd\r", &mut cr);
        assert!(cr);
        normalize_into(&mut out, b"x", &mut cr);
        assert_eq!(out, b"a\r\nb\r\nc\r\nd\r\nx");
    }
}
