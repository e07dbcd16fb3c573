//! Test harness: a relais instance on a temporary directory, started as the real binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    // Cargo builds every [[bin]] of the package for integration tests, next to the test binary.
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join(name)
}

/// A port that was free a moment ago on 127.0.0.1, and not handed out before by this
/// process: the kernel can give the same ephemeral port to two binds in a row once the first
/// listener is closed, and an instance then got one port for two services.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut port = 0;
    for _ in 0..1000 {
        port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            break;
        }
    }
    given.push(port);
    port
}

pub struct Instance {
    pub dir: tempfile::TempDir,
    pub smtp_port: u16,
    pub submission_port: u16,
    pub smtps_port: u16,
    pub started: bool,
}

impl Instance {
    /// The default conf/, with queue_directory and ports moved into a temporary directory.
    pub fn new() -> Instance {
        Self::with_main_cf_extra("")
    }

    pub fn with_main_cf_extra(extra: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let q = dir.path().join("spool");
        let main = std::fs::read_to_string(root.join("conf/main.cf")).unwrap();
        // Every relative path of the default conf starts with spool/: move it into the test's
        // temporary queue directory.
        let main = main.replace("= spool", &format!("= {}", q.display()));

        std::fs::write(conf.join("main.cf"), format!("{main}\n{extra}\n")).unwrap();
        std::fs::copy(
            root.join("conf/virtual_mailbox"),
            conf.join("virtual_mailbox"),
        )
        .unwrap();
        std::fs::copy(root.join("conf/sasl_passwd"), conf.join("sasl_passwd")).unwrap();
        let (smtp_port, submission_port, smtps_port) = (free_port(), free_port(), free_port());
        let master = std::fs::read_to_string(root.join("conf/master.cf")).unwrap();
        let master = master
            .replace("\n2525 ", &format!("\n{smtp_port} "))
            .replace("\n2587 ", &format!("\n{submission_port} "))
            .replace("\n2465 ", &format!("\n{smtps_port} "));
        std::fs::write(conf.join("master.cf"), master).unwrap();
        Instance {
            dir,
            smtp_port,
            submission_port,
            smtps_port,
            started: false,
        }
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    pub fn queue(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Runs `relais -c conf <args>`.
    pub fn relais(&self, args: &[&str]) -> Output {
        Command::new(bin("relais"))
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a tool with `-c conf`.
    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
        Command::new(bin(name))
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn start(&mut self) {
        let out = self.relais(&["start"]);
        assert!(
            out.status.success(),
            "relais start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.started = true;
    }

    pub fn stop(&mut self) {
        if self.started {
            let out = self.relais(&["stop"]);
            assert!(
                out.status.success(),
                "relais stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.started = false;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.queue().join("maillog")).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.queue().join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.started {
            if let Some(pid) = self.pid() {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// A minimal SMTP client for tests: send a line, read a complete (multi-line) reply.
pub struct Smtp {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Smtp {
    pub fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Smtp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    pub fn read_to_end(&mut self) -> String {
        let mut s = String::new();
        let _ = self.r.read_to_string(&mut s);
        s
    }
}

/// Runs a command with a deadline: its output, or a panic naming the command if it ran past
/// `timeout` (it is killed first, so a hung peer never hangs the test suite).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; the last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A main.cf line sending all non-local mail to a relayhost on a closed loopback port, so
/// it stays deferred in the queue (nothing leaves the machine).
pub fn relayhost_to_nowhere() -> String {
    format!("relayhost = [127.0.0.1]:{}", free_port())
}

impl Instance {
    /// `postqueue -j` through the real binary: every line parsed as JSON (a line that is not
    /// valid JSON fails the test).
    pub fn queue_json(&self) -> Vec<serde_json::Value> {
        let out = run_bounded(
            Command::new(bin("postqueue"))
                .arg("-c")
                .arg(self.conf())
                .arg("-j"),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "postqueue -j failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("postqueue -j line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// `postcat -q ID` through the real binary: (success, stdout).
    pub fn postcat(&self, id: &str) -> (bool, String) {
        let out = run_bounded(
            Command::new(bin("postcat"))
                .arg("-c")
                .arg(self.conf())
                .args(["-q", id]),
            Duration::from_secs(30),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The files delivered so far into `user@localhost`'s Maildir `new/`.
    pub fn maildir_new(&self, user: &str) -> Vec<PathBuf> {
        let dir = self
            .queue()
            .join("mailboxes/localhost")
            .join(user)
            .join("new");
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

/// A test certificate authority (rcgen): issues server and client certificates on loopback
/// tests, written as PEM files.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// Writes the CA certificate to `path`.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }

    /// Issues an ECDSA certificate for `names` (DNS names or IP addresses): writes
    /// `dir/stem.key` and `dir/stem.pem` (leaf then CA) and returns (key, chain) paths and
    /// the leaf's DER.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("test"),
        );
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &self.cert, &self.key).unwrap();
        let (kp, cp) = (
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.pem")),
        );
        std::fs::write(&kp, k.serialize_pem()).unwrap();
        std::fs::write(&cp, format!("{}{}", c.pem(), self.cert.pem())).unwrap();
        (kp, cp, c.der().to_vec())
    }
}
/// An authoritative DNS server (hickory-server) for one zone on 127.0.0.1, UDP and TCP, run
/// on its own tokio runtime; stops when dropped.
pub struct DnsZone {
    pub port: u16,
    _rt: tokio::runtime::Runtime,
}

impl DnsZone {
    pub fn start(origin: &str, zone: &str) -> DnsZone {
        Self::start_zones(&[(origin, zone)])
    }

    /// Several zones (e.g. a domain and an in-addr.arpa zone) on one server.
    pub fn start_zones(zones: &[(&str, &str)]) -> DnsZone {
        use hickory_server::proto::rr::{LowerName, Name};
        use hickory_server::proto::serialize::txt::Parser;
        use hickory_server::store::in_memory::InMemoryZoneHandler;
        use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
        use hickory_server::Server;
        use std::str::FromStr;
        use std::sync::Arc;

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let parsed: Vec<_> = zones
            .iter()
            .map(|(origin, zone)| {
                let origin = Name::from_str(origin).unwrap();
                Parser::new(*zone, None, Some(origin)).parse().unwrap()
            })
            .collect();
        let port =
            rt.block_on(async move {
                let mut catalog = Catalog::new();
                for (origin, records) in parsed {
                    let zone = InMemoryZoneHandler::<
                        hickory_server::net::runtime::TokioRuntimeProvider,
                    >::new(
                        origin.clone(), records, ZoneType::Primary, AxfrPolicy::Deny
                    )
                    .unwrap();
                    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
                }
                let (udp, tcp, port) = bind_udp_tcp().await;
                let mut server = Server::new(catalog);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 4096);
                // The server runs on the runtime's tasks; keep it alive as long as the runtime.
                std::mem::forget(server);
                port
            });
        DnsZone { port, _rt: rt }
    }
}

/// A Dovecot that only authenticates: its auth-client socket at `<dir>/auth` (and on
/// 127.0.0.1:`inet_port`), users from a passwd-file of `user:{SCHEME}hash` lines. Stopped
/// (SIGTERM, then reaped) when dropped.
pub struct DovecotAuth {
    child: std::process::Child,
    pub dir: PathBuf,
    pub inet_port: u16,
}

impl DovecotAuth {
    pub const BIN: &'static str = "/usr/sbin/dovecot";

    /// `users`: (name, `{SCHEME}hash`) pairs. Needs root (Dovecot's master starts as root).
    pub fn start(dir: &Path, users: &[(&str, &str)]) -> DovecotAuth {
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let passwd: String = users.iter().map(|(u, h)| format!("{u}:{h}\n")).collect();
        std::fs::write(dir.join("users"), passwd).unwrap();
        let inet_port = free_port();
        let d = dir.display();
        let conf = format!(
            "base_dir = {d}/run
state_dir = {d}/state
instance_name = relais-sasl-{pid}-{inet_port}
log_path = {d}/dovecot.log
protocols =
ssl = no
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain login
disable_plaintext_auth = no
auth_username_format = %Lu
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener {d}/auth {{
    mode = 0666
  }}
  inet_listener {{
    address = 127.0.0.1
    port = {inet_port}
  }}
}}
",
            pid = std::process::id()
        );
        std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(Self::BIN)
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dovecot runs (tools/install-test-deps installs dovecot-core)");
        let mut d = DovecotAuth {
            child,
            dir: dir.to_path_buf(),
            inet_port,
        };
        let sock = dir.join("auth");
        let up = wait_until(Duration::from_secs(15), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
                && TcpStream::connect(("127.0.0.1", inet_port)).is_ok()
        });
        if !up {
            let log = d.log();
            let _ = d.child.kill();
            panic!("dovecot auth did not listen: {log}");
        }
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("auth")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for DovecotAuth {
    fn drop(&mut self) {
        // SIGTERM lets the dovecot master stop its children; then reap it (bounded).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `doveadm pw -s SCHEME -p PASSWORD`: the `{SCHEME}hash` line Dovecot's tool makes.
pub fn doveadm_pw(scheme: &str, password: &str) -> String {
    let out = run_bounded(
        Command::new("doveadm").args(["pw", "-s", scheme, "-p", password]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "doveadm pw failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1. The TCP port may be
/// taken by a concurrent test between the two binds, so a few ports are tried.
pub async fn bind_udp_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpListener, u16) {
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp, port);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 20 tries");
}
