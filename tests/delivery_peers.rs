//! Issue 4 acceptance against in-test SMTP peers on loopback: MX fallback, retry after a
//! temporary failure, a partial bounce, expiry, delay warnings and success notices. Notices go
//! back to a local Maildir user (alice@localhost) and are parsed with mail-parser.

mod common;
mod delivery;
use common::*;
use delivery::*;
use std::time::Duration;

const FAST: &str = "queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n";

fn relayed_to(port: u16, extra: &str) -> Instance {
    Instance::with_main_cf_extra(&format!("relayhost = [127.0.0.1]:{port}\n{FAST}{extra}\n"))
}

#[test]
fn first_mx_refuses_and_the_next_preference_takes_the_mail() {
    let zone = "
$ORIGIN example.test.
$TTL 60
@        IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@        IN NS  ns
ns       IN A   127.0.0.1
multi    IN MX  10 mx-a.example.test.
multi    IN MX  20 mx-b.example.test.
multi    IN MX  20 mx-c.example.test.
mx-a     IN A   127.0.0.2
mx-b     IN A   127.0.0.3
mx-c     IN A   127.0.0.4
";
    let dns = DnsZone::start("example.test.", zone);
    let port = free_port();
    let a = Peer::start(
        "127.0.0.2",
        port,
        Script {
            greeting: "421 4.3.2 mx-a is busy".into(),
            ..Default::default()
        },
    );
    let b = Peer::start("127.0.0.3", port, Script::default());
    let c = Peer::start("127.0.0.4", port, Script::default());
    let mut inst = Instance::with_main_cf_extra(&format!(
        "relais_dns_servers = 127.0.0.1:{}\ntransport_maps = inline:{{ {{ multi.example.test = smtp:multi.example.test:{port} }} }}\n{FAST}",
        dns.port
    ));
    inst.start();
    submit(
        inst.smtp_port,
        "alice@localhost",
        &["user@multi.example.test"],
        "mx",
        "via the second preference",
    );
    assert!(
        wait_queue_empty(&inst, Duration::from_secs(30)),
        "connections a/b/c: {}/{}/{}\n{}\n{}",
        a.connections(),
        b.connections(),
        c.connections(),
        postqueue_p(&inst),
        inst.log()
    );
    let got: Vec<Accepted> = b.accepted().into_iter().chain(c.accepted()).collect();
    assert_eq!(got.len(), 1, "{}", inst.log());
    assert_eq!(got[0].rcpts, vec!["user@multi.example.test".to_string()]);
    assert!(got[0].data.contains("via the second preference"));
    assert!(a.connections() >= 1, "the preferred MX was tried first");
    assert!(a.accepted().is_empty());
    let log = inst.log();
    assert!(
        log.contains(&format!("relay=mx-b.example.test[127.0.0.3]:{port}"))
            || log.contains(&format!("relay=mx-c.example.test[127.0.0.4]:{port}")),
        "{log}"
    );
    assert!(log.contains("status=sent"), "{log}");
    inst.stop();
}

#[test]
fn temporary_failure_is_deferred_then_delivered_on_retry() {
    let peer = Peer::start(
        "127.0.0.1",
        0,
        Script {
            data: "451 4.3.0 Try again later".into(),
            ..Default::default()
        },
    );
    let mut inst = relayed_to(peer.port, "");
    inst.start();
    submit(
        inst.smtp_port,
        "alice@localhost",
        &["bob@remote.test"],
        "retry",
        "patience",
    );
    assert!(
        inst.wait_log("status=deferred", Duration::from_secs(20)),
        "{}",
        inst.log()
    );
    let log = inst.log();
    assert!(
        log.contains("to=<bob@remote.test>, relay=127.0.0.1[127.0.0.1]:")
            && log.contains("said: 451 4.3.0 Try again later (in reply to end of DATA command))"),
        "{log}"
    );
    // The reason is in the queue listing while the message waits.
    assert!(
        wait_until(Duration::from_secs(10), || postqueue_p(&inst)
            .contains("451 4.3.0 Try again later")),
        "{}",
        postqueue_p(&inst)
    );
    assert!(postqueue_p(&inst).contains("bob@remote.test"));
    peer.set(|s| s.data = "250 2.0.0 Ok: queued as 42".into());
    let got = peer.wait_accepted(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "{}", inst.log());
    assert!(got[0].data.contains("patience"));
    assert!(wait_queue_empty(&inst, Duration::from_secs(20)));
    let log = inst.log();
    assert!(
        log.contains("status=sent (250 2.0.0 Ok: queued as 42)"),
        "{log}"
    );
    // No notice: nothing bounced, no delay warning asked for.
    assert!(maildir(&inst, "alice").is_empty());
    inst.stop();
}

