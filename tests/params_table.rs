//! The parameter table is the single source of truth: every parameter the code reads is in
//! it, documented; every parameter it marks as implemented is read somewhere.

use relais::config::{Support, PARAMS};
use std::collections::BTreeSet;
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    sources(&root.join("src"), &mut v);
    sources(&root.join("tools"), &mut v);
    v
}

#[test]
fn code_reads_only_parameters_in_the_table() {
    // Receivers that are Configs in this code base (cfg, c, c2, spec.config(base)).
    let re = regex::Regex::new(r#"\b(?:cfg|c|c2|config\([a-z_]*\))\.(?:get|get_bool|get_int|get_size|get_time|get_list|raw|is_set)\("([a-z0-9_]+)"\)"#).unwrap();
    let known: BTreeSet<&str> = PARAMS.iter().map(|p| p.name).collect();
    let mut missing = BTreeSet::new();
    for (file, text) in all_sources() {
        for c in re.captures_iter(&text) {
            let name = &c[1];
            if !known.contains(name) {
                missing.insert(format!("{name} (read in {file})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "parameters read but not in src/config/params.rs: {missing:#?}"
    );
}

#[test]
fn implemented_parameters_are_used_and_documented() {
    let code: String = all_sources()
        .into_iter()
        .filter(|(f, _)| !f.ends_with("params.rs"))
        .map(|(_, t)| t)
        .collect();
    let mut unused = Vec::new();
    for p in PARAMS {
        assert!(p.doc.len() > 10, "{} has no doc", p.name);
        if p.support == Support::Yes && !code.contains(&format!("\"{}\"", p.name)) {
            unused.push(p.name);
        }
    }
    assert!(
        unused.is_empty(),
        "parameters marked implemented but never read: {unused:?}"
    );
}
