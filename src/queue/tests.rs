use super::*;
use crate::envelope::Recipient;
use std::collections::BTreeMap;

/// Opens a database a test has just closed. sled's threads let go of the previous handle
/// (and its file lock) a moment after the last drop, later still on a loaded machine.
fn reopen<T, E: std::fmt::Debug>(open: impl Fn() -> Result<T, E>) -> T {
    for _ in 0..100 {
        if let Ok(v) = open() {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    open().unwrap()
}

/// The spool's sled database opened directly, as a crash left it (tests change it behind
/// the spool's back).
fn raw_db(path: &std::path::Path) -> sled::Db {
    reopen(|| {
        sled::Config::new()
            .path(path)
            .segment_size(crate::queue::spool::SEGMENT_SIZE)
            .open()
    })
}

fn rec(sender: &str, rcpts: &[&str]) -> Record {
    Record {
        envelope: Envelope {
            sender: sender.into(),
            recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn reinject_on(q: Queue) {
    let old = q
        .enqueue(QueueName::Maildrop, rec("a@x", &["b@y"]), b"body".to_vec())
        .await
        .unwrap();
    // Not in the named queue: nothing happens.
    assert_eq!(
        q.reinject(&old, &[QueueName::Hold], QueueName::Incoming, |_| {})
            .await
            .unwrap(),
        None
    );
    let new = q
        .reinject(&old, &[QueueName::Maildrop], QueueName::Incoming, |r| {
            r.envelope.sender = "c@x".into()
        })
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new, old);
    assert!(q.get(&old).await.unwrap().is_none());
    assert!(q.content(&old).await.unwrap().is_none());
    let m = q.get(&new).await.unwrap().unwrap();
    assert_eq!(
        (m.queue, m.record.envelope.sender.as_str()),
        (QueueName::Incoming, "c@x")
    );
    assert_eq!(q.content(&new).await.unwrap().unwrap(), b"body");
    assert_eq!(q.ids(QueueName::Incoming).await.unwrap(), vec![new]);
    assert!(q.ids(QueueName::Maildrop).await.unwrap().is_empty());
}

#[tokio::test]
async fn reinject_memory() {
    reinject_on(Queue::memory()).await;
}

#[tokio::test]
async fn reinject_sled() {
    let dir = tempfile::tempdir().unwrap();
    reinject_on(Queue::open(dir.path(), false).unwrap()).await;
}

async fn transitions_on(q: Queue) {
    let id = q
        .enqueue(
            QueueName::Incoming,
            rec("a@x", &["b@y"]),
            b"Subject: x\n\nbody\n".to_vec(),
        )
        .await
        .unwrap();
    let m = q.get(&id).await.unwrap().unwrap();
    assert_eq!(m.queue, QueueName::Incoming);
    assert_eq!(m.record.meta.size, 17);
    assert!(m.record.meta.arrival_time > 0);
    // incoming → active → deferred with a reason, content untouched.
    assert!(q
        .transition(&id, &[QueueName::Incoming], QueueName::Active, |_| {})
        .await
        .unwrap()
        .is_some());
    // Wrong source queue: nothing happens.
    assert!(q
        .transition(&id, &[QueueName::Incoming], QueueName::Deferred, |_| {})
        .await
        .unwrap()
        .is_none());
    q.transition(&id, &[QueueName::Active], QueueName::Deferred, |r| {
        r.envelope.recipients[0].reason = Some("connect refused".into());
        r.meta.attempts += 1;
    })
    .await
    .unwrap();
    let m = q.get(&id).await.unwrap().unwrap();
    assert_eq!(m.queue, QueueName::Deferred);
    assert_eq!(
        m.record.envelope.recipients[0].reason.as_deref(),
        Some("connect refused")
    );
    assert_eq!(m.record.meta.attempts, 1);
    assert_eq!(
        q.content(&id).await.unwrap().unwrap(),
        b"Subject: x\n\nbody\n"
    );
    assert_eq!(q.ids(QueueName::Deferred).await.unwrap(), vec![id.clone()]);
    assert!(q.ids(QueueName::Incoming).await.unwrap().is_empty());
    // hold / release / requeue / expire.
    assert!(q.hold(&id).await.unwrap());
    assert!(!q.hold(&id).await.unwrap());
    assert_eq!(q.list(QueueName::Hold).await.unwrap().len(), 1);
    assert!(q.release(&id).await.unwrap());
    assert!(q.requeue(&id).await.unwrap());
    assert_eq!(
        q.get(&id).await.unwrap().unwrap().queue,
        QueueName::Maildrop
    );
    q.transition(&id, &[QueueName::Maildrop], QueueName::Hold, |_| {})
        .await
        .unwrap();
    assert_eq!(q.expire(&id).await.unwrap(), (true, true));
    let m = q.get(&id).await.unwrap().unwrap();
    assert!(m.record.meta.forced_expire);
    assert_eq!(m.queue, QueueName::Deferred);
    // delete only from the named queues.
    assert_eq!(q.delete(&id, &[QueueName::Hold]).await.unwrap(), None);
    assert_eq!(
        q.delete(&id, &[QueueName::Deferred]).await.unwrap(),
        Some(QueueName::Deferred)
    );
    assert!(q.get(&id).await.unwrap().is_none());
    assert!(q.content(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn transitions_memory() {
    transitions_on(Queue::memory()).await;
}

#[tokio::test]
async fn transitions_sled() {
    let dir = tempfile::tempdir().unwrap();
    transitions_on(Queue::open(dir.path(), false).unwrap()).await;
}

#[tokio::test]
async fn duplicate_and_invalid_ids_are_refused() {
    let q = Queue::memory();
    q.commit("ABC", QueueName::Incoming, rec("", &["x@y"]), vec![])
        .await
        .unwrap();
    assert!(matches!(
        q.commit("ABC", QueueName::Incoming, rec("", &["x@y"]), vec![])
            .await,
        Err(QueueError::Exists(_))
    ));
    assert!(matches!(
        q.commit("../x", QueueName::Incoming, rec("", &["x@y"]), vec![])
            .await,
        Err(QueueError::InvalidId(_))
    ));
}

#[test]
fn recovery_moves_active_to_incoming_and_garbage_to_corrupt() {
    let spool = Arc::new(MemSpool::new());
    let good = encode(&rec("a@x", &["b@y"])).unwrap();
    spool.put_raw("AAA", QueueName::Active.byte(), good.clone());
    spool.put_raw("BBB", QueueName::Maildrop.byte(), good.clone());
    spool.put_raw("CCC", QueueName::Deferred.byte(), vec![0xFF, 0xFF, 0xFF]);
    spool.put_raw("DDD", 42, good);
    let q = Queue::with_spool(spool.clone(), false).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(q.ids(QueueName::Incoming).await.unwrap(), vec!["AAA"]);
        assert_eq!(q.ids(QueueName::Maildrop).await.unwrap(), vec!["BBB"]);
        assert_eq!(q.ids(QueueName::Corrupt).await.unwrap(), vec!["CCC", "DDD"]);
        assert!(q.list(QueueName::Deferred).await.unwrap().is_empty());
        // A corrupt record is reported, not a panic.
        assert!(q.get("CCC").await.is_err());
    });
}

#[tokio::test]
async fn sled_recovery_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let q = Queue::open(dir.path(), false).unwrap();
        let id = q
            .enqueue(QueueName::Incoming, rec("a@x", &["b@y"]), b"x".to_vec())
            .await
            .unwrap();
        q.transition(&id, &[QueueName::Incoming], QueueName::Active, |_| {})
            .await
            .unwrap();
        let spool = q.spool().clone();
        drop(q);
        drop(spool);
        id
    };
    {
        let spool = reopen(|| SledSpool::open(&dir.path().join("db")));
        spool
            .put_raw("BAD1", QueueName::Incoming.byte(), b"\x07garbage")
            .unwrap();
        spool.flush().unwrap();
    }
    let q = reopen(|| Queue::open(dir.path(), false));
    assert_eq!(
        q.get(&id).await.unwrap().unwrap().queue,
        QueueName::Incoming
    );
    assert_eq!(q.ids(QueueName::Corrupt).await.unwrap(), vec!["BAD1"]);
    assert_eq!(q.ids(QueueName::Incoming).await.unwrap(), vec![id]);
}

#[test]
fn sled_is_locked_by_one_process_user() {
    let dir = tempfile::tempdir().unwrap();
    let _q = Queue::open(dir.path(), false).unwrap();
    // sled holds an exclusive lock: a second open (as a tool would) fails.
    assert!(Queue::open(dir.path(), false).is_err());
}

/// Group commit: many concurrent inserts, every one readable after reopening the database
/// (i.e. it was flushed before `enqueue` returned), and fewer flushes than inserts is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_many_concurrent_inserts_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), true).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue(
                QueueName::Incoming,
                rec("a@x", &[&format!("r{i}@y")]),
                format!("body {i}").into_bytes(),
            )
            .await
            .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    // Everything a waiter was told is durable: the flushed mark covers all writes.
    assert!(*q.inner.commit.flushed.borrow() >= 200);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "queue ids are unique");
    drop(q);
    let q = Queue::open(dir.path(), true).unwrap();
    for id in &ids {
        assert!(q.get(id).await.unwrap().is_some(), "{id} lost");
    }
}

