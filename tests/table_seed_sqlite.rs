//! The seed's SQLite schema and sqlite-*.cf files, as written, through the library and the
//! real `postmap -q` binary: hits, misses and rows with `active = 0`.

use relais::table;
use std::path::{Path, PathBuf};
use std::process::Command;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/seed-config"
);

/// Builds the database the seed documents describe, with active and inactive rows.
fn seed_db(dir: &Path) -> PathBuf {
    let db = dir.join("bdd").join("postfix.sqlite");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let schema = std::fs::read_to_string(Path::new(SEED).join("postfix.sql")).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&schema).unwrap();
    conn.execute_batch(
        r#"
        INSERT INTO postfix_alias (alias,destination,active) VALUES ("toto","test",1);
        INSERT INTO postfix_alias (alias,destination,active) VALUES ("ancien","test",0);
        INSERT INTO postfix_alias_virtuels (courriel,destination,active) VALUES ("ycharbi@exemple.fr","test@exemple.fr",1);
        INSERT INTO postfix_alias_virtuels (courriel,destination,active) VALUES ("parti@exemple.fr","test@exemple.fr",0);
        INSERT INTO postfix_domaines (domaine,defaut,active) VALUES ("exemple.fr",1,1);
        INSERT INTO postfix_domaines (domaine,defaut,active) VALUES ("toto.fr",1,0);
        INSERT INTO postfix_liste_noire_destinataires (courriel,action,active) VALUES ("root@mail.exemple.fr","REJECT",1);
        INSERT INTO postfix_liste_noire_destinataires (courriel,action,active) VALUES ("admin@mail.exemple.fr","REJECT",0);
        INSERT INTO postfix_liste_noire_expediteurs (courriel,code_retour,message,active) VALUES ("tata@tata.fr",554,"Parle à ma main, ma tête est malade.",1);
        INSERT INTO postfix_liste_noire_expediteurs (courriel,code_retour,message,active) VALUES ("titi@titi.fr",550,"Non.",0);
        INSERT INTO postfix_utilisateurs (utilisateur,mot_de_passe,nom_complet,rep_perso,uid,gid,privilege,prefixe,active) VALUES ("test@exemple.fr","{SHA512-CRYPT}$6$xWfisyC6fLawFcBr$zLm4","Test Dupont","exemple.fr/test/",3000,3000,"administrateur","",1);
        INSERT INTO postfix_utilisateurs (utilisateur,mot_de_passe,nom_complet,rep_perso,uid,gid,privilege,prefixe,active) VALUES ("vieux@exemple.fr","x","Vieux","exemple.fr/vieux/",3000,3000,"utilisateur","",0);
        "#,
    )
    .unwrap();
    db
}

