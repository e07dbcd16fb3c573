//! Every table type through the public API and `postmap`, from files on disk: texthash,
//! hash (compiled by postmap), regexp, pcre, cidr, inline, static, lists of maps, and bad
//! table files (warnings naming file and line, never a panic).

use relais::table::{self, Maps, OpenFlags, TableError};
use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn postmap(dir: &Path, args: &[&str]) -> (String, String, i32) {
    let o = Command::new(env!("CARGO_BIN_EXE_postmap"))
        .arg("-c")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

#[test]
fn texthash_and_hash_workflow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.cf"), "").unwrap();
    let src = write(
        dir,
        "access",
        "# comment\nSpammer@Example.com REJECT\n  go away\nexample.org OK\nbroken\n",
    );

    let t = table::open(&format!("texthash:{src}")).unwrap();
    assert_eq!(
        t.lookup("spammer@EXAMPLE.com").unwrap().as_deref(),
        Some("REJECT go away")
    );
    assert_eq!(
        t.warnings(),
        [format!(
            "{src}, line 5: expected format: key whitespace value -- ignoring this line"
        )]
    );

    // hash: needs postmap first, and says so like Postfix.
    let e = table::open(&format!("hash:{src}")).unwrap_err();
    assert!(matches!(e, TableError::OpenDb { .. }));
    assert_eq!(
        e.to_string(),
        format!("open database {src}.db: No such file or directory")
    );

    // A bare file name uses default_database_type (hash); the bad line is reported.
    let (out, err, rc) = postmap(dir, &[&src]);
    assert_eq!((out.as_str(), rc), ("", 0));
    assert_eq!(
        err,
        format!("postmap: warning: {src}, line 5: expected format: key whitespace value\n")
    );
    let t = table::open(&format!("hash:{src}")).unwrap();
    assert_eq!(
        t.lookup("SPAMMER@example.com").unwrap().as_deref(),
        Some("REJECT go away")
    );
    assert_eq!(t.lookup("broken").unwrap(), None);

    // The running table sees a rebuild.
    std::fs::write(&src, "new@example.org DISCARD\n").unwrap();
    assert_eq!(postmap(dir, &[&format!("hash:{src}")]).2, 0);
    assert_eq!(
        t.lookup("new@example.org").unwrap().as_deref(),
        Some("DISCARD")
    );
    assert_eq!(t.lookup("spammer@example.com").unwrap(), None);

    // -f keeps case at build and query time.
    std::fs::write(&src, "MiXed v\n").unwrap();
    assert_eq!(postmap(dir, &["-f", &format!("btree:{src}")]).2, 0);
    assert_eq!(
        postmap(dir, &["-fq", "MiXed", &format!("btree:{src}")]).0,
        "v\n"
    );
    assert_eq!(
        postmap(dir, &["-fq", "mixed", &format!("btree:{src}")]).2,
        1
    );
    let folded = table::open_with(&format!("btree:{src}"), OpenFlags { fold_case: true }).unwrap();
    assert_eq!(
        folded.lookup("MiXed").unwrap(),
        None,
        "folded lookups miss unfolded keys, as in Postfix"
    );

    // Building a missing source, or an unbuildable type, is a clear fatal error.
    let (_, err, rc) = postmap(dir, &[&format!("hash:{}/nosuch", dir.display())]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        format!(
            "postmap: fatal: open {}/nosuch: No such file or directory\n",
            dir.display()
        )
    );
    let (_, err, rc) = postmap(dir, &[&format!("regexp:{src}")]);
    assert_eq!(
        (err.as_str(), rc),
        (
            "postmap: fatal: unsupported map type for this operation: regexp\n",
            1
        )
    );

    // A corrupt database is an error, not a panic.
    std::fs::write(
        format!("{src}.db"),
        b"RELAISDB\x01\x00\x00\x00\x01\xff\xff\xff\xff",
    )
    .unwrap();
    assert!(table::open(&format!("hash:{src}")).is_err());
}

