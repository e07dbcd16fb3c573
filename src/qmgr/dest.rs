//! Per-destination job queues served round-robin, with Postfix's concurrency feedback
//! (SCHEDULER_README): a destination starts at initial_destination_concurrency; each
//! delivery that reaches the site adds the positive feedback to a success counter and each
//! failed one subtracts the negative feedback from a failure counter; whenever a counter
//! passes one whole unit the window moves by one (never above the transport's limit, never
//! below 1). Failed deliveries also add 1/window to the destination's failed-cohort count;
//! when it reaches the failed cohort limit the destination is declared dead for
//! minimal_backoff_time: its waiting jobs are deferred at once ("delivery temporarily
//! suspended") and new ones are deferred without an attempt until the time is over.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::delivery::Job;

/// A destination is a transport and a next hop, as in Postfix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub transport: String,
    pub nexthop: String,
}

/// A feedback amount: `1/concurrency` (scaled by the current window) or a fixed number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feedback {
    /// `n/concurrency`.
    PerWindow(f64),
    Fixed(f64),
}

impl Feedback {
    /// Postfix's syntax: `1/concurrency`, `1/4`, `0.5`, `1`.
    pub fn parse(s: &str) -> Option<Feedback> {
        let s = s.trim();
        if let Some((num, den)) = s.split_once('/') {
            let n: f64 = num.trim().parse().ok()?;
            let den = den.trim();
            if den == "concurrency" {
                return (n >= 0.0).then_some(Feedback::PerWindow(n));
            }
            let d: f64 = den.parse().ok()?;
            return (d > 0.0 && n >= 0.0).then_some(Feedback::Fixed(n / d));
        }
        let v: f64 = s.parse().ok()?;
        (v >= 0.0).then_some(Feedback::Fixed(v))
    }

    fn value(self, window: usize) -> f64 {
        match self {
            Feedback::PerWindow(n) => n / window.max(1) as f64,
            Feedback::Fixed(v) => v,
        }
    }
}

/// The concurrency settings of one transport.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub initial: usize,
    pub limit: usize,
    pub positive: Feedback,
    pub negative: Feedback,
    /// 0: never declare a destination dead.
    pub failed_cohort_limit: usize,
    /// How long a dead destination stays dead (minimal_backoff_time).
    pub suspend: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial: 5,
            limit: 20,
            positive: Feedback::PerWindow(1.0),
            negative: Feedback::PerWindow(1.0),
            failed_cohort_limit: 1,
            suspend: Duration::from_secs(300),
        }
    }
}

#[derive(Debug)]
pub struct Dest {
    pub jobs: VecDeque<Job>,
    pub in_flight: usize,
    /// Current concurrency window.
    pub window: usize,
    success: f64,
    failure: f64,
    fail_cohorts: f64,
    policy: Policy,
}

/// What a finished delivery says about the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback2 {
    /// The site was reached (whatever happened to the recipients).
    Reached,
    /// The site could not be used: dsn and reason for "delivery temporarily suspended".
    Failed { dsn: String, reason: String },
}

/// All destinations with work, and the round-robin order between them.
#[derive(Debug, Default)]
pub struct Dests {
    map: HashMap<DestKey, Dest>,
    order: VecDeque<DestKey>,
    pub transport_in_flight: HashMap<String, usize>,
    /// Dead destinations: until when, and why (dsn, reason).
    dead: HashMap<DestKey, (Instant, String, String)>,
}

impl Dests {
    /// Queues a job; a dead destination hands it back with the dsn and reason to defer it.
    // The job comes back by value on purpose: the caller defers it at once.
    #[allow(clippy::result_large_err)]
    pub fn push(
        &mut self,
        key: DestKey,
        job: Job,
        policy: &Policy,
    ) -> Result<(), (Job, String, String)> {
        if let Some((until, dsn, reason)) = self.dead.get(&key) {
            if Instant::now() < *until {
                return Err((job, dsn.clone(), reason.clone()));
            }
            self.dead.remove(&key);
        }
        let d = self.map.entry(key.clone()).or_insert_with(|| Dest {
            jobs: VecDeque::new(),
            in_flight: 0,
            window: policy.initial.clamp(1, policy.limit.max(1)),
            success: 0.0,
            failure: 0.0,
            fail_cohorts: 0.0,
            policy: policy.clone(),
        });
        d.jobs.push_back(job);
        if !self.order.contains(&key) {
            self.order.push_back(key);
        }
        Ok(())
    }

