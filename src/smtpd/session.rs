//! One SMTP server session: the command loop, bounded line reading, batched replies, error
//! accounting and the end-of-session log line. The verbs live in their own files.

use super::reply::Reply;
use super::settings::{BareNewline, Settings};
use super::state::State;
use super::{Backend, SmtpdError};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn, Instrument};

/// Who the client is and what it said so far; handed to the backend's recipient check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    /// Verified host name, or `unknown`.
    pub client_name: String,
    pub client_addr: String,
    pub client_port: u16,
    pub helo: Option<String>,
    /// `SMTP` or `ESMTP`.
    pub protocol: String,
    /// Envelope sender of the transaction in progress (empty string for `<>`).
    pub sender: Option<String>,
    /// master.cf service name.
    pub service: String,
    /// The client sent commands ahead of time where that is not allowed (Postfix's
    /// SMTPD_FLAG_ILL_PIPELINING, what reject_unauth_pipelining tests).
    pub ill_pipelining: bool,
    /// The client's TLS certificate, once a handshake with one is done.
    pub ccert: Option<crate::tlsmgr::ccert::PeerCert>,
    /// The PTR name (not forward-confirmed), or `unknown`.
    pub reverse_name: String,
    pub name_status: super::NameStatus,
    pub reverse_status: super::NameStatus,
    /// Queue ID of the transaction, once taken (for the policy service).
    pub queue_id: Option<String>,
    /// Recipients accepted so far in the transaction.
    pub recipient_count: usize,
    /// SIZE= of MAIL FROM, or the message size at end of data.
    pub size: u64,
    /// SASL mechanism and user after a successful AUTH.
    pub sasl_method: Option<String>,
    pub sasl_user: Option<String>,
    /// AUTH= of the transaction in progress (xtext as received), for the log.
    pub sasl_sender: Option<String>,
}

impl SessionInfo {
    pub fn new(client_name: &str, client_addr: &str, client_port: u16, service: &str) -> Self {
        SessionInfo {
            client_name: client_name.to_string(),
            client_addr: client_addr.to_string(),
            client_port,
            helo: None,
            protocol: "SMTP".to_string(),
            sender: None,
            service: service.to_string(),
            reverse_name: client_name.to_string(),
            ..Default::default()
        }
    }

    /// `host[addr]`, as every smtpd log line names the client.
    pub fn namaddr(&self) -> String {
        format!("{}[{}]", self.client_name, self.client_addr)
    }
}

/// What ended a line read from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    CrLf,
    /// A bare LF.
    Lf,
    /// A bare CR.
    Cr,
    /// The line is longer than the limit; this is one piece, more follows.
    Partial,
    /// End of input in the middle of a line.
    Eof,
}

impl Ending {
    pub(super) fn is_bare(self) -> bool {
        matches!(self, Ending::Lf | Ending::Cr)
    }
}

/// Whether the command loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Close,
}

/// Postfix's per-command counters, in the order its `disconnect` line prints them.
const COUNTED: &[&str] = &[
    "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop", "vrfy",
    "etrn", "quit", "help", "unknown",
];

/// The longest part of an over-long request quoted in the warning, as Postfix.
const QUOTE_LEN: usize = 30;

