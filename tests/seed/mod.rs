//! The seed's mail system for tests/seed_e2e.rs: relais on the seed's own configuration
//! (../shared/fixtures/seed-config, copied by tools/seed-rewrite), the SQLite database built
//! from postfix.sql with the seed's example rows, a Dovecot started by the test with the seed's
//! dovecot-sql.conf.ext queries (LMTP, auth and IMAP), a test CA, a DNS zone like seed 003's,
//! and an "outside world": a second relais on its own loopback address, port 25, serving the
//! outside domain tutu.org with a CA-signed certificate.
//!
//! The seed relais listens on [::1] only: 127.0.0.0/8 is in the seed's mynetworks, so a client
//! on ::1 is the "outside" client the seed's restrictions are written for.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::common::DnsZone;
use super::common::*;

pub const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/seed-config"
);
pub const DOVECOT: &str = "/usr/sbin/dovecot";
/// The seed's password for test@exemple.fr (`doveadm pw -s SHA512-CRYPT -p …` in seed 002).
pub const PASSWORD: &str = "toto1234567890°+";
/// The seed's GTUBE line.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// uid/gid of the seed's mailboxes (its SQL rows and queries say 3000).
const VMAIL: u32 = 3000;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why a seed test cannot run here (it then passes with a note instead of failing).
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("the seed suite needs root (Dovecot switches to uid 3000; the outside MX listens on port 25)".into());
    }
    if !Path::new(SEED).exists() {
        return Some(format!("{SEED} is missing"));
    }
    for p in [DOVECOT, "/usr/lib/dovecot/lmtp", "/usr/lib/dovecot/imap"] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing: run tools/install-test-deps"));
        }
    }
    None
}

/// A loopback address of its own for this test's outside MX (so port 25 is free there).
fn unique_loopback() -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let b = 100 + (pid % 100);
    let c = 1 + (pid / 100) % 250;
    let d = 2 + 2 * (n % 120);
    (format!("127.{b}.{c}.{d}"), format!("127.{b}.{c}.{}", d + 1))
}

