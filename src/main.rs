//! `relais`: start, stop, reload, check and inspect the mail system, as `postfix(1)` does.

use relais::cli::exit;
use relais::config::{self, Config};
use relais::master::{self, lock};
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
    let code = match command.as_str() {
        "check" => check(&cfg),
        "start-fg" => {
            if check(&cfg) != exit::OK {
                fatal(exit::FAIL, "configuration errors: not starting");
            }
            match master::daemon::run(&cfg_dir, verbose, true) {
                Ok(()) => exit::OK,
                Err(e) => fatal(exit::FAIL, e),
            }
        }
        "start" => start(&cfg, &cfg_dir, &queue, verbose),
        "stop" | "abort" => stop(&queue, command == "abort"),
        "reload" => signal(&queue, libc::SIGHUP, "refreshing the relais mail system"),
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

/// Prints every problem (`warning:` or `fatal:`) and returns the exit code.
fn check(cfg: &Config) -> i32 {
    let problems = master::check(cfg);
    let mut code = exit::OK;
    for p in &problems {
        if p.fatal {
            eprintln!("relais: fatal: {}", p.text);
            code = exit::FAIL;
        } else {
            eprintln!("relais: warning: {}", p.text);
        }
    }
    code
}

/// A tool installed next to this binary (they are built together).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn start(cfg: &Config, cfg_dir: &std::path::Path, queue: &std::path::Path, verbose: bool) -> i32 {
    if let Some(pid) = lock::running_pid(queue) {
        eprintln!("{SCRIPT}: fatal: the relais mail system is already running: PID: {pid}");
        return exit::FAIL;
    }
    if check(cfg) != exit::OK {
        return exit::FAIL;
    }
    eprintln!("{SCRIPT}: starting the relais mail system");
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
        Err(e) => fatal(exit::EX_OSERR, format!("cannot start the daemon: {e}")),
    };
    // Wait until the daemon holds the lock, or died trying; bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            let why = std::fs::read_to_string(&errfile).unwrap_or_default();
            let why: Vec<&str> = why.lines().filter(|l| !l.contains(": warning: ")).collect();
            eprintln!(
                "{SCRIPT}: fatal: the daemon exited at start ({st}): {}",
                why.join("; ")
            );
            return exit::FAIL;
        }
        if lock::running_pid(queue) == Some(child.id()) && master::daemon::ready(queue) {
            return exit::OK;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{SCRIPT}: warning: the daemon did not report ready within 30s");
    exit::EX_TEMPFAIL
}

fn signal(queue: &std::path::Path, sig: i32, what: &str) -> i32 {
    match lock::running_pid(queue) {
        Some(pid) => {
            eprintln!("{SCRIPT}: {what}");
            // SAFETY: plain kill(2) on the pid the lock holder wrote.
            if unsafe { libc::kill(pid as i32, sig) } != 0 {
                eprintln!(
                    "{SCRIPT}: fatal: cannot signal PID {pid}: {}",
                    std::io::Error::last_os_error()
                );
                return exit::FAIL;
            }
            exit::OK
        }
        None => {
            eprintln!("{SCRIPT}: fatal: the relais mail system is not running");
            exit::FAIL
        }
    }
}

fn stop(queue: &std::path::Path, abort: bool) -> i32 {
    let Some(pid) = lock::running_pid(queue) else {
        eprintln!("{SCRIPT}: fatal: the relais mail system is not running");
        return exit::FAIL;
    };
    let code = signal(
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
    // Wait for the lock to be released: sessions get smtpd_timeout at most, bounded here.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if lock::running_pid(queue) != Some(pid) {
            return exit::OK;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{SCRIPT}: warning: PID {pid} still running after 120s");
    exit::EX_TEMPFAIL
}