pub struct Session<S> {
    io: super::conn::Conn<S>,
    /// `TLSv1.3 with cipher …` once TLS is active.
    pub(super) tls: Option<String>,
    /// smtpd_tls_req_ccert and the handshake brought no trusted certificate: why.
    ccert_refusal: Option<&'static str>,
    pub(super) settings: Arc<Settings>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) info: SessionInfo,
    pub(super) state: State,
    rbuf: Vec<u8>,
    rpos: usize,
    eof: bool,
    out: Vec<u8>,
    pub(super) error_count: u32,
    junk_count: u32,
    counts: [(u32, u32); COUNTED.len()],
    /// Postfix's `where`: the stage named in `timeout after …` / `lost connection after …`.
    pub(super) stage: &'static str,
    last_code: u16,
    /// SIZE= of the last MAIL FROM; like Postfix's msg_size it stays until the transaction is
    /// reset, so a refused oversized MAIL keeps refusing until RSET.
    pub(super) declared_size: Option<u64>,
    /// How the current command line ended (DATA needs it to find `<CR><LF>.<CR><LF>`).
    pub(super) cmd_ending: Ending,
    /// anvil and the client's address, when this client's rates are limited.
    pub(super) anvil: Option<(crate::anvil::AnvilClient, std::net::IpAddr)>,
    /// smtpd_client_restrictions refused the client at connect (smtpd_delay_reject = no):
    /// every command but QUIT, RSET and NOOP is refused.
    pub(super) access_denied: Option<Reply>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(
        io: S,
        settings: Arc<Settings>,
        backend: Arc<dyn Backend>,
        info: SessionInfo,
    ) -> Self {
        Session {
            io: super::conn::Conn::Plain(io),
            tls: None,
            ccert_refusal: None,
            settings,
            backend,
            info,
            state: State::Idle,
            rbuf: Vec::new(),
            rpos: 0,
            eof: false,
            out: Vec::new(),
            error_count: 0,
            junk_count: 0,
            counts: [(0, 0); COUNTED.len()],
            stage: "CONNECT",
            last_code: 0,
            declared_size: None,
            cmd_ending: Ending::CrLf,
            anvil: None,
            access_denied: None,
        }
    }

    /// Report this client's MAIL, RCPT, TLS and AUTH events to anvil and enforce the
    /// smtpd_client_*_rate_limit parameters (not called for exempt clients).
    pub fn with_anvil(mut self, anvil: crate::anvil::AnvilClient, ip: std::net::IpAddr) -> Self {
        self.anvil = Some((anvil, ip));
        self
    }

    /// Runs the session to its end inside the smtpd log span. Errors are logged, not returned:
    /// a session ending badly is the client's business.
    pub async fn run(self) {
        let span = crate::log::service_span!(self.settings.tag.clone());
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        self.lookup_client().await;
        let namaddr = self.info.namaddr();
        info!("connect from {namaddr}");
        if self.settings.tls_wrapper {
            if !self.new_tls_allowed().await {
                warn!(
                    "Refusing TLS service request from {namaddr} for service {}",
                    self.settings.service
                );
                info!("disconnect from {namaddr}{}", self.counters_text());
                return;
            }
            match self.handshake().await {
                Ok(resumed) => {
                    if !self.count_new_tls(resumed).await {
                        self.end_early(&namaddr).await;
                        return;
                    }
                }
                Err(e) => {
                    info!("SSL_accept error from {namaddr}: {e}");
                    info!("lost connection after CONNECT from {namaddr}");
                    info!("disconnect from {namaddr}{}", self.counters_text());
                    return;
                }
            }
        } else if self.pregreet().await {
            self.end_early(&namaddr).await;
            return;
        }
        match self.check_connect().await {
            Some(refusal) => self.push_reply(&refusal),
            None => {
                let banner = self.settings.banner.clone();
                self.push_reply(&Reply::new(220, banner));
            }
        }
        let res = self.command_loop().await;
        match res {
            Ok(()) => {}
            Err(SmtpdError::Timeout) => {
                info!("timeout after {} from {namaddr}", self.stage);
                let r = Reply::new(
                    421,
                    format!("4.4.2 {} Error: timeout exceeded", self.settings.myhostname),
                );
                self.push_reply(&r);
            }
            Err(SmtpdError::Lost) | Err(SmtpdError::Io(_)) | Err(SmtpdError::Listener(_)) => {
                info!("lost connection after {} from {namaddr}", self.stage);
            }
        }
        // Best effort: the client may be gone already.
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.settings.timeout, self.io.shutdown()).await;
        info!("disconnect from {namaddr}{}", self.counters_text());
    }

    /// Sends what is queued (a refusal) and ends the session before the greeting.
    async fn end_early(&mut self, namaddr: &str) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.settings.timeout, self.io.shutdown()).await;
        info!("disconnect from {namaddr}{}", self.counters_text());
    }

    /// ` ehlo=1 mail=1 rcpt=0/1 … commands=N[/M]`, as Postfix logs at disconnect.
    fn counters_text(&self) -> String {
        let mut s = String::new();
        let (mut ok, mut total) = (0, 0);
        for (i, (o, t)) in self.counts.iter().enumerate() {
            if *t == 0 {
                continue;
            }
            ok += o;
            total += t;
            s.push_str(&format_count(COUNTED[i], *o, *t));
        }
        s.push_str(&format_count("commands", ok, total));
        s
    }

    async fn command_loop(&mut self) -> Result<(), SmtpdError> {
        // Bounded: every iteration reads at least one byte or ends the session.
        loop {
            if matches!(self.state, State::Closed) {
                return Ok(());
            }
            if self.error_count >= self.settings.hard_error_limit {
                info!(
                    "too many errors after {} from {}",
                    self.stage,
                    self.info.namaddr()
                );
                let r = Reply::new(
                    421,
                    format!("4.7.0 {} Error: too many errors", self.settings.myhostname),
                );
                self.push_reply(&r);
                return Ok(());
            }
            let (line, ending) = self.read_command().await?;
            if ending.is_bare() && self.settings.bare_newline == BareNewline::Reject {
                self.reject_bare(ending).await;
                return Ok(());
            }
            self.cmd_ending = ending;
            let line = String::from_utf8_lossy(&line).into_owned();
            if self.dispatch(&line).await? == Flow::Close {
                return Ok(());
            }
        }
    }

    /// `521 5.5.2 host Error: bare <LF> received` (smtpd_forbid_bare_newline = yes).
    pub(super) async fn reject_bare(&mut self, ending: Ending) {
        let what = if ending == Ending::Cr { "<CR>" } else { "<LF>" };
        info!(
            "disconnect: bare {what} received from {} after {}",
            self.info.namaddr(),
            self.stage
        );
        let r = Reply::new(
            521,
            format!(
                "5.5.2 {} Error: bare {what} received",
                self.settings.myhostname
            ),
        );
        self.reply(r).await;
        self.state = State::Closed;
    }

    async fn dispatch(&mut self, line: &str) -> Result<Flow, SmtpdError> {
        let (verb, args) = match line.find([' ', '\t']) {
            Some(i) => (&line[..i], line[i + 1..].trim_start_matches([' ', '\t'])),
            None => (line, ""),
        };
        let verb_uc = verb.to_ascii_uppercase();
        let counter = match verb_uc.as_str() {
            "HELO" => "helo",
            "EHLO" => "ehlo",
            "STARTTLS" => "starttls",
            "AUTH" => "auth",
            "MAIL" => "mail",
            "RCPT" => "rcpt",
            "DATA" => "data",
            "BDAT" => "bdat",
            "RSET" => "rset",
            "NOOP" => "noop",
            "VRFY" => "vrfy",
            "ETRN" => "etrn",
            "QUIT" => "quit",
            "HELP" => "help",
            _ => "unknown",
        };
        if counter == "unknown" {
            self.stage = "UNKNOWN";
            self.count("unknown", false);
            return Ok(self.unknown_command(line, verb).await);
        }
        self.stage = match counter {
            "helo" => "HELO",
            "ehlo" => "EHLO",
            "starttls" => "STARTTLS",
            "auth" => "AUTH",
            "mail" => "MAIL",
            "rcpt" => "RCPT",
            "data" => "DATA",
            "bdat" => "BDAT",
            "rset" => "RSET",
            "noop" => "NOOP",
            "vrfy" => "VRFY",
            "etrn" => "ETRN",
            "quit" => "QUIT",
            _ => "HELP",
        };
        if self.check_pipelining(counter).await {
            self.state = State::Closed;
            return Ok(Flow::Close);
        }
        // Postfix's junk command limit: cheap commands a client may repeat only so often.
        if matches!(counter, "rset" | "noop" | "vrfy" | "etrn" | "help") {
            self.junk_count += 1;
            if self.junk_count > self.settings.junk_command_limit {
                self.error_count += 1;
            }
        }
        self.last_code = 0;
        if let Some(r) = self.denied(counter) {
            self.reply(r).await;
            self.count(counter, false);
            return Ok(Flow::Continue);
        }
        let flow = match counter {
            "helo" => self.cmd_helo(args).await,
            "ehlo" => self.cmd_ehlo(args).await,
            "starttls" => self.cmd_starttls(args).await?,
            "auth" => self.cmd_auth(args).await?,
            "mail" => self.cmd_mail(line).await,
            "rcpt" => self.cmd_rcpt(line).await,
            "data" | "bdat" => {
                let res = if counter == "data" {
                    self.cmd_data(args).await
                } else {
                    self.cmd_bdat(args).await
                };
                match res {
                    Ok(flow) => flow,
                    Err(e) => {
                        // Postfix counts a command that lost its connection as failed.
                        self.count(counter, false);
                        return Err(e);
                    }
                }
            }
            "rset" => self.cmd_rset(args).await,
            "noop" => self.cmd_noop().await,
            "vrfy" => self.cmd_vrfy(args).await,
            "etrn" => self.cmd_etrn(args).await,
            "quit" => self.cmd_quit().await,
            _ => self.cmd_help().await,
        };
        let ok = (200..400).contains(&self.last_code);
        self.count(counter, ok);
        Ok(flow)
    }

    fn count(&mut self, name: &str, ok: bool) {
        if let Some(i) = COUNTED.iter().position(|n| *n == name) {
            self.counts[i].1 += 1;
            if ok {
                self.counts[i].0 += 1;
            }
        }
    }

    /// An unknown command, or a non-SMTP one (HTTP, a header line) that ends the session.
    async fn unknown_command(&mut self, line: &str, verb: &str) -> Flow {
        if line.is_empty() {
            self.reply(Reply::new(500, "5.5.2 Error: bad syntax")).await;
            return Flow::Continue;
        }
        let forbidden = self
            .settings
            .forbidden_commands
            .iter()
            .any(|f| f.eq_ignore_ascii_case(verb));
        if forbidden || is_header(line) {
            let shown: String = line.chars().take(100).collect();
            warn!("non-SMTP command from {}: {shown}", self.info.namaddr());
            self.reply(Reply::new(
                221,
                "2.7.0 Error: I can break rules, too. Goodbye.",
            ))
            .await;
            self.state = State::Closed;
            return Flow::Close;
        }
        self.reply(Reply::new(500, "5.5.2 Error: command not recognized"))
            .await;
        Flow::Continue
    }

    /// Queues a reply: slows down clients past the soft error limit, counts errors. As in
    /// Postfix, the delay depends on the errors made before this reply: once the client has
    /// made smtpd_soft_error_limit errors, every reply (not only error replies) waits
    /// smtpd_error_sleep_time first. Replies already queued are written before the wait, so
    /// a pipelining client is not kept from the answers it has earned.
    pub(super) async fn reply(&mut self, mut r: Reply) {
        if self.error_count >= self.settings.soft_error_limit
            && !self.settings.error_sleep_time.is_zero()
        {
            let _ = self.flush().await;
            tokio::time::sleep(self.settings.error_sleep_time).await;
        }
        if r.is_error() {
            self.error_count += 1;
            super::reply::add_footer(&mut r, self.settings.footer(&self.info));
        }
        self.push_reply(&r);
    }

    /// A message was received: the client's earlier errors are forgiven (Postfix resets its
    /// error and junk command counts after a successful DATA).
    pub(super) fn forgive_errors(&mut self) {
        self.error_count = 0;
        self.junk_count = 0;
    }

    /// Up to `max` bytes the client has already sent beyond the command being handled,
    /// without waiting: what is buffered, or else what the connection has ready now. The
    /// bytes stay in the input buffer for the commands that follow.
    pub(super) async fn pending_input(&mut self, max: usize) -> Result<Vec<u8>, SmtpdError> {
        if self.rpos >= self.rbuf.len() && !self.eof {
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            let mut tmp = [0u8; 4096];
            // A zero timeout polls the read once: data already there is returned, nothing is
            // waited for.
            match tokio::time::timeout(std::time::Duration::ZERO, self.io.read(&mut tmp)).await {
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(n)) => self.rbuf.extend_from_slice(&tmp[..n]),
                Ok(Err(e)) => return Err(SmtpdError::Io(e)),
                Err(_) => {}
            }
        }
        let avail = &self.rbuf[self.rpos..];
        Ok(avail[..avail.len().min(max)].to_vec())
    }

    fn push_reply(&mut self, r: &Reply) {
        self.last_code = r.code;
        r.write_to(&mut self.out);
    }

    /// Writes the queued replies.
    pub(super) async fn flush(&mut self) -> Result<(), SmtpdError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let t = self.settings.timeout;
        tokio::time::timeout(t, async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| SmtpdError::Timeout)??;
        Ok(())
    }

    /// Reads more input; first writes pending replies, since the client may be waiting for
    /// them (that is what makes pipelined replies go out in batches).
    async fn fill(&mut self) -> Result<(), SmtpdError> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.flush().await?;
        let mut tmp = [0u8; 8192];
        let n = tokio::time::timeout(self.settings.timeout, self.io.read(&mut tmp))
            .await
            .map_err(|_| SmtpdError::Timeout)??;
        if n == 0 {
            self.eof = true;
        } else {
            self.rbuf.extend_from_slice(&tmp[..n]);
        }
        Ok(())
    }

    /// Reads one line or one piece of at most `max` bytes of a longer line. The buffer never
    /// holds much more than `max` bytes, whatever the client sends.
    pub(super) async fn read_piece(&mut self, max: usize) -> Result<(Vec<u8>, Ending), SmtpdError> {
        // Bounded: each round either returns or reads more input (or sees EOF).
        loop {
            let avail = &self.rbuf[self.rpos..];
            let scan = avail.len().min(max);
            if let Some(i) = avail[..scan].iter().position(|&b| b == b'\n' || b == b'\r') {
                let piece = avail[..i].to_vec();
                if avail[i] == b'\n' {
                    self.rpos += i + 1;
                    return Ok((piece, Ending::Lf));
                }
                if i + 1 < avail.len() {
                    if avail[i + 1] == b'\n' {
                        self.rpos += i + 2;
                        return Ok((piece, Ending::CrLf));
                    }
                    self.rpos += i + 1;
                    return Ok((piece, Ending::Cr));
                }
                if self.eof {
                    self.rpos += i + 1;
                    return Ok((piece, Ending::Cr));
                }
                // A CR at the end of what we have: the next byte says whether it is bare.
            } else if avail.len() >= max {
                let piece = avail[..max].to_vec();
                self.rpos += max;
                return Ok((piece, Ending::Partial));
            } else if self.eof {
                if avail.is_empty() {
                    return Err(SmtpdError::Lost);
                }
                let piece = avail.to_vec();
                self.rpos += piece.len();
                return Ok((piece, Ending::Eof));
            }
            self.fill().await?;
        }
    }

    /// Up to `max` raw bytes (BDAT chunks); never returns an empty piece.
    pub(super) async fn read_raw(&mut self, max: usize) -> Result<Vec<u8>, SmtpdError> {
        if self.rpos >= self.rbuf.len() {
            self.fill().await?;
            if self.eof {
                return Err(SmtpdError::Lost);
            }
        }
        let avail = &self.rbuf[self.rpos..];
        let n = avail.len().min(max);
        let piece = avail[..n].to_vec();
        self.rpos += n;
        Ok(piece)
    }

    /// One command line, cut at line_length_limit: the rest of an over-long line is read and
    /// dropped, as Postfix does.
    async fn read_command(&mut self) -> Result<(Vec<u8>, Ending), SmtpdError> {
        let limit = self.settings.line_length_limit;
        let (line, mut ending) = self.read_piece(limit).await?;
        if ending == Ending::Eof {
            return Err(SmtpdError::Lost);
        }
        if ending == Ending::Partial {
            let quoted: String = String::from_utf8_lossy(&line)
                .chars()
                .take(QUOTE_LEN)
                .collect();
            warn!(
                "{}: request longer than {limit}: {quoted}...",
                self.info.namaddr()
            );
            // Bounded by the input: each piece consumes at least one byte.
            while ending == Ending::Partial {
                let (_, e) = self.read_piece(limit).await?;
                ending = e;
            }
            if ending == Ending::Eof {
                return Err(SmtpdError::Lost);
            }
        }
        Ok((line, ending))
    }

    /// Logs a refused command as Postfix: `NOQUEUE: reject: RCPT from host[addr]: 554 …;
    /// from=<…> to=<…> proto=ESMTP helo=<…>`.
    pub(super) fn log_reject(&self, stage: &str, r: &Reply, from: &str, to: Option<&str>) {
        let id = self
            .state
            .transaction()
            .and_then(|t| t.queue_id.clone())
            .unwrap_or_else(|| "NOQUEUE".to_string());
        let mut s = format!(
            "{id}: reject: {stage} from {}: {}; from=<{from}>",
            self.info.namaddr(),
            r.one_line()
        );
        if let Some(to) = to {
            s.push_str(&format!(" to=<{to}>"));
        }
        s.push_str(&format!(" proto={}", self.info.protocol));
        if let Some(h) = &self.info.helo {
            s.push_str(&format!(" helo=<{h}>"));
        }
        info!("{s}");
    }

    /// Ends the transaction (RSET, EHLO, end of data).
    pub(super) fn reset_transaction(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.state = State::Idle;
        }
        self.info.sender = None;
        self.info.queue_id = None;
        self.info.recipient_count = 0;
        self.info.size = 0;
        self.info.sasl_sender = None;
        self.declared_size = None;
    }

    /// The client's origin, for the queue.
    pub(super) fn origin(&self) -> crate::envelope::Origin {
        crate::envelope::Origin {
            client_name: self.info.client_name.clone(),
            client_addr: self.info.client_addr.clone(),
            client_port: self.info.client_port,
            helo: self.info.helo.clone(),
            // RFC 3848: ESMTPA / ESMTPSA once authenticated (ESMTP only, as Postfix).
            protocol: match &self.info.sasl_user {
                Some(_) if self.info.protocol.starts_with("ESMTP") => {
                    format!("{}A", self.info.protocol)
                }
                _ => self.info.protocol.clone(),
            },
            sasl_user: self.info.sasl_user.clone(),
            uid: None,
            service: self.info.service.clone(),
            tls: self.tls.clone(),
        }
    }

    /// TLS handshake on the current (plain) connection, bounded by smtpd_timeout. Anything
    /// the client sent before the handshake has already been thrown away by the caller.
    /// Ok(true) when the client resumed an earlier TLS session.
    pub(super) async fn handshake(&mut self) -> Result<bool, String> {
        let Some(cfg) = self.settings.tls.clone() else {
            return Err("TLS is not configured".into());
        };
        let plain = match std::mem::replace(&mut self.io, super::conn::Conn::Gone) {
            super::conn::Conn::Plain(s) => s,
            other => {
                self.io = other;
                return Err("TLS already active".into());
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        match tokio::time::timeout(self.settings.timeout, acceptor.accept(plain)).await {
            Ok(Ok(stream)) => {
                let conn = stream.get_ref().1;
                let desc = crate::tlsmgr::describe(conn);
                let ccert = self.settings.tls_ccerts.peer(conn.peer_certificates());
                let word = match &ccert {
                    None => "Anonymous",
                    Some(c) if c.trusted => "Trusted",
                    Some(_) => "Untrusted",
                };
                let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                if self.settings.tls_loglevel > 0 {
                    info!(
                        "{word} TLS connection established from {}: {desc}",
                        self.info.namaddr()
                    );
                }
                self.ccert_refusal = match &ccert {
                    _ if !self.settings.tls_ccerts.require => None,
                    Some(c) if c.trusted => None,
                    Some(_) => Some("Client certificate not trusted"),
                    None => Some("No client certificate presented"),
                };
                self.info.ccert = ccert;
                self.tls = Some(desc);
                self.io = super::conn::Conn::Tls(Box::new(stream));
                Ok(resumed)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timeout".into()),
        }
    }

    /// smtpd_tls_req_ccert without a trusted certificate, as Postfix: `NOQUEUE: abort: TLS
    /// from …` in the log and, over the TLS session after the client's next command,
    /// `421 4.7.1 host Error: …`. True when the session must end. (Only after STARTTLS: in
    /// wrapper mode, as in Postfix, a certificate is never required.)
    async fn refuse_ccert(&mut self) -> bool {
        let Some(why) = self.ccert_refusal else {
            return false;
        };
        info!("NOQUEUE: abort: TLS from {}: {why}", self.info.namaddr());
        // Bounded by smtpd_timeout and line_length_limit; whatever it is, it is refused.
        let _ = self.read_command().await;
        let r = Reply::new(
            421,
            format!("4.7.1 {} Error: {why}", self.settings.myhostname),
        );
        self.push_reply(&r);
        true
    }

    /// STARTTLS (RFC 3207): 220, then the handshake. Pipelined input sent before it is
    /// discarded (the CVE-2011-0411 class of injection), and the session starts over: the
    /// client must say EHLO again.
    pub(super) async fn cmd_starttls(&mut self, args: &str) -> Result<Flow, SmtpdError> {
        if self.settings.tls.is_none() {
            self.reply(Reply::new(502, "5.5.1 Error: command not implemented"))
                .await;
            return Ok(Flow::Continue);
        }
        if self.tls.is_some() {
            self.reply(Reply::new(554, "5.5.1 Error: TLS already active"))
                .await;
            return Ok(Flow::Continue);
        }
        if !args.trim().is_empty() {
            self.reply(Reply::new(501, "5.5.4 Syntax: STARTTLS")).await;
            return Ok(Flow::Continue);
        }
        if !self.new_tls_allowed().await {
            self.refuse_starttls().await;
            return Ok(Flow::Continue);
        }
        self.push_reply(&Reply::new(220, "2.0.0 Ready to start TLS"));
        self.flush().await?;
        self.rbuf.clear();
        self.rpos = 0;
        self.eof = false;
        match self.handshake().await {
            Ok(resumed) => {
                if !self.count_new_tls(resumed).await {
                    self.state = State::Closed;
                    return Ok(Flow::Close);
                }
                if self.refuse_ccert().await {
                    self.state = State::Closed;
                    return Ok(Flow::Close);
                }
            }
            Err(e) => {
                info!("SSL_accept error from {}: {e}", self.info.namaddr());
                return Err(SmtpdError::Lost);
            }
        }
        self.reset_transaction();
        self.info.helo = None;
        self.info.protocol = "SMTP".into();
        // RFC 3207: everything learnt before the handshake is forgotten, a login included.
        self.info.sasl_method = None;
        self.info.sasl_user = None;
        Ok(Flow::Continue)
    }
}

fn format_count(name: &str, ok: u32, total: u32) -> String {
    if ok == total {
        format!(" {name}={ok}")
    } else {
        format!(" {name}={ok}/{total}")
    }
}

/// A line that looks like a message header (`Name: value`), which a client sends as a command
/// only when it is not speaking SMTP (or ignores our replies).
fn is_header(line: &str) -> bool {
    match line.find(':') {
        Some(i) if i > 0 => line[..i].bytes().all(|b| b.is_ascii_graphic() && b != b':'),
        _ => false,
    }
}
