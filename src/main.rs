//! `relais`: start, stop, reload, check and inspect the mail system, as `postfix(1)` does.
//!
//! What it says goes to standard error and, as Postfix's postfix-script logs through
//! postlog(1), to the maillog as `postfix/postfix-script[pid]: …`. `stop` returns when the
//! daemon has gone (lock released, process exited), at most a minute later; `start` (and
//! `start-fg`) wait as long for a daemon that is still stopping, then say
//! `the relais mail system is still stopping`.

use relais::cli::exit;
use relais::config::{self, Config};
use relais::master::{self, lock};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: relais [-c config_dir] [-v] start|start-fg|stop|abort|reload|status|check|flush";
const SCRIPT: &str = "relais/relais-script";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut verbose = false;
    let mut command: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" => match args.next() {
                Some(d) => dir = Some(PathBuf::from(d)),
                None => usage(),
            },
            "-v" => verbose = true,
            "-D" => {}
            "-h" | "--help" => {
                println!("{USAGE}\n\n  start     start the mail system in the background\n  start-fg  run it in the foreground (systemd, containers)\n  stop      stop it gracefully\n  abort     stop it at once\n  reload    re-read main.cf and master.cf without losing mail or sessions\n  status    tell whether it runs\n  check     validate the configuration and queue directory\n  flush     attempt to deliver all queued mail\n\n  -c dir    configuration directory (else $MAIL_CONFIG, else /etc/postfix)\n  -v        verbose logging");
                std::process::exit(exit::OK);
            }
            s if s.starts_with('-') => usage(),
            s if command.is_none() => command = Some(s.to_string()),
            _ => usage(),
        }
    }
    let Some(command) = command else { usage() };
    // Absolute, so that `$config_directory/…` table names stay valid in the daemon (Postfix
    // insists on absolute table paths) whatever directory relais was started from.
    let cfg_dir = config::config_dir(dir.as_deref());
    let cfg_dir = if cfg_dir.is_absolute() {
        cfg_dir
    } else {
        std::env::current_dir()
            .map(|c| c.join(&cfg_dir))
            .unwrap_or(cfg_dir)
    };
    let cfg = match Config::load(&cfg_dir) {
        Ok(c) => c,
        Err(e) => fatal(exit::FAIL, e),
    };
    let queue = master::queue_dir(&cfg);
    let script = Script::new(&cfg);
    let code = match command.as_str() {
        "check" => check(&cfg, None),
        "start-fg" => {
            if let Err(code) = wait_for_stopping(&script, &queue) {
                std::process::exit(code);
            }
            if check(&cfg, Some(&script)) != exit::OK {
                script.fatal("configuration errors: not starting");
                std::process::exit(exit::FAIL);
            }
            match master::daemon::run(&cfg_dir, verbose, true) {
                Ok(()) => exit::OK,
                Err(e) => fatal(exit::FAIL, e),
            }
        }
        "start" => start(&script, &cfg, &cfg_dir, &queue, verbose),
        "stop" | "abort" => stop(&script, &queue, command == "abort"),
        "reload" => signal(
            &script,
            &queue,
            libc::SIGHUP,
            "refreshing the relais mail system",
        ),
        "status" => match lock::running_pid(&queue) {
            Some(pid) => {
                eprintln!("{SCRIPT}: the relais mail system is running: PID: {pid}");
                exit::OK
            }
            None => {
                eprintln!("{SCRIPT}: the relais mail system is not running");
                exit::FAIL
            }
        },
        "flush" => {
            let postqueue = sibling("postqueue");
            let st = Command::new(postqueue)
                .arg("-c")
                .arg(&cfg_dir)
                .arg("-f")
                .status();
            st.ok().and_then(|s| s.code()).unwrap_or(exit::FAIL)
        }
        _ => usage(),
    };
    std::process::exit(code);
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(exit::FAIL)
}

fn fatal(code: i32, e: impl std::fmt::Display) -> ! {
    eprintln!("relais: fatal: {e}");
    std::process::exit(code)
}

/// Prints every problem (`warning:` or `fatal:`) and returns the exit code. When starting
/// (`script`), the fatal ones also go to the maillog: they are why the mail system did not
/// start (the warnings are logged by the daemon itself).
fn check(cfg: &Config, script: Option<&Script>) -> i32 {
    let problems = master::check(cfg);
    let mut code = exit::OK;
    for p in &problems {
        if p.fatal {
            eprintln!("relais: fatal: {}", p.text);
            if let Some(s) = script {
                s.log("fatal: ", &p.text);
            }
            code = exit::FAIL;
        } else {
            eprintln!("relais: warning: {}", p.text);
        }
    }
    code
}

/// What `relais start|stop|reload` says, as Postfix's postfix-script says it: on standard
/// error (`relais/relais-script: …`) and, as postfix-script does through postlog(1), in the
/// maillog (`postfix/postfix-script[pid]: …`), so that the log alone tells why the mail
/// system did not start or stop.
struct Script {
    maillog: String,
    host: String,
    tag: String,
}

impl Script {
    fn new(cfg: &Config) -> Script {
        Script {
            maillog: cfg.get("maillog_file"),
            host: cfg.get("myhostname"),
            tag: relais::log::tag(&cfg.get("syslog_name"), "postfix-script"),
        }
    }

    /// Appends one line to maillog_file (opened for each line: the queue directory that
    /// holds it may be created in between); nothing when the log is standard error, where
    /// the message is printed anyway.
    fn log(&self, prefix: &str, text: &str) {
        if matches!(self.maillog.as_str(), "" | "/dev/stderr") {
            return;
        }
        if let Ok(sink) = relais::log::open_sink(&self.maillog) {
            let line = relais::log::format_line(&self.host, &self.tag, prefix, text);
            if let Ok(mut w) = sink.lock() {
                let _ = w.write_all(line.as_bytes());
                let _ = w.flush();
            }
        }
    }