#[tokio::test]
async fn events_reach_the_hook() {
    let q = Queue::memory();
    let (tx, mut rx) = mpsc::channel(8);
    q.set_events(tx);
    let id = q
        .enqueue(QueueName::Maildrop, rec("a@x", &["b@y"]), vec![])
        .await
        .unwrap();
    assert_eq!(rx.recv().await, Some(QueueEvent::NewMaildrop(id)));
}

/// list_many: one entry per message, grouped in the order asked, ID order within a queue.
#[tokio::test]
async fn list_many_groups_once_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), false).unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = q
            .enqueue(QueueName::Incoming, rec("a@x", &["b@y"]), vec![b'x'; i])
            .await
            .unwrap();
        ids.push(id);
    }
    for id in [&ids[0], &ids[2]] {
        q.transition(id, &[QueueName::Incoming], QueueName::Deferred, |_| {})
            .await
            .unwrap()
            .unwrap();
    }
    let order = [QueueName::Incoming, QueueName::Deferred];
    let got: Vec<(String, QueueName)> = q
        .list_many(&order)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.queue))
        .collect();
    let mut want = vec![
        (ids[1].clone(), QueueName::Incoming),
        (ids[3].clone(), QueueName::Incoming),
        (ids[0].clone(), QueueName::Deferred),
        (ids[2].clone(), QueueName::Deferred),
    ];
    want[..2].sort();
    want[2..].sort();
    assert_eq!(got, want);
    assert!(q.list_many(&[QueueName::Hold]).await.unwrap().is_empty());
}

