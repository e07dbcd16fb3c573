use super::*;
use crate::envelope::Recipient;

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

/// A reinjection (maildrop → incoming under a new ID) cut off after any of its writes leaves,
/// after repair at open, exactly one copy of the message with its body and one index entry.
#[tokio::test]
async fn interrupted_rename_is_completed_or_undone_at_open() {
    // A small body (in sled) and a large one (in a body segment).
    for body in [
        b"body".to_vec(),
        vec![b'b'; 3 * crate::queue::blob::BLOB_MIN],
    ] {
        for steps in 0..=4 {
            let dir = tempfile::tempdir().unwrap();
            let old = {
                let q = Queue::open(dir.path(), false).unwrap();
                let old = q
                    .enqueue(QueueName::Maildrop, rec("a@x", &["b@y"]), body.clone())
                    .await
                    .unwrap();
                let spool = q.spool().clone();
                drop(q);
                drop(spool);
                old
            };
            {
                let spool = reopen(|| SledSpool::open(&dir.path().join("db")));
                spool.rename_interrupted(&old, "NEW1", steps).unwrap();
                spool.flush().unwrap();
            }
            let q = reopen(|| Queue::open(dir.path(), false));
            let all: Vec<String> = q
                .list_many(&QueueName::ALL)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect();
            let expect = if steps == 4 { "NEW1" } else { old.as_str() };
            assert_eq!(all, vec![expect.to_string()], "after {steps} writes");
            assert_eq!(q.content(expect).await.unwrap().unwrap(), body, "{steps}");
            let other = if steps == 4 { old.as_str() } else { "NEW1" };
            assert!(q.content(other).await.unwrap().is_none(), "{steps}");
            let listed: usize = [QueueName::Maildrop, QueueName::Incoming]
                .iter()
                .map(|&qn| q.spool().ids(qn.byte(), usize::MAX).unwrap().len())
                .sum();
            assert_eq!(listed, 1, "index after {steps} writes");
        }
    }
}

/// Index entries that disagree with their record, missing ones, and bodies without a
/// record (what a crash between a change's writes leaves) are mended at open.
#[test]
fn repair_mends_index_and_orphan_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let spool = SledSpool::open(&path).unwrap();
        assert!(spool
            .insert("AAA", QueueName::Incoming.byte(), b"r", b"c")
            .unwrap());
        // A move to deferred cut off after its first write: both index entries.
        spool
            .put_raw("AAA", QueueName::Deferred.byte(), b"r")
            .unwrap();
        spool
            .insert("BBB", QueueName::Incoming.byte(), b"r", b"c")
            .unwrap();
        // A removal cut off after its commit point: body and index left behind.
        spool.update("BBB", &mut |_, _| Change::Remove).unwrap();
        spool
            .put_raw("BBB", QueueName::Incoming.byte(), b"r")
            .unwrap();
        spool.flush().unwrap();
    }
    {
        let db = raw_db(&path);
        // A crash: no closed-cleanly mark.
        db.remove(crate::queue::spool::CLOSED_CLEANLY).unwrap();
        db.open_tree("records").unwrap().remove("BBB").unwrap();
        db.open_tree("content")
            .unwrap()
            .insert("ZZZ", "orphan")
            .unwrap();
        db.open_tree("index")
            .unwrap()
            .remove([&[QueueName::Deferred.byte()][..], b"AAA"].concat())
            .unwrap();
        db.flush().unwrap();
    }
    let spool = reopen(|| SledSpool::open(&path));
    assert!(
        !spool.repair(true).unwrap(),
        "open already repaired everything"
    );
    assert_eq!(
        spool.ids(QueueName::Deferred.byte(), usize::MAX).unwrap(),
        vec!["AAA"]
    );
    assert!(spool
        .ids(QueueName::Incoming.byte(), usize::MAX)
        .unwrap()
        .is_empty());
    assert!(spool.content("ZZZ").unwrap().is_none());
    assert!(spool.content("BBB").unwrap().is_none());
    assert_eq!(spool.content("AAA").unwrap().unwrap(), b"c");
}

/// After a clean close the next open skips the scan of every body (the mark says no change
/// was cut); after a change was cut, it scans.
#[test]
fn only_a_run_that_was_cut_short_costs_a_body_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let orphan = |key: &str| {
        let db = raw_db(&path);
        let marked = db
            .get(crate::queue::spool::CLOSED_CLEANLY)
            .unwrap()
            .is_some();
        db.open_tree("content").unwrap().insert(key, "x").unwrap();
        db.flush().unwrap();
        marked
    };
    {
        let spool = SledSpool::open(&path).unwrap();
        spool
            .insert("AAA", QueueName::Incoming.byte(), b"r", b"c")
            .unwrap();
    }
    assert!(orphan("ZZZ"), "a clean close leaves the mark");
    {
        let spool = reopen(|| SledSpool::open(&path));
        assert!(
            spool.content("ZZZ").unwrap().is_some(),
            "no scan after a clean close"
        );
        // A change cut between its writes: the next open must scan.
        spool.rename_interrupted("AAA", "NEW1", 2).unwrap();
    }
    assert!(!orphan("YYY"), "no mark after a cut change");
    let spool = reopen(|| SledSpool::open(&path));
    assert!(spool.content("YYY").unwrap().is_none());
    assert!(spool.content("ZZZ").unwrap().is_none());
    assert!(spool.content("NEW1").unwrap().is_none());
    assert_eq!(spool.content("AAA").unwrap().unwrap(), b"c");
}

fn big(fill: u8, len: usize) -> Vec<u8> {
    vec![fill; len]
}

/// Large bodies go to segment files and come back intact across a reopen; a reinjection
/// shares its body; a segment whose bodies are all gone is unlinked after the next flush,
/// the active one only once it is closed.
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
        // Under the threshold: stays in sled.
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
    assert_eq!(files(), 2, "not before the removals are flushed");
    spool.flush().unwrap();
    assert_eq!(files(), 1, "the first segment went with its last body");
    assert_eq!(spool.content("CCC").unwrap().unwrap(), big(b'c', n));
    spool.update("CCC", &mut |_, _| Change::Remove).unwrap();
    spool.flush().unwrap();
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

/// sled can persist a record before the flush that syncs its body; if the process dies
/// then, the body is torn and the message was never acknowledged. The next open drops it;
/// the other messages stay.
#[test]
fn a_record_whose_body_was_torn_by_a_crash_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let n = 20 << 10;
    {
        let spool = SledSpool::open(&path).unwrap();
        spool
            .insert("GOOD", QueueName::Incoming.byte(), b"r", &big(b'g', n))
            .unwrap();
        spool
            .insert("TORN", QueueName::Incoming.byte(), b"r", &big(b't', n))
            .unwrap();
        spool.flush().unwrap();
    }
    // The crash: the last body cut short, no closed-cleanly mark.
    let seg = std::fs::read_dir(crate::queue::spool::bodies_dir(&path))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 100).unwrap();
    drop(f);
    {
        let db = raw_db(&path);
        db.remove(crate::queue::spool::CLOSED_CLEANLY).unwrap();
        db.flush().unwrap();
    }
    let spool = reopen(|| SledSpool::open(&path));
    assert!(spool.get("TORN").unwrap().is_none());
    assert!(spool
        .ids(QueueName::Incoming.byte(), usize::MAX)
        .unwrap()
        .contains(&"GOOD".to_string()));
    assert_eq!(spool.content("GOOD").unwrap().unwrap(), big(b'g', n));
    assert_eq!(
        spool
            .ids(QueueName::Incoming.byte(), usize::MAX)
            .unwrap()
            .len(),
        1
    );
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
