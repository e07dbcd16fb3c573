//! Per-destination job queues with a concurrency window, served round-robin.

use std::collections::{HashMap, VecDeque};

use crate::delivery::Job;

/// A destination is a transport and a next hop, as in Postfix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub transport: String,
    pub nexthop: String,
}

#[derive(Debug)]
pub struct Dest {
    pub jobs: VecDeque<Job>,
    pub in_flight: usize,
    /// Current concurrency window (slow start).
    pub window: usize,
    pub limit: usize,
}

/// All destinations with work, and the round-robin order between them.
#[derive(Debug, Default)]
pub struct Dests {
    map: HashMap<DestKey, Dest>,
    order: VecDeque<DestKey>,
    pub transport_in_flight: HashMap<String, usize>,
}

impl Dests {
    pub fn push(&mut self, key: DestKey, job: Job, initial: usize, limit: usize) {
        let d = self.map.entry(key.clone()).or_insert_with(|| Dest {
            jobs: VecDeque::new(),
            in_flight: 0,
            window: initial.clamp(1, limit.max(1)),
            limit: limit.max(1),
        });
        d.jobs.push_back(job);
        if !self.order.contains(&key) {
            self.order.push_back(key);
        }
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

    /// A job finished: adjust the window (grow on success, shrink on failure).
    pub fn done(&mut self, key: &DestKey, success: bool) {
        if let Some(t) = self.transport_in_flight.get_mut(&key.transport) {
            *t = t.saturating_sub(1);
        }
        if let Some(d) = self.map.get_mut(key) {
            d.in_flight = d.in_flight.saturating_sub(1);
            d.window = if success {
                (d.window + 1).min(d.limit)
            } else {
                (d.window / 2).max(1)
            };
            if d.jobs.is_empty() && d.in_flight == 0 {
                self.map.remove(key);
                self.order.retain(|k| k != key);
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        self.map
            .values()
            .all(|d| d.jobs.is_empty() && d.in_flight == 0)
    }
}