/// Activation is not flushed: whether or not the move reached the disk before a crash, the
/// reopened queue has the message in incoming (or deferred), never lost.
#[tokio::test]
async fn unflushed_activation_comes_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, d) = {
        let q = Queue::open(dir.path(), false).unwrap();
        let a = q
            .enqueue(QueueName::Incoming, rec("a@x", &["b@y"]), b"x".to_vec())
            .await
            .unwrap();
        let d = q
            .enqueue(QueueName::Incoming, rec("a@x", &["c@y"]), b"y".to_vec())
            .await
            .unwrap();
        q.transition(&d, &[QueueName::Incoming], QueueName::Deferred, |_| {})
            .await
            .unwrap();
        let before = q.activate(&a, &[QueueName::Incoming]).await.unwrap();
        let (m, body) = before.unwrap();
        assert_eq!(m.queue, QueueName::Incoming);
        assert_eq!(body, b"x");
        q.activate(&d, &[QueueName::Deferred]).await.unwrap();
        assert_eq!(q.get(&a).await.unwrap().unwrap().queue, QueueName::Active);
        // Not in `from`: no move.
        assert!(q.activate(&a, &[QueueName::Hold]).await.unwrap().is_none());
        let spool = q.spool().clone();
        drop(q);
        drop(spool);
        (a, d)
    };
    let q = reopen(|| Queue::open(dir.path(), false));
    for id in [a, d] {
        let m = q.get(&id).await.unwrap().unwrap();
        assert!(
            matches!(m.queue, QueueName::Incoming | QueueName::Deferred),
            "{id}: {:?}",
            m.queue
        );
        assert!(q.content(&id).await.unwrap().is_some());
    }
}

/// A database created with another segment size (sled's 512 KB default, as earlier relais
/// versions made them) still opens: sled refuses a changed segment size.
#[test]
fn existing_database_keeps_its_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = sled::Config::new()
            .path(&path)
            .segment_size(512 * 1024)
            .open()
            .unwrap();
        db.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
    }
    let spool = reopen(|| SledSpool::open(&path));
    spool.flush().unwrap();
    drop(spool);
    let fresh = dir.path().join("fresh");
    drop(SledSpool::open(&fresh).unwrap());
    let conf = String::from_utf8_lossy(&std::fs::read(fresh.join("conf")).unwrap()).into_owned();
    assert!(
        conf.contains(&format!(
            "segment_size: {}",
            crate::queue::spool::SEGMENT_SIZE
        )),
        "{conf}"
    );
}

fn big(fill: u8, len: usize) -> Vec<u8> {
    vec![fill; len]
}

/// Messages go to journal segments and come back intact across a reopen; a reinjection
/// shares its body; a segment goes once nothing points into it and every older one is
/// gone, after the next flush; an unused segment is pruned at open.
#[test]
fn large_bodies_live_in_segments_and_go_with_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let n = 30 << 10;
    {
        let spool = SledSpool::open_with(&path, 64 << 10).unwrap();
        for (id, fill) in [("AAA", b'a'), ("BBB", b'b'), ("CCC", b'c')] {
            assert!(spool
                .insert(id, QueueName::Incoming.byte(), b"r", &big(fill, n))
                .unwrap());
        }
        spool
            .insert("SSS", QueueName::Incoming.byte(), b"r", b"small")
            .unwrap();
        spool.flush().unwrap();
        assert_eq!(spool.blob_segments(), 2, "two bodies per 64 KB segment");
        // Only the segment being written stays open: a long queue holds no descriptor per
        // segment.
        let bodies = crate::queue::spool::bodies_dir(&path);
        let open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.starts_with(&bodies))
            .count();
        assert_eq!(open, 1, "open segment files");
        assert!(spool
            .rename("AAA", "NEWA", &mut |s, r| Some((s, r.to_vec())))
            .unwrap());
        spool.flush().unwrap();
        assert_eq!(spool.content("NEWA").unwrap().unwrap(), big(b'a', n));
        assert!(spool.content("AAA").unwrap().is_none());
    }
    let bodies = crate::queue::spool::bodies_dir(&path);
    let files = || std::fs::read_dir(&bodies).unwrap().count();
    assert_eq!(files(), 2);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&bodies), 0o700, "bodies are the owner's only");
        assert_eq!(mode(&path), 0o700, "so is sled's directory");
        for f in std::fs::read_dir(&bodies).unwrap() {
            assert_eq!(mode(&f.unwrap().path()), 0o600);
        }
    }
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(spool.content("BBB").unwrap().unwrap(), big(b'b', n));
    assert_eq!(spool.content("CCC").unwrap().unwrap(), big(b'c', n));
    assert_eq!(spool.content("SSS").unwrap().unwrap(), b"small");
    for id in ["NEWA", "BBB"] {
        spool.update(id, &mut |_, _| Change::Remove).unwrap();
    }
    // The removals went to a third segment, this run's.
    assert_eq!(files(), 3, "not before the removals are flushed");
    spool.flush().unwrap();
    assert_eq!(files(), 2, "the first segment went with its last body");
    assert_eq!(spool.content("CCC").unwrap().unwrap(), big(b'c', n));
    for id in ["CCC", "SSS"] {
        spool.update(id, &mut |_, _| Change::Remove).unwrap();
    }
    spool.flush().unwrap();
    assert_eq!(files(), 1, "only this run's segment is left");
    drop(spool);
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(
        spool.blob_segments(),
        0,
        "an unused segment is pruned at open"
    );
    assert_eq!(files(), 0);
}

