//! The daemon side of the control socket.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::proto::{Entry, Request, Response, SuperOp, LIST_BATCH, MAX_CONTENT, MAX_LINE};
use crate::cli::exit;
use crate::envelope::RcptStatus;
use crate::queue::{Listing, Message, Queue, QueueEvent, QueueName, Record};

/// How long a client may take to send one request (line and content).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Who is on the other end (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    /// This process, for direct (no daemon) use.
    pub fn me() -> Peer {
        // SAFETY: getuid/getpid cannot fail and touch no memory.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
        Peer {
            uid: Some(uid),
            pid: Some(pid),
        }
    }
}

pub type Reply<'a> = Pin<Box<dyn Future<Output = (Response, Option<Vec<u8>>)> + Send + 'a>>;

/// One batch of a listing and whether more follow, or the error reply that ends it.
pub type ListReply<'a> =
    Pin<Box<dyn Future<Output = Result<(Vec<Entry>, bool), Response>> + Send + 'a>>;

/// Answers control requests. `serve` has already checked privileges and read any content.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, req: Request, content: Option<Vec<u8>>) -> Reply<'_>;
    /// The next batch of the showq listing ([`Request::List`]); `listing` is None at the
    /// first call and keeps the handler's place between calls.
    fn list_batch<'a>(&'a self, listing: &'a mut Option<Listing>) -> ListReply<'a>;
}

/// A listing's approximate JSON size after which a batch ends early, so that messages with
/// thousands of recipients cannot make one reply line outgrow what the client reads.
const LIST_BATCH_BYTES: usize = 1 << 20;

/// IDs whose records are read per blocking call while a batch fills.
const LIST_READ: usize = 256;

/// Requests only root or the daemon's own uid may make.
fn privileged(req: &Request) -> bool {
    matches!(
        req,
        Request::Super { .. } | Request::Fetch { .. } | Request::Check
    )
}

fn allowed(peer: &Peer) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    matches!(peer.uid, Some(0)) || peer.uid == Some(me)
}

/// Creates `$queue_directory/public/` and binds the control socket there (mode 0666),
/// replacing a stale socket file. For the master.
pub fn bind(queue_directory: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = super::socket_path(queue_directory);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    // A socket file left by a dead daemon would make bind fail; the caller holds the queue
    // lock, so no live daemon owns it.
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Accepts connections forever, one task each. Returns only if accept fails hard.
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, h).await {
                        tracing::debug!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                // Out of descriptors and similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
    content: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    if let Some(c) = content {
        w.write_all(c).await?;
    }
    w.flush().await
}

async fn connection(stream: UnixStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: Some(c.uid()),
            pid: c.pid(),
        },
        Err(_) => Peer {
            uid: None,
            pid: None,
        },
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    // Bounded: each request needs a new line from the client within READ_TIMEOUT.
    loop {
        let mut line = Vec::new();
        let n = tokio::time::timeout(
            READ_TIMEOUT,
            (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timeout"))??;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let resp = Response::Error {
                code: exit::EX_DATAERR,
                message: "request line too long".into(),
            };
            return write_reply(&mut w, &resp, None).await;
        }
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let resp = Response::Error {
                    code: exit::EX_DATAERR,
                    message: format!("bad request: {e}"),
                };
                return write_reply(&mut w, &resp, None).await;
            }
        };
        let mut content = None;
        if let Request::Submit { content_length, .. } = &req {
            // Read the bytes even if we refuse, so that a later request stays in sync.
            let len = *content_length;
            if len > MAX_CONTENT {
                let resp = Response::Error {
                    code: exit::EX_DATAERR,
                    message: "message too large".into(),
                };
                return write_reply(&mut w, &resp, None).await;
            }
            // Grows as bytes arrive, so a lying length costs nothing up front.
            let mut buf = Vec::new();
            tokio::time::timeout(READ_TIMEOUT, (&mut r).take(len).read_to_end(&mut buf))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timeout"))??;
            if buf.len() as u64 != len {
                return Ok(());
            }
            content = Some(buf);
        }
        if req == Request::List {
            // Batch by batch, each read only once the previous one is written: the
            // socket's back-pressure bounds what the daemon holds.
            let mut listing = None;
            // Bounded by the listing's length (each batch takes at least one message).
            loop {
                match handler.list_batch(&mut listing).await {
                    Ok((entries, more)) => {
                        write_reply(&mut w, &Response::Entries { entries, more }, None).await?;
                        if !more {
                            crate::queue::trim_heap();
                            break;
                        }
                    }
                    Err(resp) => {
                        write_reply(&mut w, &resp, None).await?;
                        break;
                    }
                }
            }
            continue;
        }
        let (resp, body) = if privileged(&req) && !allowed(&peer) {
            (
                Response::Error {
                    code: exit::EX_NOPERM,
                    message: "Permission denied".into(),
                },
                None,
            )
        } else {
            handler.handle(peer, req, content).await
        };
        write_reply(&mut w, &resp, body.as_deref()).await?;
    }
}

