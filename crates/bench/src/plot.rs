//! The plots of `docs/BENCHMARKS.md`, as SVG: throughput by concurrency (worker, floor and
//! the `concurrency ÷ latency` ideal for each Graph latency), the soak's resident memory,
//! and the throttled scenario's goodput as a share of the limit, per cell and over time.
//!
//! SVG keeps them small, readable in a diff, and free of font and image dependencies.

use std::time::Duration;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::measure::MemorySample;
use super::report::Row;
use super::throttled::{self, Cell, Figures};

const SIZE: (u32, u32) = (960, 560);
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const IDEAL: RGBColor = RGBColor(127, 127, 127);
/// The build measured, and the one it is compared with.
const WORKER: RGBColor = PALETTE[0];
const BASELINE: RGBColor = RGBColor(255, 127, 14);

/// A white canvas of the plots' size, drawn into `svg`.
fn canvas(
    svg: &mut String,
) -> Result<DrawingArea<SVGBackend<'_>, Shift>, Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// The frame every plot shares: its caption, the margin and room for the axis labels.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: impl AsRef<str>,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", 24).into_font())
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80);
    builder
}

/// Draws the legend at `position` on a white box, and writes the plot out.
fn finish<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    root: &DrawingArea<SVGBackend<'b>, Shift>,
    position: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Commands per second by concurrency, one colour per Graph latency: the worker solid, the
/// floor dashed, `concurrency ÷ latency` dotted grey.
pub fn throughput(rows: &[Row]) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw_throughput(rows, &mut svg).map_err(|error| anyhow::anyhow!("plotting failed: {error}"))?;
    Ok(svg)
}

fn draw_throughput(rows: &[Row], svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let mut latencies: Vec<Duration> = rows.iter().map(|row| row.graph_latency).collect();
    latencies.dedup();
    let mut concurrencies: Vec<f64> = rows.iter().map(|row| row.concurrency as f64).collect();
    concurrencies.sort_by(f64::total_cmp);
    concurrencies.dedup();
    let (low, high) = match (concurrencies.first(), concurrencies.last()) {
        (Some(low), Some(high)) => (*low, *high),
        _ => return Ok(()),
    };
    // Measured rates decide the height; an ideal far above them would flatten everything.
    let top = rows
        .iter()
        .flat_map(|row| [row.worker.drain.per_second, row.floor.drain.per_second])
        .fold(0.0, f64::max)
        * 1.15;

    let root = canvas(svg)?;
    let mut chart = frame(&root, "Drain throughput: worker vs floor").build_cartesian_2d(
        ((low / 1.4)..(high * 1.4))
            .log_scale()
            .with_key_points(concurrencies.clone()),
        0.0..top.max(1.0),
    )?;
    chart
        .configure_mesh()
        .x_desc("concurrency (commands in flight; prefetch = 2 × concurrency)")
        .y_desc("commands per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;

    for (index, latency) in latencies.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let label = humantime::format_duration(*latency).to_string();
        let series = |pick: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|row| row.graph_latency == *latency)
                .map(|row| (row.concurrency as f64, pick(row)))
                .collect()
        };
        chart
            .draw_series(
                LineSeries::new(
                    series(|row| row.worker.drain.per_second),
                    color.stroke_width(3),
                )
                .point_size(4),
            )?
            .label(format!("worker, Graph {label}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
        chart
            .draw_series(DashedLineSeries::new(
                series(|row| row.floor.drain.per_second),
                8,
                5,
                color.stroke_width(2),
            ))?
            .label(format!("floor, same run as Graph {label}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(1)));
        if !latency.is_zero() {
            let ideal: Vec<(f64, f64)> = series(|row| row.ideal_throughput().unwrap_or(0.0))
                .into_iter()
                .filter(|(_, rate)| *rate <= top)
                .collect();
            chart
                .draw_series(DashedLineSeries::new(ideal, 2, 4, IDEAL.stroke_width(2)))?
                .label(format!("concurrency ÷ {label}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], IDEAL.stroke_width(2)));
        }
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
}

/// The worker's resident memory over the soak, by commands done.
pub fn memory(samples: &[MemorySample]) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw_memory(samples, &mut svg).map_err(|error| anyhow::anyhow!("plotting failed: {error}"))?;
    Ok(svg)
}

fn draw_memory(
    samples: &[MemorySample],
    svg: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    const MIB: f64 = 1024.0 * 1024.0;
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|sample| (sample.commands as f64, sample.rss_bytes as f64 / MIB))
        .collect();
    let right = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;

    let root = canvas(svg)?;
    let mut chart = frame(&root, "Worker resident memory during the soak")
        .build_cartesian_2d(0.0..right, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("commands done")
        .y_desc("RSS (MiB), sampled every second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(points, PALETTE[0].stroke_width(3)).point_size(3))?;
    root.present()?;
    Ok(())
}

/// Goodput as a share of the tenant's limit in every cell of the throttled scenario, a bar
/// per build, with the target and the limit itself as lines across.
pub fn throttled(cells: &[Cell]) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw_throttled(cells, &mut svg).map_err(|error| anyhow::anyhow!("plotting failed: {error}"))?;
    Ok(svg)
}

fn draw_throttled(cells: &[Cell], svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    // Integer x, a hundred units a cell: plotters places key points (one label per cell,
    // at its centre) on integer axes only.
    const CELL: i32 = 100;
    let compared = cells.iter().any(|cell| cell.baseline.is_some());
    let labels: Vec<String> = cells.iter().map(Cell::label).collect();
    let top = cells
        .iter()
        .flat_map(|cell| cell.builds().map(|(_, f)| f.share_of_limit(cell.limit)))
        .fold(1.0, f64::max)
        // Room above the bars for the legend.
        * 1.4;
    let count = i32::try_from(cells.len()).unwrap_or(i32::MAX);
    let right = count.saturating_mul(CELL);
    let centres: Vec<i32> = (0..count).map(|index| index * CELL + CELL / 2).collect();

    let root = canvas(svg)?;
    let mut chart = frame(
        &root,
        format!(
            "Goodput under a per-tenant Graph limit (Graph {})",
            humantime::format_duration(throttled::GRAPH_LATENCY)
        ),
    )
    .build_cartesian_2d((0..right).with_key_points(centres), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("limit (requests per second), concurrency")
        .y_desc("succeeded commands per second ÷ limit")
        .x_label_formatter(&|x| {
            usize::try_from(x / CELL)
                .ok()
                .and_then(|index| labels.get(index))
                .cloned()
                .unwrap_or_default()
        })
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;

    let bar = |index: usize, slot: (i32, i32), figures: &Figures, limit: f64, color: RGBColor| {
        let x = i32::try_from(index)
            .unwrap_or(i32::MAX)
            .saturating_mul(CELL);
        Rectangle::new(
            [
                (x + slot.0, 0.0),
                (x + slot.1, figures.share_of_limit(limit)),
            ],
            color.filled(),
        )
    };
    let (baseline_slot, worker_slot) = if compared {
        ((15, 50), (50, 85))
    } else {
        ((0, 0), (25, 75))
    };
    if compared {
        chart
            .draw_series(cells.iter().enumerate().filter_map(|(index, cell)| {
                let figures = cell.baseline.as_ref()?;
                Some(bar(index, baseline_slot, figures, cell.limit, BASELINE))
            }))?
            .label("baseline")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], BASELINE.filled()));
    }
    chart
        .draw_series(
            cells
                .iter()
                .enumerate()
                .map(|(index, cell)| bar(index, worker_slot, &cell.worker, cell.limit, WORKER)),
        )?
        .label("worker")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], WORKER.filled()));
    let across = |share: f64| vec![(0, share), (right, share)];
    chart
        .draw_series(LineSeries::new(across(1.0), IDEAL.stroke_width(1)))?
        .label("the limit")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], IDEAL.stroke_width(1)));
    chart
        .draw_series(DashedLineSeries::new(
            across(throttled::GOODPUT_SHARE_OF_LIMIT),
            8,
            5,
            BLACK.stroke_width(2),
        ))?
        .label(format!(
            "target: {} × limit",
            throttled::GOODPUT_SHARE_OF_LIMIT
        ))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], BLACK.stroke_width(2)));
    finish(&mut chart, &root, SeriesLabelPosition::UpperRight)
}

