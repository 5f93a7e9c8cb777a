//! Latency histograms (HdrHistogram, microseconds) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly; slower calls are clamped to it.
const LATENCY_MAX_US: u64 = 120_000_000;

/// Percentiles kept in results for the latency-distribution plots.
const PLOT_PERCENTILES: [f64; 13] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

/// Per-call latencies of one run.
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        self.histogram
            .record(us)
            .expect("clamped into the histogram's range");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms share their bounds");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> Summary {
        let h = &self.histogram;
        let q = |p: f64| h.value_at_quantile(p);
        Summary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: h.max(),
            percentiles: PLOT_PERCENTILES
                .iter()
                .map(|&p| (p, h.value_at_percentile(p)))
                .collect(),
        }
    }
}

/// What the reports show of a latency histogram.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// (percentile, microseconds), for plots.
    pub percentiles: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::default();
        for us in 1..=1_000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1_000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.p999_us, 999);
        assert_eq!(s.max_us, 1_000);
        assert_eq!(s.percentiles.len(), PLOT_PERCENTILES.len());
    }

    #[test]
    fn merge_adds_counts_and_extremes_clamp() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        a.record(Duration::ZERO);
        b.record(Duration::from_secs(1_000));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= LATENCY_MAX_US - LATENCY_MAX_US / 500);
    }
}