    /// The next job to start, taking destinations in turn; `transport_limit` gives the
    /// maxproc of a transport (0: unlimited).
    pub fn next(&mut self, transport_limit: &dyn Fn(&str) -> usize) -> Option<(DestKey, Job)> {
        for _ in 0..self.order.len() {
            let key = self.order.pop_front()?;
            let Some(d) = self.map.get_mut(&key) else {
                continue;
            };
            if d.jobs.is_empty() {
                if d.in_flight == 0 {
                    self.map.remove(&key);
                }
                continue;
            }
            self.order.push_back(key.clone());
            let tl = transport_limit(&key.transport);
            let tif = self
                .transport_in_flight
                .get(&key.transport)
                .copied()
                .unwrap_or(0);
            if d.in_flight >= d.window || (tl > 0 && tif >= tl) {
                continue;
            }
            let job = d.jobs.pop_front()?;
            d.in_flight += 1;
            *self
                .transport_in_flight
                .entry(key.transport.clone())
                .or_default() += 1;
            return Some((key, job));
        }
        None
    }

    /// A job finished: concurrency feedback. When the destination dies, its waiting jobs
    /// are returned (with the dsn and reason) for the caller to defer.
    pub fn done(&mut self, key: &DestKey, fb: Feedback2) -> Vec<(Job, String, String)> {
        if let Some(t) = self.transport_in_flight.get_mut(&key.transport) {
            *t = t.saturating_sub(1);
        }
        let mut drained = Vec::new();
        if let Some(d) = self.map.get_mut(key) {
            d.in_flight = d.in_flight.saturating_sub(1);
            let p = &d.policy;
            match fb {
                Feedback2::Reached => {
                    d.fail_cohorts = 0.0;
                    d.failure = 0.0;
                    if d.window < p.limit {
                        let fb = p.positive.value(d.window);
                        d.success += fb;
                        // Half a step of rounding, as Postfix does, so that n steps of 1/n
                        // make a whole unit despite floating point.
                        while d.success + fb / 2.0 >= 1.0 && d.window < p.limit {
                            d.window += 1;
                            d.success -= 1.0;
                        }
                    }
                }
                Feedback2::Failed { dsn, reason } => {
                    d.success = 0.0;
                    d.fail_cohorts += 1.0 / d.window.max(1) as f64;
                    if p.failed_cohort_limit > 0 && d.fail_cohorts >= p.failed_cohort_limit as f64 {
                        let until = Instant::now() + p.suspend;
                        let dsn = if dsn.starts_with('4') {
                            dsn
                        } else {
                            "4.0.0".to_string()
                        };
                        let reason = format!("delivery temporarily suspended: {reason}");
                        drained = d
                            .jobs
                            .drain(..)
                            .map(|j| (j, dsn.clone(), reason.clone()))
                            .collect();
                        // Back to the start when the suspension is over.
                        d.window = p.initial.clamp(1, p.limit.max(1));
                        d.fail_cohorts = 0.0;
                        d.failure = 0.0;
                        self.dead.insert(key.clone(), (until, dsn, reason));
                    } else {
                        let fb = p.negative.value(d.window);
                        d.failure -= fb;
                        while d.failure - fb / 2.0 < 0.0 {
                            d.window = d.window.saturating_sub(1).max(1);
                            d.failure += 1.0;
                        }
                    }
                }
            }
            if d.jobs.is_empty() && d.in_flight == 0 {
                self.map.remove(key);
                self.order.retain(|k| k != key);
            }
        }
        drained
    }

    /// The window of a destination (for tests and logs).
    pub fn window(&self, key: &DestKey) -> Option<usize> {
        self.map.get(key).map(|d| d.window)
    }

    pub fn is_dead(&self, key: &DestKey) -> bool {
        self.dead
            .get(key)
            .is_some_and(|(u, _, _)| Instant::now() < *u)
    }