/// Copies each sqlite-*.cf with its dbpath pointed at the test database; returns the specs.
fn copy_cfs(dir: &Path, db: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in [
        "sqlite-alias.cf",
        "sqlite-alias-vituels.cf",
        "sqlite-domaines.cf",
        "sqlite-liste-noire-destinataires.cf",
        "sqlite-liste-noire-expediteurs.cf",
        "sqlite-utilisateurs.cf",
    ] {
        let text = std::fs::read_to_string(Path::new(SEED).join(name)).unwrap();
        assert!(text.contains("/etc/postfix/bdd/postfix.sqlite"));
        let text = text.replace("/etc/postfix/bdd/postfix.sqlite", db.to_str().unwrap());
        let cf = dir.join(name);
        std::fs::write(&cf, text).unwrap();
        out.push((name.to_string(), format!("sqlite:{}", cf.display())));
    }
    out
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
fn seed_tables_through_library_and_postmap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.cf"), "").unwrap();
    let db = seed_db(dir);
    let specs = copy_cfs(dir, &db);
    let spec = |n: &str| specs.iter().find(|(f, _)| f == n).unwrap().1.clone();

    // (table, key, expected)
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("sqlite-alias.cf", "toto", Some("test")),
        ("sqlite-alias.cf", "ancien", None),
        ("sqlite-alias.cf", "personne", None),
        (
            "sqlite-alias-vituels.cf",
            "ycharbi@exemple.fr",
            Some("test@exemple.fr"),
        ),
        ("sqlite-alias-vituels.cf", "parti@exemple.fr", None),
        ("sqlite-domaines.cf", "exemple.fr", Some("exemple.fr")),
        ("sqlite-domaines.cf", "toto.fr", None),
        ("sqlite-domaines.cf", "ailleurs.org", None),
        (
            "sqlite-liste-noire-destinataires.cf",
            "root@mail.exemple.fr",
            Some("REJECT"),
        ),
        (
            "sqlite-liste-noire-destinataires.cf",
            "admin@mail.exemple.fr",
            None,
        ),
        (
            "sqlite-liste-noire-expediteurs.cf",
            "tata@tata.fr",
            Some("554 Parle à ma main, ma tête est malade."),
        ),
        ("sqlite-liste-noire-expediteurs.cf", "titi@titi.fr", None),
        (
            "sqlite-utilisateurs.cf",
            "test@exemple.fr",
            Some("exemple.fr/test/"),
        ),
        // Keys are folded to lower case, as Postfix does for SQL tables.
        (
            "sqlite-utilisateurs.cf",
            "Test@Exemple.FR",
            Some("exemple.fr/test/"),
        ),
        ("sqlite-utilisateurs.cf", "vieux@exemple.fr", None),
        // A quote in the key is SQL-quoted, not injected.
        ("sqlite-utilisateurs.cf", "x' OR '1'='1", None),
    ];
    for (cf, key, want) in cases {
        let t = table::open(&spec(cf)).unwrap();
        assert_eq!(
            t.lookup(key).unwrap().as_deref(),
            *want,
            "library {cf} {key}"
        );
        let (out, err, rc) = postmap(dir, &["-q", key, &spec(cf)]);
        assert_eq!(err, "", "postmap {cf} {key}");
        match want {
            Some(v) => {
                assert_eq!(out, format!("{v}\n"), "postmap {cf} {key}");
                assert_eq!(rc, 0);
            }
            None => {
                assert_eq!(out, "", "postmap {cf} {key}");
                assert_eq!(rc, 1);
            }
        }
    }

    // -f turns folding off: the mixed-case key no longer matches.
    let (out, _, rc) = postmap(
        dir,
        &[
            "-f",
            "-q",
            "Test@Exemple.FR",
            &spec("sqlite-utilisateurs.cf"),
        ],
    );
    assert_eq!((out.as_str(), rc), ("", 1));

    // Keys on standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_postmap"))
        .arg("-c")
        .arg(dir)
        .args(["-q", "-", &spec("sqlite-alias.cf")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"toto\nancien\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "toto\ttest\n");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn sqlite_expansions_result_format_domain_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = dir.join("t.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE m (user TEXT, dom TEXT, dest TEXT);
         INSERT INTO m VALUES ('alice','example.com','a1@relay.example');
         INSERT INTO m VALUES ('alice','example.com','a2@relay.example');
         INSERT INTO m VALUES ('bob','example.com','bob@other.example');
         INSERT INTO m VALUES ('o''brien','example.com','ob@x.example');",
    )
    .unwrap();
    let cf = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("dbpath = {}\n{body}", db.display())).unwrap();
        format!("sqlite:{}", p.display())
    };
    let t = table::open(&cf(
        "ud.cf",
        "query = SELECT dest FROM m WHERE user='%u' AND dom='%d'\nresult_format = smtp:[%d] for %U\n",
    ))
    .unwrap();
    assert_eq!(
        t.lookup("alice@example.com").unwrap().as_deref(),
        Some("smtp:[relay.example] for alice,smtp:[relay.example] for alice")
    );
    assert_eq!(
        t.lookup("o'brien@example.com").unwrap().as_deref(),
        Some("smtp:[x.example] for o'brien")
    );
    // %d needs a domain: an unqualified key is not looked up.
    assert_eq!(t.lookup("alice").unwrap(), None);

    let t = table::open(&cf(
        "lim.cf",
        "query = SELECT dest FROM m WHERE user='%s'\nexpansion_limit = 1\n",
    ))
    .unwrap();
    assert_eq!(
        t.lookup("bob").unwrap().as_deref(),
        Some("bob@other.example")
    );
    assert!(
        t.lookup("alice").is_err(),
        "two results over a limit of one"
    );

    let t = table::open(&cf(
        "dom.cf",
        "query = SELECT dest FROM m WHERE user='%u' AND dom='%2.%1'\ndomain = example.com, example.net\n",
    ))
    .unwrap();
    assert_eq!(
        t.lookup("bob@example.com").unwrap().as_deref(),
        Some("bob@other.example")
    );
    assert_eq!(t.lookup("bob@example.org").unwrap(), None);
    assert_eq!(t.lookup("bob").unwrap(), None);
    assert_eq!(t.lookup("@example.com").unwrap(), None);

    // Configuration errors are clear, not panics.
    let e = table::open(&cf("bad.cf", "query = SELECT %x FROM m\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad % escape \"%x\""), "{e}");
    let p = dir.join("noeq.cf");
    std::fs::write(&p, "dbpath /x\n").unwrap();
    let e = table::open(&format!("sqlite:{}", p.display()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{}, line 1: missing '=' after attribute name", p.display())
    );
    let p = dir.join("nodb.cf");
    std::fs::write(&p, "dbpath = /nonexistent/dir/x.sqlite\nquery = SELECT 1\n").unwrap();
    assert!(table::open(&format!("sqlite:{}", p.display())).is_err());
    let t = table::open(&cf(
        "badsql.cf",
        "query = SELECT nosuchcol FROM m WHERE user='%s'\n",
    ))
    .unwrap();
    assert!(t.lookup("bob").is_err());
}
