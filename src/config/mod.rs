//! Configuration: main.cf and its parameter table, `$name` expansion, master.cf.
//!
//! A [`Config`] is one consistent view of the parameters: master.cf `-o` overrides first, then
//! main.cf, then computed defaults (host name, networks), then the table's defaults. Daemons
//! read what they need once, when they start or reload, through the typed getters; every name
//! they read must be in [`params::PARAMS`] (a test checks the source for it).

pub mod edit;
pub mod expand;
pub mod main_cf;
pub mod master_cf;
pub mod params;

use indexmap::IndexMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

pub use main_cf::MainCf;
pub use params::{Kind, Param, Support, PARAMS};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    MainCf(#[from] main_cf::MainCfError),
    #[error("{0}")]
    Invalid(String),
}

/// The configuration directory named by `-c`, else `$MAIL_CONFIG`, else the default.
pub fn config_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os("MAIL_CONFIG") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(
            params::lookup("config_directory")
                .map(|p| p.default)
                .unwrap_or("/etc/postfix"),
        ),
    }
}

/// A problem found while validating the configuration, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub fatal: bool,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub main: MainCf,
    /// master.cf `-o` settings and per-process values (service_name, process_name…).
    overrides: IndexMap<String, String>,
    computed: HashMap<&'static str, String>,
}

