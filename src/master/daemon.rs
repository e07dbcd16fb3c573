//! The daemon's life: lock, log, runtime, services, signals, orderly exit.

use actix::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::supervisor::{Reload, Shutdown, Supervisor};
use super::{lock::PidLock, services, MasterError};
use crate::config::Config;

/// How long a graceful stop waits for services to wind down before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn ready_path(queue: &Path) -> PathBuf {
    queue.join("pid").join("master.ready")
}

/// True when the master holding the queue's lock has finished starting its services.
pub fn ready(queue: &Path) -> bool {
    match (
        std::fs::read_to_string(ready_path(queue)),
        super::lock::running_pid(queue),
    ) {
        (Ok(s), Some(pid)) => s.trim().parse::<u32>().ok() == Some(pid),
        _ => false,
    }
}

/// The file that says the master holding the lock is shutting down: its pid, written when
/// the stop signal arrives. `relais start` then waits for it to go instead of refusing.
fn stopping_path(queue: &Path) -> PathBuf {
    queue.join("pid").join("master.stopping")
}

/// The pid of the master holding the queue's lock if it is shutting down.
pub fn stopping(queue: &Path) -> Option<u32> {
    let pid = super::lock::running_pid(queue)?;
    let s = std::fs::read_to_string(stopping_path(queue)).ok()?;
    (s.trim().parse::<u32>().ok() == Some(pid)).then_some(pid)
}

/// Runs the mail system until SIGTERM/SIGINT. `foreground`: log to standard error when
/// maillog_file is empty (start-fg); the background start redirects that to a file.
///
/// Every reason to give up once the log is open is also logged as Postfix's master logs it
/// (`postfix/master[pid]: fatal: …`), so that it is in the maillog and not only on the
/// standard error of whoever started the daemon.
pub fn run(cfg_dir: &Path, verbose: bool, _foreground: bool) -> Result<(), MasterError> {
    limit_malloc_arenas();
    let cfg = Config::load(cfg_dir)?;
    let queue = super::queue_dir(&cfg);
    // Before the log: the default maillog_file is in the queue directory.
    let made = std::fs::create_dir_all(&queue).map_err(|e| {
        MasterError::Setup(format!(
            "queue_directory {}: {}",
            queue.display(),
            crate::log::strerror(&e)
        ))
    });
    let maillog = cfg.get("maillog_file");
    let sink = crate::log::open_sink(&maillog)
        .map_err(|e| MasterError::Setup(format!("maillog_file {maillog}: {e}")))?;
    let master_tag = crate::log::tag(&cfg.get("syslog_name"), "master");
    crate::log::init(&cfg.get("myhostname"), &master_tag, sink, verbose);
    let result = made.and_then(|()| serve(&cfg, &queue));
    // On standard error, main prints it anyway (once is enough there).
    if let Err(e) = &result {
        if !matches!(maillog.as_str(), "" | "/dev/stderr") {
            tracing::error!(target: crate::log::FATAL, "{e}");
        }
    }
    result
}