/// A certificate authority made with rcgen; issues server certificates.
pub struct TestCa {
    pub pem: String,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "relais seed test CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// (certificate PEM, key PEM) for the names and IP addresses given.
    pub fn issue(&self, names: &[&str], ips: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        for ip in ips {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A Dovecot of the test's own (own base_dir and config, never the system one); stopped when
/// dropped.
pub struct Dovecot {
    child: Child,
    pub dir: PathBuf,
    pub imap_port: u16,
}

impl Dovecot {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the dovecot master stop its children; then reap it.
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

/// The whole seed system. Fields drop in order: the relais instances first (killed), then
/// Dovecot, then the DNS server, then the temporary directory.
pub struct Seed {
    pub relais: Instance,
    pub outside: Option<Instance>,
    pub dovecot: Dovecot,
    pub dns: DnsZone,
    pub ca: TestCa,
    pub ca_file: PathBuf,
    /// The outside MX address (port 25) and an address where nothing listens (the fallback).
    pub outside_ip: String,
    pub fallback_ip: String,
    pub mail_base: PathBuf,
    pub work: tempfile::TempDir,
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Builds the seed's database from postfix.sql and the seed's own example rows; the password
/// hash is made by `doveadm pw`, as the seed does.
pub fn build_db(db: &Path) {
    let out = run_bounded(
        Command::new("doveadm").args(["pw", "-s", "SHA512-CRYPT", "-p", PASSWORD]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "doveadm pw: {out:?}");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        hash.starts_with("{SHA512-CRYPT}$6$"),
        "doveadm pw gave {hash}"
    );
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let schema = std::fs::read_to_string(Path::new(SEED).join("postfix.sql")).unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(&schema).unwrap();
    // The rows of seed 002's administration tables (double-quoted strings as written there),
    // plus the domain the guide tells the reader to add ("N'oubliez pas d'ajouter votre
    // domaine à la base").
    conn.execute_batch(
        r#"
        INSERT INTO postfix_alias (alias,destination,active) VALUES ("toto","test",1);
        INSERT INTO postfix_alias_virtuels (courriel,destination,active) VALUES ("ycharbi@exemple.fr","test@exemple.fr",1);
        INSERT INTO postfix_domaines (domaine,defaut,active) VALUES ("exemple.fr",1,1);
        INSERT INTO postfix_domaines (domaine,defaut,active) VALUES ("toto.fr",0,1);
        INSERT INTO postfix_liste_noire_destinataires (courriel,action,active) VALUES ("root@mail.exemple.fr","REJECT",1);
        INSERT INTO postfix_liste_noire_expediteurs (courriel,code_retour,message,active) VALUES ("tata@tata.fr",554,"Parle à ma main, ma tête est malade.",1);
        "#,
    )
    .unwrap();
    conn.execute(
        r#"INSERT INTO postfix_utilisateurs (utilisateur,mot_de_passe,nom_complet,rep_perso,uid,gid,privilege,prefixe,active) VALUES ("test@exemple.fr",?1,"Test Dupont","exemple.fr/test/",3000,3000,"administrateur","",1)"#,
        [&hash],
    )
    .unwrap();
}

/// The seed's dovecot-sql.conf.ext, with only its paths moved.
fn dovecot_sql(db: &Path, mail_base: &Path) -> String {
    let text = String::from(
        "driver = sqlite
connect = /etc/postfix/bdd/postfix.sqlite

password_query = SELECT utilisateur AS user, mot_de_passe AS password, '/var/mail/utilisateurs/%d/%n' AS userdb_home, 'maildir:/var/mail/utilisateurs/%d/%n' AS userdb_mail, 3000 AS userdb_uid, 3000 AS userdb_gid FROM postfix_utilisateurs WHERE utilisateur = '%u' AND active = 1
user_query = SELECT '/var/mail/utilisateurs/%d/%n' AS home, 'maildir:/var/mail/utilisateurs/%d/%n' AS mail, 3000 AS uid, 3000 AS gid FROM postfix_utilisateurs WHERE utilisateur = '%u' AND active = 1 
",
    );
    text.replace("/etc/postfix/bdd/postfix.sqlite", db.to_str().unwrap())
        .replace("/var/mail/utilisateurs", mail_base.to_str().unwrap())
}

/// Starts Dovecot: IMAP on 127.0.0.1:`imap_port` (TLS required, as the seed's 10-ssl.conf),
/// LMTP and auth sockets where the seed's main.cf expects them (queue_directory/private/…).
fn start_dovecot(dir: &Path, conf: &Path, queue: &Path, db: &Path, mail_base: &Path) -> Dovecot {
    for d in ["run", "state"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::create_dir_all(queue.join("private")).unwrap();
    std::fs::write(dir.join("dovecot-sql.conf.ext"), dovecot_sql(db, mail_base)).unwrap();
    let imap_port = free_port();
    let d = dir.display();
    let c = conf.display();
    let q = queue.display();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let text = format!(
        "# The seed's Dovecot settings (10-ssl, 10-auth, 10-mail, 10-master, 15-mailboxes,
# 20-lmtp without the sieve/quota plugins), with the test's own directories and ports.
base_dir = {d}/run
state_dir = {d}/state
instance_name = relais-seed-{pid}-{n}
log_path = {d}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
ssl = required
ssl_cert = <{c}/tls/courriel.pem
ssl_key = <{c}/tls/courriel.key
ssl_min_protocol = TLSv1.2
ssl_cipher_list = ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305
ssl_prefer_server_ciphers = yes
disable_plaintext_auth = yes
auth_mechanisms = plain login
passdb {{
  driver = sql
  args = {d}/dovecot-sql.conf.ext
}}
userdb {{
  driver = sql
  args = {d}/dovecot-sql.conf.ext
}}
mail_location = maildir:{m}/%d/%n
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    auto = subscribe
    special_use = \\Sent
  }}
  mailbox Spam {{
    auto = subscribe
    special_use = \\Junk
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  unix_listener {q}/private/auth {{
    mode = 0666
  }}
  unix_listener auth-userdb {{
  }}
}}
service lmtp {{
  unix_listener {q}/private/dovecot-lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@exemple.fr
}}
",
        pid = std::process::id(),
        m = mail_base.display(),
    );
    std::fs::write(dir.join("dovecot.conf"), text).unwrap();
    let child = Command::new(DOVECOT)
        .arg("-F")
        .arg("-c")
        .arg(dir.join("dovecot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dovecot runs (tools/install-test-deps installs it)");
    let dove = Dovecot {
        child,
        dir: dir.to_path_buf(),
        imap_port,
    };
    let ready = wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(queue.join("private/dovecot-lmtp")).is_ok()
            && std::os::unix::net::UnixStream::connect(queue.join("private/auth")).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", imap_port)).is_ok()
    });
    assert!(ready, "dovecot did not start:\n{}", dove.log());
    dove
}

/// The outside world's relais: default conf, serving tutu.org into Maildir, listening on
/// `ip`:25 with a certificate from the test CA.
fn start_outside(ca: &TestCa, ip: &str) -> Instance {
    let inst = Instance::with_main_cf_extra("");
    let (cert, key) = ca.issue(&["monserveur1.tutu.org", "monserveur2.tutu.org"], &[ip]);
    let tls = inst.dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("cert.pem"), cert).unwrap();
    std::fs::write(tls.join("key.pem"), key).unwrap();
    // Replace the settings the default conf makes for its own local domain.
    let main_path = inst.conf().join("main.cf");
    let main = std::fs::read_to_string(&main_path).unwrap();
    let mut out = String::new();
    for l in main.lines() {
        let name = l.split('=').next().unwrap_or("").trim();
        if [
            "virtual_mailbox_domains",
            "virtual_mailbox_maps",
            "smtpd_tls_cert_file",
            "smtpd_tls_key_file",
            "relais_tls_self_signed",
        ]
        .contains(&name)
        {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!(
        "myhostname = monserveur1.tutu.org
virtual_mailbox_domains = tutu.org
virtual_mailbox_maps = static:tutu.org/toto/
smtpd_tls_cert_file = {t}/cert.pem
smtpd_tls_key_file = {t}/key.pem
",
        t = tls.display()
    ));
    std::fs::write(&main_path, out).unwrap();
    let master_path = inst.conf().join("master.cf");
    let master = std::fs::read_to_string(&master_path).unwrap();
    let master = master.replace(&format!("\n{} ", inst.smtp_port), &format!("\n{ip}:25 "));
    std::fs::write(&master_path, master).unwrap();
    inst
}

impl Seed {
    /// Everything up and running: DNS, Dovecot, the seed relais; the outside relais too when
    /// `outside_up`.
    pub fn start(outside_up: bool) -> Seed {
        let work = tempfile::tempdir().unwrap();
        // Dovecot's processes run as uid 3000 and dovenull: they must traverse the tree.
        chmod(work.path(), 0o755);
        let root = work.path().join("seed");
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);
        let conf = root.join("conf");
        let queue = root.join("spool");
        let mail_base = root.join("mail/utilisateurs");
        std::fs::create_dir_all(&mail_base).unwrap();
        std::os::unix::fs::chown(&mail_base, Some(VMAIL), Some(VMAIL)).unwrap();

        let ca = TestCa::new();
        let ca_file = work.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (outside_ip, fallback_ip) = unique_loopback();

        // DNS as seed 003 writes it: two MX of preference 10 and a fallback of 20.
        let dns = DnsZone::start_zones(&[
            (
                "exemple.fr.",
                "$ORIGIN exemple.fr.
$TTL 60
@     IN SOA ns.exemple.fr. hostmaster.exemple.fr. 1 3600 600 86400 60
@     IN NS  ns
ns    IN A   127.0.0.1
@     IN MX  10 mail
mail  IN AAAA ::1
",
            ),
            (
                "tutu.org.",
                &format!(
                    "$ORIGIN tutu.org.
$TTL 60
@                   IN SOA ns.tutu.org. hostmaster.tutu.org. 1 3600 600 86400 60
@                   IN NS  ns
ns                  IN A   127.0.0.1
@                   IN MX  10 monserveur1
@                   IN MX  10 monserveur2
@                   IN MX  20 monserveur-fallback
monserveur1         IN A   {outside_ip}
monserveur2         IN A   {outside_ip}
monserveur-fallback IN A   {fallback_ip}
"
                ),
            ),
        ]);

        let (smtp_port, submission_port, smtps_port) = (free_port(), free_port(), free_port());
        let out = run_bounded(
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/seed-rewrite"))
                .arg(SEED)
                .arg(&conf)
                .args(["--listen", "::1"])
                .args(["--smtp-port", &smtp_port.to_string()])
                .args(["--submission-port", &submission_port.to_string()])
                .args(["--smtps-port", &smtps_port.to_string()])
                .args(["--dns-server", &format!("127.0.0.1:{}", dns.port)])
                .args(["--queue-directory", queue.to_str().unwrap()])
                .args(["--mail-base", mail_base.to_str().unwrap()])
                .args(["--smtp-ca-file", ca_file.to_str().unwrap()]),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "tools/seed-rewrite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The seed's server certificate, for its host name (and the loopback addresses the
        // test clients use), issued by the test CA.
        let (cert, key) = ca.issue(&["mail.exemple.fr"], &["::1", "127.0.0.1"]);
        std::fs::write(conf.join("tls/courriel.pem"), cert).unwrap();
        std::fs::write(conf.join("tls/courriel.key"), key).unwrap();
        let db = conf.join("bdd/postfix.sqlite");
        build_db(&db);

        let dovecot = start_dovecot(&work.path().join("dovecot"), &conf, &queue, &db, &mail_base);

        let mut relais = Instance {
            dir: tempfile::tempdir().unwrap(),
            smtp_port,
            submission_port,
            smtps_port,
            started: false,
        };
        // Instance's conf() and queue() are <dir>/conf and <dir>/spool: point them at ours.
        std::os::unix::fs::symlink(&conf, relais.dir.path().join("conf")).unwrap();
        std::os::unix::fs::symlink(&queue, relais.dir.path().join("spool")).unwrap();
        relais.start();

        let mut seed = Seed {
            relais,
            outside: None,
            dovecot,
            dns,
            ca,
            ca_file,
            outside_ip,
            fallback_ip,
            mail_base,
            work,
        };
        if outside_up {
            seed.outside_start();
        }
        seed
    }

    pub fn conf(&self) -> PathBuf {
        self.relais.conf()
    }

    /// Starts (or restarts) the outside MX.
    pub fn outside_start(&mut self) {
        if self.outside.is_none() {
            self.outside = Some(start_outside(&self.ca, &self.outside_ip));
        }
        let o = self.outside.as_mut().unwrap();
        o.start();
        let ip = self.outside_ip.clone();
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                ip.as_str(),
                25
            ))
            .is_ok()),
            "outside relais does not listen on {ip}:25:\n{}",
            o.log()
        );
    }

    pub fn outside_stop(&mut self) {
        if let Some(o) = self.outside.as_mut() {
            o.stop();
        }
    }

    /// Messages delivered to toto@tutu.org by the outside MX.
    pub fn outside_mail(&self) -> Vec<String> {
        let Some(o) = self.outside.as_ref() else {
            return Vec::new();
        };
        let dir = o.queue().join("mailboxes/tutu.org/toto/new");
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v.iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    /// Files in test@exemple.fr's Maildir (new/ and cur/), as Dovecot stored them.
    pub fn mailbox_files(&self) -> Vec<PathBuf> {
        let base = self.mail_base.join("exemple.fr/test");
        let mut v = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(d) = std::fs::read_dir(base.join(sub)) {
                v.extend(d.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
        v
    }

    /// Waits (bounded) for `n` messages in test@exemple.fr's mailbox.
    pub fn wait_mailbox(&self, n: usize) {
        assert!(
            wait_until(Duration::from_secs(30), || self.mailbox_files().len() >= n),
            "{} message(s) in test@exemple.fr's Maildir, {n} expected\nqueue:\n{}\nrelais log:\n{}\ndovecot log:\n{}",
            self.mailbox_files().len(),
            String::from_utf8_lossy(&self.relais.tool("postqueue", &["-p"]).stdout),
            self.relais.log(),
            self.dovecot.log()
        );
    }

    /// Reads test@exemple.fr's INBOX over IMAP (Python imaplib, STARTTLS checked against the
    /// test CA, AUTHENTICATE PLAIN with the seed's password): every message, whole.
    pub fn imap_inbox(&self) -> Vec<String> {
        let script = format!(
            r#"
import imaplib, ssl, json, sys
ctx = ssl.create_default_context(cafile={ca:?})
m = imaplib.IMAP4("127.0.0.1", {port})
m.starttls(ssl_context=ctx)
pw = {pw:?}
m.authenticate("PLAIN", lambda _: ("\0test@exemple.fr\0" + pw).encode("utf-8"))
typ, n = m.select("INBOX")
assert typ == "OK", (typ, n)
typ, ids = m.search(None, "ALL")
out = []
for i in ids[0].split():
    typ, data = m.fetch(i, "(RFC822)")
    out.append(data[0][1].decode("utf-8", "replace"))
m.logout()
print(json.dumps(out))
"#,
            ca = self.ca_file.display().to_string(),
            port = self.dovecot.imap_port,
            pw = PASSWORD,
        );
        let (ok, out, err) = python(&script);
        assert!(
            ok,
            "IMAP read failed: {err}\ndovecot log:\n{}",
            self.dovecot.log()
        );
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("imap output {e}: {out}"))
    }

    /// `sendmail -f from to` with the seed's configuration (the message on standard input).
    pub fn sendmail(&self, from: &str, to: &str, message: &str) {
        use std::io::Write;
        let mut child = Command::new(bin("sendmail"))
            .args(["-C", self.conf().to_str().unwrap(), "-f", from, to])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                assert!(
                    st.success(),
                    "sendmail failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sendmail did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs a Python 3 script (bounded): (success, stdout, stderr).
pub fn python(script: &str) -> (bool, String, String) {
    let out = run_bounded(
        Command::new("python3").arg("-c").arg(script),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Header names in a message's header section (before the first empty line), in order.
pub fn header_block(msg: &str) -> String {
    let msg = msg.replace("\r\n", "\n");
    msg.split("\n\n").next().unwrap_or("").to_string()
}
