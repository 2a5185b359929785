//! What a run leaves on disk: the history as JSON, a summary, and on a
//! violation an HTML page with an SVG timeline of the operations around it
//! (one lane per client, one bar per operation from invocation to
//! completion, faults as shaded bands).

use std::fmt::Write as _;
use std::path::Path;

use raft_linearizability::{History, Op, Operation, Outcome};
use serde_json::{json, Value};

use crate::check::Violation;
use crate::error::ChaosError;
use crate::nemesis::FaultEvent;

/// Bytes as text when printable, hex otherwise.
pub fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => bytes.iter().fold(String::from("0x"), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    }
}

fn opt(v: Option<&[u8]>) -> Value {
    v.map_or(Value::Null, |v| Value::String(show(v)))
}

/// One operation as JSON.
pub fn op_json(index: usize, o: &Operation) -> Value {
    let (kind, value, expected) = match &o.op {
        Op::Read => ("read", Value::Null, Value::Null),
        Op::Write(v) => ("write", opt(Some(v)), Value::Null),
        Op::Delete => ("delete", Value::Null, Value::Null),
        Op::Cas { expected, new } => ("cas", opt(Some(new)), opt(expected.as_deref())),
    };
    let (outcome, read) = match &o.outcome {
        Outcome::ReadOk(v) => ("ok", opt(v.as_deref())),
        Outcome::WriteOk | Outcome::DeleteOk | Outcome::CasOk => ("ok", Value::Null),
        Outcome::CasFailed => ("cas-failed", Value::Null),
        Outcome::Failed => ("failed", Value::Null),
        Outcome::Indeterminate => ("indeterminate", Value::Null),
    };
    json!({
        "index": index,
        "client": o.client,
        "key": show(&o.key),
        "op": kind,
        "value": value,
        "expected": expected,
        "read": read,
        "outcome": outcome,
        "invoke_us": o.invoke,
        "complete_us": o.complete,
    })
}

/// Writes `value` as pretty JSON to `path`.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_json(path: &Path, value: &Value) -> Result<(), ChaosError> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).map_err(ChaosError::io(path))
}

/// Writes the whole history as JSON.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_history(
    path: &Path,
    history: &History,
    faults: &[FaultEvent],
) -> Result<(), ChaosError> {
    let ops: Vec<Value> = history
        .ops()
        .iter()
        .enumerate()
        .map(|(i, o)| op_json(i, o))
        .collect();
    write_json(path, &json!({ "ops": ops, "faults": faults }))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Operations shown at most in a timeline.
const TIMELINE_OPS_MAX: usize = 400;

/// Writes an HTML page with the violation's explanation and an SVG timeline
/// of the operations on its key around the focused ones.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_timeline(
    path: &Path,
    history: &History,
    faults: &[FaultEvent],
    violation: &Violation,
) -> Result<(), ChaosError> {
    let ops = history.ops();
    let window = Window::around(ops, violation);
    let svg = timeline_svg(ops, faults, violation, &window);
    let mut rows = String::new();
    for &i in &window.shown {
        let o = &ops[i];
        let mark = if violation.focus.contains(&i) {
            " style=\"color:#d00\""
        } else {
            ""
        };
        let _ = writeln!(
            rows,
            "<tr{mark}><td>#{i}</td><td>{}</td></tr>",
            escape(&o.to_string())
        );
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>raft-chaos: {check}</title></head>\n\
         <body style=\"font-family:sans-serif\">\n<h1>{check}</h1>\n<pre>{detail}</pre>\n\
         <p>Operations on key {key} between {lo_s:.3} s and {hi_s:.3} s (hover a bar for details; red outline: \
         operations the check names; grey: indeterminate, drawn to the end; shaded: faults). \
         Numbers are positions in history.json.</p>\n{svg}\n<table>{rows}</table>\n</body></html>\n",
        check = violation.check,
        detail = escape(&violation.detail),
        key = escape(&violation.key.as_deref().map(show).unwrap_or_else(|| "(all)".into())),
        lo_s = window.lo as f64 / 1e6,
        hi_s = window.hi as f64 / 1e6,
    );
    std::fs::write(path, html).map_err(ChaosError::io(path))
}

/// When an operation ended, or began when it never completed.
fn end_of(o: &Operation) -> u64 {
    o.complete.unwrap_or(o.invoke)
}

/// What a timeline shows: a time window (µs since the start of the run),
/// the operations in it, and their clients (one lane each).
struct Window {
    lo: u64,
    hi: u64,
    /// Positions in the history, in order.
    shown: Vec<usize>,
    /// Clients of the shown operations, in order.
    clients: Vec<u64>,
}

