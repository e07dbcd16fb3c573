//! The queue tools as real binaries on a temporary queue, with the daemon "stopped" (the
//! tools open the database directly) and "running" (`control::serve` in this process),
//! compared with the Postfix golden files where the data allows.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use relais::control::{self, QueueHandler};
use relais::envelope::{Envelope, Origin, Recipient};
use relais::queue::{Meta, Queue, QueueName, Record};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/postfix-reference"
);
const REFUSED: &str = "connect to 127.0.0.1[127.0.0.1]:10129: Connection refused";
const ARRIVAL: i64 = 1_795_421_655;

/// The stdout, stderr and exit status of a golden capture.
fn golden(name: &str) -> Option<(String, String, i32)> {
    let text = std::fs::read_to_string(Path::new(GOLDEN).join(name)).ok()?;
    let section = |tag: &str| -> String {
        let start = text.find(tag).unwrap();
        let hdr_end = start + text[start..].find('\n').unwrap() + 1;
        let n: usize = text[start + tag.len()..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        text[hdr_end..hdr_end + n].to_string()
    };
    let rc = text
        .split("==== exit status: ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((section("==== stdout ("), section("==== stderr ("), rc))
}

struct Env {
    _tmp: tempfile::TempDir,
    conf: PathBuf,
    qdir: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("etc");
    let qdir = tmp.path().join("spool");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&qdir).unwrap();
    std::fs::write(
        conf.join("main.cf"),
        format!(
            "queue_directory = {}\nmyhostname = mail.exemple.fr\ncompatibility_level = 3.6\n",
            qdir.display()
        ),
    )
    .unwrap();
    Env {
        _tmp: tmp,
        conf,
        qdir,
    }
}

fn rcpt(addr: &str, reason: Option<&str>) -> Recipient {
    let mut r = Recipient::new(addr);
    r.orcpt = Some(format!("rfc822;{addr}"));
    r.reason = reason.map(str::to_string);
    r
}

fn record(sender: &str, rcpts: Vec<Recipient>, smtp: bool) -> Record {
    Record {
        envelope: Envelope {
            sender: sender.into(),
            sender_fullname: (!smtp).then(|| "root".to_string()),
            recipients: rcpts,
            ..Default::default()
        },
        origin: if smtp {
            Origin {
                client_name: "unknown".into(),
                client_addr: "127.0.0.1".into(),
                client_port: 58366,
                helo: Some("client.example.com".into()),
                protocol: "ESMTP".into(),
                service: "smtp".into(),
                ..Default::default()
            }
        } else {
            Origin {
                uid: Some(0),
                protocol: "sendmail".into(),
                service: "pickup".into(),
                ..Default::default()
            }
        },
        meta: Meta {
            arrival_time: ARRIVAL,
            // Six digits, as in the captures' time records (only the length shows, in -o).
            arrival_usec: 415276,
            ..Default::default()
        },
    }
}

const THREE_RCPT_BODY: &str = "Received: by mail.exemple.fr (Postfix, from userid 0)\n\tid 527309AA1A6; Mon, 23 Nov 2026 08:14:15 +0000 (UTC)\nFrom: Carol <carol@example.org>\nTo: dan@example.net, erin@example.net, frank@example.org\nSubject: Three recipients\nMessage-ID: <three-rcpts@example.org>\nDate: Mon, 23 Nov 2026 08:14:15 +0000 (UTC)\n\nOne message, three recipients.\n";

fn sized(n: usize) -> Vec<u8> {
    let mut v = b"Subject: filler\n\n".to_vec();
    v.resize(n, b'x');
    v
}

/// The queue of the phase-A captures: four deferred messages and one on hold.
fn populate(q: &Queue) {
    let held = format!("delivery temporarily suspended: {REFUSED}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut three = THREE_RCPT_BODY.as_bytes().to_vec();
        three.resize(347, b'\n');
        let msgs: Vec<(&str, Record, Vec<u8>, QueueName)> = vec![
            (
                "527309AA1A6",
                record(
                    "carol@example.org",
                    vec![
                        rcpt("dan@example.net", Some(REFUSED)),
                        rcpt("erin@example.net", Some(REFUSED)),
                        rcpt("frank@example.org", Some(REFUSED)),
                    ],
                    false,
                ),
                three,
                QueueName::Deferred,
            ),
            (
                "5A42D9AA1B4",
                record(
                    "grace@example.com",
                    vec![rcpt("heidi@example.net", Some(REFUSED))],
                    true,
                ),
                sized(63480),
                QueueName::Deferred,
            ),
            (
                "59A0A9AA1B2",
                record(
                    "",
                    vec![rcpt("postmaster@example.net", Some(REFUSED))],
                    true,
                ),
                sized(451),
                QueueName::Deferred,
            ),
            (
                "4FF0E9AA1A8",
                record(
                    "alice@example.com",
                    vec![rcpt("bob@example.net", Some(REFUSED))],
                    false,
                ),
                sized(359),
                QueueName::Deferred,
            ),
            (
                "5ACB19AA1B5",
                record(
                    "ivan@example.com",
                    vec![rcpt("judy@example.net", Some(&held))],
                    true,
                ),
                sized(376),
                QueueName::Hold,
            ),
        ];
        for (id, rec, body, queue) in msgs {
            q.commit(id, queue, rec, body).await.unwrap();
        }
    });
}

fn run(e: &Env, bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(["-c", e.conf.to_str().unwrap()])
        .args(args)
        .env("TZ", "UTC")
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The golden listing, with deferred messages in our (ID) order instead of Postfix's hash
/// directory order.
fn golden_listing_sorted(stdout: &str) -> String {
    let mut parts: Vec<&str> = stdout.split("\n\n").collect();
    let trailer = parts.pop().unwrap();
    let header_and_first = parts.remove(0);
    let (header, first) = header_and_first.split_once('\n').unwrap();
    let mut msgs: Vec<&str> = vec![first];
    msgs.extend(parts);
    let (mut deferred, hold): (Vec<&str>, Vec<&str>) = msgs
        .into_iter()
        .partition(|m| !m.split(' ').next().unwrap().ends_with('!'));
    deferred.sort();
    let mut out = format!("{header}\n");
    for m in deferred.into_iter().chain(hold) {
        out.push_str(m);
        out.push_str("\n\n");
    }
    out.push_str(trailer);
    out
}

/// sled releases its file lock from a background thread after the last handle is dropped;
/// wait (bounded) until a tool could take it, as it could once a real daemon has exited.
fn wait_unlocked(qdir: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(qdir.join("db").join("db")).unwrap();
    for _ in 0..200 {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("queue database still locked");
}

/// A dead socket file, so that connecting says "Connection refused" as in the captures.
fn stale_socket(e: &Env) {
    let p = control::socket_path(&e.qdir);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
}

#[test]
fn stopped_daemon_tools_use_the_queue_directly() {
    let e = env();
    {
        let q = Queue::open(&e.qdir, false).unwrap();
        populate(&q);
    }
    wait_unlocked(&e.qdir);
    stale_socket(&e);
    let warn = "postqueue: warning: Mail system is down -- accessing queue directly (Connect to the Postfix showq service: Connection refused)\n";

    let (gout, _, _) = golden("postqueue-p-deferred-and-hold.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    assert_eq!(text(&o.stdout), golden_listing_sorted(&gout));
    assert_eq!(text(&o.stderr), warn);
    assert_eq!(o.status.code(), Some(0));

    // mailq: the same listing, the configuration from MAIL_CONFIG.
    let o = Command::new(env!("CARGO_BIN_EXE_mailq"))
        .env("MAIL_CONFIG", &e.conf)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), golden_listing_sorted(&gout));

    // -j: the same lines as Postfix, in our order.
    let (gj, _, _) = golden("postqueue-j-deferred-and-hold.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-j"]);
    let mut want: Vec<&str> = gj.lines().collect();
    let mut got: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);

    // -f needs the daemon.
    let (gout, gerr, grc) = golden("postqueue-f-mail-system-down.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-f"]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr), o.status.code()),
        (gout, gerr, Some(grc))
    );

    // postcat: the envelope and content sections as Postfix prints them (the size record's
    // data offset is a Postfix file layout detail and differs).
    let (gout, _, _) = golden("postcat-q-sendmail-3rcpt.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postcat"), &["-q", "527309AA1A6"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let strip = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("message_size:") && !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&text(&o.stdout)), strip(&gout));
    let size_line = text(&o.stdout).lines().nth(1).unwrap().to_string();
    assert!(
        size_line.starts_with("message_size:             347 "),
        "{size_line}"
    );
    for flag in ["-h", "-b", "-e"] {
        let name = format!("postcat-{}-q-sendmail-3rcpt.txt", &flag[1..]);
        let (gout, _, _) = golden(&name).unwrap();
        let o = run(
            &e,
            env!("CARGO_BIN_EXE_postcat"),
            &[flag, "-q", "527309AA1A6"],
        );
        assert_eq!(strip(&text(&o.stdout)), strip(&gout), "{flag}");
    }
    // -o (offsets), -d (decimal record types), -v (record names of content), -r (file
    // order): byte for byte up to the end of the body. The fixture pads the content with
    // empty lines to Postfix's size figure, so the empty records after the body and the
    // offsets of the two trailing markers are relais's own.
    for flag in ["-o", "-d", "-v", "-r"] {
        let name = format!("postcat-{}-q-sendmail-3rcpt.txt", &flag[1..]);
        let (gout, _, _) = golden(&name).unwrap();
        let o = run(
            &e,
            env!("CARGO_BIN_EXE_postcat"),
            &[flag, "-q", "527309AA1A6"],
        );
        assert_eq!(o.status.code(), Some(0), "{flag}: {}", text(&o.stderr));
        let upto_body = |s: &str| -> Vec<String> {
            let lines: Vec<&str> = s.lines().collect();
            let end = lines
                .iter()
                .position(|l| l.ends_with("One message, three recipients."))
                .unwrap();
            let mut v: Vec<String> = lines[..=end].iter().map(|l| l.to_string()).collect();
            // The markers, without their offsets.
            for l in &lines[end + 1..] {
                if let Some(i) = l.find("*** ") {
                    v.push(l[i..].to_string());
                }
            }
            v
        };
        assert_eq!(upto_body(&text(&o.stdout)), upto_body(&gout), "{flag}");
    }
    let (gout, gerr, grc) = golden("postcat-q-nosuchid.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postcat"), &["-q", "NOSUCHID"]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr), o.status.code()),
        (gout, gerr, Some(grc))
    );

    // postsuper, directly on the database.
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-d", "bad/id"]);
    let (_, gerr, grc) = golden("postsuper-d-invalid-queue-id.txt").unwrap();
    assert_eq!((text(&o.stderr), o.status.code()), (gerr, Some(grc)));
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-d", "NOSUCHID"]);
    let (_, gerr, _) = golden("postsuper-d-nosuchid.txt").unwrap();
    assert_eq!(text(&o.stderr), gerr);
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-H", "5ACB19AA1B5"]);
    let (_, gerr, _) = golden("postsuper-H-release-one.txt").unwrap();
    assert_eq!(text(&o.stderr), gerr);
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-h", "5ACB19AA1B5"]);
    let (_, gerr, _) = golden("postsuper-h-hold-one.txt").unwrap();
    assert_eq!(text(&o.stderr), gerr);
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-r", "4FF0E9AA1A8"]);
    let (_, gerr, _) = golden("postsuper-r-requeue-one.txt").unwrap();
    assert_eq!(text(&o.stderr), gerr);
    // The requeued message waits in maildrop under its old ID, no longer marked.
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-j"]);
    assert!(
        text(&o.stdout).contains("{\"queue_name\": \"maildrop\", \"queue_id\": \"4FF0E9AA1A8\"")
    );
    let o = run(
        &e,
        env!("CARGO_BIN_EXE_postsuper"),
        &["-d", "ALL", "deferred"],
    );
    let (_, gerr, _) = golden("postsuper-d-ALL-deferred.txt").unwrap();
    assert_eq!(text(&o.stderr), gerr);
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-d", "ALL"]);
    let (_, gerr, _) = golden("postsuper-d-ALL.txt").unwrap();
    assert_eq!(
        text(&o.stderr),
        gerr,
        "only the held message was left in the -d ALL queues"
    );
    let o = run(
        &e,
        env!("CARGO_BIN_EXE_postsuper"),
        &["-d", "4FF0E9AA1A8", "maildrop"],
    );
    assert_eq!(
        text(&o.stderr),
        "postsuper: 4FF0E9AA1A8: removed\npostsuper: Deleted: 1 message\n"
    );
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    let (gout, _, _) = golden("postqueue-p-empty-queue.txt").unwrap();
    assert_eq!(text(&o.stdout), gout);
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-j"]);
    assert_eq!(text(&o.stdout), "");
}