/// The default handler: answers from the queue store and tells the queue manager through
/// the queue's event hook.
pub struct QueueHandler {
    pub queue: Queue,
    /// `fast_flush_domains`, lower-cased.
    pub fast_flush_domains: Vec<String>,
    /// `message_size_limit` (0: no limit).
    pub message_size_limit: u64,
}

impl QueueHandler {
    pub fn new(queue: Queue, cfg: &crate::config::Config) -> QueueHandler {
        QueueHandler {
            queue,
            fast_flush_domains: cfg
                .get_list("fast_flush_domains")
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            message_size_limit: cfg.get_size("message_size_limit"),
        }
    }

    /// Postfix's domain-list match: the domain itself, or a parent given as `.parent`
    /// (or plainly, as parent_domain_matches_subdomains does for fast_flush_domains).
    fn fast_flush(&self, site: &str) -> bool {
        let site = site.to_ascii_lowercase();
        self.fast_flush_domains.iter().any(|d| {
            let d = d.trim_start_matches('.');
            site == d || site.ends_with(&format!(".{d}"))
        })
    }

    /// The next batch of the listing: up to LIST_BATCH messages (fewer when their
    /// recipients are many), and whether more follow.
    pub async fn next_entries(
        &self,
        listing: &mut Option<Listing>,
    ) -> Result<(Vec<Entry>, bool), crate::queue::QueueError> {
        let l = match listing {
            Some(l) => l,
            None => listing.insert(self.queue.listing(&QueueName::SHOWQ_ORDER).await?),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        // Bounded: every round takes IDs from the listing or ends it.
        while out.len() < LIST_BATCH && bytes < LIST_BATCH_BYTES && !l.is_done() {
            let ids = l.next(LIST_READ.min(LIST_BATCH - out.len()));
            for m in self.queue.listed(ids).await? {
                let e = entry(&m);
                bytes += 200
                    + e.sender.len()
                    + e.recipients
                        .iter()
                        .map(|(a, r)| 40 + a.len() + r.as_ref().map_or(0, String::len))
                        .sum::<usize>();
                out.push(e);
            }
        }
        Ok((out, !l.is_done()))
    }

    async fn superop(
        &self,
        action: SuperOp,
        ids: Option<Vec<String>>,
        queues: Vec<QueueName>,
    ) -> Result<Response, crate::queue::QueueError> {
        use QueueName::*;
        let queues = if queues.is_empty() {
            match action {
                SuperOp::Release => vec![Hold],
                _ => vec![Hold, Incoming, Active, Deferred],
            }
        } else {
            queues
        };
        // ALL: the targets from one pass over the records (IDs only), acted on a batch at
        // a time, each batch with one flush; named IDs likewise in batches.
        let all = ids.is_none();
        let (mut named, mut listing) = match ids {
            Some(ids) => (ids.into_iter(), None),
            None => (
                Vec::new().into_iter(),
                Some(self.queue.listing(&queues).await?),
            ),
        };
        let mut done = Vec::new();
        let mut released = Vec::new();
        let (mut count, mut released_count) = (0, 0);
        let mut requeued = false;
        let mut freed = false;
        // Bounded: every round takes a batch of targets until there are none left.
        loop {
            let batch: Vec<String> = match &mut listing {
                Some(l) => l.next(SUPER_BATCH).into_iter().map(|(id, _)| id).collect(),
                None => named.by_ref().take(SUPER_BATCH).collect(),
            };
            if batch.is_empty() {
                break;
            }
            let mut ok: Vec<String> = Vec::new();
            match action {
                SuperOp::Delete => {
                    ok = self
                        .queue
                        .delete_many(batch, &queues)
                        .await?
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect();
                }
                SuperOp::Hold => {
                    let from: Vec<_> = queues.iter().copied().filter(|q| *q != Hold).collect();
                    ok = ids_of(
                        self.queue
                            .transition_many(batch, &from, Hold, |_| {})
                            .await?,
                    );
                }
                SuperOp::Release => {
                    if queues.contains(&Hold) {
                        ok = ids_of(
                            self.queue
                                .transition_many(batch, &[Hold], Deferred, |r| {
                                    r.meta.next_attempt = 0
                                })
                                .await?,
                        );
                        freed |= !ok.is_empty();
                    }
                }
                SuperOp::Requeue => {
                    let from: Vec<_> = queues
                        .iter()
                        .copied()
                        .filter(|q| *q != Maildrop && *q != Corrupt)
                        .collect();
                    ok = ids_of(
                        self.queue
                            .transition_many(batch, &from, Maildrop, |_| {})
                            .await?,
                    );
                    requeued |= !ok.is_empty();
                }
                SuperOp::Expire => {
                    for id in batch {
                        let Some(m) = self.queue.get(&id).await.ok().flatten() else {
                            continue;
                        };
                        if !queues.contains(&m.queue) {
                            continue;
                        }
                        let (e, rel) = self.queue.expire(&id).await?;
                        if rel {
                            released_count += 1;
                            if !all {
                                released.push(id.clone());
                            }
                        }
                        if e {
                            ok.push(id);
                        }
                    }
                }
            }
            count += ok.len();
            if !all {
                done.extend(ok);
            }
        }
        if requeued || freed {
            self.queue.notify(QueueEvent::Requeued);
        }
        crate::queue::trim_heap();
        Ok(Response::Done {
            ids: done,
            released,
            count,
            released_count,
        })
    }
}

/// Messages per batch of an operator action: one flush each.
const SUPER_BATCH: usize = 1000;

fn ids_of(msgs: Vec<Message>) -> Vec<String> {
    msgs.into_iter().map(|m| m.id).collect()
}

/// A message as showq lists it: pending recipients only, with their delay reasons.
pub fn entry(m: &Message) -> Entry {
    let Record { envelope, meta, .. } = &m.record;
    Entry {
        queue_name: m.queue,
        queue_id: m.id.clone(),
        arrival_time: meta.arrival_time,
        message_size: meta.size,
        forced_expire: meta.forced_expire,
        sender: envelope.sender.clone(),
        recipients: envelope
            .recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
            .map(|r| (r.address.clone(), r.reason.clone()))
            .collect(),
    }
}

fn qerr(e: crate::queue::QueueError) -> Response {
    Response::Error {
        code: exit::EX_TEMPFAIL,
        message: e.to_string(),
    }
}

impl Handler for QueueHandler {
    fn list_batch<'a>(&'a self, listing: &'a mut Option<Listing>) -> ListReply<'a> {
        Box::pin(async move { self.next_entries(listing).await.map_err(qerr) })
    }

