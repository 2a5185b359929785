//! SVG plots of a report (plotters): throughput against clients, the
//! latency CDF of each measurement, and the CDF of election times.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::prelude::*;

use super::report::{Report, ThroughputResult};
use super::System;

fn colour(system: System, shade: usize) -> RGBColor {
    let (r, g, b) = match system {
        System::Raft => (31, 119, 180),
        System::Etcd => (214, 39, 40),
    };
    // Later series of the same system get lighter.
    let lift = |c: u8| (c as usize + (255 - c as usize) * shade.min(3) / 5) as u8;
    RGBColor(lift(r), lift(g), lift(b))
}

pub(crate) fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// Writes the plots that `report` has data for into `dir`; returns their
/// paths.
///
/// # Errors
///
/// When a file cannot be written.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    if !report.throughput.is_empty() {
        let p = dir.join("throughput.svg");
        throughput(report, &p)?;
        written.push(p);
        let p = dir.join("latency-cdf.svg");
        latency_cdf(report, &p)?;
        written.push(p);
    }
    if !report.elections.is_empty() {
        let p = dir.join("election-cdf.svg");
        election_cdf(report, &p)?;
        written.push(p);
    }
    Ok(written)
}

/// The distinct values of `f` over `system`'s throughput results, sorted.
fn distinct<T: Ord>(report: &Report, system: System, f: impl Fn(&ThroughputResult) -> T) -> Vec<T> {
    let mut v: Vec<T> = report
        .throughput
        .iter()
        .filter(|r| r.system == system)
        .map(f)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Draws the legend in the usual frame.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err)
}

fn throughput(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_clients = report
        .throughput
        .iter()
        .map(|r| r.clients)
        .max()
        .unwrap_or(1) as f64;
    let max_ops = report
        .throughput
        .iter()
        .map(|r| r.ops_per_s)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "write throughput against concurrent clients",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_clients * 1.5).log_scale(), 0.0..max_ops * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc("ops/s")
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for system in [System::Raft, System::Etcd] {
        for (shade, round) in distinct(report, system, |r| r.round)
            .into_iter()
            .enumerate()
        {
            let mut pts: Vec<(f64, f64)> = report
                .throughput
                .iter()
                .filter(|r| r.system == system && r.round == round)
                .map(|r| (r.clients as f64, r.ops_per_s))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = colour(system, shade);
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(format!("{system} (round {})", round + 1))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
                .map_err(err)?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)?;
    Ok(())
}

fn latency_cdf(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_ms = report
        .throughput
        .iter()
        .flat_map(|r| r.cdf.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let min_ms = report
        .throughput
        .iter()
        .flat_map(|r| r.cdf.iter().map(|p| p.0))
        .fold(max_ms, f64::min)
        .max(0.01);
    let mut chart = ChartBuilder::on(&root)
        .caption("latency CDF (successful operations)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_ms * 0.8..max_ms * 1.2).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("fraction of operations")
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err)?;
    for system in [System::Raft, System::Etcd] {
        for (shade, n) in distinct(report, system, |r| r.clients)
            .into_iter()
            .enumerate()
        {
            // The first round of each client count.
            let Some(r) = report
                .throughput
                .iter()
                .find(|r| r.system == system && r.clients == n)
            else {
                continue;
            };
            let c = colour(system, shade);
            chart
                .draw_series(LineSeries::new(r.cdf.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(format!("{system}, {n} clients"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(())
}

fn election_cdf(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_ms = report
        .elections
        .iter()
        .flat_map(|e| e.trials.iter().map(|t| t.write_ms))
        .fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "fault on the leader → first successful write (CDF over trials)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms * 1.1, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("ms since the fault")
        .y_desc("fraction of trials")
        .draw()
        .map_err(err)?;
    for (i, e) in report.elections.iter().enumerate() {
        let mut v: Vec<f64> = e.trials.iter().map(|t| t.write_ms).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(k, &ms)| (ms, (k + 1) as f64 / n))
            .collect();
        let shade = report.elections[..i]
            .iter()
            .filter(|o| o.system == e.system)
            .count();
        let c = colour(e.system, shade);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{}, {}", e.system, e.fault))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(())
}
