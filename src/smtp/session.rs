//! One SMTP or LMTP client session over any byte stream: greeting, EHLO/LHLO (HELO fallback),
//! and mail transactions (MAIL, RCPT, DATA or BDAT) with per-recipient results.
//!
//! Replies are read into a bounded buffer and parsed with smtp-proto; every read and write
//! runs under the smtp_*_timeout of its stage, so a silent or slow peer costs at most that.

use super::Timeouts;
use crate::delivery::Outcome;
use crate::envelope::{BodyType, Ret};
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{
    EhloResponse, EXT_8BIT_MIME, EXT_CHUNKING, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS,
};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest reply relais reads (all lines together); a peer sending more is broken or hostile.
const MAX_REPLY: usize = 64 * 1024;
/// Body bytes written per write call (keeps memory bounded while dot-stuffing).
const CHUNK: usize = 64 * 1024;

/// A byte stream a session can run over (TCP, unix socket, or a test pipe).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A parsed server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code, when the server gave one.
    pub esc: Option<String>,
    /// The reply as Postfix quotes it: `250 2.0.0 Ok`, lines joined with spaces.
    pub text: String,
}

impl Reply {
    pub fn class(&self) -> u16 {
        self.code / 100
    }
    /// The enhanced status code, or the class default (`4.0.0`, `5.0.0`, `2.0.0`).
    pub fn dsn(&self) -> String {
        self.esc
            .clone()
            .unwrap_or_else(|| format!("{}.0.0", self.class().clamp(2, 5)))
    }
}

/// How a session broke down (as opposed to the peer answering with an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No reply or write progress within the stage's time limit.
    Timeout(&'static str),
    /// The peer closed the connection or the stream failed.
    Lost(&'static str),
    /// The peer sent something that is not an SMTP reply.
    Protocol(&'static str),
}

impl Failure {
    /// Postfix's wording, with `host[addr]` of the peer.
    pub fn reason(&self, peer: &str) -> String {
        match self {
            Failure::Timeout(stage) => format!("conversation with {peer} timed out while {stage}"),
            Failure::Lost(stage) => format!("lost connection with {peer} while {stage}"),
            Failure::Protocol(stage) => {
                format!("malformed reply from {peer} while {stage}")
            }
        }
    }
}

pub const GREETING: &str = "receiving the initial server greeting";
pub const HANDSHAKE_EHLO: &str = "performing the EHLO handshake";
pub const HANDSHAKE_HELO: &str = "performing the HELO handshake";
pub const HANDSHAKE_LHLO: &str = "performing the LHLO handshake";
pub const SEND_MAIL: &str = "sending MAIL FROM";
pub const SEND_RCPT: &str = "sending RCPT TO";
pub const SEND_DATA: &str = "sending DATA command";
pub const SEND_BODY: &str = "sending message body";
pub const SEND_END: &str = "sending end of data -- message may be sent more than once";
pub const SEND_RSET: &str = "sending RSET";
pub const SEND_QUIT: &str = "sending QUIT";
pub const SEND_STARTTLS: &str = "sending STARTTLS";
pub const SEND_AUTH: &str = "performing the SASL authentication";

/// What the peer offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub pipelining: bool,
    /// SIZE offered (with or without a limit).
    pub size_ext: bool,
    /// The peer's SIZE limit, when it gave a non-zero one.
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub starttls: bool,
    /// AUTH mechanisms offered (upper case), empty when AUTH is not offered.
    pub auth: Vec<String>,
}

/// Capabilities from EHLO reply lines, one keyword per line after the first.
fn caps_by_keyword(raw: &[u8]) -> Caps {
    let text = String::from_utf8_lossy(raw);
    let mut caps = Caps::default();
    for line in text.lines().skip(1) {
        let mut words = line.get(4..).unwrap_or("").split_whitespace();
        let kw = words.next().unwrap_or("").to_ascii_uppercase();
        match kw.as_str() {
            "PIPELINING" => caps.pipelining = true,
            "8BITMIME" => caps.eight_bit = true,
            // Old servers announce `AUTH=LOGIN PLAIN`.
            k if k.starts_with("AUTH=") && caps.auth.is_empty() => {
                caps.auth = std::iter::once(&k[5..])
                    .chain(words.by_ref())
                    .map(|w| w.to_ascii_uppercase())
                    .collect()
            }
            "SMTPUTF8" => caps.smtputf8 = true,
            "DSN" => caps.dsn = true,
            "CHUNKING" => caps.chunking = true,
            "STARTTLS" => caps.starttls = true,
            "AUTH" => caps.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
            "SIZE" => {
                caps.size_ext = true;
                caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
            }
            _ => {}
        }
    }
    caps
}

/// One recipient of a transaction.
#[derive(Debug, Clone)]
pub struct TxRcpt {
    pub address: String,
    pub notify: Option<String>,
    pub orcpt: Option<String>,
}

/// One mail transaction's envelope and content.
pub struct Tx<'a> {
    pub sender: &'a str,
    pub rcpts: &'a [TxRcpt],
    pub content: &'a [u8],
    pub ret: Option<Ret>,
    pub envid: Option<&'a str>,
    pub body_type: BodyType,
    pub smtputf8: bool,
}