/// Goodput each second as a share of the limit, for the cells at `concurrency`: one colour
/// per limit, the worker solid and the baseline dashed.
pub fn throttled_over_time(cells: &[Cell], concurrency: usize) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw_throttled_over_time(cells, concurrency, &mut svg)
        .map_err(|error| anyhow::anyhow!("plotting failed: {error}"))?;
    Ok(svg)
}

fn draw_throttled_over_time(
    cells: &[Cell],
    concurrency: usize,
    svg: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    let cells: Vec<&Cell> = cells
        .iter()
        .filter(|cell| cell.concurrency == concurrency)
        .collect();
    // The last second is cut short by the end of the load, so it is left out.
    let shares = |cell: &Cell, figures: &Figures| -> Vec<(f64, f64)> {
        let seconds = figures.goodput_per_second.len().saturating_sub(1);
        figures.goodput_per_second[..seconds]
            .iter()
            .enumerate()
            .map(|(second, &count)| (second as f64 + 0.5, f64::from(count) / cell.limit))
            .collect()
    };
    let right = cells
        .iter()
        .flat_map(|cell| cell.builds().map(|(_, f)| f.goodput_per_second.len()))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let top = cells
        .iter()
        .flat_map(|cell| cell.builds().flat_map(|(_, f)| shares(cell, f)))
        .map(|(_, share)| share)
        .fold(1.0, f64::max)
        // Room above the lines for the legend.
        * 1.5;

    let root = canvas(svg)?;
    let mut chart = frame(
        &root,
        format!("Goodput each second under the limit, concurrency {concurrency}"),
    )
    .build_cartesian_2d(0.0..right, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first outcome (the first sixth is warm-up)")
        .y_desc("succeeded commands in the second ÷ limit")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    for (index, cell) in cells.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let rate = throttled::format_rate(cell.limit);
        chart
            .draw_series(LineSeries::new(
                shares(cell, &cell.worker),
                color.stroke_width(2),
            ))?
            .label(format!("worker, {rate}/s"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)));
        if let Some(baseline) = &cell.baseline {
            chart
                .draw_series(DashedLineSeries::new(
                    shares(cell, baseline),
                    6,
                    4,
                    color.stroke_width(2),
                ))?
                .label(format!("baseline, {rate}/s"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 8, y)], color.stroke_width(2))
                });
        }
    }
    chart
        .draw_series(DashedLineSeries::new(
            vec![
                (0.0, throttled::GOODPUT_SHARE_OF_LIMIT),
                (right, throttled::GOODPUT_SHARE_OF_LIMIT),
            ],
            2,
            4,
            BLACK.stroke_width(1),
        ))?
        .label(format!(
            "target: {} × limit",
            throttled::GOODPUT_SHARE_OF_LIMIT
        ))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], BLACK.stroke_width(1)));
    finish(&mut chart, &root, SeriesLabelPosition::UpperRight)
}