/// A closed segment holding mostly removed bodies has its live ones copied forward, and
/// goes; the copies survive a reopen.
#[test]
fn compaction_copies_live_bodies_out_of_sparse_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let n = 10 << 10;
    let ids: Vec<String> = (0..7).map(|i| format!("ID{i}")).collect();
    {
        let spool = SledSpool::open_with(&path, 64 << 10).unwrap();
        for (i, id) in ids.iter().enumerate() {
            spool
                .insert(
                    id,
                    QueueName::Deferred.byte(),
                    b"r",
                    &big(b'0' + i as u8, n),
                )
                .unwrap();
        }
        spool.flush().unwrap();
        assert_eq!(spool.blob_segments(), 2, "six bodies, then a seventh");
        assert_eq!(spool.compact().unwrap(), 0, "nothing sparse yet");
        for id in &ids[1..6] {
            spool.update(id, &mut |_, _| Change::Remove).unwrap();
        }
        spool.flush().unwrap();
        assert_eq!(spool.compact().unwrap(), 1, "ID0 moves");
        assert_eq!(spool.blob_segments(), 1, "its old segment is gone");
        assert_eq!(spool.content("ID0").unwrap().unwrap(), big(b'0', n));
    }
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(spool.content("ID0").unwrap().unwrap(), big(b'0', n));
    assert_eq!(spool.content("ID6").unwrap().unwrap(), big(b'6', n));
}

/// The journal's segment files of a spool at `path`, oldest first.
fn segments(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(crate::queue::spool::bodies_dir(path))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Flips one byte of a file.
fn flip(file: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
}

/// Ten messages through a spool, some moved, one removed, one renamed; returns what the
/// queue must hold afterwards (ID → state, body).
fn history(path: &std::path::Path) -> BTreeMap<String, (u8, Vec<u8>)> {
    let spool = SledSpool::open(path).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..10u8 {
        let id = format!("ID{i}");
        let body = if i % 2 == 0 {
            big(b'a' + i, 20 << 10)
        } else {
            vec![b'a' + i; 300]
        };
        spool
            .insert(&id, QueueName::Incoming.byte(), &[i; 40], &body)
            .unwrap();
        want.insert(id, (QueueName::Incoming.byte(), body));
    }
    let put = |id: &str, s: QueueName| {
        spool
            .update(id, &mut |_, r| Change::Put(s.byte(), r.to_vec()))
            .unwrap();
    };
    put("ID3", QueueName::Deferred);
    put("ID4", QueueName::Hold);
    want.get_mut("ID3").unwrap().0 = QueueName::Deferred.byte();
    want.get_mut("ID4").unwrap().0 = QueueName::Hold.byte();
    spool.update("ID5", &mut |_, _| Change::Remove).unwrap();
    want.remove("ID5");
    assert!(spool
        .rename("ID6", "NEW6", &mut |_, r| Some((
            QueueName::Incoming.byte(),
            r.to_vec()
        )))
        .unwrap());
    let b = want.remove("ID6").unwrap();
    want.insert("NEW6".into(), b);
    spool.flush().unwrap();
    want
}

fn holds(spool: &SledSpool) -> BTreeMap<String, (u8, Vec<u8>)> {
    spool
        .all()
        .unwrap()
        .into_iter()
        .map(|(id, s)| {
            let body = spool.content(&id).ok().flatten().unwrap_or_default();
            (id, (s, body))
        })
        .collect()
}

/// sled loses everything (its files gone, as a damaged database moved aside would be): the
/// journal brings back every message in its queue, without the removed or renamed ones.
#[test]
fn a_lost_database_is_rebuilt_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = history(&path);
    std::thread::sleep(std::time::Duration::from_millis(200));
    reopen(|| {
        std::fs::remove_dir_all(&path)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                if path.exists() {
                    Err("still there".to_string())
                } else {
                    Ok(())
                }
            })
    });
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(holds(&spool), want);
    let r = spool.last_report();
    assert_eq!(r.restored, want.len(), "{r}");
    // Listing by queue works too: the index came back.
    assert_eq!(
        spool.ids(QueueName::Deferred.byte(), usize::MAX).unwrap(),
        vec!["ID3"]
    );
}