/// A live session.
pub struct Session<S> {
    io: S,
    rbuf: Vec<u8>,
    /// `host[addr]` (with `:port` in relay= only), for reasons.
    pub peer: String,
    pub lmtp: bool,
    pub caps: Caps,
    pub timeouts: Timeouts,
    /// A MAIL FROM was accepted and the transaction not finished: RSET before the next one.
    pub needs_rset: bool,
    /// Transactions completed on this connection.
    pub uses: u32,
}

/// RFC 3461 xtext encoding of ENVID and ORCPT values.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Where the first complete reply in `buf` ends (just past its last line's LF), if any.
fn reply_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(off) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + off];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // A last line is `NNN text` or a bare `NNN`; continuation lines have `NNN-`.
        if line.len() <= 3 || line[3] != b'-' {
            return Some(start + off + 1);
        }
        start += off + 1;
    }
    None
}

/// Parses one complete reply with smtp-proto.
fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let resp = ResponseReceiver::default().parse(&mut raw.iter()).ok()?;
    if !(200..600).contains(&resp.code) {
        return None;
    }
    let esc =
        (resp.esc[0] != 0).then(|| format!("{}.{}.{}", resp.esc[0], resp.esc[1], resp.esc[2]));
    let msg = resp.message.replace('\n', " ");
    let msg = msg.trim();
    let mut text = resp.code.to_string();
    if let Some(e) = &esc {
        text.push(' ');
        text.push_str(e);
    }
    if !msg.is_empty() {
        text.push(' ');
        text.push_str(msg);
    }
    Some(Reply {
        code: resp.code,
        esc,
        text,
    })
}

/// The body with dot-stuffing and CRLF line ends, in bounded chunks, ending with `.CRLF`.
pub fn dot_stuff_chunks(content: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut pos = 0usize;
    let mut at_line_start = true;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut out = Vec::with_capacity(CHUNK + 8);
        // A line at a time, found with memchr; a line longer than the room left is cut.
        while pos < content.len() && out.len() < CHUNK {
            if at_line_start && content[pos] == b'.' {
                out.push(b'.');
            }
            let room = CHUNK.saturating_sub(out.len()).max(1);
            let window = &content[pos..content.len().min(pos + room)];
            match memchr::memchr(b'\n', window) {
                Some(i) => {
                    out.extend_from_slice(&window[..i]);
                    // Bare LF becomes CRLF: SMTP allows no other line end. The CR may sit
                    // at the end of the previous window.
                    let cr = if i > 0 {
                        window[i - 1] == b'\r'
                    } else {
                        pos > 0 && content[pos - 1] == b'\r'
                    };
                    if !cr {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                    pos += i + 1;
                    at_line_start = true;
                }
                None => {
                    out.extend_from_slice(window);
                    pos += window.len();
                    at_line_start = false;
                }
            }
        }
        if pos >= content.len() {
            if !at_line_start {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            done = true;
        }
        Some(out)
    })
}