    fn info(&self, text: &str) {
        eprintln!("{SCRIPT}: {text}");
        self.log("", text);
    }

    fn warn(&self, text: &str) {
        eprintln!("{SCRIPT}: warning: {text}");
        self.log("warning: ", text);
    }

    fn fatal(&self, text: &str) {
        eprintln!("{SCRIPT}: fatal: {text}");
        self.log("fatal: ", text);
    }
}

/// How long `relais stop` waits for the daemon to be gone, and `relais start` for one that
/// is stopping: the daemon flushes the queue (bounded by its own grace time) and closes it.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// True once `pid` no longer holds the queue's lock and has exited (so that everything it
/// held, sled's lock on the database included, is released).
fn gone(queue: &std::path::Path, pid: u32) -> bool {
    lock::running_pid(queue) != Some(pid) && !lock::process_alive(pid)
}

/// Waits (at most STOP_WAIT) for `pid` to be gone, saying once that it waits, as
/// postfix-script does. False if it is still there.
fn wait_gone(script: &Script, queue: &std::path::Path, pid: u32) -> bool {
    let start = Instant::now();
    let mut said = false;
    while start.elapsed() < STOP_WAIT {
        if gone(queue, pid) {
            return true;
        }
        if !said && start.elapsed() >= Duration::from_secs(1) {
            script.info("waiting for the relais mail system to terminate");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    gone(queue, pid)
}

/// Before a start: a master that is still shutting down is waited for (bounded) instead of
/// being reported as running. Err(exit code) when it does not go in time.
fn wait_for_stopping(script: &Script, queue: &std::path::Path) -> Result<(), i32> {
    let Some(pid) = master::daemon::stopping(queue) else {
        return Ok(());
    };
    if wait_gone(script, queue, pid) {
        return Ok(());
    }
    script.fatal(&format!(
        "the relais mail system is still stopping: PID: {pid}"
    ));
    Err(exit::EX_TEMPFAIL)
}

/// A tool installed next to this binary (they are built together).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn start(
    script: &Script,
    cfg: &Config,
    cfg_dir: &std::path::Path,
    queue: &std::path::Path,
    verbose: bool,
) -> i32 {
    if let Err(code) = wait_for_stopping(script, queue) {
        return code;
    }
    if let Some(pid) = lock::running_pid(queue) {
        script.fatal(&format!(
            "the relais mail system is already running: PID: {pid}"
        ));
        return exit::FAIL;
    }
    if check(cfg, Some(script)) != exit::OK {
        script.fatal("configuration errors: not starting");
        return exit::FAIL;
    }
    script.info("starting the relais mail system");
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("relais"));
    let mut cmd = Command::new(exe);
    cmd.arg("-c").arg(cfg_dir);
    if verbose {
        cmd.arg("-v");
    }
    cmd.arg("start-fg").env("RELAIS_DAEMON", "1");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // The daemon's standard error (its fatal start-up errors) goes to a file we can show.
    let errfile = queue.join("pid").join("master.stderr");
    let _ = std::fs::create_dir_all(queue.join("pid"));
    match std::fs::File::create(&errfile) {
        Ok(f) => {
            cmd.stderr(f);
        }
        Err(_) => {
            cmd.stderr(std::process::Stdio::null());
        }
    }
    // SAFETY: setsid in the child before exec detaches it from our session and terminal.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            script.fatal(&format!("cannot start the daemon: {e}"));
            return exit::EX_OSERR;
        }
    };
    // Wait until the daemon holds the lock, or died trying; bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            let why = std::fs::read_to_string(&errfile).unwrap_or_default();
            let why: Vec<&str> = why.lines().filter(|l| !l.contains(": warning: ")).collect();
            script.fatal(&format!(
                "the daemon exited at start ({st}): {}",
                why.join("; ")
            ));
            return exit::FAIL;
        }
        if lock::running_pid(queue) == Some(child.id()) && master::daemon::ready(queue) {
            return exit::OK;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    script.warn("the daemon did not report ready within 30s");
    exit::EX_TEMPFAIL
}

fn signal(script: &Script, queue: &std::path::Path, sig: i32, what: &str) -> i32 {
    match lock::running_pid(queue) {
        Some(pid) => {
            script.info(what);
            // SAFETY: plain kill(2) on the pid the lock holder wrote.
            if unsafe { libc::kill(pid as i32, sig) } != 0 {
                script.fatal(&format!(
                    "cannot signal PID {pid}: {}",
                    relais::log::strerror(&std::io::Error::last_os_error())
                ));
                return exit::FAIL;
            }
            exit::OK
        }
        None => {
            script.fatal("the relais mail system is not running");
            exit::FAIL
        }
    }
}

/// Returns only when the daemon has gone (its lock released and its process exited), as
/// `postfix stop` followed by `postfix start` in a script expects; bounded by STOP_WAIT.
fn stop(script: &Script, queue: &std::path::Path, abort: bool) -> i32 {
    let Some(pid) = lock::running_pid(queue) else {
        script.fatal("the relais mail system is not running");
        return exit::FAIL;
    };
    let code = signal(
        script,
        queue,
        if abort { libc::SIGKILL } else { libc::SIGTERM },
        if abort {
            "aborting the relais mail system"
        } else {
            "stopping the relais mail system"
        },
    );
    if code != exit::OK {
        return code;
    }
    if wait_gone(script, queue, pid) {
        return exit::OK;
    }
    script.warn(&format!(
        "the relais mail system is still stopping: PID: {pid} after {}s",
        STOP_WAIT.as_secs()
    ));
    exit::EX_TEMPFAIL
}
