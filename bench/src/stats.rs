//! Statistics and the result schema: one `Record` per (scenario, variant, metric),
//! summarizing several runs by median, min and max; ratios against a baseline
//! variant. A scenario that cannot run says why in `skipped` instead of a number.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub scenario: String,
    pub variant: String,
    pub metric: String,
    pub unit: String,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The individual measurements, in the order they were taken.
    pub runs: Vec<f64>,
    /// Higher is better for this metric (throughput), or lower (latency, size).
    pub higher_is_better: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Record {
    pub fn new(
        scenario: &str,
        variant: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        runs: Vec<f64>,
    ) -> Record {
        let s = summarize(&runs);
        Record {
            scenario: scenario.into(),
            variant: variant.into(),
            metric: metric.into(),
            unit: unit.into(),
            median: s.map(|s| s.median),
            min: s.map(|s| s.min),
            max: s.map(|s| s.max),
            runs,
            higher_is_better,
            skipped: None,
        }
    }

    // Scenarios whose prerequisites the machine lacks report through this.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn skipped(scenario: &str, variant: &str, metric: &str, unit: &str, why: impl Into<String>) -> Record {
        Record {
            scenario: scenario.into(),
            variant: variant.into(),
            metric: metric.into(),
            unit: unit.into(),
            median: None,
            min: None,
            max: None,
            runs: vec![],
            higher_is_better: true,
            skipped: Some(why.into()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Median (mean of the middle two for an even count), min and max; None if empty.
pub fn summarize(runs: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// The q-quantile (0..=1) by nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// value / baseline; None when either is missing or the baseline is zero.
pub fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (value, baseline) {
        (Some(v), Some(b)) if b != 0.0 => Some(v / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[3.0]).unwrap().median, 3.0);
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[f64::NAN, 2.0]).unwrap().median, 2.0);
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(50.0), Some(100.0)), Some(0.5));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn records_serialize_to_the_documented_schema() {
        let r = Record::new("control.api", "warren", "p95", "ms", false, vec![1.0, 3.0, 2.0]);
        let v = serde_json::to_value(&r).unwrap();
        for key in ["scenario", "variant", "metric", "unit", "median", "min", "max", "runs"] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["median"], 2.0);
        assert_eq!(v["runs"], serde_json::json!([1.0, 3.0, 2.0]));
        assert!(v.get("skipped").is_none());
        let s = Record::skipped("dataplane.rr", "haproxy", "rps", "req/s", "haproxy is not installed");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["skipped"], "haproxy is not installed");
        assert!(v["median"].is_null());
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
