//! `cidr:` tables (cidr_table(5)): `network/prefix result`, a plain address (exact match),
//! `!network/prefix result` (matches addresses outside the network), `if network/prefix` …
//! `endif` (also `if !…`), IPv4 and IPv6 (optionally in `[ ]`). First match wins. A key that is
//! not an address matches nothing. Bad lines are reported as
//! "cidr map FILE, line N: …: skipping this rule" and skipped, as Postfix does.

use super::{read_text, Table, TableError};
use crate::config::main_cf::logical_lines;
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug)]
enum Rule {
    Match {
        net: IpNet,
        negate: bool,
        result: String,
    },
    If {
        net: IpNet,
        negate: bool,
        end: usize,
    },
    Endif,
}

#[derive(Debug)]
pub struct CidrTable {
    spec: String,
    rules: Vec<Rule>,
    warnings: Vec<String>,
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// Parses `[!]addr[/prefix]`; host bits must be zero, as Postfix insists.
fn parse_net(pat: &str) -> Result<(IpNet, bool), String> {
    let (negate, p) = match pat.strip_prefix('!') {
        Some(p) => (true, p),
        None => (false, pat),
    };
    let bad = || format!("bad net/mask pattern: \"{pat}\"");
    let net = match p.split_once('/') {
        Some((a, len)) => {
            let addr = parse_addr(a).ok_or_else(bad)?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            IpNet::new(addr, len).map_err(|_| bad())?
        }
        None => IpNet::from(parse_addr(p).ok_or_else(bad)?),
    };
    if net.trunc() != net {
        return Err(format!(
            "non-null host address bits in \"{p}\", perhaps you should use \"{}\" instead",
            net.trunc()
        ));
    }
    Ok((net, negate))
}

impl CidrTable {
    pub fn open(spec: &str, path: &Path) -> Result<CidrTable, TableError> {
        let text = read_text(path)?;
        Ok(Self::parse(spec, &path.display().to_string(), &text))
    }

    pub fn parse(spec: &str, file: &str, text: &str) -> CidrTable {
        let mut rules = Vec::new();
        let mut warnings = Vec::new();
        let mut open_ifs: Vec<usize> = Vec::new();
        let mut last_line = 0;
        for (line, raw) in logical_lines(text) {
            last_line = line;
            let mut warn = |m: String| {
                warnings.push(format!(
                    "cidr map {file}, line {line}: {m}: skipping this rule"
                ))
            };
            let mut words = raw.trim().splitn(2, char::is_whitespace);
            let first = words.next().unwrap_or("");
            let rest = words.next().unwrap_or("").trim();
            if first.eq_ignore_ascii_case("endif") {
                match open_ifs.pop() {
                    Some(at) => {
                        let end = rules.len();
                        if let Some(Rule::If { end: e, .. }) = rules.get_mut(at) {
                            *e = end;
                        }
                        rules.push(Rule::Endif);
                    }
                    None => warn("ignoring ENDIF without matching IF".to_string()),
                }
                continue;
            }
            if first.eq_ignore_ascii_case("if") {
                let mut w = rest.splitn(2, char::is_whitespace);
                match parse_net(w.next().unwrap_or("")) {
                    Ok((net, negate)) => {
                        open_ifs.push(rules.len());
                        rules.push(Rule::If {
                            net,
                            negate,
                            end: usize::MAX,
                        });
                    }
                    Err(e) => warn(e),
                }
                continue;
            }
            match parse_net(first) {
                Ok(_) if rest.is_empty() => warn("no lookup result".to_string()),
                Ok((net, negate)) => rules.push(Rule::Match {
                    net,
                    negate,
                    result: rest.to_string(),
                }),
                Err(e) => warn(e),
            }
        }
        if !open_ifs.is_empty() {
            warnings.push(format!(
                "cidr map {file}, line {last_line}: more IFs than ENDIFs"
            ));
            let end = rules.len();
            for at in open_ifs {
                if let Some(Rule::If { end: e, .. }) = rules.get_mut(at) {
                    *e = end;
                }
            }
        }
        CidrTable {
            spec: spec.to_string(),
            rules,
            warnings,
        }
    }
}

impl Table for CidrTable {
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let Some(addr) = parse_addr(key.trim()) else {
            return Ok(None);
        };
        // An address of the other family neither matches nor, negated, "doesn't match".
        let test = |net: &IpNet, negate: bool| {
            let same = net.addr().is_ipv4() == addr.is_ipv4();
            same && net.contains(&addr) != negate
        };
        let mut i = 0;
        while i < self.rules.len() {
            match &self.rules[i] {
                Rule::Endif => {}
                Rule::If { net, negate, end } => {
                    if !test(net, *negate) {
                        i = (*end).max(i).saturating_add(1);
                        continue;
                    }
                }
                Rule::Match {
                    net,
                    negate,
                    result,
                } => {
                    if test(net, *negate) {
                        return Ok(Some(result.clone()));
                    }
                }
            }
            i += 1;
        }
        Ok(None)
    }
    fn spec(&self) -> &str {
        &self.spec
    }
    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_negation_and_if() {
        let text = "127.0.0.0/8 OK\n10.0.0.0/8 554 5.7.1 Internal range\n2001:db8::/32 REJECT v6\n\
                    192.0.2.7 exact\nif 198.51.100.0/24\n!198.51.100.0/25 upper half\nendif\n";
        let t = CidrTable::parse("cidr:/t", "/t", text);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(t.lookup("127.0.0.2").unwrap().as_deref(), Some("OK"));
        assert_eq!(
            t.lookup("10.1.2.3").unwrap().as_deref(),
            Some("554 5.7.1 Internal range")
        );
        assert_eq!(
            t.lookup("2001:db8::1").unwrap().as_deref(),
            Some("REJECT v6")
        );
        assert_eq!(t.lookup("192.0.2.7").unwrap().as_deref(), Some("exact"));
        assert_eq!(t.lookup("192.0.2.8").unwrap(), None);
        assert_eq!(
            t.lookup("198.51.100.200").unwrap().as_deref(),
            Some("upper half")
        );
        assert_eq!(t.lookup("198.51.100.20").unwrap(), None);
        assert_eq!(t.lookup("203.0.113.5").unwrap(), None);
        assert_eq!(t.lookup("not-an-address").unwrap(), None);
    }

    #[test]
    fn bad_lines() {
        let t = CidrTable::parse(
            "cidr:/t",
            "/t",
            "1.2.3.4/24 X\nfoo bar\n1.2.3.0/24\n5.6.7.0/24 Y\n",
        );
        assert_eq!(t.lookup("5.6.7.8").unwrap().as_deref(), Some("Y"));
        assert_eq!(
            t.warnings,
            vec![
                "cidr map /t, line 1: non-null host address bits in \"1.2.3.4/24\", perhaps you should use \"1.2.3.0/24\" instead: skipping this rule",
                "cidr map /t, line 2: bad net/mask pattern: \"foo\": skipping this rule",
                "cidr map /t, line 3: no lookup result: skipping this rule",
            ]
        );
    }
}
