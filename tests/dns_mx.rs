//! DNS and MX routing against a hickory-server authoritative server on loopback.

mod common;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use relais::config::Config;
use relais::delivery::Outcome;
use relais::dns::{Dns, DnsError, Mx, MxRecord};
use relais::smtp::{Client, Job, JobRcpt};
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const ZONE: &str = "
$ORIGIN example.test.
$TTL 60
@        IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@        IN NS  ns
ns       IN A   127.0.0.1
; three MX hosts at two preferences: the preferred one refuses, the others accept
multi    IN MX  10 mx-a.example.test.
multi    IN MX  20 mx-b.example.test.
multi    IN MX  20 mx-c.example.test.
mx-a     IN A   127.0.0.2
mx-b     IN A   127.0.0.3
mx-c     IN A   127.0.0.4
nullmx   IN MX  0 .
plain    IN A   127.0.0.3
dual     IN A   127.0.0.3
dual     IN AAAA ::1
";

/// An authoritative server for example.test on 127.0.0.1 (UDP and TCP); stops when dropped.
async fn dns_server() -> (Server<Catalog>, u16) {
    let origin = Name::from_str("example.test.").unwrap();
    let (origin, records) = Parser::new(ZONE, None, Some(origin)).parse().unwrap();
    let zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap();
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let (udp, tcp, port) = common::bind_udp_tcp().await;
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 4096);
    (server, port)
}

fn config(dns_port: u16, extra: &str) -> Config {
    Config::from_text(
        Path::new("/nonexistent"),
        &format!(
            "myhostname = client.example.org\ninet_protocols = ipv4\nrelais_dns_servers = 127.0.0.1:{dns_port}\nsmtp_connection_cache_time_limit = 0s\nsmtp_helo_timeout = 5s\n{extra}\n"
        ),
    )
    .unwrap()
}

