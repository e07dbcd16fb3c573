//! The counters themselves, without any actor: per-(service, client) connection count and
//! event rates over a fixed window of anvil_rate_time_unit, peak values for the statistics
//! lines, and expiry of idle entries. Time is passed in, so the rules are tested without
//! waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The rated events a server reports besides connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A MAIL FROM command (smtpd_client_message_rate_limit).
    Mail,
    /// A RCPT TO command (smtpd_client_recipient_rate_limit).
    Rcpt,
    /// A new (not resumed) TLS session (smtpd_client_new_tls_session_rate_limit).
    NewTls,
    /// An AUTH command (smtpd_client_auth_rate_limit).
    Auth,
}

/// What one (service, client) has done in the current window.
#[derive(Debug, Clone)]
struct Entry {
    /// Sessions open now.
    count: u32,
    /// Start of the current rate window.
    start: Instant,
    /// Connections, messages, recipients, new TLS sessions and AUTH commands in the window.
    conn: u32,
    mail: u32,
    rcpt: u32,
    ntls: u32,
    auth: u32,
    /// When `count` last dropped to zero (or the entry was made without a connection): the
    /// entry goes away one time unit later, as Postfix's anvil drops it.
    idle_since: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            count: 0,
            start: now,
            conn: 0,
            mail: 0,
            rcpt: 0,
            ntls: 0,
            auth: 0,
            idle_since: Some(now),
        }
    }

    /// Postfix's rule: the window is not sliding; once it is over, every rate starts at zero.
    fn roll(&mut self, now: Instant, unit: Duration) {
        if now.duration_since(self.start) > unit {
            self.start = now;
            self.conn = 0;
            self.mail = 0;
            self.rcpt = 0;
            self.ntls = 0;
            self.auth = 0;
        }
    }

    fn slot(&mut self, e: Event) -> &mut u32 {
        match e {
            Event::Mail => &mut self.mail,
            Event::Rcpt => &mut self.rcpt,
            Event::NewTls => &mut self.ntls,
            Event::Auth => &mut self.auth,
        }
    }
}

/// One peak value for the statistics lines: the value, whose it was, and when.
#[derive(Debug, Clone, Default)]
struct Peak {
    value: u32,
    ident: String,
    when: Option<chrono::DateTime<chrono::Local>>,
}

impl Peak {
    fn update(&mut self, value: u32, ident: &str) {
        if value > self.value {
            self.value = value;
            if self.ident != ident {
                self.ident = ident.to_string();
            }
            self.when = Some(chrono::Local::now());
        }
    }

    fn when(&self) -> String {
        self.when
            .map(|w| w.format("%b %e %H:%M:%S").to_string())
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Peaks {
    conn_rate: Peak,
    conn_count: Peak,
    mail: Peak,
    rcpt: Peak,
    ntls: Peak,
    auth: Peak,
    cache_size: usize,
    cache_when: Option<chrono::DateTime<chrono::Local>>,
}

/// The anvil state of one mail system.
#[derive(Debug)]
pub struct Table {
    unit: Duration,
    entries: HashMap<String, Entry>,
    peaks: Peaks,
    last_sweep: Option<Instant>,
}

/// `service:addr`, the key anvil logs in its statistics (`(smtp:192.0.2.1)`).
pub fn ident(service: &str, addr: &std::net::IpAddr) -> String {
    format!("{service}:{addr}")
}

impl Table {
    /// `unit` is anvil_rate_time_unit (at least one second).
    pub fn new(unit: Duration) -> Table {
        Table {
            unit: unit.max(Duration::from_secs(1)),
            entries: HashMap::new(),
            peaks: Peaks::default(),
            last_sweep: None,
        }
    }

    pub fn unit(&self) -> Duration {
        self.unit
    }

    /// Entries held now (live clients plus those idle for less than one time unit).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&mut self, ident: &str, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(ident) {
            self.sweep_if_due(now);
            self.entries.insert(ident.to_string(), Entry::new(now));
            if self.entries.len() > self.peaks.cache_size {
                self.peaks.cache_size = self.entries.len();
                self.peaks.cache_when = Some(chrono::Local::now());
            }
        }
        let unit = self.unit;
        // Present: inserted just above if it was not.
        let e = self
            .entries
            .entry(ident.to_string())
            .or_insert_with(|| Entry::new(now));
        e.roll(now, unit);
        e
    }