/// One byte flipped in the middle of sled's log: sled cuts its log there (its recovery
/// takes a bad checksum for a torn tail), or reads it fine; either way the journal brings
/// back what sled lost, and nothing removed comes back.
#[test]
fn a_flipped_byte_in_the_database_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = history(&path);
    let log = path.join("db");
    let len = std::fs::metadata(&log).unwrap().len();
    flip(&log, len / 2);
    // sled may refuse the damaged file outright; an operator (or `relais start`) then moves
    // it aside, which the previous test covers. Here it opens.
    match reopen_result(|| SledSpool::open(&path)) {
        Ok(spool) => assert_eq!(holds(&spool), want),
        Err(e) => eprintln!("sled refused the damaged log: {e:?}"),
    }
}

fn reopen_result<T, E: std::fmt::Debug>(open: impl Fn() -> Result<T, E>) -> Result<T, E> {
    for _ in 0..40 {
        match open() {
            Ok(v) => return Ok(v),
            Err(e) if format!("{e:?}").contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => return Err(e),
        }
    }
    open()
}

/// A byte flipped inside one message's body in the journal: that message goes to the corrupt
/// queue with its record kept; every other message stays as it was.
#[test]
fn a_flipped_body_byte_costs_only_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut want = history(&path);
    // ID2's body is 20 KB of b'c': flip one in the middle of it.
    let seg = &segments(&path)[0];
    let bytes = std::fs::read(seg).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w.iter().all(|&b| b == b'c'))
        .unwrap() as u64
        + 5000;
    flip(seg, at);
    let spool = reopen(|| SledSpool::open(&path));
    let got = holds(&spool);
    assert_eq!(got["ID2"].0, crate::queue::spool::CORRUPT);
    assert_eq!(
        spool.get("ID2").unwrap().unwrap().1,
        vec![2u8; 40],
        "record kept"
    );
    want.remove("ID2");
    let mut rest = got.clone();
    rest.remove("ID2");
    assert_eq!(rest, want);
    assert_eq!(spool.last_report().corrupted, 1);
    // Still so after another open: the move was journalled.
    drop(spool);
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(
        spool.get("ID2").unwrap().unwrap().0,
        crate::queue::spool::CORRUPT
    );
    assert_eq!(spool.last_report(), Default::default());
}

/// A byte flipped in an entry's header (its length, say): the reader resynchronises on the
/// next header; the hit message is kept from sled's copy and journalled again.
#[test]
fn a_flipped_header_byte_is_skipped_and_the_rest_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = history(&path);
    let seg = &segments(&path)[0];
    let bytes = std::fs::read(seg).unwrap();
    // The third entry's header: its record length.
    let starts: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| w == b"RLJ1")
        .map(|(i, _)| i)
        .collect();
    flip(seg, starts[2] as u64 + 9);
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(holds(&spool), want);
    let r = spool.last_report();
    assert_eq!(r.damaged_ranges, 1, "{r}");
    assert_eq!(r.migrated, 1, "{r}");
    // And when sled has lost everything too, only the hit message is missing.
    drop(spool);
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = dir2.path().join("db");
    let want2 = history(&path2);
    let seg2 = &segments(&path2)[0];
    flip(seg2, starts[2] as u64 + 9);
    std::thread::sleep(std::time::Duration::from_millis(200));
    reopen(|| std::fs::remove_dir_all(&path2).map_err(|e| e.to_string()));
    let spool = reopen(|| SledSpool::open(&path2));
    let mut expect = want2.clone();
    expect.remove("ID2");
    assert_eq!(holds(&spool), expect);
}

/// A journal segment cut short: messages whose entries were in the lost tail, still held by
/// sled, go to the corrupt queue; the others stay.
#[test]
fn a_truncated_segment_costs_only_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = history(&path);
    let seg = &segments(&path)[0];
    let len = std::fs::metadata(seg).unwrap().len();
    // The tail holds the rename's entry, ID9's and ID8's: cut into ID8's body.
    let bytes = std::fs::read(seg).unwrap();
    let at = bytes
        .windows(64)
        .rposition(|w| w.iter().all(|&b| b == b'i'))
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(at as u64)
        .unwrap();
    assert!(at as u64 <= len);
    let spool = reopen(|| SledSpool::open(&path));
    let got = holds(&spool);
    // ID8's body and ID9's whole entry were in the cut tail; so were the later changes
    // (ID3 deferred, ID4 held, ID5 removed, ID6 renamed), which sled still had.
    for hit in ["ID8", "ID9"] {
        assert_eq!(got[hit].0, crate::queue::spool::CORRUPT, "{hit}");
    }
    for (id, v) in &want {
        if id != "ID8" && id != "ID9" {
            assert_eq!(&got[id], v, "{id}");
        }
    }
    assert_eq!(got.len(), want.len());
    // Now journalled: the same after sled is lost.
    drop(spool);
    std::thread::sleep(std::time::Duration::from_millis(200));
    reopen(|| std::fs::remove_dir_all(&path).map_err(|e| e.to_string()));
    let spool = reopen(|| SledSpool::open(&path));
    let again = holds(&spool);
    for (id, v) in &want {
        if id != "ID8" && id != "ID9" {
            assert_eq!(&again[id], v, "{id} after sled was lost");
        }
    }
}