impl Config {
    /// Reads `dir/main.cf`. A missing main.cf is an error, as in Postfix.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let main = MainCf::read(&dir.join("main.cf"))?;
        Ok(Self::from_main(dir, main))
    }

    /// A configuration from main.cf text, for tests and tools.
    pub fn from_text(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        let main = MainCf::parse(text, &dir.join("main.cf"))?;
        Ok(Self::from_main(dir, main))
    }

    fn from_main(dir: &Path, main: MainCf) -> Config {
        let mut cfg = Config {
            dir: dir.to_path_buf(),
            main,
            overrides: IndexMap::new(),
            computed: HashMap::new(),
        };
        cfg.computed
            .insert("config_directory", dir.display().to_string());
        cfg.computed
            .insert("process_id", std::process::id().to_string());
        let host = cfg
            .main
            .get("myhostname")
            .map(str::to_string)
            .unwrap_or_else(system_hostname);
        cfg.computed.insert("myhostname", host);
        // mydomain's default follows the expanded myhostname.
        let myhost = cfg.get("myhostname");
        let domain = match myhost.split_once('.') {
            Some((_, d)) if d.contains('.') || !d.is_empty() => d.to_string(),
            _ => "localdomain".to_string(),
        };
        cfg.computed.insert("mydomain", domain);
        let nets = computed_mynetworks(&cfg.get("mynetworks_style"));
        cfg.computed.insert("mynetworks", nets);
        cfg
    }

    /// The same configuration with master.cf `-o` overrides (and service identity) applied.
    pub fn with_overrides<'a>(
        &self,
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Config {
        let mut c = self.clone();
        for (k, v) in overrides {
            c.overrides.insert(k.to_string(), v.to_string());
        }
        c
    }

    /// The unexpanded value in effect: `-o`, main.cf, computed default, table default.
    pub fn raw(&self, name: &str) -> Option<String> {
        if let Some(v) = self.overrides.get(name) {
            return Some(v.clone());
        }
        if let Some(v) = self.main.get(name) {
            return Some(v.to_string());
        }
        if let Some(v) = self.computed.get(name) {
            return Some(v.clone());
        }
        params::lookup(name).map(|p| p.default.to_string())
    }

    /// Whether main.cf or an override sets `name` explicitly.
    pub fn is_set(&self, name: &str) -> bool {
        self.overrides.contains_key(name) || self.main.settings.contains_key(name)
    }

    /// The expanded value of a parameter. A name missing from the table and from main.cf is a
    /// programming error: it logs and expands to nothing.
    pub fn get(&self, name: &str) -> String {
        let Some(raw) = self.raw(name) else {
            tracing::error!("internal: parameter {name} is not in relais's parameter table");
            return String::new();
        };
        self.expand(&raw).unwrap_or_else(|e| {
            tracing::warn!("{e}; using the unexpanded value of {name}");
            raw
        })
    }

    /// Expands `$name` references in arbitrary text against this configuration.
    pub fn expand(&self, text: &str) -> Result<String, expand::ExpandError> {
        expand::expand(text, &|n| self.raw(n))
    }

    pub fn get_bool(&self, name: &str) -> bool {
        let v = self.get(name);
        parse_bool(&v).unwrap_or_else(|| {
            let d = self.default_expanded(name);
            tracing::warn!("{name}: bad boolean value \"{v}\"; using \"{d}\"");
            parse_bool(&d).unwrap_or(false)
        })
    }

    pub fn get_int(&self, name: &str) -> i64 {
        self.get_number(name, |s, _| s.trim().parse::<i64>().ok())
    }

    pub fn get_size(&self, name: &str) -> u64 {
        self.get_number(name, |s, _| s.trim().parse::<i64>().ok())
            .max(0) as u64
    }

    pub fn get_time(&self, name: &str) -> Duration {
        Duration::from_secs(self.get_number(name, parse_time).max(0) as u64)
    }

    /// A list parameter split on commas and whitespace, keeping `{ … }` groups whole.
    pub fn get_list(&self, name: &str) -> Vec<String> {
        split_list(&self.get(name))
    }

    fn default_expanded(&self, name: &str) -> String {
        let d = params::lookup(name).map(|p| p.default).unwrap_or("");
        self.expand(d).unwrap_or_default()
    }

    fn get_number(&self, name: &str, parse: impl Fn(&str, char) -> Option<i64>) -> i64 {
        let p = params::lookup(name);
        let unit = match p.map(|p| p.kind) {
            Some(Kind::Time(u)) => u,
            _ => 's',
        };
        let (min, max) = p.map(|p| (p.min, p.max)).unwrap_or((i64::MIN, i64::MAX));
        let v = self.get(name);
        match parse(&v, unit) {
            Some(n) if n >= min && n <= max => n,
            _ => {
                let d = self.default_expanded(name);
                tracing::warn!("{name}: bad or out-of-range value \"{v}\"; using \"{d}\"");
                parse(&d, unit).unwrap_or(0)
            }
        }
    }

    /// Checks every explicitly set parameter: unknown names, values of the wrong type or out of
    /// bounds, expansion loops, and parameters relais does not implement (warnings).
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let file = self.main.path.display().to_string();
        for (name, s) in &self.main.settings {
            let at = format!("{file}, line {}", s.line);
            for l in &s.overridden_lines {
                out.push(Problem {
                    fatal: false,
                    text: format!(
                        "{file}, line {l}: {name} is set again at line {}; the later value wins",
                        s.line
                    ),
                });
            }
            out.extend(self.check_one(&at, name, &s.value));
        }
        out
    }

    /// Checks one setting (from main.cf or a master.cf `-o`), `at` saying where it was written.
    pub fn check_one(&self, at: &str, name: &str, value: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let Some(p) = params::lookup(name) else {
            if !is_per_service_name(name) {
                out.push(Problem {
                    fatal: false,
                    text: format!("{at}: unused parameter: {name}={value}"),
                });
            }
            return out;
        };
        match p.support {
            Support::Yes => {}
            Support::No => out.push(Problem {
                fatal: false,
                text: format!("{at}: {name} is not implemented by relais and has no effect"),
            }),
            Support::Instead(what) => out.push(Problem {
                fatal: false,
                text: format!("{at}: {name} = {value} is not honoured: {what}"),
            }),
        }
        let expanded = match self.expand(value) {
            Ok(v) => v,
            Err(e) => {
                out.push(Problem {
                    fatal: true,
                    text: format!("{at}: {e}"),
                });
                return out;
            }
        };
        let bad = match p.kind {
            Kind::Bool => parse_bool(&expanded)
                .is_none()
                .then(|| "a boolean (yes or no)".to_string()),
            Kind::Int | Kind::Size => match expanded.trim().parse::<i64>() {
                Ok(n) if n >= p.min && n <= p.max => None,
                _ => Some(bounds_text("an integer", p)),
            },
            Kind::Time(u) => match parse_time(&expanded, u) {
                Some(n) if n >= p.min && n <= p.max => None,
                _ => Some(bounds_text("a time (number with unit s, m, h, d or w)", p)),
            },
            Kind::Str | Kind::List => None,
        };
        if let Some(want) = bad {
            out.push(Problem {
                fatal: true,
                text: format!("{at}: bad value for {name}: \"{expanded}\": expected {want}"),
            });
        }
        out
    }
}

fn bounds_text(what: &str, p: &Param) -> String {
    match (p.min, p.max) {
        (i64::MIN, i64::MAX) => what.to_string(),
        (min, i64::MAX) => format!("{what} >= {min}"),
        (min, max) => format!("{what} between {min} and {max}"),
    }
}

/// Postfix derives parameter names from master.cf service names (`relay_destination_concurrency_limit`,
/// `lmtp_…`); such names are valid even though they are not in the table.
fn is_per_service_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "_destination_concurrency_limit",
        "_destination_concurrency_failed_cohort_limit",
        "_destination_concurrency_positive_feedback",
        "_destination_concurrency_negative_feedback",
        "_destination_recipient_limit",
        "_initial_destination_concurrency",
        "_destination_rate_delay",
        "_delivery_slot_cost",
        "_time_limit",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// A time value in seconds: a number with an optional unit (s, m, h, d, w); `unit` applies to a