#[test]
fn running_daemon_tools_use_the_socket() {
    let e = env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let q = Queue::open(&e.qdir, false).unwrap();
    populate(&q);
    let (tx, mut events) = tokio::sync::mpsc::channel(16);
    q.set_events(tx);
    let cfg = relais::config::Config::load(&e.conf).unwrap();
    let handler = Arc::new(QueueHandler::new(q.clone(), &cfg));
    let listener = rt
        .block_on(async { control::server::bind(&e.qdir) })
        .unwrap();
    rt.spawn(control::serve(listener, handler));
    // The socket is public: any local user may connect.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(control::socket_path(&e.qdir))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);

    let (gout, _, _) = golden("postqueue-p-deferred-and-hold.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    assert_eq!(text(&o.stdout), golden_listing_sorted(&gout));
    assert_eq!(text(&o.stderr), "");

    let (gout, gerr, grc) = golden("postqueue-f.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-f"]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr), o.status.code()),
        (gout, gerr, Some(grc))
    );
    assert_eq!(
        events.blocking_recv(),
        Some(relais::queue::QueueEvent::Flush)
    );

    let (gout, gerr, grc) =
        golden("postqueue-s-example.net-not-fast-flush-stderr-not-tty.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-s", "example.net"]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr), o.status.code()),
        (gout, gerr, Some(grc))
    );

    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-i", "527309AA1A6"]);
    assert_eq!((text(&o.stderr), o.status.code()), (String::new(), Some(0)));
    assert_eq!(
        events.blocking_recv(),
        Some(relais::queue::QueueEvent::DeliverOne("527309AA1A6".into()))
    );

    // postsuper through the daemon (we are root or the daemon's uid: allowed).
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-h", "527309AA1A6"]);
    assert_eq!(
        text(&o.stderr),
        "postsuper: 527309AA1A6: placed on hold\npostsuper: Placed on hold: 1 message\n"
    );
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-f", "527309AA1A6"]);
    assert_eq!(
        text(&o.stderr),
        "postsuper: 527309AA1A6: expired\npostsuper: Force-expired: 1 message\npostsuper: Released from hold: 1 message\n"
    );
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    assert!(
        text(&o.stdout).contains("527309AA1A6#     347"),
        "{}",
        text(&o.stdout)
    );
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-r", "ALL"]);
    let (_, gerr, _) = golden("postsuper-r-ALL.txt").unwrap();
    assert_eq!(text(&o.stderr), gerr);

    // postcat through the socket.
    let o = run(&e, env!("CARGO_BIN_EXE_postcat"), &["-q", "59A0A9AA1B2"]);
    let out = text(&o.stdout);
    assert!(
        out.starts_with("*** ENVELOPE RECORDS maildrop/59A0A9AA1B2 ***\n"),
        "{out}"
    );
    assert!(
        out.contains("\nsender: \nnamed_attribute: log_client_name=unknown\n"),
        "{out}"
    );
    let (_, gerr, grc) = golden("postcat-q-nosuchid-stderr-not-tty.txt").unwrap();
    let o = run(&e, env!("CARGO_BIN_EXE_postcat"), &["-q", "NOSUCHID"]);
    assert_eq!((text(&o.stderr), o.status.code()), (gerr, Some(grc)));

    // A maildrop submission over the socket is durable and carries the peer's uid.
    let mut c = control::Client::connect(&e.qdir).unwrap();
    let env_ = Envelope {
        sender: "root".into(),
        recipients: vec![Recipient::new("bob@example.net")],
        ..Default::default()
    };
    let origin = Origin {
        uid: Some(4242),
        ..Default::default()
    };
    let (resp, _) = c
        .call(
            &control::Request::Submit {
                envelope: env_,
                origin,
                content_length: 5,
            },
            Some(b"hi\n\n."),
        )
        .unwrap();
    let control::Response::Queued { id } = resp else {
        panic!("{resp:?}")
    };
    let m = rt.block_on(q.get(&id)).unwrap().unwrap();
    assert_eq!(m.queue, QueueName::Maildrop);
    assert_eq!(m.record.origin.uid, Some(unsafe { libc::getuid() }));
    assert_eq!(rt.block_on(q.content(&id)).unwrap().unwrap(), b"hi\n\n.");
    rt.shutdown_background();
}