    pub fn is_idle(&self) -> bool {
        self.map
            .values()
            .all(|d| d.jobs.is_empty() && d.in_flight == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn job(id: &str) -> Job {
        Job {
            queue_id: id.into(),
            transport: "smtp".into(),
            nexthop: "x".into(),
            sender: String::new(),
            recipients: Vec::new(),
            content: Arc::new(Vec::new()),
            ret: None,
            envid: None,
            body_type: Default::default(),
            smtputf8: false,
            arrival: std::time::SystemTime::now(),
            activated: std::time::SystemTime::now(),
        }
    }

    fn key() -> DestKey {
        DestKey {
            transport: "smtp".into(),
            nexthop: "x".into(),
        }
    }

    fn fill(d: &mut Dests, n: usize, p: &Policy) {
        for i in 0..n {
            d.push(key(), job(&format!("J{i}")), p).unwrap();
        }
    }

    #[test]
    fn feedback_syntax() {
        assert_eq!(
            Feedback::parse("1/concurrency"),
            Some(Feedback::PerWindow(1.0))
        );
        assert_eq!(Feedback::parse("1/4"), Some(Feedback::Fixed(0.25)));
        assert_eq!(Feedback::parse("1"), Some(Feedback::Fixed(1.0)));
        assert_eq!(Feedback::parse("x"), None);
        assert_eq!(Feedback::parse("1/0"), None);
    }

    #[test]
    fn slow_start_grows_one_per_window_of_successes() {
        let p = Policy {
            initial: 2,
            limit: 5,
            ..Default::default()
        };
        let mut d = Dests::default();
        fill(&mut d, 100, &p);
        let mut started = 0;
        while d.next(&|_| 0).is_some() {
            started += 1;
        }
        assert_eq!(started, 2, "the initial window");
        // 1/concurrency: two successes at window 2 → 3; three at 3 → 4; four at 4 → 5.
        let mut windows = Vec::new();
        for _ in 0..12 {
            d.done(&key(), Feedback2::Reached);
            windows.push(d.window(&key()).unwrap());
            while d.next(&|_| 0).is_some() {}
        }
        assert_eq!(windows, vec![2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5]);
    }

    #[test]
    fn failures_shrink_then_kill_the_destination() {
        let p = Policy {
            initial: 4,
            limit: 20,
            failed_cohort_limit: 1,
            ..Default::default()
        };
        let mut d = Dests::default();
        fill(&mut d, 10, &p);
        for _ in 0..4 {
            d.next(&|_| 0).unwrap();
        }
        let fail = || Feedback2::Failed {
            dsn: "4.4.1".into(),
            reason: "connect to x[192.0.2.1]:25: Connection refused".into(),
        };
        // Windows 4 → 3 → 3 → 2 (negative feedback 1/concurrency with half-step rounding);
        // failed cohorts 1/4 + 1/3 + 1/3 + 1/2 ≥ 1 at the fourth failure: dead.
        for w in [3, 3, 2] {
            assert!(d.done(&key(), fail()).is_empty());
            assert_eq!(d.window(&key()), Some(w));
        }
        let drained = d.done(&key(), fail());
        assert_eq!(drained.len(), 6, "every waiting job is deferred at once");
        assert_eq!(drained[0].1, "4.4.1");
        assert_eq!(
            drained[0].2,
            "delivery temporarily suspended: connect to x[192.0.2.1]:25: Connection refused"
        );
        assert!(d.is_dead(&key()));
        // New jobs for a dead destination are refused without an attempt.
        let e = d.push(key(), job("NEW"), &p).unwrap_err();
        assert!(e.2.starts_with("delivery temporarily suspended"));
        // A success before the cohort fills resets the count.
        let mut d = Dests::default();
        let p = Policy {
            initial: 1,
            limit: 20,
            failed_cohort_limit: 2,
            ..Default::default()
        };
        fill(&mut d, 3, &p);
        d.next(&|_| 0).unwrap();
        assert!(d.done(&key(), fail()).is_empty());
        d.next(&|_| 0).unwrap();
        d.done(&key(), Feedback2::Reached);
        d.next(&|_| 0).unwrap();
        assert!(d.done(&key(), fail()).is_empty());
        assert!(!d.is_dead(&key()));
    }

    #[test]
    fn suspension_ends() {
        let p = Policy {
            initial: 1,
            suspend: Duration::from_millis(0),
            ..Default::default()
        };
        let mut d = Dests::default();
        fill(&mut d, 1, &p);
        d.next(&|_| 0).unwrap();
        d.done(
            &key(),
            Feedback2::Failed {
                dsn: "4.4.1".into(),
                reason: "r".into(),
            },
        );
        assert!(d.push(key(), job("A"), &p).is_ok());
    }
}
