//! The scaling plots: one SVG per sweep, a panel per quantity, the sweep's
//! variable on a log-scale x axis.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::ScalingReport;
use crate::cli::plot::{err, legend};

/// Series colours, in order.
const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

type Series = (String, Vec<(f64, f64)>);

/// One panel: its title, y axis and series.
#[derive(Debug)]
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    series: Vec<Series>,
}

/// How the x values are written.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Bytes,
    Count,
}

impl Unit {
    fn format(self, x: f64) -> String {
        let (k, suffix) = match self {
            Unit::Bytes => (1024.0, ["B", "KiB", "MiB"]),
            Unit::Count => (1000.0, ["", "k", "M"]),
        };
        let (mut v, mut i) = (x, 0);
        while v >= k && i < 2 {
            v /= k;
            i += 1;
        }
        let sep = if matches!(self, Unit::Bytes) { " " } else { "" };
        format!("{}{sep}{}", round(v), suffix[i])
    }
}

fn round(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Writes the plots of the sweeps that ran.
///
/// # Errors
///
/// When a file cannot be written.
pub(super) fn write_all(r: &ScalingReport, dir: &Path) -> anyhow::Result<()> {
    if !r.value_size.is_empty() {
        value_size(r, dir)?;
    }
    if !r.members.is_empty() {
        members(r, dir)?;
    }
    if !r.keys.is_empty() {
        keys(r, dir)?;
    }
    Ok(())
}

fn value_size(r: &ScalingReport, dir: &Path) -> anyhow::Result<()> {
    let v = &r.value_size;
    let x = |p: &super::sweeps::ValuePoint| p.value_bytes as f64;
    let mut mb = vec![("values written".to_owned(), pts(v, x, |p| p.mb_per_s))];
    if let Some(d) = &r.disk {
        let (lo, hi) = span(v.iter().map(x));
        mb.push((
            "disk fsync bandwidth".to_owned(),
            vec![(lo, d.mb_per_s), (hi, d.mb_per_s)],
        ));
    }
    let panels = [
        panel(
            "throughput",
            "ops/s",
            vec![("writes".into(), pts(v, x, |p| p.load.ops_per_s))],
        ),
        panel("value bytes", "MB/s", mb),
        latency(v, x, |p| &p.load),
    ];
    draw(
        &dir.join("scaling-value-size.svg"),
        "against value size",
        "value size",
        Unit::Bytes,
        &panels,
    )
}

fn members(r: &ScalingReport, dir: &Path) -> anyhow::Result<()> {
    let m = &r.members;
    let x = |p: &super::sweeps::MembersPoint| p.members as f64;
    let cpu = |leader: bool| {
        move |p: &super::sweeps::MembersPoint| {
            let v: Vec<f64> = p
                .nodes
                .iter()
                .filter(|n| n.leader == leader)
                .map(|n| n.cpu_us_per_write)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        }
    };
    let panels = [
        panel(
            "throughput",
            "ops/s",
            vec![("writes".into(), pts(m, x, |p| p.load.ops_per_s))],
        ),
        latency(m, x, |p| &p.load),
        panel(
            "CPU per write",
            "µs",
            vec![
                ("leader".into(), pts(m, x, cpu(true))),
                ("follower (mean)".into(), pts(m, x, cpu(false))),
            ],
        ),
    ];
    draw(
        &dir.join("scaling-members.svg"),
        "against members",
        "members",
        Unit::Count,
        &panels,
    )
}

fn keys(r: &ScalingReport, dir: &Path) -> anyhow::Result<()> {
    let k = &r.keys;
    let x = |p: &super::keys::KeysPoint| p.keys as f64;
    let max_rss =
        |p: &super::keys::KeysPoint| p.nodes.iter().map(|n| n.peak_rss_mib).fold(0.0, f64::max);
    let panels = [
        panel(
            "p99 latency",
            "ms",
            vec![
                ("writes".into(), pts(k, x, |p| p.write.latency_ms.p99)),
                (
                    "linearizable reads".into(),
                    pts(k, x, |p| p.read.latency_ms.p99),
                ),
            ],
        ),
        panel(
            "RSS",
            "MiB",
            vec![("largest member".into(), pts(k, x, max_rss))],
        ),
        panel(
            "disk",
            "bytes per key",
            vec![("per member".into(), pts(k, x, |p| p.disk_bytes_per_key))],
        ),
        panel(
            "snapshot and catch-up",
            "s",
            vec![
                ("build a snapshot".into(), pts(k, x, |p| p.snapshot.build_s)),
                (
                    "new learner catches up".into(),
                    pts(k, x, |p| p.learner.catch_up_s),
                ),
            ],
        ),
    ];
    draw(
        &dir.join("scaling-keys.svg"),
        "against stored keys",
        "stored keys",
        Unit::Count,
        &panels,
    )
}

fn panel(title: &'static str, y_desc: &'static str, series: Vec<Series>) -> Panel {
    Panel {
        title,
        y_desc,
        series,
    }
}

/// The p50 and p99 panel.
fn latency<P>(
    v: &[P],
    x: impl Fn(&P) -> f64 + Copy,
    load: impl Fn(&P) -> &super::sweeps::Load + Copy,
) -> Panel {
    panel(
        "write latency",
        "ms",
        vec![
            ("p50".into(), pts(v, x, |p| load(p).latency_ms.p50)),
            ("p99".into(), pts(v, x, |p| load(p).latency_ms.p99)),
        ],
    )
}

fn pts<P>(v: &[P], x: impl Fn(&P) -> f64, y: impl Fn(&P) -> f64) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = v.iter().map(|p| (x(p), y(p))).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

fn span(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// The panels side by side (two per row).
fn draw(
    path: &Path,
    caption: &str,
    x_desc: &str,
    unit: Unit,
    panels: &[Panel],
) -> anyhow::Result<()> {
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(2);
    let root = SVGBackend::new(path, (500 * cols as u32, 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(caption, ("sans-serif", 22)).map_err(err)?;
    let (lo, hi) = span(
        panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| s.1.iter().map(|q| q.0))),
    );
    // One point still gets an axis around it.
    let x = (lo.max(1e-3) / 1.5, hi.max(1e-3) * 1.5);
    for (area, p) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, x_desc, unit, x, p)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    x_desc: &str,
    unit: Unit,
    x: (f64, f64),
    p: &Panel,
) -> anyhow::Result<()> {
    let top = p
        .series
        .iter()
        .flat_map(|s| s.1.iter().map(|q| q.1))
        .fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x.0..x.1).log_scale(), 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("{x_desc} (log scale)"))
        .y_desc(p.y_desc)
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|v| unit.format(*v))
        .draw()
        .map_err(err)?;
    for (i, (label, pts)) in p.series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled())))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(Unit::Bytes.format(128.0), "128 B");
        assert_eq!(Unit::Bytes.format(65536.0), "64 KiB");
        assert_eq!(Unit::Count.format(10_000_000.0), "10M");
        assert_eq!(Unit::Count.format(1500.0), "1.5k");
        assert_eq!(Unit::Count.format(3.0), "3");
    }
}