impl Window {
    /// The focused operations of `violation` (or the last operations of its
    /// key) with a margin of 2 s on each side, and at most
    /// [`TIMELINE_OPS_MAX`] operations of the key in that time: the
    /// focused ones, then those nearest to them.
    fn around(ops: &[Operation], violation: &Violation) -> Self {
        let on_key: Vec<usize> = (0..ops.len())
            .filter(|i| violation.key.as_ref().is_none_or(|k| &ops[*i].key == k))
            .collect();
        let focus: Vec<usize> = if violation.focus.is_empty() {
            on_key.iter().rev().take(20).copied().collect()
        } else {
            violation.focus.clone()
        };
        let lo = focus.iter().map(|i| ops[*i].invoke).min().unwrap_or(0);
        let hi = focus.iter().map(|i| end_of(&ops[*i])).max().unwrap_or(lo);
        let (lo, hi) = (lo.saturating_sub(2_000_000), hi + 2_000_000);
        let mut shown: Vec<usize> = on_key
            .into_iter()
            .filter(|i| ops[*i].invoke <= hi && end_of(&ops[*i]) >= lo)
            .collect();
        if shown.len() > TIMELINE_OPS_MAX {
            let centre = (lo + hi) / 2;
            shown.sort_by_key(|i| {
                let o = &ops[*i];
                (!focus.contains(i), o.invoke.abs_diff(centre))
            });
            shown.truncate(TIMELINE_OPS_MAX);
            shown.sort_unstable();
        }
        let mut clients: Vec<u64> = shown.iter().map(|i| ops[*i].client).collect();
        clients.sort_unstable();
        clients.dedup();
        Self {
            lo,
            hi,
            shown,
            clients,
        }
    }
}

/// The SVG timeline of `window`: faults as shaded bands, a lane per
/// client, a bar per operation (red outline: those `violation` names).
fn timeline_svg(
    ops: &[Operation],
    faults: &[FaultEvent],
    violation: &Violation,
    window: &Window,
) -> String {
    let Window {
        lo,
        hi,
        ref shown,
        ref clients,
    } = *window;
    let (width, lane, left) = (1400.0_f64, 26.0_f64, 90.0_f64);
    let span = (hi - lo).max(1) as f64;
    let x = |t: u64| left + (t.clamp(lo, hi) - lo) as f64 / span * (width - left - 10.0);
    let height = 40.0 + lane * clients.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"10\">\n"
    );
    for f in faults {
        let end = f.end_us.unwrap_or(hi);
        if end < lo || f.start_us > hi {
            continue;
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{height}\" fill=\"#f4c7c3\" opacity=\"0.35\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"10\" fill=\"#a33\">{}</text>",
            x(f.start_us),
            (x(end) - x(f.start_us)).max(1.0),
            escape(&f.detail),
            x(f.start_us) + 2.0,
            escape(&f.detail)
        );
    }
    for (lane_i, c) in clients.iter().enumerate() {
        let y = 24.0 + lane * lane_i as f64;
        let _ = writeln!(svg, "<text x=\"4\" y=\"{:.1}\">client {c}</text>", y + 14.0);
    }
    for &i in shown {
        let o = &ops[i];
        let lane_i = clients.iter().position(|c| *c == o.client).unwrap_or(0);
        let y = 24.0 + lane * lane_i as f64;
        let end = match o.outcome {
            Outcome::Indeterminate => hi,
            _ => end_of(o),
        };
        let stroke = if violation.focus.contains(&i) {
            "stroke=\"#d00\" stroke-width=\"2\""
        } else {
            "stroke=\"#555\" stroke-width=\"0.5\""
        };
        let _ = writeln!(
            svg,
            "<g><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"20\" fill=\"{}\" {stroke}/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            escape(&format!("#{i} {o}")),
            x(o.invoke),
            y,
            (x(end) - x(o.invoke)).max(2.0),
            bar_colour(&o.outcome),
            x(o.invoke) + 2.0,
            y + 14.0,
            escape(&short_label(o)),
        );
    }
    svg += "</svg>\n";
    svg
}

/// The fill of an operation's bar, by outcome.
fn bar_colour(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Indeterminate => "#bbbbbb",
        Outcome::Failed => "#eeeeee",
        Outcome::ReadOk(_) => "#9ecae1",
        Outcome::CasFailed => "#fdd0a2",
        _ => "#a1d99b",
    }
}

fn short_label(o: &Operation) -> String {
    let what = match &o.op {
        Op::Read => "r".to_string(),
        Op::Write(v) => format!("w {}", show(v)),
        Op::Delete => "del".to_string(),
        Op::Cas { expected, new } => format!(
            "cas {}→{}",
            expected.as_deref().map(show).unwrap_or_else(|| "∅".into()),
            show(new)
        ),
    };
    let got = match &o.outcome {
        Outcome::ReadOk(v) => v.as_deref().map(show).unwrap_or_else(|| "∅".into()),
        Outcome::CasFailed => "✗".into(),
        Outcome::Failed => "fail".into(),
        Outcome::Indeterminate => "?".into(),
        _ => "ok".into(),
    };
    format!("{what} {got}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_names_the_violating_operations() {
        let h = History::from(vec![
            Operation {
                client: 1,
                key: b"k".to_vec(),
                op: Op::Write(b"a<b".to_vec()),
                invoke: 0,
                complete: Some(10),
                outcome: Outcome::WriteOk,
            },
            Operation {
                client: 2,
                key: b"k".to_vec(),
                op: Op::Read,
                invoke: 20,
                complete: Some(30),
                outcome: Outcome::ReadOk(None),
            },
        ]);
        let v = Violation {
            check: "linearizability",
            detail: "stale".into(),
            key: Some(b"k".to_vec()),
            focus: vec![1],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.html");
        write_timeline(&path, &h, &[], &v).expect("written");
        let html = std::fs::read_to_string(&path).expect("read");
        assert!(html.contains("<svg"), "{html}");
        assert!(html.contains("a&lt;b"), "values are escaped: {html}");
        assert!(html.contains("client 2"), "{html}");
    }
}
