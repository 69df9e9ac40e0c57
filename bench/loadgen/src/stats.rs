//! Latency percentiles and error counting, shared by the modes.

use std::time::Duration;

/// Nearest-rank percentile of `sorted` (ascending): the smallest value such that at least
/// `pct` percent of the samples are at or below it. Integer arithmetic, so p50 of 10 samples
/// is exactly the 5th and not off by one from float rounding. `None` when there are no
/// samples.
pub fn percentile(sorted: &[u64], pct: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (pct.min(100) * n).div_ceil(100).max(1);
    Some(sorted[(rank - 1) as usize])
}

/// Round-trip (or connection) latencies in nanoseconds; every sample is kept, because
/// nearest-rank p99 needs them all and a few MB for a long run is fine.
#[derive(Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// Room for `n` samples up front, so the measured loop does not reallocate often.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub fn record(&mut self, d: Duration) {
        self.0.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds another task's samples to these.
    pub fn merge(&mut self, other: Latencies) {
        if self.0.is_empty() {
            self.0 = other.0;
        } else {
            self.0.extend_from_slice(&other.0);
        }
    }

    /// p50 and p99 in whole microseconds (rounded to nearest): integers parse as any JSON
    /// number type, and sub-microsecond digits are below what one loopback round trip varies.
    pub fn p50_p99_us(mut self) -> Option<(u64, u64)> {
        self.0.sort_unstable();
        let us = |ns: u64| ns.saturating_add(500) / 1000;
        Some((us(percentile(&self.0, 50)?), us(percentile(&self.0, 99)?)))
    }
}

/// Counts errors and keeps the first few distinct messages, which are printed to stderr: a
/// count alone does not say what went wrong.
#[derive(Default)]
pub struct Errors {
    pub count: u64,
    first: Vec<String>,
}

impl Errors {
    const KEEP: usize = 5;

    pub fn record(&mut self, e: &anyhow::Error) {
        self.count += 1;
        if self.first.len() < Self::KEEP {
            let msg = format!("{e:#}");
            if !self.first.contains(&msg) {
                self.first.push(msg);
            }
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for msg in other.first {
            if self.first.len() < Self::KEEP && !self.first.contains(&msg) {
                self.first.push(msg);
            }
        }
    }

    /// The first messages, joined for one stderr or error line.
    pub fn summary(&self) -> String {
        if self.first.is_empty() {
            "none".to_owned()
        } else {
            self.first.join("; ")
        }
    }

    /// Prints the count and the first messages to stderr, if there were any.
    pub fn report(&self, mode: &str) {
        if self.count > 0 {
            eprintln!("{mode}: {} errors; first: {}", self.count, self.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 99), Some(10));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&v, 91), Some(10));
        assert_eq!(percentile(&v, 0), Some(1));
        assert_eq!(percentile(&v, 100), Some(10));
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99), Some(990));
        assert_eq!(percentile(&v, 50), Some(500));
        assert_eq!(percentile(&[7], 50), Some(7));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn microseconds() {
        let mut l = Latencies::default();
        for ns in [1_499, 900, 2_500, 10_000] {
            l.record(Duration::from_nanos(ns));
        }
        // Sorted: 900, 1499, 2500, 10000; p50 = 2nd, p99 = 4th.
        assert_eq!(l.p50_p99_us(), Some((1, 10)));
        assert_eq!(Latencies::default().p50_p99_us(), None);
    }

    #[test]
    fn errors_keep_first_distinct() {
        let mut e = Errors::default();
        for _ in 0..3 {
            e.record(&anyhow::anyhow!("refused"));
        }
        e.record(&anyhow::anyhow!("reset"));
        assert_eq!(e.count, 4);
        assert_eq!(e.summary(), "refused; reset");
    }
}
