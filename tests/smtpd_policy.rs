//! The SMTP access policy, table-driven: one row per restriction and per access(5) action,
//! each a scripted session through relais's real Session and Policy (with DNS from a
//! hickory-server zone on loopback and policy servers on loopback), checking the reply code,
//! enhanced code, text and Postfix's log line.

mod common;
use common::*;

use relais::config::Config;
use relais::envelope::{Envelope, Origin};
use relais::smtpd::policy::Policy;
use relais::smtpd::{
    Backend, BoxFuture, CheckPoint, Checked, ClientNames, Reply, Session, SessionInfo, Settings,
};
use relais::trivial_rewrite::Rewriter;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing_subscriber::prelude::*;

/// smtpd's backend with the real policy; queued messages are recorded, not stored.
struct PolicyBackend {
    policy: Arc<Policy>,
    queued: Mutex<Vec<Envelope>>,
    next: Mutex<u32>,
}

impl Backend for PolicyBackend {
    fn new_queue_id(&self) -> String {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        format!("ID{:04}", *n)
    }
    fn check_recipient(&self, s: &SessionInfo, rcpt: &str) -> BoxFuture<'static, Checked> {
        let p = self.policy.clone();
        let (s, rcpt) = (s.clone(), rcpt.to_string());
        Box::pin(async move { p.check(&relais::smtpd::backend::ctx(&s, &rcpt, "")).await })
    }
    fn check(&self, at: CheckPoint, s: &SessionInfo, arg: &str) -> BoxFuture<'static, Checked> {
        let p = self.policy.clone();
        let (s, arg) = (s.clone(), arg.to_string());
        Box::pin(async move {
            p.check_at(at, &relais::smtpd::backend::ctx(&s, "", &arg))
                .await
        })
    }
    fn delay_reject(&self) -> bool {
        self.policy.delay_reject()
    }
    fn lookup_client(&self, addr: std::net::IpAddr) -> BoxFuture<'static, ClientNames> {
        let p = self.policy.clone();
        Box::pin(async move { p.client_names(addr).await })
    }
    fn enqueue(
        &self,
        _: String,
        env: Envelope,
        _: Origin,
        _: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), Reply>> {
        self.queued.lock().unwrap().push(env);
        Box::pin(async { Ok(()) })
    }
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const ZONE: &str = "
$ORIGIN test.
$TTL 60
@        IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@        IN NS  ns
ns       IN A   127.0.0.1
good     IN A   192.0.2.10
mail.good IN A  192.0.2.1
liar     IN A   192.0.2.99
1.2.0.192.zen IN A 127.0.0.2
1.2.0.192.zen IN TXT \"listed\"
3.2.0.192.zen IN A 127.0.0.10
1.2.0.192.wl IN A 127.0.0.2
spammer.test.dbl IN A 127.0.0.2
spammer  IN A   192.0.2.66
mxdom    IN MX  10 mx.badhost.test.
mx.badhost IN A 192.0.2.200
";

const REVERSE: &str = "
$ORIGIN 2.0.192.in-addr.arpa.
$TTL 60
@        IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@        IN NS  ns.test.
1        IN PTR mail.good.test.
2        IN PTR liar.test.
";

fn dns() -> &'static DnsZone {
    static Z: std::sync::OnceLock<DnsZone> = std::sync::OnceLock::new();
    // Built outside the test's runtime: the zone server has its own.
    Z.get_or_init(|| {
        std::thread::spawn(|| {
            DnsZone::start_zones(&[("test.", ZONE), ("2.0.192.in-addr.arpa.", REVERSE)])
        })
        .join()
        .unwrap()
    })
}

fn config(extra: &str) -> Config {
    let text = format!(
        "compatibility_level = 3.6\nmyhostname = mx.relais.test\nmydestination = $myhostname, localhost\n\
         mynetworks = 127.0.0.0/8\nvirtual_mailbox_domains = exemple.fr\n\
         virtual_mailbox_maps = inline:{{ test@exemple.fr=x/, other@exemple.fr=x/, archive@exemple.fr=x/ }}\n\
         relais_dns_servers = 127.0.0.1:{}\nsmtpd_error_sleep_time = 0\n{extra}\n",
        dns().port
    );
    Config::from_text(Path::new("/nonexistent"), &text).unwrap()
}

/// One reply (all its lines, each ending in \n).
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut all = String::new();
    for _ in 0..50 {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut l))
            .await
            .expect("reply within 20s")
            .unwrap();
        if n == 0 {
            break;
        }
        all.push_str(l.trim_end());
        all.push('\n');
        if l.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    all
}

struct Run {
    replies: Vec<String>,
    log: String,
    queued: Vec<Envelope>,
}