    /// A new session: returns (simultaneous sessions, connections in this window), both
    /// counting this one.
    pub fn connect(&mut self, ident: &str, now: Instant) -> (u32, u32) {
        let e = self.entry(ident, now);
        e.count = e.count.saturating_add(1);
        e.conn = e.conn.saturating_add(1);
        e.idle_since = None;
        let (count, rate) = (e.count, e.conn);
        self.peaks.conn_rate.update(rate, ident);
        self.peaks.conn_count.update(count, ident);
        (count, rate)
    }

    /// A session ended. The entry stays one time unit so that its rates keep counting.
    pub fn disconnect(&mut self, ident: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(ident) {
            if e.count > 0 {
                e.count -= 1;
                if e.count == 0 {
                    e.idle_since = Some(now);
                }
            }
        }
    }

    /// One more event of this kind; returns the events in this window, counting this one.
    pub fn event(&mut self, ident: &str, ev: Event, now: Instant) -> u32 {
        let e = self.entry(ident, now);
        let slot = e.slot(ev);
        *slot = slot.saturating_add(1);
        let rate = *slot;
        let peak = match ev {
            Event::Mail => &mut self.peaks.mail,
            Event::Rcpt => &mut self.peaks.rcpt,
            Event::NewTls => &mut self.peaks.ntls,
            Event::Auth => &mut self.peaks.auth,
        };
        peak.update(rate, ident);
        rate
    }

    /// The events of this kind in this window, without counting one (the check before a TLS
    /// handshake: the handshake itself is counted only when it was not a resumption).
    pub fn peek(&mut self, ident: &str, ev: Event, now: Instant) -> u32 {
        let unit = self.unit;
        match self.entries.get_mut(ident) {
            Some(e) => {
                e.roll(now, unit);
                *e.slot(ev)
            }
            None => 0,
        }
    }

