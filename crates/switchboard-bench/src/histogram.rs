//! A log-linear latency histogram.

/// A log-linear latency histogram in microseconds: no allocation per sample.
#[derive(Clone)]
pub(crate) struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Histogram {
    const SUB: u64 = 16;

    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: vec![0; 64 * Self::SUB as usize],
            count: 0,
        }
    }

    pub(crate) fn index(us: u64) -> usize {
        if us < Self::SUB {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as u64; // >= 4
        let sub = (us >> (exp - 4)) & (Self::SUB - 1);
        ((exp - 3) * Self::SUB + sub) as usize
    }

    pub(crate) fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < Self::SUB {
            return i;
        }
        let exp = i / Self::SUB + 3;
        let sub = i % Self::SUB;
        (Self::SUB + sub) << (exp - 4)
    }

    pub(crate) fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
    }

    pub(crate) fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = ((self.count as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Self::value(i);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn histogram_percentiles_are_close() {
        let mut h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        let p50 = h.percentile(0.5) as f64;
        let p99 = h.percentile(0.99) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.07, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.07, "{p99}");
        assert_eq!(Histogram::index(5), 5);
        for v in [16u64, 17, 100, 1000, 123_456] {
            let back = Histogram::value(Histogram::index(v));
            assert!(
                back <= v && (v - back) as f64 / v as f64 <= 1.0 / 16.0,
                "{v} -> {back}"
            );
        }
    }
}