/// Changes written to the journal but never to sled (a crash right after the journal's
/// sync): the next open applies them.
#[test]
fn journalled_changes_reach_sled_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = history(&path);
    {
        // sled as it was before the history's changes: records put back, the new one gone.
        let db = raw_db(&path);
        db.remove(crate::queue::spool::CLOSED_CLEANLY).unwrap();
        let records = db.open_tree("records").unwrap();
        records
            .insert("ID5", &[QueueName::Incoming.byte(), 5, 5][..])
            .unwrap();
        records
            .insert("ID6", &[QueueName::Incoming.byte(), 6, 6][..])
            .unwrap();
        records.remove("NEW6").unwrap();
        records
            .insert(
                "ID3",
                [&[QueueName::Incoming.byte()][..], &[3u8; 40]].concat(),
            )
            .unwrap();
        db.flush().unwrap();
    }
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(holds(&spool), want);
}

/// Index entries that disagree with their record and sled leftovers without a record are
/// mended at open.
#[test]
fn repair_mends_index_and_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = history(&path);
    {
        let db = raw_db(&path);
        db.remove(crate::queue::spool::CLOSED_CLEANLY).unwrap();
        db.open_tree("content")
            .unwrap()
            .insert("ZZZ", "orphan")
            .unwrap();
        let index = db.open_tree("index").unwrap();
        index
            .remove([&[QueueName::Deferred.byte()][..], b"ID3"].concat())
            .unwrap();
        index
            .insert([&[QueueName::Hold.byte()][..], b"ID1"].concat(), b"")
            .unwrap();
        db.flush().unwrap();
    }
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(holds(&spool), want);
    assert_eq!(
        spool.ids(QueueName::Deferred.byte(), usize::MAX).unwrap(),
        vec!["ID3"]
    );
    assert_eq!(
        spool.ids(QueueName::Hold.byte(), usize::MAX).unwrap(),
        vec!["ID4"]
    );
    assert!(spool.content("ZZZ").unwrap().is_none());
    assert_eq!(spool.last_report().index_fixed, 2);
}

/// A spool written before the journal (small bodies in sled, large ones in old-format
/// segments without their records) is taken into the journal at open, and survives the loss
/// of sled afterwards.
#[test]
fn a_spool_from_before_the_journal_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = raw_db(&path);
        let records = db.open_tree("records").unwrap();
        let index = db.open_tree("index").unwrap();
        records
            .insert("OLD1", [&[QueueName::Deferred.byte()][..], b"r1"].concat())
            .unwrap();
        index
            .insert([&[QueueName::Deferred.byte()][..], b"OLD1"].concat(), b"")
            .unwrap();
        db.open_tree("content")
            .unwrap()
            .insert("OLD1", "small body")
            .unwrap();
        // An old-format body segment: "RLB1", length, CRC, id length, id, body.
        let body = big(b'o', 9000);
        let mut seg = b"RLB1".to_vec();
        seg.extend_from_slice(&(body.len() as u32).to_be_bytes());
        seg.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        seg.push(4);
        seg.extend_from_slice(b"OLD2");
        let off = seg.len() as u64;
        seg.extend_from_slice(&body);
        let bodies = crate::queue::spool::bodies_dir(&path);
        std::fs::create_dir_all(&bodies).unwrap();
        std::fs::write(bodies.join("00000000.seg"), &seg).unwrap();
        let r = crate::queue::journal::BlobRef {
            seg: 0,
            off,
            len: body.len() as u32,
            crc: crc32fast::hash(&body),
        };
        records
            .insert("OLD2", [&[QueueName::Incoming.byte()][..], b"r2"].concat())
            .unwrap();
        index
            .insert([&[QueueName::Incoming.byte()][..], b"OLD2"].concat(), b"")
            .unwrap();
        db.open_tree("blobs")
            .unwrap()
            .insert("OLD2", &r.encode())
            .unwrap();
        db.flush().unwrap();
    }
    {
        let spool = reopen(|| SledSpool::open(&path));
        assert_eq!(spool.last_report().migrated, 2);
        assert_eq!(spool.content("OLD1").unwrap().unwrap(), b"small body");
        assert_eq!(spool.content("OLD2").unwrap().unwrap(), big(b'o', 9000));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    reopen(|| std::fs::remove_dir_all(&path).map_err(|e| e.to_string()));
    let spool = reopen(|| SledSpool::open(&path));
    assert_eq!(
        spool.get("OLD1").unwrap().unwrap(),
        (QueueName::Deferred.byte(), b"r1".to_vec())
    );
    assert_eq!(spool.content("OLD2").unwrap().unwrap(), big(b'o', 9000));
    assert_eq!(
        segments(&path).len(),
        1,
        "the old-format segment went once unused"
    );
}