/// One session from `client` (an address; the duplex stream has none): each step sends a
/// line (`<BODY>`: a small message and the final dot) and expects a reply starting with
/// the given text (the last line of a multi-line reply).
async fn session(extra: &str, client: &str, steps: &[(&str, &str)]) -> Run {
    let cfg = config(extra);
    let rw = Arc::new(Rewriter::from_config(&cfg).unwrap());
    let dnsr = Arc::new(relais::dns::Dns::from_config(&cfg).unwrap());
    let (policy, _) = Policy::from_config(&cfg, rw).unwrap();
    let backend = Arc::new(PolicyBackend {
        policy: Arc::new(policy.with_dns(dnsr)),
        queued: Mutex::new(Vec::new()),
        next: Mutex::new(0),
    });
    let mut settings = Settings::from_config(&cfg, "smtp");
    settings.error_sleep_time = Duration::ZERO;
    let buf = LogBuf::default();
    let sink: relais::log::Sink = Arc::new(Mutex::new(Box::new(buf.clone())));
    let sub = tracing_subscriber::registry().with(relais::log::PostfixLayer::new(
        "mx.relais.test",
        "postfix/smtpd",
        sink,
        false,
    ));
    let _g = tracing::subscriber::set_default(sub);
    let (c, s) = tokio::io::duplex(1 << 16);
    let info = SessionInfo::new("unknown", client, 40000, "smtp");
    let b: Arc<dyn Backend> = backend.clone();
    let server = tokio::spawn(Session::new(s, Arc::new(settings), b, info).run());
    let (r, mut w) = tokio::io::split(c);
    let mut r = BufReader::new(r);
    let mut replies = Vec::new();
    let banner = read_reply(&mut r).await;
    replies.push(banner);
    for (send, expect) in steps {
        if *send == "<BANNER>" {
            assert!(
                replies[0].lines().last().unwrap_or("").starts_with(expect),
                "banner {:?}, want {expect:?}",
                replies[0]
            );
            continue;
        }
        let line = if *send == "<BODY>" {
            "Subject: test\r\n\r\nhello\r\n.\r\n".to_string()
        } else {
            format!("{send}\r\n")
        };
        w.write_all(line.as_bytes()).await.unwrap();
        let got = read_reply(&mut r).await;
        let last = got.lines().last().unwrap_or("").to_string();
        let all = got.clone();
        replies.push(got);
        assert!(
            last.starts_with(expect) || all.starts_with(expect),
            "after {send:?}: got {all:?}, want {expect:?}\nlog:\n{}",
            String::from_utf8_lossy(&buf.0.lock().unwrap())
        );
    }
    drop(w);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    let queued = backend.queued.lock().unwrap().clone();
    Run {
        replies,
        log,
        queued,
    }
}

/// A whole transaction for one recipient; the RCPT reply must start with `rcpt_reply`.
fn rcpt_steps<'a>(
    helo: &'a str,
    from: &'a str,
    rcpt: &'a str,
    rcpt_reply: &'a str,
) -> Vec<(String, &'a str)> {
    vec![
        (format!("EHLO {helo}"), "250 "),
        (format!("MAIL FROM:<{from}>"), "250 "),
        (format!("RCPT TO:<{rcpt}>"), rcpt_reply),
    ]
}

struct Row {
    name: &'static str,
    conf: &'static str,
    client: &'static str,
    helo: &'static str,
    from: &'static str,
    rcpt: &'static str,
    /// Start of the RCPT reply.
    reply: &'static str,
    /// Substrings of the log.
    log: &'static [&'static str],
}