#[tokio::test]
async fn mx_answers_are_told_apart() {
    let (_server, port) = dns_server().await;
    let dns = Dns::from_config(&config(port, "")).unwrap();
    match dns.mx("multi.example.test").await.unwrap() {
        Mx::Records(mut r) => {
            r.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
            assert_eq!(
                r,
                vec![
                    MxRecord {
                        preference: 10,
                        host: "mx-a.example.test".into()
                    },
                    MxRecord {
                        preference: 20,
                        host: "mx-b.example.test".into()
                    },
                    MxRecord {
                        preference: 20,
                        host: "mx-c.example.test".into()
                    },
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dns.mx("nullmx.example.test").await, Ok(Mx::NullMx));
    assert_eq!(dns.mx("plain.example.test").await, Ok(Mx::NoMx));
    assert_eq!(
        dns.mx("nosuch.example.test").await,
        Err(DnsError::NotFound {
            name: "nosuch.example.test".into(),
            rtype: "MX"
        })
    );
    // Outside the server's zone: REFUSED, which may clear up: temporary.
    let e = dns.mx("elsewhere.example.org").await.unwrap_err();
    assert!(e.is_temporary(), "{e:?}");
    assert_eq!(
        dns.addrs("mx-b.example.test").await,
        Ok(vec!["127.0.0.3".parse::<IpAddr>().unwrap()])
    );
    // inet_protocols = ipv4: the AAAA record is not asked for.
    assert_eq!(
        dns.addrs("dual.example.test").await,
        Ok(vec!["127.0.0.3".parse::<IpAddr>().unwrap()])
    );
    let dns6 = Dns::from_config(&config(port, "inet_protocols = all")).unwrap();
    let mut both = dns6.addrs("dual.example.test").await.unwrap();
    both.sort();
    assert_eq!(
        both,
        vec![
            "127.0.0.3".parse::<IpAddr>().unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        ]
    );
    assert!(matches!(
        dns.addrs("mx-b.example.test").await,
        Ok(v) if v.len() == 1
    ));
    assert_eq!(
        dns.addrs("127.0.0.9").await,
        Ok(vec!["127.0.0.9".parse::<IpAddr>().unwrap()])
    );
}

/// An SMTP server on `ip:port` that greets with `greeting` and accepts everything; counts
/// connections and deliveries.
async fn smtp_server(ip: &str, port: u16, greeting: &'static str) -> Arc<Mutex<(usize, usize)>> {
    let l = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let count = Arc::new(Mutex::new((0usize, 0usize)));
    let c2 = count.clone();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok(Ok((sock, _))) = tokio::time::timeout(Duration::from_secs(30), l.accept()).await
            else {
                return;
            };
            c2.lock().unwrap().0 += 1;
            let c3 = c2.clone();
            tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(sock);
                let mut r = BufReader::new(r);
                if w.write_all(format!("{greeting}\r\n").as_bytes())
                    .await
                    .is_err()
                    || !greeting.starts_with('2')
                {
                    return;
                }
                let mut in_data = false;
                for _ in 0..1000 {
                    let mut line = String::new();
                    match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    let cmd = line.trim_end();
                    if in_data {
                        if cmd == "." {
                            in_data = false;
                            c3.lock().unwrap().1 += 1;
                            let _ = w.write_all(b"250 2.0.0 Ok: queued\r\n").await;
                        }
                        continue;
                    }
                    let rep: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-mx\r\n250 PIPELINING\r\n"
                    } else if cmd == "DATA" {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if cmd == "QUIT" {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 Ok\r\n"
                    };
                    if w.write_all(rep).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    count
}

fn job(rcpt: &str, nexthop: &str) -> Job {
    Job {
        queue_id: "5ABC".into(),
        sender: "a@example.org".into(),
        recipients: vec![JobRcpt {
            index: 0,
            address: rcpt.into(),
            original: rcpt.into(),
            ..Default::default()
        }],
        content: Arc::new(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        ret: None,
        envid: None,
        body_type: Default::default(),
        smtputf8: false,
        arrival: SystemTime::now(),
        active_since: None,
        nexthop: nexthop.into(),
        lmtp: false,
    }
}

#[tokio::test]
async fn mx_routing_fallback_null_mx_and_nxdomain() {
    let (_server, dns_port) = dns_server().await;
    // One port, three loopback addresses (all of 127/8 is local on Linux).
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = smtp_server("127.0.0.2", port, "421 4.3.2 mx-a busy").await;
    let b = smtp_server("127.0.0.3", port, "220 mx-b ESMTP").await;
    let c = smtp_server("127.0.0.4", port, "220 mx-c ESMTP").await;
    let cfg = config(dns_port, "");
    let client = Client::new(&cfg, Arc::new(Dns::from_config(&cfg).unwrap()));
    let nh = format!("multi.example.test:{port}");
    const JOBS: usize = 16;
    for _ in 0..JOBS {
        let out = client.deliver(job("u@multi.example.test", &nh)).await;
        match &out[0].1 {
            Outcome::Sent { dsn, detail } => {
                assert_eq!(dsn, "2.0.0");
                assert_eq!(detail, "250 2.0.0 Ok: queued");
            }
            o => panic!("{o:?}"),
        }
    }
    // The preferred MX is always tried first; the two at preference 20 share the load.
    let (a, b, c) = (*a.lock().unwrap(), *b.lock().unwrap(), *c.lock().unwrap());
    assert_eq!(a, (JOBS, 0));
    assert_eq!(b.1 + c.1, JOBS);
    assert!(
        b.1 > 0 && c.1 > 0,
        "random order among equal preferences: {b:?} {c:?}"
    );

    // No MX: the domain's own address.
    let out = client
        .deliver(job(
            "u@plain.example.test",
            &format!("plain.example.test:{port}"),
        ))
        .await;
    assert!(matches!(out[0].1, Outcome::Sent { .. }), "{out:?}");

    let out = client
        .deliver(job(
            "u@nullmx.example.test",
            &format!("nullmx.example.test:{port}"),
        ))
        .await;
    assert_eq!(
        out[0].1,
        Outcome::bounced(
            "5.1.10",
            "Domain nullmx.example.test does not accept mail (nullMX)"
        )
    );
    let out = client
        .deliver(job("u@nosuch.example.test", "nosuch.example.test"))
        .await;
    assert_eq!(
        out[0].1,
        Outcome::bounced(
            "5.4.4",
            "Host or domain name not found. Name service error for name=nosuch.example.test type=MX: Host not found"
        )
    );
    let out = client
        .deliver(job("u@elsewhere.example.org", "elsewhere.example.org"))
        .await;
    assert!(
        matches!(&out[0].1, Outcome::Deferred { dsn, reason } if dsn == "4.4.3" && reason.contains("try again")),
        "{out:?}"
    );
}

#[tokio::test]
async fn session_limit_and_fallback_relay() {
    let (_server, dns_port) = dns_server().await;
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Every MX host refuses; the fallback relay accepts.
    let _a = smtp_server("127.0.0.2", port, "421 4.3.2 busy").await;
    let _b = smtp_server("127.0.0.3", port, "421 4.3.2 busy").await;
    let _c = smtp_server("127.0.0.4", port, "421 4.3.2 busy").await;
    let fb = smtp_server("127.0.0.5", port, "220 fallback ESMTP").await;
    let cfg = config(dns_port, "smtp_mx_session_limit = 2");
    let client = Client::new(&cfg, Arc::new(Dns::from_config(&cfg).unwrap()));
    let out = client
        .deliver(job(
            "u@multi.example.test",
            &format!("multi.example.test:{port}"),
        ))
        .await;
    assert!(
        matches!(&out[0].1, Outcome::Deferred { reason, .. } if reason.contains("refused to talk to me: 421 4.3.2 busy")),
        "{out:?}"
    );
    let cfg = config(
        dns_port,
        &format!("smtp_mx_session_limit = 5\nsmtp_fallback_relay = [127.0.0.5]:{port}"),
    );
    let client = Client::new(&cfg, Arc::new(Dns::from_config(&cfg).unwrap()));
    let out = client
        .deliver(job(
            "u@multi.example.test",
            &format!("multi.example.test:{port}"),
        ))
        .await;
    assert!(matches!(out[0].1, Outcome::Sent { .. }), "{out:?}");
    assert_eq!(*fb.lock().unwrap(), (1, 1));
}
