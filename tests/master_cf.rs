//! The seed's master.cf through the parser and the checks the master runs at start.

use relais::config::master_cf::{self, MasterCf, ServiceKind, IMPLEMENTED_COMMANDS};
use relais::config::Config;
use std::path::Path;

const SEED_MASTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/seed-config/master.cf"
);

fn seed_cfg() -> Config {
    Config::from_text(Path::new("/etc/postfix"), "myhostname = mail.exemple.fr\n").unwrap()
}

#[test]
fn seed_master_cf_parses_with_defaults_resolved() {
    let m = MasterCf::read(Path::new(SEED_MASTER)).expect("seed master.cf parses");
    assert_eq!(m.entries.len(), 33);
    let svcs = m.services(&seed_cfg());
    assert_eq!(svcs.len(), 33);
    let get = |id: &str| svcs.iter().find(|s| s.id() == id).expect(id);

    let smtp = get("smtp/inet");
    assert_eq!(smtp.kind, ServiceKind::Inet);
    assert!(!smtp.private && smtp.unpriv && smtp.chroot);
    assert_eq!(smtp.maxproc, 100, "- is $default_process_limit");
    assert_eq!(smtp.wakeup, 0);
    assert_eq!(smtp.line, 2);

    let pickup = get("pickup/unix");
    assert_eq!(
        (pickup.wakeup, pickup.wakeup_conditional, pickup.maxproc),
        (60, false, 1)
    );
    let tlsmgr = get("tlsmgr/unix");
    assert_eq!((tlsmgr.wakeup, tlsmgr.wakeup_conditional), (1000, true));
    assert!(tlsmgr.private, "- is private y");
    assert_eq!(get("postlog/unix-dgram").kind, ServiceKind::UnixDgram);

    let relay = get("relay/unix");
    assert_eq!(relay.line, 16);
    assert_eq!(
        relay.overrides,
        vec![(
            "syslog_name".to_string(),
            "postfix/$service_name".to_string()
        )]
    );

    let maildrop = get("maildrop/unix");
    assert_eq!(maildrop.command, "pipe");
    assert!(!maildrop.unpriv && !maildrop.chroot);
    assert_eq!(
        maildrop.args,
        vec![
            "flags=DRXhu",
            "user=vmail",
            "argv=/usr/bin/maildrop",
            "-d",
            "${recipient}"
        ]
    );
    assert_eq!(get("scalemail-backend/unix").maxproc, 2);

    let smtps = get("smtps/inet");
    assert_eq!(smtps.line, 42);
    let names: Vec<&str> = smtps.overrides.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "syslog_name",
            "smtpd_tls_wrappermode",
            "smtpd_sasl_auth_enable",
            "smtpd_client_restrictions",
            "milter_macro_daemon_name"
        ]
    );
    assert!(smtps.implemented());
    assert!(!maildrop.implemented());
}

#[test]
fn seed_check_warns_for_unsupported_commands_and_is_not_fatal() {
    let text = std::fs::read_to_string(SEED_MASTER).unwrap();
    let problems = master_cf::check(&text, Path::new("/etc/postfix/master.cf"), &seed_cfg());
    let fatal: Vec<_> = problems.iter().filter(|p| p.fatal).collect();
    assert!(fatal.is_empty(), "{fatal:?}");
    let texts: Vec<&str> = problems.iter().map(|p| p.text.as_str()).collect();
    assert!(texts.contains(
        &"/etc/postfix/master.cf, line 28: service maildrop/unix: command pipe is not supported by relais; the service is not started"
    ), "{texts:#?}");
    assert!(texts.contains(
        &"/etc/postfix/master.cf, line 6: service tlsmgr/unix: command tlsmgr is not supported by relais; the service is not started"
    ));
    // Implemented daemons are not reported as unsupported.
    for cmd in IMPLEMENTED_COMMANDS {
        assert!(
            !texts
                .iter()
                .any(|t| t.contains(&format!("command {cmd} is not"))),
            "{cmd}"
        );
    }
    // The smtps -o settings go through the main.cf checks; SASL is implemented, so
    // smtpd_sasl_auth_enable is not reported.
    assert!(
        !texts.iter().any(|t| t.contains("smtpd_sasl_auth_enable")),
        "{texts:#?}"
    );
}

#[test]
fn malformed_entries_and_bad_overrides_are_fatal_with_their_line() {
    let text = "\
# comment
smtp inet n - n - - smtpd
  -o { smtpd_banner = hello world }
  -o smtpd_timeout=never
broken unix - - n
x fifo - - n 10? bogus smtpd
";
    let p = master_cf::check(text, Path::new("/e/master.cf"), &seed_cfg());
    let fatal: Vec<&str> = p
        .iter()
        .filter(|p| p.fatal)
        .map(|p| p.text.as_str())
        .collect();
    assert_eq!(fatal.len(), 3, "{fatal:#?}");
    assert_eq!(fatal[0], "/e/master.cf, line 5: bad field count");
    assert!(fatal[1].starts_with("/e/master.cf, line 6: invalid process_limit field \"bogus\""));
    assert!(fatal[2]
        .starts_with("/e/master.cf, line 2: service smtp/inet: -o: bad value for smtpd_timeout"));
    let m = MasterCf::parse_lenient(text, Path::new("/e/master.cf")).0;
    let s = &m.services(&seed_cfg())[0];
    assert_eq!(
        s.overrides[0],
        ("smtpd_banner".into(), "hello world".into())
    );
    // The braces come back when postconf -M prints a value with whitespace.
    assert!(m.entries[0]
        .format(false)
        .contains("-o {smtpd_banner=hello world} -o smtpd_timeout=never"));
}
