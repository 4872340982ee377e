//! The timeline picture: requests per second and p99 latency over the run,
//! with each reload (its window shaded) and each kill marked.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use super::report::CheckReport;
use crate::load::LoadReport;

/// Width of one point of the timeline.
const BUCKET: Duration = Duration::from_millis(250);
/// Kills are drawn in their own colour: red is for failures.
const KILL: RGBColor = RGBColor(90, 40, 140);
/// The narrowest a reload's band is drawn, as a share of the run: a 5 ms
/// reload is still a visible band.
const MIN_BAND: f64 = 1.0 / 250.0;

/// Draws the timeline as an SVG file at `path`. Text is laid out with
/// plotters' built-in estimate (the viewer renders the fonts), so drawing
/// needs no font library.
pub fn write_svg(path: &Path, load: &LoadReport, report: &CheckReport) -> Result<(), String> {
    draw(path, load, report).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw(
    path: &Path,
    load: &LoadReport,
    report: &CheckReport,
) -> Result<(), Box<dyn std::error::Error>> {
    let timeline = load.timeline(BUCKET);
    let per_second = 1.0 / BUCKET.as_secs_f64();
    let end_s = load.elapsed.as_secs_f64().max(0.1);
    let rate: Vec<(f64, f64)> = timeline
        .iter()
        .map(|b| (b.start.as_secs_f64(), b.ok as f64 * per_second))
        .collect();
    let failed: Vec<(f64, f64)> = timeline
        .iter()
        .map(|b| (b.start.as_secs_f64(), b.failed as f64 * per_second))
        .collect();
    let p99: Vec<(f64, f64)> = timeline
        .iter()
        .map(|b| (b.start.as_secs_f64(), b.p99_us as f64 / 1000.0))
        .collect();
    let max_rate = rate.iter().map(|&(_, r)| r).fold(1.0, f64::max) * 1.1;
    let max_p99 = p99.iter().map(|&(_, l)| l).fold(1.0, f64::max) * 1.1;

    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "baton check: {} requests, {} failed, {} reloads, {} kills",
        report.requests,
        report.failures.total(),
        report.reloads.len(),
        report.kills.len()
    );
    let root = root.titled(&title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(340);

    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end_s, 0.0..max_rate)?;
    chart
        .configure_mesh()
        .y_desc("requests/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("seconds")
        .draw()?;
    mark_events(&mut chart, report, end_s, max_rate, true)?;
    chart
        .draw_series(LineSeries::new(rate, BLUE.stroke_width(2)))?
        .label("ok requests/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(failed, RED.stroke_width(2)))?
        .label("failed requests/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end_s, 0.0..max_p99)?;
    chart
        .configure_mesh()
        .y_desc("p99 latency (ms)")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .x_desc("seconds (green bands: reloads, red bands: failed reloads, purple lines: kills)")
        .draw()?;
    mark_events(&mut chart, report, end_s, max_p99, false)?;
    chart.draw_series(LineSeries::new(p99, MAGENTA.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

/// Shades reload windows and draws a line at each kill; with `legend`,
/// names them in the chart's legend.
fn mark_events<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    report: &CheckReport,
    end_s: f64,
    top: f64,
    legend: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let band = |ok: bool| {
        if ok {
            GREEN.mix(0.3)
        } else {
            RED.mix(0.35)
        }
    };
    for ok in [true, false] {
        let reloads: Vec<_> = report.reloads.iter().filter(|r| r.ok == ok).collect();
        if reloads.is_empty() {
            continue;
        }
        let drawn = chart.draw_series(reloads.into_iter().map(|reload| {
            let start = reload.at_s;
            let end = start + (reload.duration_ms / 1000.0).max(end_s * MIN_BAND);
            Rectangle::new([(start, 0.0), (end, top)], band(ok).filled())
        }))?;
        if legend {
            drawn
                .label(if ok { "reload" } else { "failed reload" })
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], band(ok).filled())
                });
        }
    }
    if !report.kills.is_empty() {
        let drawn = chart.draw_series(report.kills.iter().map(|kill| {
            PathElement::new([(kill.at_s, 0.0), (kill.at_s, top)], KILL.stroke_width(2))
        }))?;
        if legend {
            drawn
                .label("worker killed")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], KILL.stroke_width(2)));
        }
    }
    Ok(())
}
