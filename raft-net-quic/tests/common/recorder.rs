//! A global debugging metrics recorder and a flat view of what it holds,
//! for the test binaries that check metrics (each its own binary, as the
//! recorder is process-wide).

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Installs a [`DebuggingRecorder`] as the global recorder and returns
/// its snapshotter. Panics if a recorder is installed already.
pub fn install_debug_recorder() -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install recorder");
    snapshotter
}

/// Every metric as `name{label=value,...}` (labels sorted) to its value:
/// counters and gauges as is, histograms as their number of samples.
pub fn metric_values(snapshotter: &Snapshotter) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        out.insert(name, v);
    }
    out
}
