//! The plots of `docs/BENCHMARKS.md`, as SVG: throughput by concurrency (worker, floor and
//! the `concurrency ÷ latency` ideal for each Graph latency), and the soak's resident memory.
//!
//! SVG keeps them small, readable in a diff, and free of font and image dependencies.

use std::time::Duration;

use plotters::prelude::*;

use super::measure::MemorySample;
use super::report::Row;

const SIZE: (u32, u32) = (960, 560);
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const IDEAL: RGBColor = RGBColor(127, 127, 127);

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

    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Drain throughput: worker vs floor",
            ("sans-serif", 24).into_font(),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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

    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Worker resident memory during the soak",
            ("sans-serif", 24).into_font(),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
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