    fn handle(&self, peer: Peer, req: Request, content: Option<Vec<u8>>) -> Reply<'_> {
        Box::pin(async move {
            match req {
                Request::Ping => (
                    Response::Pong {
                        version: env!("CARGO_PKG_VERSION").into(),
                    },
                    None,
                ),
                Request::Status => match self.queue.counts().await {
                    Ok(counts) => (Response::Status { counts }, None),
                    Err(e) => (qerr(e), None),
                },
                // Streamed by `connection` (and `Backend::list`) through `list_batch`.
                Request::List => (
                    Response::Error {
                        code: exit::EX_SOFTWARE,
                        message: "the listing is answered in batches".into(),
                    },
                    None,
                ),
                Request::Flush => {
                    self.queue.notify(QueueEvent::Flush);
                    (Response::Ok, None)
                }
                Request::FlushSite { site } => {
                    if self.fast_flush(&site) {
                        self.queue.notify(QueueEvent::FlushSite(site));
                        (Response::Ok, None)
                    } else {
                        (
                            Response::Error {
                                code: exit::EX_UNAVAILABLE,
                                message: format!(
                                    "Flush service is not configured for destination \"{site}\""
                                ),
                            },
                            None,
                        )
                    }
                }
                Request::DeliverOne { id } => {
                    // Postfix's -i is silent whether or not the ID exists.
                    match self.queue.deliver_now(&id).await {
                        Ok(_) => (Response::Ok, None),
                        Err(e) => (qerr(e), None),
                    }
                }
                Request::Super {
                    action,
                    ids,
                    queues,
                } => match self.superop(action, ids, queues).await {
                    Ok(r) => (r, None),
                    Err(e) => (qerr(e), None),
                },
                Request::Check => match self.queue.structure_check().await {
                    Ok(report) => (Response::Checked { report }, None),
                    Err(e) => (qerr(e), None),
                },
                Request::Fetch { id } => {
                    let m = match self.queue.get(&id).await {
                        Ok(Some(m)) => m,
                        Ok(None) => {
                            return (
                                Response::Error {
                                    code: exit::FAIL,
                                    message: format!(
                                        "open queue file {id}: No such file or directory"
                                    ),
                                },
                                None,
                            )
                        }
                        Err(e) => return (qerr(e), None),
                    };
                    let body = match self.queue.content(&id).await {
                        Ok(c) => c.unwrap_or_default(),
                        Err(e) => return (qerr(e), None),
                    };
                    (
                        Response::Message {
                            id: m.id,
                            queue: m.queue,
                            envelope: m.record.envelope,
                            origin: m.record.origin,
                            meta: m.record.meta,
                            content_length: body.len() as u64,
                        },
                        Some(body),
                    )
                }
                Request::Submit {
                    envelope,
                    mut origin,
                    ..
                } => {
                    let body = content.unwrap_or_default();
                    if self.message_size_limit > 0 && body.len() as u64 > self.message_size_limit {
                        return (
                            Response::Error {
                                code: exit::EX_DATAERR,
                                message: "message file too big".into(),
                            },
                            None,
                        );
                    }
                    // The peer's credentials, not the client's word, say who submitted.
                    origin.uid = peer.uid;
                    let rec = Record {
                        envelope,
                        origin,
                        meta: Default::default(),
                    };
                    match self.queue.enqueue(QueueName::Maildrop, rec, body).await {
                        Ok(id) => (Response::Queued { id }, None),
                        Err(e) => (qerr(e), None),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn operator_requests_need_root_or_the_daemon_uid() {
        let me = unsafe { libc::geteuid() };
        let other = if me == 4242 { 4243 } else { 4242 };
        assert!(allowed(&Peer {
            uid: Some(0),
            pid: None
        }));
        assert!(allowed(&Peer {
            uid: Some(me),
            pid: None
        }));
        assert!(!allowed(&Peer {
            uid: Some(other),
            pid: None
        }));
        assert!(!allowed(&Peer {
            uid: None,
            pid: None
        }));
        assert!(privileged(&Request::Fetch { id: "A".into() }));
        assert!(!privileged(&Request::List));
        assert!(!privileged(&Request::Flush));
    }

    fn deferred(q: &Queue, n: usize) {
        for _ in 0..n {
            let id = q.new_id_now().unwrap();
            let rec = Record {
                envelope: crate::envelope::Envelope {
                    sender: "a@x".into(),
                    recipients: vec![crate::envelope::Recipient::new("b@y")],
                    ..Default::default()
                },
                ..Default::default()
            };
            q.store_blocking(&id, QueueName::Deferred, rec, b"x")
                .unwrap();
        }
    }

    /// `postsuper -d ALL` on 2,500 messages: three batches, one flush each, and only the
    /// count comes back (Postfix reports no IDs for ALL).
    #[tokio::test]
    async fn postsuper_all_acts_in_batches_with_one_flush_each() {
        let (q, spool) = crate::queue::tests::counting_queue();
        deferred(&q, 2500);
        let flushes = || spool.flushes.load(std::sync::atomic::Ordering::SeqCst);
        let before = flushes();
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::from_text(dir.path(), "").unwrap();
        let h = QueueHandler::new(q.clone(), &cfg);
        let req = Request::Super {
            action: SuperOp::Delete,
            ids: None,
            queues: vec![],
        };
        let (resp, _) = h.handle(Peer::me(), req, None).await;
        let Response::Done { ids, count, .. } = resp else {
            panic!("{resp:?}")
        };
        assert_eq!((ids.len(), count), (0, 2500));
        assert_eq!(flushes(), before + 3);
        assert_eq!(
            q.counts().await.unwrap().iter().map(|c| c.1).sum::<usize>(),
            0
        );
    }

    /// The listing comes in batches of at most LIST_BATCH, every message once.
    #[tokio::test]
    async fn listing_comes_in_bounded_batches() {
        let q = Queue::memory();
        deferred(&q, 1200);
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::from_text(dir.path(), "").unwrap();
        let h = QueueHandler::new(q.clone(), &cfg);
        let mut listing = None;
        let mut sizes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let (entries, more) = h.next_entries(&mut listing).await.unwrap();
            sizes.push(entries.len());
            seen.extend(entries.into_iter().map(|e| e.queue_id));
            if !more {
                break;
            }
        }
        assert_eq!(sizes, vec![LIST_BATCH, LIST_BATCH, 1200 - 2 * LIST_BATCH]);
        assert_eq!(seen.len(), 1200);
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let cfg = crate::config::Config::from_text(dir.path(), "").unwrap();
        let h = Arc::new(QueueHandler::new(Queue::memory(), &cfg));
        let server = tokio::spawn(serve(listener, h));
        let path = crate::control::socket_path(dir.path());
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"op\":\"nonsense\"}\n").await.unwrap();
        let mut reply = String::new();
        let mut r = BufReader::new(s);
        tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let resp: Response = serde_json::from_str(&reply).unwrap();
        assert!(
            matches!(
                resp,
                Response::Error {
                    code: exit::EX_DATAERR,
                    ..
                }
            ),
            "{reply}"
        );
        // The server still answers others.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"op\":\"ping\"}\n{\"op\":\"status\"}\n")
            .await
            .unwrap();
        let mut r = BufReader::new(s);
        let mut l1 = String::new();
        let mut l2 = String::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            r.read_line(&mut l1).await.unwrap();
            r.read_line(&mut l2).await.unwrap();
        })
        .await
        .unwrap();
        assert!(l1.starts_with("{\"reply\":\"pong\""), "{l1}");
        assert!(l2.starts_with("{\"reply\":\"status\""), "{l2}");
        server.abort();
    }
}
