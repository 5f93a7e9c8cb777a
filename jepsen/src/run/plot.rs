//! The latency plot, as Jepsen draws it: every operation a point at its
//! invoke time and latency (log scale), coloured by outcome, with fault
//! windows shaded. Plain SVG, written by hand.

use std::fmt::Write as _;

use leasehold_jepsen::history::{Completed, Outcome, Phase};

use super::report::{phase_name, Window};

const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The latency axis, in ms (log scale).
const LATENCY_MS_MIN: f64 = 0.1;
const LATENCY_MS_MAX: f64 = 10_000.0;
/// More points than this are thinned evenly, so the file stays small.
const POINTS_MAX: usize = 30_000;

fn outcome_colour(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "#1b9e77",
        Outcome::Fail => "#d95f02",
        Outcome::Info => "#e7298a",
    }
}

fn fault_colour(name: &str) -> &'static str {
    match name {
        "partition" => "#fdd49e",
        "kill" => "#fbb4ae",
        "pause" => "#b3cde3",
        "clock" => "#decbe4",
        "loss" => "#ccebc5",
        _ => "#e5e5e5",
    }
}

pub fn svg(title: &str, ops: &[Completed], windows: &[Window]) -> String {
    let end_ns = ops
        .iter()
        .filter_map(|c| c.complete_ns)
        .chain(windows.iter().map(|w| w.stop_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let t_max = end_ns as f64 / 1e9;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |s: f64| LEFT + s / t_max * plot_w;
    let y = |ms: f64| {
        let ms = ms.clamp(LATENCY_MS_MIN, LATENCY_MS_MAX);
        let span = LATENCY_MS_MAX.log10() - LATENCY_MS_MIN.log10();
        TOP + plot_h - (ms.log10() - LATENCY_MS_MIN.log10()) / span * plot_h
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="22" font-size="14">{}</text>"##,
        escape(title)
    );
    for w in windows {
        let (x0, x1) = (x(w.start_ns as f64 / 1e9), x(w.stop_ns as f64 / 1e9));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{}" opacity="0.7"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            fault_colour(&w.name),
            escape(&w.detail)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" font-size="9" fill="#555">{}</text>"##,
            x0 + 2.0,
            TOP + 10.0,
            escape(&w.name)
        );
    }
    axes(&mut s, t_max, &x, &y);
    for (row, phase) in [Phase::Final, Phase::Durability].into_iter().enumerate() {
        let Some(from_ns) = ops
            .iter()
            .filter(|c| c.phase == phase)
            .map(|c| c.invoke_ns)
            .min()
        else {
            continue;
        };
        let xx = x(from_ns as f64 / 1e9);
        // Labels read leftwards from the line, clear of the legend.
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{}" stroke="#333" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="9" text-anchor="end">{}</text>"##,
            HEIGHT - BOTTOM,
            xx - 3.0,
            HEIGHT - BOTTOM - 6.0 - 12.0 * row as f64,
            phase_name(phase)
        );
    }
    let stride = ops.len().div_ceil(POINTS_MAX).max(1);
    for c in ops.iter().step_by(stride) {
        let Some(done) = c.complete_ns else { continue };
        let latency_ms = done.saturating_sub(c.invoke_ns) as f64 / 1e6;
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}" fill-opacity="0.6"/>"##,
            x(c.invoke_ns as f64 / 1e9),
            y(latency_ms),
            outcome_colour(c.outcome)
        );
    }
    legend(&mut s, windows);
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, t_max: f64, x: &impl Fn(f64) -> f64, y: &impl Fn(f64) -> f64) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (TOP, HEIGHT - BOTTOM);
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        x1 - x0,
        y1 - y0
    );
    let mut ms = LATENCY_MS_MIN;
    while ms <= LATENCY_MS_MAX {
        let yy = y(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{yy:.1}" x2="{x1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 4.0,
            yy + 4.0,
            if ms < 1.0 {
                format!("{ms}")
            } else {
                format!("{ms:.0}")
            }
        );
        ms *= 10.0;
    }
    let step = tick_step(t_max);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{y1}" x2="{xx:.1}" y2="{}" stroke="#333"/><text x="{xx:.1}" y="{}" text-anchor="middle">{t:.0}</text>"##,
            y1 + 4.0,
            y1 + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">time since start (s)</text>"##,
        (x0 + x1) / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency (ms, log)</text>"##,
        (y0 + y1) / 2.0
    );
}

/// A round tick interval giving about ten ticks.
fn tick_step(t_max: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|step| t_max / step <= 12.0)
        .unwrap_or(1200.0)
}

fn legend(s: &mut String, windows: &[Window]) {
    let x = WIDTH - RIGHT + 16.0;
    let mut y = TOP + 8.0;
    for (label, outcome) in [
        ("ok", Outcome::Ok),
        ("fail", Outcome::Fail),
        ("info", Outcome::Info),
    ] {
        let _ = writeln!(
            s,
            r##"<circle cx="{x}" cy="{y}" r="4" fill="{}"/><text x="{}" y="{}">{label}</text>"##,
            outcome_colour(outcome),
            x + 10.0,
            y + 4.0
        );
        y += 18.0;
    }
    y += 8.0;
    let mut names: Vec<&str> = windows.iter().map(|w| w.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{name}</text>"##,
            x - 5.0,
            y - 5.0,
            fault_colour(name),
            x + 10.0,
            y + 4.0
        );
        y += 18.0;
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_jepsen::history::{Inspect, Op};

    #[test]
    fn every_completed_op_is_a_point_and_every_window_a_band() {
        let op = |invoke_ns, complete_ns, outcome| Completed {
            process: 0,
            invoke_ns,
            complete_ns,
            outcome,
            op: Op::Inspect(Inspect {
                key: "k".into(),
                slot: 0,
                holders: None,
            }),
            node: None,
            phase: Phase::Main,
        };
        let ops = [
            op(0, Some(2_000_000), Outcome::Ok),
            op(1_000_000_000, Some(1_500_000_000), Outcome::Info),
            op(2_000_000_000, None, Outcome::Info),
        ];
        let windows = [Window {
            name: "kill".into(),
            phase: Phase::Main,
            detail: "kill -9 <n1>".into(),
            start_ns: 500_000_000,
            stop_ns: 1_800_000_000,
        }];
        let svg = svg("t", &ops, &windows);
        assert_eq!(svg.matches("<circle cx").count(), 2 + 3);
        assert!(svg.contains("kill -9 &lt;n1&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(8.0), 1.0);
        assert_eq!(tick_step(75.0), 10.0);
        assert_eq!(tick_step(400.0), 60.0);
    }
}
