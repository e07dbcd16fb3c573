//! A client of Dovecot's authentication protocol (auth-client, version 1): the handshake
//! (VERSION, CPID from us; VERSION, MECH…, DONE from the server), then AUTH and CONT
//! requests answered by OK, CONT or FAIL. One tab-separated line per message.

use super::{Mech, Peer, SaslError, Step};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Bound on every exchange with the auth server.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line accepted from the server.
const MAX_LINE: u64 = 16 * 1024;
/// Most lines read in a handshake or while waiting for one reply.
const MAX_LINES: usize = 256;

/// Where Dovecot's auth-client socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`
    Inet(String),
}

impl Endpoint {
    /// smtpd_sasl_path: `inet:host:port`, `unix:path` or a path, relative paths taken from
    /// the queue directory (Postfix's `private/auth`).
    pub fn parse(path: &str, queue_directory: &Path) -> Endpoint {
        if let Some(hp) = path.strip_prefix("inet:") {
            return Endpoint::Inet(hp.to_string());
        }
        let p = Path::new(path.strip_prefix("unix:").unwrap_or(path));
        if p.is_absolute() {
            Endpoint::Unix(p.to_path_buf())
        } else {
            Endpoint::Unix(queue_directory.join(p))
        }
    }

    fn shown(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Inet(hp) => format!("inet:{hp}"),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One connection to the auth server, after the handshake.
pub struct Conn {
    io: BufReader<Box<dyn Stream>>,
    name: String,
    /// What the server announced.
    pub mechs: Vec<Mech>,
    id: u32,
}

impl Conn {
    /// Connects and runs the handshake.
    pub async fn connect(ep: &Endpoint) -> Result<Conn, SaslError> {
        let name = ep.shown();
        let stream: Box<dyn Stream> = match ep {
            Endpoint::Unix(p) => {
                let s = tokio::time::timeout(TIMEOUT, tokio::net::UnixStream::connect(p))
                    .await
                    .map_err(|_| SaslError::Timeout(name.clone()))?
                    .map_err(|e| SaslError::Connect(name.clone(), e.to_string()))?;
                Box::new(s)
            }
            Endpoint::Inet(hp) => {
                let s = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(hp.as_str()))
                    .await
                    .map_err(|_| SaslError::Timeout(name.clone()))?
                    .map_err(|e| SaslError::Connect(name.clone(), e.to_string()))?;
                Box::new(s)
            }
        };
        let mut c = Conn {
            io: BufReader::new(stream),
            name,
            mechs: Vec::new(),
            id: 0,
        };
        c.send(&format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id()))
            .await?;
        let mut done = false;
        for _ in 0..MAX_LINES {
            let line = c.line().await?;
            let mut f = line.split('\t');
            match f.next() {
                Some("VERSION") => {
                    if f.next() != Some("1") {
                        return Err(c.err(format!(
                            "authentication server protocol version mismatch: {line}"
                        )));
                    }
                }
                Some("MECH") => {
                    let Some(name) = f.next() else { continue };
                    let mut m = Mech {
                        name: name.to_ascii_uppercase(),
                        ..Default::default()
                    };
                    for p in f {
                        match p {
                            "plaintext" => m.plaintext = true,
                            "active" => m.active = true,
                            "dictionary" => m.dictionary = true,
                            "anonymous" => m.anonymous = true,
                            "forward-secrecy" => m.forward_secrecy = true,
                            "mutual-auth" => m.mutual_auth = true,
                            "private" => m.private = true,
                            _ => {}
                        }
                    }
                    // A name that would break our AUTH line is not a mechanism we can use.
                    if !m.name.is_empty()
                        && m.name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        c.mechs.push(m);
                    }
                }
                Some("DONE") => {
                    done = true;
                    break;
                }
                _ => {}
            }
        }
        if !done {
            return Err(c.err("handshake did not end".into()));
        }
        if c.mechs.is_empty() {
            // auth-userdb and auth-master sockets answer without MECH lines.
            return Err(c.err(
                "no authentication mechanisms announced: is this Dovecot's auth-client socket?"
                    .into(),
            ));
        }
        Ok(c)
    }

    fn err(&self, what: String) -> SaslError {
        SaslError::Protocol(self.name.clone(), what)
    }

    async fn send(&mut self, text: &str) -> Result<(), SaslError> {
        let io = self.io.get_mut();
        tokio::time::timeout(TIMEOUT, async {
            io.write_all(text.as_bytes()).await?;
            io.flush().await
        })
        .await
        .map_err(|_| SaslError::Timeout(self.name.clone()))?
        .map_err(|e| SaslError::Protocol(self.name.clone(), e.to_string()))
    }

    /// One line without its newline; a longer one than MAX_LINE is an error.
    async fn line(&mut self) -> Result<String, SaslError> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(
            TIMEOUT,
            (&mut self.io).take(MAX_LINE).read_until(b'\n', &mut buf),
        )
        .await
        .map_err(|_| SaslError::Timeout(self.name.clone()))?
        .map_err(|e| SaslError::Protocol(self.name.clone(), e.to_string()))?;
        if n == 0 {
            return Err(self.err("connection closed".into()));
        }
        if buf.last() != Some(&b'\n') {
            return Err(self.err("line too long or cut".into()));
        }
        buf.pop();
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends the AUTH request and reads the first answer.
    pub async fn auth(
        &mut self,
        mech: &str,
        service: &str,
        peer: &Peer,
        initial: Option<&str>,
    ) -> Step {
        self.id += 1;
        let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
        let mut req = format!(
            "AUTH\t{}\t{mech}\tservice={}\tnologin",
            self.id,
            clean(service)
        );
        // Addresses only when known: Dovecot refuses an empty one.
        if !peer.local_addr.is_empty() {
            req.push_str(&format!("\tlip={}", clean(&peer.local_addr)));
        }
        if !peer.client_addr.is_empty() {
            req.push_str(&format!("\trip={}", clean(&peer.client_addr)));
        }
        if peer.tls {
            req.push_str("\tsecured");
        }
        if let Some(i) = initial {
            req.push_str(&format!("\tresp={i}"));
        }
        req.push('\n');
        if let Err(e) = self.send(&req).await {
            tracing::warn!("SASL: {e}");
            return Step::TempFailure("Connection lost to authentication server".into());
        }
        self.reply().await
    }

    /// Sends a client response (already checked to be base64).
    pub async fn cont(&mut self, response: &str) -> Step {
        let req = format!("CONT\t{}\t{response}\n", self.id);
        if let Err(e) = self.send(&req).await {
            tracing::warn!("SASL: {e}");
            return Step::TempFailure("Connection lost to authentication server".into());
        }
        self.reply().await
    }

    async fn reply(&mut self) -> Step {
        for _ in 0..MAX_LINES {
            let line = match self.line().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("SASL: {e}");
                    return Step::TempFailure("Connection lost to authentication server".into());
                }
            };
            let mut f = line.split('\t');
            let cmd = f.next().unwrap_or("");
            let id_ok = f.next().and_then(|i| i.parse::<u32>().ok()) == Some(self.id);
            if !id_ok {
                continue;
            }
            let args: Vec<&str> = f.collect();
            let arg = |k: &str| {
                args.iter()
                    .find_map(|a| a.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .map(super::printable)
            };
            match cmd {
                "OK" => {
                    return match arg("user") {
                        Some(u) if !u.is_empty() => Step::Success(u),
                        _ => {
                            tracing::warn!("missing Dovecot server OK username field");
                            Step::Failure("Authentication backend error".into(), None)
                        }
                    }
                }
                "CONT" => {
                    return match args.first() {
                        Some(c) if super::is_base64(c) => Step::Challenge(c.to_string()),
                        _ => {
                            tracing::warn!("missing Dovecot server CONT reply field");
                            Step::Failure("Authentication backend error".into(), None)
                        }
                    }
                }
                "FAIL" => {
                    return Step::Failure(arg("reason").unwrap_or_default(), arg("user"));
                }
                _ => {}
            }
        }
        Step::TempFailure("Connection lost to authentication server".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let q = Path::new("/var/spool/postfix");
        assert_eq!(
            Endpoint::parse("private/auth", q),
            Endpoint::Unix(PathBuf::from("/var/spool/postfix/private/auth"))
        );
        assert_eq!(
            Endpoint::parse("unix:/run/dovecot/auth-client", q),
            Endpoint::Unix(PathBuf::from("/run/dovecot/auth-client"))
        );
        assert_eq!(
            Endpoint::parse("inet:127.0.0.1:12345", q),
            Endpoint::Inet("127.0.0.1:12345".into())
        );
    }

    /// A scripted fake server: the handshake, then one PLAIN AUTH answered by FAIL, then a
    /// LOGIN answered by CONT and OK.
    #[tokio::test]
    async fn conversation_with_a_scripted_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("auth");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            for round in 0..2 {
                let (s, _) = l.accept().await.unwrap();
                let (r, mut w) = tokio::io::split(s);
                let mut r = BufReader::new(r);
                w.write_all(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\tx\nDONE\n").await.unwrap();
                let mut got = Vec::new();
                for _ in 0..3 {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    got.push(line);
                }
                assert!(got[0].starts_with("VERSION\t1\t"));
                assert!(got[1].starts_with("CPID\t"));
                if round == 0 {
                    assert_eq!(got[2], "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.1\tsecured\tresp=AHUAcA==\n");
                    w.write_all(b"FAIL\t1\tuser=u\treason=nope\n")
                        .await
                        .unwrap();
                } else {
                    assert!(got[2].starts_with("AUTH\t1\tLOGIN\t"));
                    w.write_all(b"CONT\t1\tVXNlcm5hbWU6\n").await.unwrap();
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "CONT\t1\tdQ==\n");
                    w.write_all(b"OK\t1\tuser=u@example.com\n").await.unwrap();
                }
            }
        });
        let ep = Endpoint::Unix(sock);
        let peer = Peer {
            client_addr: "192.0.2.1".into(),
            local_addr: "127.0.0.1".into(),
            tls: true,
        };
        let mut c = Conn::connect(&ep).await.unwrap();
        assert_eq!(c.mechs.len(), 2);
        assert_eq!(
            c.auth("PLAIN", "smtp", &peer, Some("AHUAcA==")).await,
            Step::Failure("nope".into(), Some("u".into()))
        );
        let mut c = Conn::connect(&ep).await.unwrap();
        assert_eq!(
            c.auth("LOGIN", "smtp", &peer, None).await,
            Step::Challenge("VXNlcm5hbWU6".into())
        );
        assert_eq!(c.cont("dQ==").await, Step::Success("u@example.com".into()));
        server.await.unwrap();
    }
}