/// A journal append that fails (a full disk) is taken back: the next append reuses its
/// place, and the torn bytes never read as an entry.
#[test]
fn a_failed_append_leaves_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let j = crate::queue::journal::Journal::open(dir.path(), 1 << 20).unwrap();
    j.write_state("AAA", 1, b"rec").unwrap();
    j.sync().unwrap();
    let mut n = 0;
    let damage = j.scan(|_| n += 1).unwrap();
    assert_eq!((n, damage.len()), (1, 0));
}

/// A deferred-queue run's step looks at no more than its batch and keeps only what it
/// picks; steps from the returned cursor cover the whole queue once.
#[tokio::test]
async fn pick_after_steps_through_the_queue_a_batch_at_a_time() {
    let q = Queue::memory();
    let mut due = Vec::new();
    for i in 0..30 {
        let mut r = rec("a@x", &["b@y"]);
        // Odd ones are due; even ones wait for an hour.
        r.meta.next_attempt = if i % 2 == 1 { 0 } else { now().0 + 3600 };
        let id = q.enqueue(QueueName::Deferred, r, vec![]).await.unwrap();
        if i % 2 == 1 {
            due.push(id);
        }
    }
    // A message elsewhere is never picked.
    q.enqueue(QueueName::Hold, rec("a@x", &["b@y"]), vec![])
        .await
        .unwrap();
    // IDs sort by their microsecond prefix, not in the order made.
    let all = q.ids(QueueName::Deferred).await.unwrap();
    let due: Vec<String> = all.iter().filter(|i| due.contains(i)).cloned().collect();
    let due_in = |n: usize| -> Vec<String> {
        all[..n]
            .iter()
            .filter(|i| due.contains(i))
            .cloned()
            .collect()
    };
    let t = now().0;
    let is_due = move |r: &Record| r.meta.next_attempt <= t;
    let (got, cursor) = q
        .pick_after(QueueName::Deferred, String::new(), 8, 100, is_due)
        .await
        .unwrap();
    assert_eq!(cursor.as_deref(), Some(all[7].as_str()));
    assert_eq!(got, due_in(8));
    // `want` stops a step early, at the last one taken.
    let (got, cursor) = q
        .pick_after(QueueName::Deferred, String::new(), 8, 2, is_due)
        .await
        .unwrap();
    assert_eq!(got, due[..2].to_vec());
    assert_eq!(cursor.as_deref(), Some(due[1].as_str()));
    // Steps from each cursor: every due message once, then the end.
    let mut cursor = String::new();
    let mut seen = Vec::new();
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps <= 10, "the run does not end");
        let (got, next) = q
            .pick_after(QueueName::Deferred, cursor.clone(), 7, 3, is_due)
            .await
            .unwrap();
        assert!(got.len() <= 3);
        seen.extend(got);
        match next {
            Some(c) => {
                assert!(c > cursor);
                cursor = c;
            }
            None => break,
        }
    }
    assert_eq!(seen, due);
}

/// A listing is fixed by one pass: a message that moves afterwards is listed once, in the
/// queue it was found in, with its record as it is now; one removed meanwhile is left out.
#[tokio::test]
async fn listing_lists_each_message_once_in_batches() {
    let q = Queue::memory();
    let mut ids = Vec::new();
    for i in 0..7 {
        let queue = if i % 2 == 0 {
            QueueName::Deferred
        } else {
            QueueName::Active
        };
        ids.push(
            q.enqueue(queue, rec("a@x", &["b@y"]), vec![])
                .await
                .unwrap(),
        );
    }
    let mut listing = q
        .listing(&[QueueName::Active, QueueName::Deferred])
        .await
        .unwrap();
    assert_eq!(listing.len(), 7);
    // After the pass: one active message is deferred, one deferred one removed.
    q.transition(&ids[1], &[QueueName::Active], QueueName::Deferred, |r| {
        r.meta.attempts = 1
    })
    .await
    .unwrap()
    .unwrap();
    q.delete(&ids[2], &[QueueName::Deferred]).await.unwrap();
    let mut got = Vec::new();
    let mut rounds = 0;
    while !listing.is_done() {
        rounds += 1;
        assert!(rounds <= 10);
        let batch = listing.next(2);
        assert!(batch.len() <= 2);
        got.extend(q.listed(batch).await.unwrap());
    }
    let order: Vec<(String, QueueName)> = got.iter().map(|m| (m.id.clone(), m.queue)).collect();
    let group = |idx: &[usize], queue| {
        let mut g: Vec<(String, QueueName)> =
            idx.iter().map(|&i| (ids[i].clone(), queue)).collect();
        g.sort();
        g
    };
    let mut want = group(&[1, 3, 5], QueueName::Active);
    want.extend(group(&[0, 4, 6], QueueName::Deferred));
    assert_eq!(order, want);
    let moved = got.iter().find(|m| m.id == ids[1]).unwrap();
    assert_eq!(moved.record.meta.attempts, 1);
    assert!(listing.next(5).is_empty());
}