#[test]
fn regexp_and_pcre_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.cf"), "").unwrap();
    let re = write(
        dir,
        "checks",
        "# header checks\n\
         /^Subject:.*(viagra|casino)/ REJECT spam word $1\n\
         if /^From:/\n\
         !/@example\\.com>?$/ WARN outsider\n\
         /^From: (.*)$/ PREPEND X-Seen: ${1}\n\
         endif\n\
         /^X-Case: ABC$/i HOLD\n\
         /(bad/ REJECT never\n\
         /^To:/ OK\n\
         \x20 with continuation\n",
    );
    let spec = format!("regexp:{re}");
    let t = table::open(&spec).unwrap();
    assert_eq!(
        t.lookup("subject: cheap CASINO").unwrap().as_deref(),
        Some("REJECT spam word CASINO")
    );
    assert_eq!(
        t.lookup("From: a@evil.org").unwrap().as_deref(),
        Some("WARN outsider")
    );
    assert_eq!(
        t.lookup("From: b@example.com").unwrap().as_deref(),
        Some("PREPEND X-Seen: b@example.com")
    );
    assert_eq!(t.lookup("X-Case: ABC").unwrap().as_deref(), Some("HOLD"));
    assert_eq!(
        t.lookup("X-Case: abc").unwrap(),
        None,
        "i toggles to case-sensitive"
    );
    assert_eq!(
        t.lookup("To: x").unwrap().as_deref(),
        Some("OK with continuation")
    );
    assert_eq!(t.lookup("Received: x").unwrap(), None);
    assert_eq!(t.warnings().len(), 1);
    assert!(t.warnings()[0].starts_with(&format!(
        "regexp map {re}, line 8: error in regular expression"
    )));

    // postmap says it, and still answers.
    let (out, err, rc) = postmap(dir, &["-q", "To: y", &spec]);
    assert_eq!((out.as_str(), rc), ("OK with continuation\n", 0));
    assert!(
        err.starts_with(&format!("postmap: warning: regexp map {re}, line 8: ")),
        "{err}"
    );

    let pc = write(
        dir,
        "pcre",
        "/^(?!postmaster@)(.+)@example\\.com$/ relay:$1\n/(\\w)\\1/ double $1\n/^ab/A anchored\n",
    );
    let t = table::open(&format!("pcre:{pc}")).unwrap();
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
    assert_eq!(
        t.lookup("joe@example.com").unwrap().as_deref(),
        Some("relay:joe")
    );
    assert_eq!(t.lookup("postmaster@example.com").unwrap(), None);
    assert_eq!(t.lookup("book").unwrap().as_deref(), Some("double o"));
    assert_eq!(t.lookup("abc").unwrap().as_deref(), Some("anchored"));
    assert_eq!(t.lookup("cab").unwrap(), None);

    // Relative names are refused with a clear message.
    let e = table::open("regexp:checks").unwrap_err().to_string();
    assert_eq!(e, "regexp:checks: table file name must be an absolute path");
}

#[test]
fn cidr_inline_static_and_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = write(
        dir,
        "clients.cidr",
        "127.0.0.0/8 OK\n!10.0.0.0/8 outside-ten\n[2001:db8::]/32 v6\n10.0.0.1/8 bad\n",
    );
    let t = table::open(&format!("cidr:{c}")).unwrap();
    assert_eq!(t.lookup("127.1.2.3").unwrap().as_deref(), Some("OK"));
    assert_eq!(
        t.lookup("192.0.2.1").unwrap().as_deref(),
        Some("outside-ten")
    );
    assert_eq!(t.lookup("10.9.9.9").unwrap(), None);
    assert_eq!(t.lookup("2001:db8:1::5").unwrap().as_deref(), Some("v6"));
    assert_eq!(t.warnings().len(), 1);
    assert!(
        t.warnings()[0].starts_with(&format!("cidr map {c}, line 4: non-null host address bits"))
    );

    let m = Maps::open(&[
        format!("cidr:{c}"),
        "inline:{ 10.1.1.1=ten, { 10.2.2.2 = two words } }".to_string(),
        "static:{ DUNNO here }".to_string(),
    ])
    .unwrap();
    assert_eq!(m.lookup("127.0.0.1").unwrap().as_deref(), Some("OK"));
    assert_eq!(m.lookup("10.1.1.1").unwrap().as_deref(), Some("ten"));
    assert_eq!(m.lookup("10.2.2.2").unwrap().as_deref(), Some("two words"));
    assert_eq!(m.lookup("10.3.3.3").unwrap().as_deref(), Some("DUNNO here"));

    assert!(Maps::open(&["bogus:/x".to_string()]).is_err());
    assert!(Maps::open(&["inline:{ novalue }".to_string()]).is_err());
}