/// bare number.
pub fn parse_time(v: &str, unit: char) -> Option<i64> {
    let v = v.trim();
    let (num, u) = match v.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => (&v[..v.len() - 1], c.to_ascii_lowercase()),
        _ => (v, unit),
    };
    let n: i64 = num.trim().parse().ok()?;
    let mult = match u {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 604800,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Splits a list value on commas and whitespace; `{ … }` groups stay whole (braces removed
/// only from the outermost group when it is the entire element).
pub fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    for c in v.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' | ' ' | '\t' | '\n' | '\r' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The host's name, qualified with `.localdomain` when the system gives no domain (as Postfix
/// insists on a fully-qualified myhostname).
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).to_lowercase()
    } else {
        "localhost".to_string()
    };
    if name.contains('.') {
        name
    } else {
        format!("{name}.localdomain")
    }
}

/// The machine's interface addresses with their prefix lengths.
pub fn interface_networks() -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once below.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            if let (Some(a), Some(m)) = (sockaddr_ip(ifa.ifa_addr), sockaddr_ip(ifa.ifa_netmask)) {
                let prefix = match m {
                    std::net::IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                    std::net::IpAddr::V6(m) => u128::from(m).count_ones() as u8,
                };
                if let Ok(n) = ipnet::IpNet::new(a, prefix) {
                    out.push(n);
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<std::net::IpAddr> {
    if sa.is_null() {
        return None;
    }
    match (*sa).sa_family as i32 {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from_be(sin.sin_addr.s_addr),
            )))
        }
        libc::AF_INET6 => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            Some(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                sin6.sin6_addr.s6_addr,
            )))
        }
        _ => None,
    }
}

/// mynetworks as Postfix computes it from mynetworks_style.
fn computed_mynetworks(style: &str) -> String {
    let nets = interface_networks();
    let mut out: Vec<String> = Vec::new();
    for n in nets {
        let s = match style {
            "host" => match n.addr() {
                std::net::IpAddr::V4(a) => format!("{a}/32"),
                std::net::IpAddr::V6(a) => format!("[{a}]/128"),
            },
            // "class" is obsolete; Postfix itself treats it close to subnet on modern systems.
            _ => match n.trunc() {
                ipnet::IpNet::V4(t) => t.to_string(),
                ipnet::IpNet::V6(t) => format!("[{}]/{}", t.addr(), t.prefix_len()),
            },
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_expansion() {
        let c = Config::from_text(Path::new("/etc/x"), "myhostname = mx.example.com\n").unwrap();
        assert_eq!(c.get("mydomain"), "example.com");
        assert_eq!(c.get("smtpd_banner"), "mx.example.com ESMTP relais");
        assert_eq!(
            c.get("mydestination"),
            "mx.example.com, localhost.example.com, localhost"
        );
        assert_eq!(c.get("config_directory"), "/etc/x");
        assert_eq!(c.get("mynetworks_style"), "subnet");
        assert_eq!(c.get_time("smtpd_timeout"), Duration::from_secs(300));
        assert_eq!(c.get_int("smtpd_hard_error_limit"), 20);
        assert!(!c.get_bool("smtputf8_enable"));
        let c2 = c.with_overrides([("compatibility_level", "3.6"), ("stress", "yes")]);
        assert!(c2.get_bool("smtputf8_enable"));
        assert_eq!(c2.get_time("smtpd_timeout"), Duration::from_secs(10));
    }

    #[test]
    fn bad_values_fall_back_and_are_reported() {
        let c = Config::from_text(
            Path::new("/e"),
            "smtpd_timeout = 5x\ndisable_vrfy_command = maybe\nfoo = 1\n",
        )
        .unwrap();
        assert_eq!(c.get_time("smtpd_timeout"), Duration::from_secs(300));
        assert!(!c.get_bool("disable_vrfy_command"));
        let problems = c.check();
        let text: Vec<_> = problems.iter().map(|p| p.text.as_str()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("line 1: bad value for smtpd_timeout")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("line 2: bad value for disable_vrfy_command")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("line 3: unused parameter: foo=1")),
            "{text:?}"
        );
    }

    #[test]
    fn lists_and_times() {
        assert_eq!(split_list("a, b c,,d"), vec!["a", "b", "c", "d"]);
        assert_eq!(
            split_list("x { y = 1, z }, w"),
            vec!["x", "{ y = 1, z }", "w"]
        );
        assert_eq!(parse_time("2h", 's'), Some(7200));
        assert_eq!(parse_time("5", 'd'), Some(432000));
        assert_eq!(parse_time("5q", 'd'), None);
    }
}