/// A spool that counts flushes, to see the batched operations share them.
pub(crate) struct CountingSpool {
    inner: MemSpool,
    pub(crate) flushes: std::sync::atomic::AtomicUsize,
}

impl Spool for CountingSpool {
    fn insert(&self, id: &str, state: u8, r: &[u8], c: &[u8]) -> Result<bool, SpoolError> {
        self.inner.insert(id, state, r, c)
    }
    fn get(&self, id: &str) -> Result<Option<(u8, Vec<u8>)>, SpoolError> {
        self.inner.get(id)
    }
    fn content(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        self.inner.content(id)
    }
    fn ids(&self, state: u8, limit: usize) -> Result<Vec<String>, SpoolError> {
        self.inner.ids(state, limit)
    }
    fn all(&self) -> Result<Vec<(String, u8)>, SpoolError> {
        self.inner.all()
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Change,
    ) -> Result<Option<Change>, SpoolError> {
        self.inner.update(id, f)
    }
    fn rename(
        &self,
        old: &str,
        new: &str,
        f: &mut dyn FnMut(u8, &[u8]) -> Option<(u8, Vec<u8>)>,
    ) -> Result<bool, SpoolError> {
        self.inner.rename(old, new, f)
    }
    fn flush(&self) -> Result<(), SpoolError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn generate_id(&self) -> Result<u64, SpoolError> {
        self.inner.generate_id()
    }
}

pub(crate) fn counting_queue() -> (Queue, Arc<CountingSpool>) {
    let spool = Arc::new(CountingSpool {
        inner: MemSpool::new(),
        flushes: Default::default(),
    });
    let q = Queue::with_spool(spool.clone(), false).unwrap();
    (q, spool)
}

/// `postsuper -d`/`-h` on many messages: one flush per batch, not one per message.
#[tokio::test]
async fn batched_operator_actions_share_one_flush() {
    let (q, spool) = counting_queue();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            q.enqueue(QueueName::Deferred, rec("a@x", &["b@y"]), vec![])
                .await
                .unwrap(),
        );
    }
    let flushes = || spool.flushes.load(std::sync::atomic::Ordering::SeqCst);
    let before = flushes();
    let held = q
        .transition_many(
            ids[..20].to_vec(),
            &[QueueName::Deferred],
            QueueName::Hold,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 20);
    assert_eq!(flushes(), before + 1);
    let gone = q
        .delete_many(ids.clone(), &[QueueName::Deferred])
        .await
        .unwrap();
    assert_eq!(gone.len(), 30);
    assert!(gone.iter().all(|(_, q)| *q == QueueName::Deferred));
    assert_eq!(flushes(), before + 2);
    // Nothing to do, nothing to flush.
    assert!(q
        .delete_many(ids[20..].to_vec(), &[QueueName::Deferred])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(flushes(), before + 2);
    assert_eq!(q.ids(QueueName::Hold).await.unwrap().len(), 20);
}

/// The sled spool's cursors: IDs of one state after a given one, records after one.
#[tokio::test]
async fn sled_cursors_page_through_one_state() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), false).unwrap();
    let mut ids = Vec::new();
    for i in 0..9 {
        let queue = if i % 3 == 0 {
            QueueName::Hold
        } else {
            QueueName::Deferred
        };
        ids.push((
            q.enqueue(queue, rec("a@x", &["b@y"]), vec![])
                .await
                .unwrap(),
            queue,
        ));
    }
    ids.sort();
    let s = q.spool().clone();
    let deferred: Vec<String> = ids
        .iter()
        .filter(|(_, q)| *q == QueueName::Deferred)
        .map(|(i, _)| i.clone())
        .collect();
    let d = QueueName::Deferred.byte();
    assert_eq!(s.ids_after(d, "", 4).unwrap(), deferred[..4].to_vec());
    assert_eq!(
        s.ids_after(d, &deferred[3], 4).unwrap(),
        deferred[4..].to_vec()
    );
    assert!(s.ids_after(d, &deferred[5], 4).unwrap().is_empty());
    assert_eq!(s.count(d).unwrap(), 6);
    let mut seen = Vec::new();
    let last = s
        .scan_after(&ids[1].0, 5, &mut |id, state, _| {
            seen.push((id.to_string(), state))
        })
        .unwrap();
    let want: Vec<(String, u8)> = ids[2..7]
        .iter()
        .map(|(i, q)| (i.clone(), q.byte()))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(last.as_deref(), Some(ids[6].0.as_str()));
    assert_eq!(
        s.scan_after(&ids[8].0, 5, &mut |_, _, _| panic!(
            "nothing after the last"
        ))
        .unwrap(),
        None
    );
}