/// CRLF line ends for BDAT (no dot-stuffing): bare LF becomes CRLF, a last line gets one.
fn crlf_normalized(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 2);
    for (i, &b) in content.iter().enumerate() {
        if b == b'\n' && (i == 0 || content[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What the peer said about each recipient and the message.
#[derive(Debug)]
pub struct TxResult {
    /// One outcome per `Tx::rcpts`, in order.
    pub outcomes: Vec<Outcome>,
}

impl<S: Stream> Session<S> {
    pub fn new(io: S, peer: String, lmtp: bool, timeouts: Timeouts) -> Self {
        Session {
            io,
            rbuf: Vec::new(),
            peer,
            lmtp,
            caps: Caps::default(),
            timeouts,
            needs_rset: false,
            uses: 0,
        }
    }

    /// Reads one reply within `limit`.
    pub async fn read_reply(
        &mut self,
        limit: Duration,
        stage: &'static str,
    ) -> Result<(Reply, Vec<u8>), Failure> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = reply_end(&self.rbuf) {
                let raw: Vec<u8> = self.rbuf.drain(..end).collect();
                let r = parse_reply(&raw).ok_or(Failure::Protocol(stage))?;
                return Ok((r, raw));
            }
            if self.rbuf.len() > MAX_REPLY {
                return Err(Failure::Protocol(stage));
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut buf))
                .await
                .map_err(|_| Failure::Timeout(stage))?
                .map_err(|_| Failure::Lost(stage))?;
            if n == 0 {
                return Err(Failure::Lost(stage));
            }
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    async fn write(
        &mut self,
        data: &[u8],
        limit: Duration,
        stage: &'static str,
    ) -> Result<(), Failure> {
        let fut = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| Failure::Timeout(stage))?
            .map_err(|_| Failure::Lost(stage))
    }

    /// Greeting and EHLO/LHLO (HELO when EHLO is refused). `Ok(Err(reply))` is a refusal.
    pub async fn handshake(&mut self, helo_name: &str) -> Result<Result<(), String>, Failure> {
        let t = self.timeouts.helo;
        let (greet, _) = self.read_reply(t, GREETING).await?;
        if greet.class() != 2 {
            return Ok(Err(format!(
                "host {} refused to talk to me: {}",
                self.peer, greet.text
            )));
        }
        self.ehlo(helo_name).await
    }

    /// EHLO/LHLO (HELO fallback) without a greeting: after STARTTLS.
    pub async fn ehlo(&mut self, helo_name: &str) -> Result<Result<(), String>, Failure> {
        let t = self.timeouts.helo;
        let (verb, stage) = if self.lmtp {
            ("LHLO", HANDSHAKE_LHLO)
        } else {
            ("EHLO", HANDSHAKE_EHLO)
        };
        self.write(format!("{verb} {helo_name}\r\n").as_bytes(), t, stage)
            .await?;
        let (r, raw) = self.read_reply(t, stage).await?;
        if r.class() == 2 {
            self.caps = match EhloResponse::parse(&mut raw.iter()) {
                Ok(ehlo) => {
                    let has = |c| ehlo.has_capability(c);
                    Caps {
                        pipelining: has(EXT_PIPELINING),
                        size_ext: has(EXT_SIZE),
                        size: (has(EXT_SIZE) && ehlo.size > 0).then_some(ehlo.size as u64),
                        eight_bit: has(EXT_8BIT_MIME),
                        smtputf8: has(EXT_SMTP_UTF8),
                        dsn: has(EXT_DSN),
                        chunking: has(EXT_CHUNKING),
                        starttls: has(EXT_START_TLS),
                        auth: Vec::new(),
                    }
                }
                // smtp-proto refuses some real-world replies (smtp-sink ends with a bare
                // `250 `); read the keywords line by line then.
                Err(_) => caps_by_keyword(&raw),
            };
            // AUTH mechanisms by keyword: smtp-proto keeps only the ones it knows as bits.
            self.caps.auth = caps_by_keyword(&raw).auth;
            return Ok(Ok(()));
        }
        if self.lmtp {
            return Ok(Err(format!(
                "host {} refused to talk to me: {} (in reply to LHLO command)",
                self.peer, r.text
            )));
        }
        // RFC 5321 4.1.4: a server that does not know EHLO still knows HELO.
        self.write(
            format!("HELO {helo_name}\r\n").as_bytes(),
            t,
            HANDSHAKE_HELO,
        )
        .await?;
        let (r, _) = self.read_reply(t, HANDSHAKE_HELO).await?;
        if r.class() == 2 {
            self.caps = Caps::default();
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "host {} refused to talk to me: {} (in reply to HELO command)",
                self.peer, r.text
            )))
        }
    }

    /// STARTTLS: `Ok(Ok(()))` when the server said 220 and the handshake may start.
    pub async fn starttls(&mut self) -> Result<Result<(), Reply>, Failure> {
        let t = self.timeouts.helo;
        self.write(b"STARTTLS\r\n", t, SEND_STARTTLS).await?;
        let (r, _) = self.read_reply(t, SEND_STARTTLS).await?;
        if r.code != 220 {
            return Ok(Err(r));
        }
        // Anything the server sent after its 220 arrived in plaintext, before the handshake:
        // it must not be taken as part of the TLS session (the STARTTLS injection class).
        self.rbuf.clear();
        Ok(Ok(()))
    }

    /// The stream, for the TLS handshake after STARTTLS.
    pub fn into_io(self) -> S {
        self.io
    }

    /// SMTP AUTH (RFC 4954) with PLAIN or LOGIN. `Ok(Err(reply))` is the server's refusal.
    /// The credentials go to the peer only; no reason or log line carries them.
    pub async fn auth(
        &mut self,
        mech: &str,
        user: &str,
        pass: &str,
    ) -> Result<Result<(), Reply>, Failure> {
        use base64::Engine;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let t = self.timeouts.helo;
        let r = match mech {
            "PLAIN" => {
                let mut blob = vec![0u8];
                blob.extend_from_slice(user.as_bytes());
                blob.push(0);
                blob.extend_from_slice(pass.as_bytes());
                self.write(
                    format!("AUTH PLAIN {}\r\n", b64(&blob)).as_bytes(),
                    t,
                    SEND_AUTH,
                )
                .await?;
                self.read_reply(t, SEND_AUTH).await?.0
            }
            _ => {
                self.write(b"AUTH LOGIN\r\n", t, SEND_AUTH).await?;
                let (r, _) = self.read_reply(t, SEND_AUTH).await?;
                if r.code != 334 {
                    return Ok(Err(r));
                }
                self.write(
                    format!("{}\r\n", b64(user.as_bytes())).as_bytes(),
                    t,
                    SEND_AUTH,
                )
                .await?;
                let (r, _) = self.read_reply(t, SEND_AUTH).await?;
                if r.code != 334 {
                    return Ok(Err(r));
                }
                self.write(
                    format!("{}\r\n", b64(pass.as_bytes())).as_bytes(),
                    t,
                    SEND_AUTH,
                )
                .await?;
                self.read_reply(t, SEND_AUTH).await?.0
            }
        };
        if r.code == 235 {
            Ok(Ok(()))
        } else {
            Ok(Err(r))
        }
    }

    /// RSET on a reused connection whose last transaction was left open.
    pub async fn rset(&mut self) -> Result<bool, Failure> {
        let t = self.timeouts.rset;
        self.write(b"RSET\r\n", t, SEND_RSET).await?;
        let (r, _) = self.read_reply(t, SEND_RSET).await?;
        self.needs_rset = false;
        Ok(r.class() == 2)
    }

    /// QUIT, best effort: the mail is already decided.
    pub async fn quit(&mut self) {
        let t = self.timeouts.quit;
        if self.write(b"QUIT\r\n", t, SEND_QUIT).await.is_ok() {
            let _ = self.read_reply(t, SEND_QUIT).await;
        }
        let _ = self.io.shutdown().await;
    }

    fn said(&self, r: &Reply, cmd: &str) -> String {
        format!(
            "host {} said: {} (in reply to {cmd} command)",
            self.peer, r.text
        )
    }

    fn reply_outcome(&self, r: &Reply, cmd: &str) -> Outcome {
        match r.class() {
            2 => Outcome::sent(&r.dsn(), r.text.clone()),
            4 => Outcome::deferred(&r.dsn(), self.said(r, cmd)),
            _ => Outcome::bounced(&r.dsn(), self.said(r, cmd)),
        }
    }

    /// One mail transaction. A `Failure` means the connection is gone; the caller decides
    /// what that means for the recipients.
    pub async fn transaction(&mut self, tx: &Tx<'_>) -> Result<TxResult, Failure> {
        let n = tx.rcpts.len();
        let all = |o: Outcome| TxResult {
            outcomes: vec![o; n],
        };
        let size = tx.content.len() as u64;
        if let Some(limit) = self.caps.size {
            if size > limit {
                return Ok(all(Outcome::bounced(
                    "5.3.4",
                    format!(
                        "message size {size} exceeds size limit {limit} of server {}",
                        self.peer
                    ),
                )));
            }
        }
        if tx.smtputf8 && !self.caps.smtputf8 {
            return Ok(all(Outcome::bounced(
                "5.6.7",
                format!(
                    "SMTPUTF8 is required, but was not offered by host {}",
                    self.peer
                ),
            )));
        }

        // MAIL FROM with the extensions the peer offered.
        let mut mail = format!("MAIL FROM:<{}>", tx.sender);
        if self.caps.size_ext {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if self.caps.eight_bit {
            match tx.body_type {
                BodyType::EightBitMime => mail.push_str(" BODY=8BITMIME"),
                BodyType::SevenBit => mail.push_str(" BODY=7BIT"),
                _ => {}
            }
        }
        if tx.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match tx.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(e) = tx.envid {
                mail.push_str(&format!(" ENVID={}", xtext(e)));
            }
        }
        mail.push_str("\r\n");
        let mut rcpt_cmds = Vec::with_capacity(n);
        for r in tx.rcpts {
            let mut c = format!("RCPT TO:<{}>", r.address);
            if self.caps.dsn {
                if let Some(nf) = &r.notify {
                    c.push_str(&format!(" NOTIFY={nf}"));
                }
                if let Some(o) = &r.orcpt {
                    c.push_str(&format!(" ORCPT={o}"));
                }
            }
            c.push_str("\r\n");
            rcpt_cmds.push(c);
        }
        let t = self.timeouts;
        let bdat = self.caps.chunking;
        let pipelined = self.caps.pipelining;

        // With PIPELINING, MAIL, every RCPT and DATA go in one write (RFC 2920); with
        // CHUNKING the body goes in one BDAT after the RCPT replies.
        let mut sent_data_cmd = false;
        if pipelined {
            let mut batch = mail.clone().into_bytes();
            for c in &rcpt_cmds {
                batch.extend_from_slice(c.as_bytes());
            }
            if !bdat {
                batch.extend_from_slice(b"DATA\r\n");
                sent_data_cmd = true;
            }
            self.write(&batch, t.mail, SEND_MAIL).await?;
        } else {
            self.write(mail.as_bytes(), t.mail, SEND_MAIL).await?;
        }
        let (mr, _) = self.read_reply(t.mail, SEND_MAIL).await?;
        if mr.class() != 2 {
            // Replies to pipelined RCPTs and DATA still arrive; drain them to stay in step.
            if pipelined {
                for _ in 0..n {
                    self.read_reply(t.rcpt, SEND_RCPT).await?;
                }
                if sent_data_cmd {
                    self.read_reply(t.data_init, SEND_DATA).await?;
                }
            }
            return Ok(all(self.reply_outcome(&mr, "MAIL FROM")));
        }
        self.needs_rset = true;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut accepted = Vec::new();
        for (i, c) in rcpt_cmds.iter().enumerate() {
            if !pipelined {
                self.write(c.as_bytes(), t.rcpt, SEND_RCPT).await?;
            }
            let (rr, _) = self.read_reply(t.rcpt, SEND_RCPT).await?;
            if rr.class() == 2 {
                accepted.push(i);
            } else {
                outcomes[i] = Some(self.reply_outcome(&rr, "RCPT TO"));
            }
        }
        let finish = |outcomes: Vec<Option<Outcome>>| TxResult {
            outcomes: outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::deferred("4.0.0", "internal: no reply")))
                .collect(),
        };

        if bdat {
            if accepted.is_empty() {
                return Ok(finish(outcomes));
            }
            let body = crlf_normalized(tx.content);
            let mut head = format!("BDAT {} LAST\r\n", body.len()).into_bytes();
            head.extend_from_slice(&body);
            self.write(&head, t.data_xfer, SEND_BODY).await?;
            return self
                .final_replies(&accepted, outcomes, "end of DATA")
                .await
                .map(finish);
        }

        if !sent_data_cmd {
            if accepted.is_empty() {
                return Ok(finish(outcomes));
            }
            self.write(b"DATA\r\n", t.data_init, SEND_DATA).await?;
        }
        let (dr, _) = self.read_reply(t.data_init, SEND_DATA).await?;
        if dr.class() != 3 {
            for &i in &accepted {
                outcomes[i] = Some(self.reply_outcome(&dr, "DATA"));
            }
            return Ok(finish(outcomes));
        }
        if accepted.is_empty() {
            // A pipelining server that said 354 with no recipient: end the empty message.
            self.write(b".\r\n", t.data_done, SEND_END).await?;
            let _ = self.read_reply(t.data_done, SEND_END).await?;
            self.needs_rset = false;
            return Ok(finish(outcomes));
        }
        for chunk in dot_stuff_chunks(tx.content) {
            self.write(&chunk, t.data_xfer, SEND_BODY).await?;
        }
        self.final_replies(&accepted, outcomes, "end of DATA")
            .await
            .map(finish)
    }

    /// SMTP: one reply for all accepted recipients; LMTP: one per accepted recipient.
    async fn final_replies(
        &mut self,
        accepted: &[usize],
        mut outcomes: Vec<Option<Outcome>>,
        cmd: &str,
    ) -> Result<Vec<Option<Outcome>>, Failure> {
        let t = self.timeouts.data_done;
        if self.lmtp {
            for &i in accepted {
                let (r, _) = self.read_reply(t, SEND_END).await?;
                outcomes[i] = Some(self.reply_outcome(&r, cmd));
            }
        } else {
            let (r, _) = self.read_reply(t, SEND_END).await?;
            let o = self.reply_outcome(&r, cmd);
            for &i in accepted {
                outcomes[i] = Some(o.clone());
            }
        }
        self.needs_rset = false;
        self.uses += 1;
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_and_parse() {
        assert_eq!(reply_end(b"250-a\r\n250 b\r\nxx"), Some(14));
        assert_eq!(reply_end(b"250-a\r\n250-b\r\n"), None);
        let r = parse_reply(b"550-5.1.1 No such\r\n550 5.1.1 user\r\n").unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.dsn(), "5.1.1");
        assert_eq!(r.text, "550 5.1.1 No such user");
        let r = parse_reply(b"250 Ok\r\n").unwrap();
        assert_eq!(r.text, "250 Ok");
        assert_eq!(r.dsn(), "2.0.0");
        assert!(parse_reply(b"hello\r\n").is_none());
    }

    #[test]
    fn dot_stuffing() {
        let body = b"a\r\n.b\r\n..c\r\nlast";
        let out: Vec<u8> = dot_stuff_chunks(body).flatten().collect();
        assert_eq!(out, b"a\r\n..b\r\n...c\r\nlast\r\n.\r\n");
        let out: Vec<u8> = dot_stuff_chunks(b".\nx\n").flatten().collect();
        assert_eq!(out, b"..\r\nx\r\n.\r\n");
        // A CR at the end of one chunk and its LF at the start of the next stay one CRLF.
        let mut split = vec![b'x'; CHUNK - 1];
        split.extend_from_slice(b"\r\n.y\nz");
        let out: Vec<u8> = dot_stuff_chunks(&split).flatten().collect();
        assert!(out.ends_with(b"x\r\n..y\r\nz\r\n.\r\n"));
        assert_eq!(out.len(), CHUNK - 1 + 2 + 5 + 3 + 3);
        let big = vec![b'x'; 200_000];
        let chunks: Vec<Vec<u8>> = dot_stuff_chunks(&big).collect();
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK + 8));
    }

    #[test]
    fn ehlo_keywords_fallback() {
        let c =
            caps_by_keyword(b"250-sink\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-DSN\r\n250 \r\n");
        assert!(c.pipelining && c.dsn && c.size_ext);
        assert_eq!(c.size, Some(1000));
        assert!(!c.chunking);
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("rfc822;a+b=c@d"), "rfc822;a+2Bb+3Dc@d");
        assert_eq!(xtext("x y"), "x+20y");
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn timeouts() -> Timeouts {
        let d = Duration::from_secs(5);
        Timeouts {
            connect: d,
            helo: d,
            mail: d,
            rcpt: d,
            data_init: d,
            data_xfer: d,
            data_done: d,
            rset: d,
            quit: d,
        }
    }

    /// A scripted server: for each expected client line, the reply to send.
    async fn server(
        io: tokio::io::DuplexStream,
        script: Vec<(&'static str, &'static str)>,
    ) -> Vec<String> {
        let (r, mut w) = tokio::io::split(io);
        let mut r = BufReader::new(r);
        let mut seen = Vec::new();
        w.write_all(b"220 peer ESMTP\r\n250-peer\r\n250-AUTH LOGIN PLAIN\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        for (_, reply) in script {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            seen.push(line.trim_end().to_string());
            w.write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn auth_plain_and_login_dialogues() {
        // PLAIN: one command with the base64 of \0user\0pass.
        let (a, b) = tokio::io::duplex(4096);
        let srv = tokio::spawn(server(
            b,
            vec![
                ("EHLO", ""),
                ("AUTH", "235 2.7.0 Authentication successful\r\n"),
            ],
        ));
        let mut s = Session::new(a, "peer[127.0.0.1]".into(), false, timeouts());
        assert_eq!(s.handshake("me.example").await.unwrap(), Ok(()));
        assert_eq!(s.caps.auth, vec!["LOGIN", "PLAIN"]);
        assert!(s.caps.starttls);
        assert_eq!(s.auth("PLAIN", "user", "pa:ss").await.unwrap(), Ok(()));
        drop(s);
        let seen = srv.await.unwrap();
        assert_eq!(seen[1], "AUTH PLAIN AHVzZXIAcGE6c3M=");

        // LOGIN: two 334 challenges; a refusal comes back as the server's reply.
        let (a, b) = tokio::io::duplex(4096);
        let srv = tokio::spawn(server(
            b,
            vec![
                ("EHLO", ""),
                ("AUTH LOGIN", "334 VXNlcm5hbWU6\r\n"),
                ("user", "334 UGFzc3dvcmQ6\r\n"),
                ("pass", "535 5.7.8 Error: authentication failed\r\n"),
            ],
        ));
        let mut s = Session::new(a, "peer[127.0.0.1]".into(), false, timeouts());
        assert_eq!(s.handshake("me.example").await.unwrap(), Ok(()));
        let r = s
            .auth("LOGIN", "user", "secret")
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(r.text, "535 5.7.8 Error: authentication failed");
        assert!(!r.text.contains("secret"));
        drop(s);
        let seen = srv.await.unwrap();
        assert_eq!(&seen[1..], &["AUTH LOGIN", "dXNlcg==", "c2VjcmV0"]);
    }
}