/// The daemon's life once its log is open: lock, queue, services, signals, orderly exit.
fn serve(cfg: &Config, queue: &Path) -> Result<(), MasterError> {
    let lock = PidLock::acquire(queue)?;
    // A stale mark of an earlier master with the same pid would read as "stopping".
    let _ = std::fs::remove_file(stopping_path(queue));
    raise_nofile_limit();
    for p in cfg.check() {
        tracing::warn!("{}", p.text);
    }
    let specs = services::load_specs(cfg)?;
    // As Postfix's master, which binds every inet listener itself before it runs anything:
    // a port that cannot be bound at start is fatal (later, a service's restart retries).
    services::probe_listeners(cfg, &specs)?;

    let sys = System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("relais")
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .build()
            .expect("tokio runtime")
    });
    let result: Result<(), MasterError> = sys.block_on(async {
        let shared = services::Shared::open(cfg).await?;
        let sup = Supervisor::new(cfg.clone(), specs, services::starter(shared.clone())).start();
        // The supervisor starts every service (and binds every listener) before it answers
        // its first message: only then is the master ready, or a client that trusts the ready
        // file could find the SMTP port closed.
        let _ = sup.send(super::supervisor::Status).await;
        tracing::info!(
            "daemon started -- version {}, configuration {}",
            env!("CARGO_PKG_VERSION"),
            cfg.dir.display()
        );
        // The supervisor starts (and binds) the services in its started(); a message it has
        // answered proves that ran, so `relais start` reports ready only with ports open.
        let _ = sup.send(super::supervisor::Status).await;
        let _ = std::fs::write(ready_path(queue), format!("{}\n", std::process::id()));

        let mut hup = signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut trim = tokio::time::interval(TRIM_EVERY);
        loop {
            tokio::select! {
                _ = trim.tick() => {
                    // Off the runtime's threads: it walks the allocator's free lists.
                    tokio::task::spawn_blocking(crate::queue::trim_heap);
                }
                _ = hup.recv() => {
                    match Config::load(&cfg.dir).and_then(|c| Ok((services::load_specs(&c).map_err(|e| crate::config::ConfigError::Invalid(e.to_string()))?, c))) {
                        Ok((specs, c)) => {
                            tracing::info!("reload -- version {}, configuration {}", env!("CARGO_PKG_VERSION"), c.dir.display());
                            shared.reload(&c);
                            sup.do_send(Reload { base: c, services: specs });
                        }
                        Err(e) => tracing::warn!("reload: {e}; keeping the running configuration"),
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        // Not ready any more, and stopping: a `relais start` now waits for the lock.
        let _ = std::fs::remove_file(ready_path(queue));
        let _ = std::fs::write(stopping_path(queue), format!("{}\n", std::process::id()));
        tracing::info!("terminating on signal");
        let _ = sup.send(Shutdown).await;
        shared.shutdown(STOP_GRACE).await;
        Ok(())
    });
    let _ = std::fs::remove_file(ready_path(queue));
    // The runtime goes first, and with it every actor and the queue (sled's lock on db/db
    // and its last flush): the lock below tells `relais stop` and `relais start` that the
    // queue is free, so it must be the last thing released.
    drop(sys);
    let _ = std::fs::remove_file(stopping_path(queue));
    drop(lock);
    result
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, MasterError> {
    tokio::signal::unix::signal(kind)
        .map_err(|e| MasterError::Setup(format!("signal handler: {e}")))
}

/// Every SMTP session holds a descriptor: raise the soft RLIMIT_NOFILE to the hard limit so
/// that idle clients cannot exhaust a small default (often 1024) before the per-client limits
/// apply, and log what the process got.
/// How often the daemon gives freed heap back to the system (`malloc_trim`): after a burst
/// of mail the allocator kept 10–25 MB free but resident (100,000 messages injected: 72 MB
/// resident, 60 MB after a trim).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Threads for blocking work (queue operations, flushes, file writes) at most. Tokio's
/// default, 512, let a burst of queue operations start dozens of threads, each keeping its
/// own malloc arena and stack pages when idle (57 threads in a daemon with 100,000 queued
/// messages); the work is short (group commit runs one flush at a time) and the machine has
/// few cores, so a burst waits its turn instead.
const MAX_BLOCKING_THREADS: usize = 32;

/// glibc gives each thread that allocates under contention an arena of its own (up to eight
/// per core) and keeps freed memory in it; with a few dozen threads that was tens of MB of
/// free but resident memory (2.7 MB an arena after a burst). Four arenas for the whole
/// daemon; an explicit MALLOC_ARENA_MAX in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads run.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 4);
        }
    }
}

fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim = want;
        } else {
            tracing::warn!(
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                want.rlim_cur,
                std::io::Error::last_os_error()
            );
        }
    }
    tracing::info!(
        "file descriptor limit: {} (was {before}, hard limit {})",
        lim.rlim_cur,
        lim.rlim_max
    );
}