fn rows() -> Vec<Row> {
    let d = |name, conf, client, helo, from, rcpt, reply, log| Row {
        name,
        conf,
        client,
        helo,
        from,
        rcpt,
        reply,
        log,
    };
    vec![
        d("rbl listed, TXT reason", "smtpd_client_restrictions = reject_rbl_client zen.test", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.test; listed",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.test; listed; from=<a@good.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("rbl filter excludes the answer", "smtpd_client_restrictions = reject_rbl_client zen.test=127.0.0.2", "192.0.2.3", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("rbl filter range, no TXT", "smtpd_client_restrictions = reject_rbl_client zen.test=127.0.0.[2..11]", "192.0.2.3", "good.test", "a@good.test", "test@exemple.fr",
          "554 5.7.1 Service unavailable; Client host [192.0.2.3] blocked using zen.test\n", &["blocked using zen.test; from=<a@good.test>"]),
        d("rbl not listed", "smtpd_client_restrictions = reject_rbl_client zen.test", "192.0.2.2", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("rbl_reply_maps", "smtpd_client_restrictions = reject_rbl_client zen.test\nrbl_reply_maps = inline:{ { zen.test = 450 4.7.1 Go away $$rbl_what ($$rbl_reason) } }", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "450 4.7.1 Go away 192.0.2.1 (listed)", &[]),
        d("dnswl permits", "smtpd_client_restrictions = permit_dnswl_client wl.test, reject", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("dnswl not listed", "smtpd_client_restrictions = permit_dnswl_client wl.test, reject", "192.0.2.2", "good.test", "a@good.test", "test@exemple.fr",
          "554 5.7.1 <unknown[192.0.2.2]>: Client host rejected: Access denied", &[]),
        d("rhsbl sender", "smtpd_sender_restrictions = reject_rhsbl_sender dbl.test", "192.0.2.1", "good.test", "x@spammer.test", "test@exemple.fr",
          "554 5.7.1 Service unavailable; Sender address [spammer.test] blocked using dbl.test", &[]),
        d("rhsbl helo", "smtpd_helo_restrictions = reject_rhsbl_helo dbl.test", "192.0.2.1", "spammer.test", "a@good.test", "test@exemple.fr",
          "554 5.7.1 Service unavailable; Helo command [spammer.test] blocked using dbl.test", &[]),
        d("unknown sender domain", "smtpd_sender_restrictions = reject_unknown_sender_domain", "192.0.2.1", "good.test", "a@nowhere.test", "test@exemple.fr",
          "450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found", &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found;"]),
        d("unknown sender domain, 550", "smtpd_sender_restrictions = reject_unknown_sender_domain\nunknown_address_reject_code = 550", "192.0.2.1", "good.test", "a@nowhere.test", "test@exemple.fr",
          "550 5.1.8 <a@nowhere.test>: Sender address rejected: Domain not found", &[]),
        d("known sender domain", "smtpd_sender_restrictions = reject_unknown_sender_domain", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("unknown recipient domain", "smtpd_recipient_restrictions = reject_unknown_recipient_domain, permit_mynetworks, reject_unauth_destination", "127.0.0.1", "good.test", "a@good.test", "b@nowhere.test",
          "450 4.1.2 <b@nowhere.test>: Recipient address rejected: Domain not found", &[]),
        d("unknown helo", "smtpd_helo_restrictions = reject_unknown_helo_hostname", "192.0.2.1", "nowhere.test", "a@good.test", "test@exemple.fr",
          "450 4.7.1 <nowhere.test>: Helo command rejected: Host not found", &[]),
        d("unknown client (no forward match)", "smtpd_client_restrictions = reject_unknown_client_hostname", "192.0.2.2", "good.test", "a@good.test", "test@exemple.fr",
          "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.2]", &["connect from unknown[192.0.2.2]", "hostname liar.test does not resolve to address 192.0.2.2"]),
        d("unknown client, 550", "smtpd_client_restrictions = reject_unknown_client_hostname\nunknown_client_reject_code = 550", "192.0.2.2", "good.test", "a@good.test", "test@exemple.fr",
          "550 5.7.25 Client host rejected: cannot find your hostname, [192.0.2.2]", &[]),
        d("verified client", "smtpd_client_restrictions = reject_unknown_client_hostname", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["connect from mail.good.test[192.0.2.1]"]),
        d("no PTR", "smtpd_client_restrictions = reject_unknown_reverse_client_hostname", "192.0.2.3", "good.test", "a@good.test", "test@exemple.fr",
          "450 4.7.25 Client host rejected: cannot find your reverse hostname, [192.0.2.3]", &[]),
        d("PTR without forward match passes the reverse test", "smtpd_client_restrictions = reject_unknown_reverse_client_hostname", "192.0.2.2", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("sender MX access by address", "smtpd_sender_restrictions = check_sender_mx_access inline:{ { 192.0.2.200 = REJECT bad mx } }", "192.0.2.1", "good.test", "a@mxdom.test", "test@exemple.fr",
          "554 5.7.1 <a@mxdom.test>: Sender address rejected: bad mx", &[]),
        d("sender NS access by name (parent zone)", "smtpd_sender_restrictions = check_sender_ns_access inline:{ { ns.test = REJECT bad ns } }", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "554 5.7.1 <a@good.test>: Sender address rejected: bad ns", &[]),
        // access(5) actions
        d("HOLD", "smtpd_recipient_restrictions = check_recipient_access inline:{ test@exemple.fr=HOLD }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: hold: RCPT from mail.good.test[192.0.2.1]: <test@exemple.fr>: Recipient address triggers HOLD action; from=<a@good.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("DISCARD", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=DISCARD spam trap } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: discard: RCPT from mail.good.test[192.0.2.1]: <test@exemple.fr>: Recipient address spam trap; from=<a@good.test>"]),
        d("REDIRECT", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=REDIRECT other@exemple.fr } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: redirect: RCPT from mail.good.test[192.0.2.1]: <test@exemple.fr>: Recipient address triggers REDIRECT other@exemple.fr;"]),
        d("FILTER", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=FILTER smtp:[127.0.0.1]:10025 } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: filter: RCPT from mail.good.test[192.0.2.1]: <test@exemple.fr>: Recipient address triggers FILTER smtp:[127.0.0.1]:10025;"]),
        d("BCC", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=BCC archive@exemple.fr } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: bcc: RCPT from mail.good.test[192.0.2.1]: <test@exemple.fr>: Recipient address triggers BCC archive@exemple.fr;"]),
        d("PREPEND", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=PREPEND X-Tag: yes } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("WARN", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=WARN look at this } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: warn: RCPT from mail.good.test[192.0.2.1]: look at this; from=<a@good.test> to=<test@exemple.fr>"]),
        d("REJECT with DSN", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=REJECT 5.7.9 go away } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "554 5.7.9 <test@exemple.fr>: Recipient address rejected: go away", &[]),
        d("DEFER", "smtpd_recipient_restrictions = check_recipient_access inline:{ test@exemple.fr=DEFER }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "450 4.7.1 <test@exemple.fr>: Recipient address rejected: Access denied", &[]),
        d("NNN text", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=421 4.4.2 not now } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "421 4.4.2 <test@exemple.fr>: Recipient address rejected: not now", &[]),
        d("DEFER_IF_PERMIT", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=DEFER_IF_PERMIT later } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "450 4.7.1 <test@exemple.fr>: Recipient address rejected: later", &[]),
        d("restriction as result", "smtpd_recipient_restrictions = check_recipient_access inline:{ { test@exemple.fr=reject_unknown_sender_domain } }, reject_unauth_destination", "192.0.2.1", "good.test", "a@nowhere.test", "test@exemple.fr",
          "450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found", &[]),
        d("OK", "smtpd_recipient_restrictions = check_recipient_access inline:{ test@exemple.fr=OK }, reject", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("warn_if_reject", "smtpd_recipient_restrictions = warn_if_reject reject, reject_unauth_destination", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &["ID0001: reject_warning: RCPT from mail.good.test[192.0.2.1]: 554 5.7.1 <test@exemple.fr>: Recipient address rejected: Access denied; from=<a@good.test>"]),
        // reject_unlisted_sender and smtpd_reject_unlisted_sender (Postfix: x.1.0 for a
        // sender, x.1.7 from the virtual alias table's 5.1.1; the class's unknown_*_code).
        d("reject_unlisted_sender, local", "smtpd_sender_restrictions = reject_unlisted_sender\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "ghost@mx.relais.test", "test@exemple.fr",
          "550 5.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table; from=<ghost@mx.relais.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("reject_unlisted_sender, known local user", "smtpd_sender_restrictions = reject_unlisted_sender\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "bob@mx.relais.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("reject_unlisted_sender, virtual mailbox", "smtpd_sender_restrictions = reject_unlisted_sender", "192.0.2.1", "good.test", "nobody@exemple.fr", "test@exemple.fr",
          "550 5.1.0 <nobody@exemple.fr>: Sender address rejected: User unknown in virtual mailbox table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.0 <nobody@exemple.fr>: Sender address rejected: User unknown in virtual mailbox table; from=<nobody@exemple.fr> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("relocated_maps", "relocated_maps = inline:{ { test@exemple.fr = test@nouveau.example } }", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "550 5.1.6 <test@exemple.fr>: Recipient address rejected: User has moved to test@nouveau.example",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.6 <test@exemple.fr>: Recipient address rejected: User has moved to test@nouveau.example; from=<a@good.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("reject_unlisted_sender, remote sender", "smtpd_sender_restrictions = reject_unlisted_sender", "192.0.2.1", "good.test", "a@good.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("smtpd_reject_unlisted_sender is off by default", "local_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "ghost@mx.relais.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("smtpd_reject_unlisted_sender, local", "smtpd_reject_unlisted_sender = yes\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "ghost@mx.relais.test", "test@exemple.fr",
          "550 5.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table; from=<ghost@mx.relais.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("smtpd_reject_unlisted_sender, local, 450", "smtpd_reject_unlisted_sender = yes\nunknown_local_recipient_reject_code = 450\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "ghost@mx.relais.test", "test@exemple.fr",
          "450 4.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 450 4.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table; from=<ghost@mx.relais.test>"]),
        d("smtpd_reject_unlisted_sender, postmaster is always listed", "smtpd_reject_unlisted_sender = yes\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "postmaster@mx.relais.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("smtpd_reject_unlisted_sender, virtual mailbox, 450", "smtpd_reject_unlisted_sender = yes\nunknown_virtual_mailbox_reject_code = 450", "192.0.2.1", "good.test", "nobody@exemple.fr", "test@exemple.fr",
          "450 4.1.0 <nobody@exemple.fr>: Sender address rejected: User unknown in virtual mailbox table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 450 4.1.0 <nobody@exemple.fr>: Sender address rejected: User unknown in virtual mailbox table; from=<nobody@exemple.fr>"]),
        d("smtpd_reject_unlisted_sender, virtual alias", "smtpd_reject_unlisted_sender = yes\nvirtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ info@alias.test=test@exemple.fr }", "192.0.2.1", "good.test", "x@alias.test", "test@exemple.fr",
          "550 5.1.7 <x@alias.test>: Sender address rejected: User unknown in virtual alias table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.7 <x@alias.test>: Sender address rejected: User unknown in virtual alias table; from=<x@alias.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("smtpd_reject_unlisted_sender, virtual alias, 450", "smtpd_reject_unlisted_sender = yes\nunknown_virtual_alias_reject_code = 450\nvirtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ info@alias.test=test@exemple.fr }", "192.0.2.1", "good.test", "x@alias.test", "test@exemple.fr",
          "450 4.1.7 <x@alias.test>: Sender address rejected: User unknown in virtual alias table", &[]),
        d("smtpd_reject_unlisted_sender, listed virtual alias", "smtpd_reject_unlisted_sender = yes\nvirtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ info@alias.test=test@exemple.fr }", "192.0.2.1", "good.test", "info@alias.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("smtpd_reject_unlisted_sender, relay", "smtpd_reject_unlisted_sender = yes\nrelay_domains = relay.test\nrelay_recipient_maps = inline:{ known@relay.test=x }", "192.0.2.1", "good.test", "who@relay.test", "test@exemple.fr",
          "550 5.1.0 <who@relay.test>: Sender address rejected: User unknown in relay recipient table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.0 <who@relay.test>: Sender address rejected: User unknown in relay recipient table; from=<who@relay.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"]),
        d("smtpd_reject_unlisted_sender, relay, 450", "smtpd_reject_unlisted_sender = yes\nunknown_relay_recipient_reject_code = 450\nrelay_domains = relay.test\nrelay_recipient_maps = inline:{ known@relay.test=x }", "192.0.2.1", "good.test", "who@relay.test", "test@exemple.fr",
          "450 4.1.0 <who@relay.test>: Sender address rejected: User unknown in relay recipient table", &[]),
        d("smtpd_reject_unlisted_sender, listed relay sender", "smtpd_reject_unlisted_sender = yes\nrelay_domains = relay.test\nrelay_recipient_maps = inline:{ known@relay.test=x }", "192.0.2.1", "good.test", "known@relay.test", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("smtpd_reject_unlisted_sender after a permitting sender list", "smtpd_reject_unlisted_sender = yes\nsmtpd_sender_restrictions = permit", "192.0.2.1", "good.test", "nobody@exemple.fr", "test@exemple.fr",
          "550 5.1.0 <nobody@exemple.fr>: Sender address rejected: User unknown in virtual mailbox table", &[]),
        // The recipient side shares the machinery: each class's code and table.
        d("unlisted local recipient, 450", "unknown_local_recipient_reject_code = 450\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "127.0.0.1", "good.test", "a@good.test", "ghost@mx.relais.test",
          "450 4.1.1 <ghost@mx.relais.test>: Recipient address rejected: User unknown in local recipient table", &[]),
        d("unlisted relay recipient", "relay_domains = relay.test\nrelay_recipient_maps = inline:{ known@relay.test=x }", "192.0.2.1", "good.test", "a@good.test", "who@relay.test",
          "550 5.1.1 <who@relay.test>: Recipient address rejected: User unknown in relay recipient table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.1 <who@relay.test>: Recipient address rejected: User unknown in relay recipient table; from=<a@good.test> to=<who@relay.test> proto=ESMTP helo=<good.test>"]),
        d("listed relay recipient", "relay_domains = relay.test\nrelay_recipient_maps = inline:{ known@relay.test=x }", "192.0.2.1", "good.test", "a@good.test", "known@relay.test",
          "250 2.1.5", &[]),
        // An empty table lists everyone (Postfix skips the check): virtual mailbox, local, relay.
        d("empty virtual_mailbox_maps, recipient", "virtual_mailbox_maps =", "192.0.2.1", "good.test", "a@good.test", "anyone@exemple.fr",
          "250 2.1.5", &[]),
        d("empty virtual_mailbox_maps, sender", "smtpd_reject_unlisted_sender = yes\nvirtual_mailbox_maps =", "192.0.2.1", "good.test", "anyone@exemple.fr", "other@exemple.fr",
          "250 2.1.5", &[]),
        d("empty local_recipient_maps", "local_recipient_maps =", "192.0.2.1", "good.test", "a@good.test", "ghost@mx.relais.test",
          "250 2.1.5", &[]),
        d("empty relay_recipient_maps", "relay_domains = relay.test\nrelay_recipient_maps =", "192.0.2.1", "good.test", "a@good.test", "who@relay.test",
          "250 2.1.5", &[]),
        // A virtual_alias_maps entry lists the address, whatever its targets; in a virtual
        // alias domain nothing else does.
        d("virtual alias to an unknown mailbox is listed", "virtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ info@alias.test=nobody@exemple.fr }", "192.0.2.1", "good.test", "a@good.test", "info@alias.test",
          "250 2.1.5", &[]),
        d("virtual alias catch-all is listed", "virtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ @alias.test=ghost@mx.relais.test }\nlocal_recipient_maps = inline:{ bob=x }\nalias_maps =", "192.0.2.1", "good.test", "a@good.test", "x@alias.test",
          "250 2.1.5", &[]),
        d("virtual alias domain, no entry", "virtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ info@alias.test=test@exemple.fr }", "192.0.2.1", "good.test", "a@good.test", "x@alias.test",
          "550 5.1.1 <x@alias.test>: Recipient address rejected: User unknown in virtual alias table",
          &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 550 5.1.1 <x@alias.test>: Recipient address rejected: User unknown in virtual alias table; from=<a@good.test> to=<x@alias.test> proto=ESMTP helo=<good.test>"]),
        d("virtual alias domain, no entry, 450", "unknown_virtual_alias_reject_code = 450\nvirtual_alias_domains = alias.test\nvirtual_alias_maps = inline:{ info@alias.test=test@exemple.fr }", "192.0.2.1", "good.test", "a@good.test", "x@alias.test",
          "450 4.1.1 <x@alias.test>: Recipient address rejected: User unknown in virtual alias table", &[]),
        d("local user with a virtual alias is listed", "local_recipient_maps = inline:{ bob=x }\nalias_maps =\nvirtual_alias_maps = inline:{ ghost@mx.relais.test=nobody@exemple.fr }", "192.0.2.1", "good.test", "a@good.test", "ghost@mx.relais.test",
          "250 2.1.5", &[]),
        d("local user with a bare virtual alias key is listed", "local_recipient_maps = inline:{ bob=x }\nalias_maps =\nvirtual_alias_maps = inline:{ ghost=bob }", "192.0.2.1", "good.test", "a@good.test", "ghost@mx.relais.test",
          "250 2.1.5", &[]),
        d("virtual mailbox user with a virtual alias is listed", "virtual_alias_maps = inline:{ nobody@exemple.fr=ghost@elsewhere.example }", "192.0.2.1", "good.test", "a@good.test", "nobody@exemple.fr",
          "250 2.1.5", &[]),
        d("virtual mailbox sender with a virtual alias is listed", "smtpd_reject_unlisted_sender = yes\nvirtual_alias_maps = inline:{ nobody@exemple.fr=test@exemple.fr }", "192.0.2.1", "good.test", "nobody@exemple.fr", "test@exemple.fr",
          "250 2.1.5", &[]),
        d("unknown virtual mailbox user beside an unrelated alias", "virtual_alias_maps = inline:{ info@exemple.fr=test@exemple.fr }", "192.0.2.1", "good.test", "a@good.test", "nobody@exemple.fr",
          "550 5.1.1 <nobody@exemple.fr>: Recipient address rejected: User unknown in virtual mailbox table", &[]),
        d("retry transport", "relay_domains = relay.test\ntransport_maps = inline:{ { relay.test = retry:4.4.1 try later } }", "192.0.2.1", "good.test", "a@good.test", "who@relay.test",
          "450 4.4.1 <who@relay.test>: Recipient address rejected: try later", &[]),
        d("relay denied", "", "192.0.2.1", "good.test", "a@good.test", "x@elsewhere.example",
          "554 5.7.1 <x@elsewhere.example>: Relay access denied", &["NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 554 5.7.1 <x@elsewhere.example>: Relay access denied; from=<a@good.test> to=<x@elsewhere.example> proto=ESMTP helo=<good.test>"]),
    ]
}

fn relay() -> &'static str {
    "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination"
}

#[tokio::test]
async fn restrictions_and_access_actions_table() {
    for row in rows() {
        let conf = format!("{}\n{}", relay(), row.conf);
        let steps = rcpt_steps(row.helo, row.from, row.rcpt, row.reply);
        let mut st: Vec<(&str, &str)> = steps.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        let accepted = row.reply.starts_with("250");
        if accepted {
            st.push(("DATA", "354"));
            st.push(("<BODY>", "250 2.0.0 Ok: queued as ID0001"));
        }
        st.push(("QUIT", "221"));
        let run = session(&conf, row.client, &st).await;
        for l in row.log {
            assert!(
                run.log.contains(l),
                "{}: log lacks {l:?}:\n{}",
                row.name,
                run.log
            );
        }
        let a = run
            .queued
            .first()
            .map(|e| e.actions.clone())
            .unwrap_or_default();
        match row.name {
            "HOLD" => assert!(a.hold.is_some(), "{a:?}"),
            "DISCARD" => assert!(a.discard.is_some(), "{a:?}"),
            "REDIRECT" => assert_eq!(a.redirect.as_deref(), Some("other@exemple.fr")),
            "FILTER" => assert_eq!(a.filter.as_deref(), Some("smtp:[127.0.0.1]:10025")),
            "BCC" => assert_eq!(a.bcc, vec!["archive@exemple.fr".to_string()]),
            "PREPEND" => assert_eq!(a.prepend, vec!["X-Tag: yes".to_string()]),
            _ if accepted => assert!(a.is_empty(), "{}: {a:?}", row.name),
            _ => assert!(run.queued.is_empty(), "{}", row.name),
        }
    }
}

#[tokio::test]
async fn unlisted_sender_never_refuses_the_null_sender() {
    let conf = format!(
        "{}\nsmtpd_reject_unlisted_sender = yes\nsmtpd_sender_restrictions = reject_unlisted_sender\nlocal_recipient_maps = inline:{{ bob=x }}\nalias_maps =",
        relay()
    );
    let run = session(
        &conf,
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<>", "250 2.1.0"),
            ("RCPT TO:<test@exemple.fr>", "250 2.1.5"),
            ("DATA", "354"),
            ("<BODY>", "250 2.0.0 Ok: queued as ID0001"),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert_eq!(run.queued.len(), 1);
    assert!(!run.log.contains("reject"), "{}", run.log);

    // smtpd_delay_reject = no: the sender is checked at MAIL FROM, <> still passes.
    let run = session(
        &format!("{conf}\nsmtpd_delay_reject = no"),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<ghost@mx.relais.test>", "550 5.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table"),
            ("MAIL FROM:<>", "250 2.1.0"),
            ("RCPT TO:<test@exemple.fr>", "250 2.1.5"),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("NOQUEUE: reject: MAIL from mail.good.test[192.0.2.1]: 550 5.1.0 <ghost@mx.relais.test>: Sender address rejected: User unknown in local recipient table;"), "{}", run.log);
}

/// A name server on loopback that answers every query with SERVFAIL.
fn servfail_server() -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        // Lives as long as the test process; each round answers one query.
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            buf[2] |= 0x80;
            buf[3] = (buf[3] & 0xf0) | 2;
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    port
}

#[tokio::test]
async fn temporary_dns_failures_defer_even_with_5xx_codes() {
    let port = servfail_server();
    let conf = format!(
        "{}\nsmtpd_sender_restrictions = reject_unknown_sender_domain\nunknown_address_reject_code = 550\nrelais_dns_servers = 127.0.0.1:{port}",
        relay()
    );
    // defer_if_permit: a later refusal wins, else 450.
    session(
        &conf,
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            (
                "RCPT TO:<test@exemple.fr>",
                "450 4.1.8 <a@good.test>: Sender address rejected: Domain not found",
            ),
            (
                "RCPT TO:<x@elsewhere.example>",
                "554 5.7.1 <x@elsewhere.example>: Relay access denied",
            ),
            ("QUIT", "221"),
        ],
    )
    .await;
    let conf2 = format!(
        "{}\nsmtpd_client_restrictions = reject_unknown_client_hostname\nunknown_client_reject_code = 550\nrelais_dns_servers = 127.0.0.1:{port}",
        relay()
    );
    session(
        &conf2,
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            (
                "RCPT TO:<test@exemple.fr>",
                "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.1]",
            ),
            ("QUIT", "221"),
        ],
    )
    .await;
}

