//! The tools' side: talk to the daemon, or open the queue directly when none runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{Entry, Request, Response, MAX_CONTENT, MAX_LINE};
use super::server::{Handler, Peer, QueueHandler};
use super::{strerror, ControlError};
use crate::queue::Queue;

/// `$queue_directory/public/control`.
pub fn socket_path(queue_directory: &Path) -> PathBuf {
    queue_directory.join("public").join("control")
}

/// A connection to the daemon's control socket (blocking; tools are synchronous).
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(queue_directory: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(socket_path(queue_directory))?;
        // A hung daemon must not hang the tool forever.
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        s.set_write_timeout(Some(Duration::from_secs(300)))?;
        Ok(Client {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// Sends one request (with content when it is a submission) and reads the reply (with
    /// content when it is a fetched message).
    pub fn call(
        &mut self,
        req: &Request,
        content: Option<&[u8]>,
    ) -> Result<(Response, Option<Vec<u8>>), ControlError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        if let Some(c) = content {
            self.writer.write_all(c)?;
        }
        self.writer.flush()?;
        let resp = self.reply()?;
        let body = match &resp {
            Response::Message { content_length, .. } => {
                if *content_length > MAX_CONTENT {
                    return Err(ControlError::Protocol("content too large".into()));
                }
                let mut b = Vec::new();
                (&mut self.reader)
                    .take(*content_length)
                    .read_to_end(&mut b)?;
                if b.len() as u64 != *content_length {
                    return Err(ControlError::Protocol("truncated content".into()));
                }
                Some(b)
            }
            _ => None,
        };
        Ok((resp, body))
    }
}

impl Client {
    /// Reads one reply line.
    fn reply(&mut self) -> Result<Response, ControlError> {
        let mut buf = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE as u64 * 16)
            .read_until(b'\n', &mut buf)?;
        if buf.last() != Some(&b'\n') {
            return Err(ControlError::Protocol("truncated reply".into()));
        }
        serde_json::from_slice(&buf).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// The showq listing ([`Request::List`]), handed to `f` a batch at a time as the daemon
    /// sends it. An error from `f` stops the listing and is returned.
    pub fn list(
        &mut self,
        f: &mut dyn FnMut(&[Entry]) -> std::io::Result<()>,
    ) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(&Request::List)
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.writer.flush()?;
        // Bounded: the daemon sends a finite listing, each line within the read timeout.
        loop {
            match self.reply()? {
                Response::Entries { entries, more } => {
                    f(&entries)?;
                    if !more {
                        return Ok(());
                    }
                }
                Response::Error { code, message } => {
                    return Err(ControlError::Refused { code, message })
                }
                other => {
                    return Err(ControlError::Protocol(format!(
                        "unexpected reply: {other:?}"
                    )))
                }
            }
        }
    }
}

/// Where a tool's requests go.
pub enum Backend {
    /// The running daemon, over the socket.
    Daemon(Client),
    /// No daemon: the database opened directly; `why` is the connect error text (e.g.
    /// "Connection refused") for Postfix's "accessing queue directly" warning.
    Direct {
        handler: QueueHandler,
        runtime: tokio::runtime::Runtime,
        why: String,
    },
}

impl Backend {
    /// Connects to the daemon, else opens the queue directly. Fails with
    /// [`ControlError::Down`] when neither works (e.g. the daemon holds the database but
    /// its socket does not answer).
    pub fn open(cfg: &crate::config::Config) -> Result<Backend, ControlError> {
        let qdir = PathBuf::from(cfg.get("queue_directory"));
        let why = match Client::connect(&qdir) {
            Ok(c) => return Ok(Backend::Daemon(c)),
            Err(e) => strerror(&e),
        };
        let down = |open: String| ControlError::Down {
            connect: why.clone(),
            open,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| down(e.to_string()))?;
        let queue = Queue::open_config(cfg).map_err(|e| down(e.to_string()))?;
        Ok(Backend::Direct {
            handler: QueueHandler::new(queue, cfg),
            runtime,
            why,
        })
    }

    /// The showq listing, a batch at a time (see [`Client::list`]), from the daemon or
    /// from the database directly with the same handler code.
    pub fn list(
        &mut self,
        f: &mut dyn FnMut(&[Entry]) -> std::io::Result<()>,
    ) -> Result<(), ControlError> {
        match self {
            Backend::Daemon(c) => c.list(f),
            Backend::Direct {
                handler, runtime, ..
            } => runtime.block_on(async {
                let mut listing = None;
                // Bounded by the listing's length.
                loop {
                    match handler.next_entries(&mut listing).await {
                        Ok((entries, more)) => {
                            f(&entries)?;
                            if !more {
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            return Err(ControlError::Refused {
                                code: crate::cli::exit::EX_TEMPFAIL,
                                message: e.to_string(),
                            })
                        }
                    }
                }
            }),
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(self, Backend::Direct { .. })
    }

    /// One request, answered by the daemon or locally with the same handler code.
    pub fn call(
        &mut self,
        req: &Request,
        content: Option<&[u8]>,
    ) -> Result<(Response, Option<Vec<u8>>), ControlError> {
        match self {
            Backend::Daemon(c) => c.call(req, content),
            Backend::Direct {
                handler, runtime, ..
            } => Ok(runtime.block_on(handler.handle(
                Peer::me(),
                req.clone(),
                content.map(<[u8]>::to_vec),
            ))),
        }
    }
}