    /// Drops the entries without sessions that have been idle for a whole time unit; returns
    /// how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let unit = self.unit;
        let before = self.entries.len();
        self.entries.retain(|_, e| match e.idle_since {
            Some(t) => e.count > 0 || now.duration_since(t) < unit,
            None => true,
        });
        self.last_sweep = Some(now);
        before - self.entries.len()
    }

    /// Expiry at most twice per time unit when new entries arrive, so that a flood of new
    /// clients cannot grow the table between the owner's periodic sweeps.
    fn sweep_if_due(&mut self, now: Instant) {
        let due = match self.last_sweep {
            None => true,
            Some(t) => now.duration_since(t) >= self.unit / 2,
        };
        if due {
            self.expire(now);
        }
    }

    /// The `statistics: …` lines anvil logs every anvil_status_update_time, in Postfix's
    /// order; the peaks start over afterwards. Empty when nothing happened.
    pub fn take_statistics(&mut self) -> Vec<String> {
        let unit = self.unit.as_secs();
        let mut out = Vec::new();
        let p = &mut self.peaks;
        let rates: [(&str, &mut Peak); 1] = [("connection", &mut p.conn_rate)];
        for (name, peak) in rates {
            if peak.value > 0 {
                out.push(format!(
                    "statistics: max {name} rate {}/{unit}s for ({}) at {}",
                    peak.value,
                    peak.ident,
                    peak.when()
                ));
                peak.value = 0;
            }
        }
        if p.conn_count.value > 0 {
            out.push(format!(
                "statistics: max connection count {} for ({}) at {}",
                p.conn_count.value,
                p.conn_count.ident,
                p.conn_count.when()
            ));
            p.conn_count.value = 0;
        }
        let rates: [(&str, &mut Peak); 4] = [
            ("message", &mut p.mail),
            ("recipient", &mut p.rcpt),
            ("newtls", &mut p.ntls),
            ("auth", &mut p.auth),
        ];
        for (name, peak) in rates {
            if peak.value > 0 {
                out.push(format!(
                    "statistics: max {name} rate {}/{unit}s for ({}) at {}",
                    peak.value,
                    peak.ident,
                    peak.when()
                ));
                peak.value = 0;
            }
        }
        if p.cache_size > 0 {
            let when = p
                .cache_when
                .map(|w| w.format("%b %e %H:%M:%S").to_string())
                .unwrap_or_default();
            out.push(format!(
                "statistics: max cache size {} at {when}",
                p.cache_size
            ));
            p.cache_size = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: Duration = Duration::from_secs(60);

    #[test]
    fn connection_count_and_rate() {
        let mut t = Table::new(UNIT);
        let t0 = Instant::now();
        assert_eq!(t.connect("smtp:192.0.2.1", t0), (1, 1));
        assert_eq!(t.connect("smtp:192.0.2.1", t0), (2, 2));
        // Another client, another service: separate counters.
        assert_eq!(t.connect("smtp:192.0.2.2", t0), (1, 1));
        assert_eq!(t.connect("submission:192.0.2.1", t0), (1, 1));
        t.disconnect("smtp:192.0.2.1", t0);
        // The count drops, the rate does not.
        assert_eq!(t.connect("smtp:192.0.2.1", t0), (2, 3));
    }

    #[test]
    fn rates_reset_after_the_time_unit() {
        let mut t = Table::new(UNIT);
        let t0 = Instant::now();
        for _ in 0..5 {
            t.event("smtp:192.0.2.1", Event::Mail, t0);
        }
        assert_eq!(t.event("smtp:192.0.2.1", Event::Rcpt, t0), 1);
        assert_eq!(t.event("smtp:192.0.2.1", Event::Mail, t0 + UNIT), 6);
        // Past the window: everything starts over.
        let t1 = t0 + UNIT + Duration::from_secs(1);
        assert_eq!(t.peek("smtp:192.0.2.1", Event::Mail, t1), 0);
        assert_eq!(t.event("smtp:192.0.2.1", Event::Mail, t1), 1);
        assert_eq!(t.event("smtp:192.0.2.1", Event::Rcpt, t1), 1);
    }

    #[test]
    fn peek_does_not_count() {
        let mut t = Table::new(UNIT);
        let t0 = Instant::now();
        assert_eq!(t.peek("smtp:192.0.2.1", Event::NewTls, t0), 0);
        assert_eq!(t.event("smtp:192.0.2.1", Event::NewTls, t0), 1);
        assert_eq!(t.peek("smtp:192.0.2.1", Event::NewTls, t0), 1);
        assert_eq!(t.event("smtp:192.0.2.1", Event::Auth, t0), 1);
    }

    #[test]
    fn idle_entries_expire_and_live_ones_stay() {
        let mut t = Table::new(UNIT);
        let t0 = Instant::now();
        t.connect("smtp:192.0.2.1", t0);
        t.connect("smtp:192.0.2.2", t0);
        t.event("smtp:192.0.2.3", Event::Mail, t0);
        t.disconnect("smtp:192.0.2.2", t0);
        assert_eq!(t.len(), 3);
        assert_eq!(t.expire(t0 + Duration::from_secs(59)), 0);
        assert_eq!(t.expire(t0 + UNIT), 2);
        assert_eq!(t.len(), 1, "the client with a session stays");
        t.disconnect("smtp:192.0.2.1", t0 + UNIT);
        assert_eq!(t.expire(t0 + UNIT * 2), 1);
        assert!(t.is_empty());
        // A disconnect for an unknown client (after a restart) is harmless.
        t.disconnect("smtp:192.0.2.9", t0);
        assert!(t.is_empty());
    }

    #[test]
    fn many_short_lived_clients_stay_bounded() {
        let mut t = Table::new(Duration::from_secs(2));
        let t0 = Instant::now();
        // 10 000 clients that connect once each, spread over 100 s: the table never holds
        // much more than the clients of the last time unit or so.
        let mut max = 0;
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            let id = format!("smtp:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            t.connect(&id, now);
            t.disconnect(&id, now);
            max = max.max(t.len());
        }
        assert!(max <= 400, "table grew to {max}");
    }

    #[test]
    fn statistics_lines() {
        let mut t = Table::new(UNIT);
        let t0 = Instant::now();
        assert!(t.take_statistics().is_empty());
        t.connect("smtp:127.0.0.1", t0);
        t.connect("smtp:127.0.0.1", t0);
        t.connect("smtp:127.0.0.1", t0);
        t.event("smtp:127.0.0.1", Event::Mail, t0);
        t.event("smtp:127.0.0.1", Event::Rcpt, t0);
        t.event("smtp:127.0.0.1", Event::Rcpt, t0);
        let lines = t.take_statistics();
        let shapes: Vec<String> = lines
            .iter()
            .map(|l| l.split(" at ").next().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            shapes,
            vec![
                "statistics: max connection rate 3/60s for (smtp:127.0.0.1)",
                "statistics: max connection count 3 for (smtp:127.0.0.1)",
                "statistics: max message rate 1/60s for (smtp:127.0.0.1)",
                "statistics: max recipient rate 2/60s for (smtp:127.0.0.1)",
                "statistics: max cache size 1",
            ]
        );
        // `at Nov 23 13:02:38`: month, day, time.
        let at = lines[0].rsplit(" at ").next().unwrap_or("");
        assert_eq!(at.len(), 15, "{at}");
        // The peaks start over.
        assert!(t.take_statistics().is_empty());
    }
}