#[tokio::test]
async fn data_end_of_data_and_etrn_restrictions() {
    let run = session(
        &format!("{}\nsmtpd_data_restrictions = reject", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 "),
            (
                "DATA",
                "554 5.7.1 <DATA>: Data command rejected: Access denied",
            ),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("NOQUEUE: reject: DATA from mail.good.test[192.0.2.1]: 554 5.7.1 <DATA>: Data command rejected: Access denied; from=<a@good.test> to=<test@exemple.fr> proto=ESMTP helo=<good.test>"), "{}", run.log);
    assert!(run.queued.is_empty());

    let run = session(
        &format!("{}\nsmtpd_end_of_data_restrictions = check_sender_access inline:{{ {{ a@good.test = REJECT too late }} }}", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 "),
            ("DATA", "354"),
            ("<BODY>", "554 5.7.1 <a@good.test>: Sender address rejected: too late"),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("ID0001: reject: END-OF-MESSAGE from mail.good.test[192.0.2.1]: 554 5.7.1 <a@good.test>: Sender address rejected: too late; from=<a@good.test> to=<test@exemple.fr>"), "{}", run.log);
    assert!(run.queued.is_empty());

    // BDAT: the data restrictions at the first chunk.
    let run = session(
        &format!("{}\nsmtpd_data_restrictions = reject", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 "),
            ("BDAT 0 LAST", "554 5.7.1 <DATA>: Data command rejected"),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.queued.is_empty());

    let run = session(
        &format!(
            "{}\nsmtpd_etrn_restrictions = reject\nfast_flush_domains = good.test",
            relay()
        ),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            (
                "ETRN good.test",
                "554 5.7.1 <good.test>: Etrn command rejected: Access denied",
            ),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("NOQUEUE: reject: ETRN from mail.good.test[192.0.2.1]: 554 5.7.1 <good.test>: Etrn command rejected: Access denied;"), "{}", run.log);
}

#[tokio::test]
async fn delay_reject_no_checks_at_each_command() {
    let run = session(
        &format!("{}\nsmtpd_delay_reject = no\nsmtpd_client_restrictions = reject_rbl_client zen.test", relay()),
        "192.0.2.1",
        &[
            ("<BANNER>", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.test; listed"),
            ("EHLO good.test", "503 5.7.0 Error: access denied for mail.good.test[192.0.2.1]"),
            ("MAIL FROM:<a@good.test>", "503 5.7.0 Error: access denied"),
            ("NOOP", "250"),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("NOQUEUE: reject: CONNECT from mail.good.test[192.0.2.1]: 554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.test; listed; proto=SMTP"), "{}", run.log);

    session(
        &format!(
            "{}\nsmtpd_delay_reject = no\nsmtpd_helo_restrictions = reject_unknown_helo_hostname",
            relay()
        ),
        "192.0.2.1",
        &[
            ("<BANNER>", "220 "),
            (
                "EHLO nowhere.test",
                "450 4.7.1 <nowhere.test>: Helo command rejected: Host not found",
            ),
            ("EHLO good.test", "250 "),
            ("QUIT", "221"),
        ],
    )
    .await;

    let run = session(
        &format!(
            "{}\nsmtpd_delay_reject = no\nsmtpd_sender_restrictions = reject_unknown_sender_domain",
            relay()
        ),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            (
                "MAIL FROM:<a@nowhere.test>",
                "450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found",
            ),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 "),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("NOQUEUE: reject: MAIL from mail.good.test[192.0.2.1]: 450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found;"), "{}", run.log);
}

#[tokio::test]
async fn reject_footer_with_macros() {
    let run = session(
        &format!("{}\nsmtpd_reject_footer = For help see https://help.$mydomain/?ip=$client_address\\nThanks", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<x@elsewhere.example>", "554 5.7.1 Thanks"),
            ("QUIT", "221"),
        ],
    )
    .await;
    let r = &run.replies[3];
    assert_eq!(
        r,
        "554-5.7.1 <x@elsewhere.example>: Relay access denied\n554-5.7.1 For help see https://help.relais.test/?ip=192.0.2.1\n554 5.7.1 Thanks\n"
    );
}

/// A policy server on loopback that answers every request with `action` and records them.
fn policy_server(action: &'static str) -> (u16, Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(Mutex::new(0usize));
    let (s2, c2) = (seen.clone(), conns.clone());
    std::thread::spawn(move || {
        // Ends with the test process; each connection is bounded by the client's requests.
        for c in l.incoming().take(20) {
            let Ok(c) = c else { return };
            *c2.lock().unwrap() += 1;
            let s3 = s2.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut w = c.try_clone().unwrap();
                let mut r = std::io::BufReader::new(c);
                let mut req = String::new();
                for _ in 0..1000 {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 {
                        return;
                    }
                    if l == "\n" {
                        s3.lock().unwrap().push(std::mem::take(&mut req));
                        let _ = w.write_all(format!("action={action}\n\n").as_bytes());
                    } else {
                        req.push_str(&l);
                    }
                }
            });
        }
    });
    (port, seen, conns)
}

#[tokio::test]
async fn policy_service_actions_and_connection_reuse() {
    let (port, seen, conns) = policy_server("PREPEND X-Policy: checked");
    let run = session(
        &format!("{}\nsmtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:{port}", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 "),
            ("RCPT TO:<other@exemple.fr>", "250 "),
            ("DATA", "354"),
            ("<BODY>", "250 "),
            ("QUIT", "221"),
        ],
    )
    .await;
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(
        reqs[0].contains("request=smtpd_access_policy\n"),
        "{}",
        reqs[0]
    );
    assert!(reqs[0].contains("protocol_state=RCPT\n"));
    assert!(reqs[0].contains("client_address=192.0.2.1\n"));
    assert!(reqs[0].contains("client_name=mail.good.test\n"));
    assert!(reqs[0].contains("sender=a@good.test\n"));
    assert!(reqs[0].contains("recipient=test@exemple.fr\n"));
    assert!(reqs[1].contains("recipient=other@exemple.fr\n"));
    assert!(reqs[1].contains("queue_id=ID0001\n"));
    assert_eq!(*conns.lock().unwrap(), 1, "the connection is reused");
    assert_eq!(
        run.queued[0].actions.prepend,
        vec![
            "X-Policy: checked".to_string(),
            "X-Policy: checked".to_string()
        ]
    );
}

#[tokio::test]
async fn policy_service_that_hangs_gets_the_default_action() {
    // Accepts connections and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(10).flatten() {
            h2.lock().unwrap().push(c);
        }
    });
    let t0 = Instant::now();
    let run = session(
        &format!("{}\nsmtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:{port}\nsmtpd_policy_service_timeout = 1s\nsmtpd_policy_service_retry_delay = 0s", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "451 4.3.5 <test@exemple.fr>: Recipient address rejected: Server configuration problem"),
            ("NOOP", "250"),
            ("QUIT", "221"),
        ],
    )
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "two tries of 1s: {took:?}");
    assert!(
        run.log
            .contains("problem talking to server inet:127.0.0.1:"),
        "{}",
        run.log
    );
    assert!(run.log.contains("NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 451 4.3.5 <test@exemple.fr>: Recipient address rejected: Server configuration problem;"), "{}", run.log);

    // Per-use settings: DUNNO as the default action lets the mail through.
    session(
        &format!("{}\nsmtpd_recipient_restrictions = reject_unauth_destination, check_policy_service {{ inet:127.0.0.1:{port}, timeout=1s, try_limit=1, default_action=DUNNO }}", relay()),
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 "),
            ("QUIT", "221"),
        ],
    )
    .await;
    drop(held);
}