#[test]
fn one_rejected_recipient_of_three_bounces_alone() {
    let mut script = Script::default();
    script.rcpt.insert(
        "carol@remote.test".into(),
        "550 5.1.1 <carol@remote.test>: Recipient address rejected: User unknown".into(),
    );
    let peer = Peer::start("127.0.0.1", 0, script);
    let mut inst = relayed_to(peer.port, "");
    inst.start();
    submit(
        inst.smtp_port,
        "alice@localhost",
        &["anna@remote.test", "bert@remote.test", "carol@remote.test"],
        "three",
        "for three",
    );
    let notices = wait_maildir(&inst, "alice", 1, Duration::from_secs(30));
    assert_eq!(notices.len(), 1, "{}", inst.log());
    let got = peer.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    let mut rcpts = got[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, vec!["anna@remote.test", "bert@remote.test"]);
    let n = &notices[0];
    assert!(n.starts_with("Return-Path: <>\n"), "{n}");
    assert!(
        n.contains("Subject: Undelivered Mail Returned to Sender"),
        "{n}"
    );
    let ds = delivery_status(n);
    assert!(
        ds.contains("Final-Recipient: rfc822; carol@remote.test")
            && ds.contains("Action: failed")
            && ds.contains("Status: 5.1.1"),
        "{ds}"
    );
    assert!(
        !ds.contains("anna@remote.test") && !ds.contains("bert@remote.test"),
        "{ds}"
    );
    assert!(wait_queue_empty(&inst, Duration::from_secs(20)));
    let log = inst.log();
    assert_eq!(
        log.matches("status=sent").count(),
        3,
        "two relayed + the notice: {log}"
    );
    assert!(
        log.contains("to=<carol@remote.test>") && log.contains("status=bounced"),
        "{log}"
    );
    assert!(
        log.contains(": sender non-delivery notification: "),
        "{log}"
    );
    inst.stop();
}

#[test]
fn expired_mail_is_returned_to_sender() {
    // Nothing listens there: every attempt is a temporary failure.
    let closed = free_port();
    let mut inst = relayed_to(closed, "maximal_queue_lifetime = 0\n");
    inst.start();
    submit(
        inst.smtp_port,
        "alice@localhost",
        &["gone@remote.test"],
        "expire",
        "too late",
    );
    let notices = wait_maildir(&inst, "alice", 1, Duration::from_secs(30));
    assert_eq!(notices.len(), 1, "{}", inst.log());
    let ds = delivery_status(&notices[0]);
    assert!(
        ds.contains("Final-Recipient: rfc822; gone@remote.test") && ds.contains("Action: failed"),
        "{ds}"
    );
    assert!(notices[0].contains("too late"), "the original is returned");
    assert!(wait_queue_empty(&inst, Duration::from_secs(20)));
    let log = inst.log();
    assert!(log.contains("status=expired, returned to sender"), "{log}");
    inst.stop();
}

#[test]
fn delay_warning_is_sent_once_while_the_message_waits() {
    let closed = free_port();
    let mut inst = relayed_to(closed, "delay_warning_time = 1s\n");
    inst.start();
    submit(
        inst.smtp_port,
        "alice@localhost",
        &["slow@remote.test"],
        "delay",
        "waiting",
    );
    let notices = wait_maildir(&inst, "alice", 1, Duration::from_secs(30));
    assert_eq!(notices.len(), 1, "{}", inst.log());
    let n = &notices[0];
    assert!(
        n.contains("Subject: Delayed Mail (still being retried)"),
        "{n}"
    );
    let ds = delivery_status(n);
    assert!(
        ds.contains("Final-Recipient: rfc822; slow@remote.test") && ds.contains("Action: delayed"),
        "{ds}"
    );
    // Later retries do not warn again; the message is still queued.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(maildir(&inst, "alice").len(), 1, "{}", inst.log());
    assert!(postqueue_p(&inst).contains("slow@remote.test"));
    inst.stop();
}

#[test]
fn notify_success_produces_a_success_notice() {
    let peer = Peer::start("127.0.0.1", 0, Script::default());
    let mut inst = relayed_to(peer.port, "");
    inst.start();
    submit(
        inst.smtp_port,
        "alice@localhost",
        &["happy@remote.test NOTIFY=SUCCESS", "quiet@remote.test"],
        "dsn",
        "tell me",
    );
    let notices = wait_maildir(&inst, "alice", 1, Duration::from_secs(30));
    assert_eq!(notices.len(), 1, "{}", inst.log());
    let ds = delivery_status(&notices[0]);
    assert!(
        ds.contains("Final-Recipient: rfc822; happy@remote.test")
            && (ds.contains("Action: relayed") || ds.contains("Action: delivered")),
        "{ds}"
    );
    assert!(!ds.contains("quiet@remote.test"), "{ds}");
    assert_eq!(peer.accepted().len(), 1);
    assert!(wait_queue_empty(&inst, Duration::from_secs(20)));
    assert!(
        inst.log()
            .contains(": sender delivery status notification: "),
        "{}",
        inst.log()
    );
    inst.stop();
}