/// The daemon holds the database but its socket does not answer: the tools cannot read
/// the queue either way and say the mail system is down (EX_UNAVAILABLE), never a crash.
#[test]
fn locked_database_without_socket_is_mail_system_down() {
    let e = env();
    let _q = Queue::open(&e.qdir, false).unwrap();
    stale_socket(&e);
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    assert_eq!(o.status.code(), Some(69));
    assert_eq!(
        text(&o.stderr),
        "postqueue: fatal: Queue report unavailable - mail system is down\n"
    );
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-f"]);
    let (_, gerr, grc) = golden("postqueue-f-mail-system-down.txt").unwrap();
    assert_eq!((text(&o.stderr), o.status.code()), (gerr, Some(grc)));
    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-d", "ALL"]);
    assert_eq!(o.status.code(), Some(69));
    assert!(text(&o.stderr).starts_with("postsuper: fatal: mail system is down"));
}

/// A queue of a few thousand messages through the running daemon's socket: `postqueue -p`
/// and `-j` arrive in many batches and print exactly what formatting the whole queue at
/// once prints (the listing before it was streamed); `postsuper -d ALL` deletes them all
/// in batches and says so as Postfix does.
#[test]
fn thousands_of_messages_list_in_batches_and_delete_all() {
    let e = env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let q = Queue::open(&e.qdir, false).unwrap();
    const N: usize = 3000;
    let queues = [
        QueueName::Deferred,
        QueueName::Hold,
        QueueName::Active,
        QueueName::Incoming,
    ];
    for i in 0..N {
        let id = q.new_id_now().unwrap();
        let reason = (i % 3 != 0).then_some(REFUSED);
        let mut rcpts = vec![rcpt(&format!("user{i}@example.net"), reason)];
        if i % 7 == 0 {
            rcpts.push(rcpt("other@example.org", None));
        }
        let mut r = record(
            if i % 5 == 0 { "" } else { "alice@example.com" },
            rcpts,
            true,
        );
        r.meta.arrival_time = ARRIVAL + i as i64;
        r.meta.forced_expire = i % 11 == 0;
        q.store_blocking(&id, queues[i % queues.len()], r, &sized(300 + i))
            .unwrap();
    }
    rt.block_on(q.durable()).unwrap();
    let all = rt.block_on(q.list_many(&QueueName::SHOWQ_ORDER)).unwrap();
    assert_eq!(all.len(), N);
    let entries: Vec<control::Entry> = all.iter().map(control::server::entry).collect();
    let want_text = relais::showq::format_text(&entries, false);
    let want_json = relais::showq::format_json(&entries);

    let cfg = relais::config::Config::load(&e.conf).unwrap();
    let handler = Arc::new(QueueHandler::new(q.clone(), &cfg));
    let listener = rt
        .block_on(async { control::server::bind(&e.qdir) })
        .unwrap();
    rt.spawn(control::serve(listener, handler));

    // The tools run with TZ=UTC, this process in whatever zone it has: the arrival time
    // column (the same function formats it) is left out of the comparison.
    let mask = |s: &str| -> String {
        s.lines()
            .map(|l| {
                if l.len() > 40 && !l.starts_with([' ', '-']) {
                    format!("{}#{}", &l[..20], &l[39..])
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    assert_eq!(text(&o.stderr), "");
    assert!(text(&o.stdout).ends_with('\n'));
    assert!(
        mask(&text(&o.stdout)) == mask(&want_text),
        "postqueue -p differs"
    );
    assert!(want_text.ends_with(&format!(" Kbytes in {N} Requests.\n")));
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-j"]);
    assert!(text(&o.stdout) == want_json, "postqueue -j differs");
    assert_eq!(text(&o.stdout).lines().count(), N);

    let o = run(&e, env!("CARGO_BIN_EXE_postsuper"), &["-d", "ALL"]);
    assert_eq!(
        text(&o.stderr),
        format!("postsuper: Deleted: {N} messages\n")
    );
    let o = run(&e, env!("CARGO_BIN_EXE_postqueue"), &["-p"]);
    assert_eq!(text(&o.stdout), "Mail queue is empty\n");
    rt.shutdown_background();
}