/// Kills the postgrey it holds, however the test ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn postgrey_greylists_then_accepts() {
    let Some(postgrey) = ["/usr/sbin/postgrey", "/usr/bin/postgrey"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("postgrey is not installed (tools/install-test-deps)");
    };
    let dir = tempfile::tempdir().unwrap();
    // Started as root, postgrey drops to its own user, which must be able to write here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let port = free_port();
    let _pg = Child(
        std::process::Command::new(postgrey)
            .arg(format!("--inet=127.0.0.1:{port}"))
            .arg(format!("--dbdir={}", dir.path().display()))
            .arg("--delay=2")
            .arg(format!("--pidfile={}/pid", dir.path().display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "postgrey did not start"
    );
    let conf = format!(
        "{}\nsmtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:{port}",
        relay()
    );
    let run = session(
        &conf,
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            (
                "RCPT TO:<test@exemple.fr>",
                "450 4.2.0 <test@exemple.fr>: Recipient address rejected: Greylisted",
            ),
            ("QUIT", "221"),
        ],
    )
    .await;
    assert!(run.log.contains("NOQUEUE: reject: RCPT from mail.good.test[192.0.2.1]: 450 4.2.0 <test@exemple.fr>: Recipient address rejected: Greylisted"), "{}", run.log);
    // Postgrey's delay is counted in whole seconds from the first attempt.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run = session(
        &conf,
        "192.0.2.1",
        &[
            ("EHLO good.test", "250 "),
            ("MAIL FROM:<a@good.test>", "250 "),
            ("RCPT TO:<test@exemple.fr>", "250 2.1.5"),
            ("DATA", "354"),
            ("<BODY>", "250 "),
            ("QUIT", "221"),
        ],
    )
    .await;
    let p = &run.queued[0].actions.prepend;
    assert!(
        p.iter().any(|h| h.starts_with("X-Greylist: delayed")),
        "{p:?}"
    );
}
