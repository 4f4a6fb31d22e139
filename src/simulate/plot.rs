//! The HTML report's charts as inline SVG, drawn with plotters' SVG backend: an account's
//! recipients per hour against its hourly limit, and a policy's distribution of peaks against
//! its limit. Text goes into `<text>` elements (escaped by the backend), so no font file is
//! read and the page needs none.
//!
//! A chart's size is bounded whatever the log's length: an account's hours are grouped so that
//! at most [`MAX_BARS`] bars are drawn, each showing the busiest hour of its group (the hour the
//! hourly limit would be measured against), and hours without traffic draw nothing.

use plotters::coord::Shift;
use plotters::prelude::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::report::{HourPoint, PEAK_BUCKETS, PeakBucket};

/// Pixels of every chart.
const SIZE: (u32, u32) = (760, 260);
/// The most bars an account's chart draws.
pub const MAX_BARS: u32 = 14 * 24;

const EXTERNAL: RGBColor = RGBColor(0x4e, 0x79, 0xa7);
const INTERNAL: RGBColor = RGBColor(0x8c, 0xc0, 0x84);
const REFUSED: RGBColor = RGBColor(0xe1, 0x57, 0x59);
const LIMIT: RGBColor = RGBColor(0xc0, 0x1c, 0x28);
const SUGGESTED: RGBColor = RGBColor(0xf2, 0x8e, 0x2b);
const MARKER: RGBColor = RGBColor(0x22, 0x22, 0x22);
const FONT: &str = "sans-serif";

type Failure = Box<dyn std::error::Error>;

/// What an account's chart shows besides its hours.
pub struct AccountChart<'a> {
    pub account: &'a str,
    pub series: &'a [HourPoint],
    /// External recipients per hour allowed (0: no limit, no line).
    pub limit: u32,
    /// When it was restricted (RFC 3339), marked with a vertical line.
    pub restricted_at: Option<&'a str>,
}

/// One bar: its first hour, how many hours it spans, and the busiest hour in them.
struct Bar {
    start: u32,
    hours: u32,
    point: HourPoint,
}

/// The series grouped into at most [`MAX_BARS`] groups of equal length from `first`.
fn bars(series: &[HourPoint], first: u32, span: u32) -> (u32, Vec<Bar>) {
    let group = span.div_ceil(MAX_BARS).max(1);
    let mut out: Vec<Bar> = Vec::new();
    for p in series {
        let start = first + (p.hour - first) / group * group;
        let total = |h: &HourPoint| h.external + h.internal;
        match out.last_mut() {
            Some(b) if b.start == start => {
                if total(p) > total(&b.point) {
                    b.point = *p;
                }
            }
            _ => out.push(Bar { start, hours: group, point: *p }),
        }
    }
    (group, out)
}

fn seconds_of(rfc3339: &str) -> Option<i64> {
    OffsetDateTime::parse(rfc3339, &Rfc3339).ok().map(OffsetDateTime::unix_timestamp)
}

/// An hour on the x axis (fractional hours since the epoch) as `MM-DD HH:MM`.
fn hour_label(x: f64) -> String {
    let secs = (x * 3600.0).round() as i64;
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[month]-[day] [hour]:[minute]")).ok())
        .unwrap_or_default()
}

fn svg_of(draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), Failure>) -> Result<String, Failure> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// An account's recipients per hour: external and internal stacked, the refused part of them
/// in red on top, the hourly external limit as a line, the restriction as a vertical line.
///
/// # Errors
/// What plotters reports (nothing is expected: it draws into a string).
pub fn account(chart: &AccountChart<'_>) -> Result<String, Failure> {
    let at = chart.restricted_at.and_then(seconds_of).map(|s| s as f64 / 3600.0);
    let mut first = chart.series.first().map_or(0, |p| p.hour);
    let mut last = chart.series.last().map_or(0, |p| p.hour);
    if let Some(at) = at {
        first = first.min(at.floor() as u32);
        last = last.max(at.floor() as u32);
    }
    let span = last - first + 1;
    let (group, bars) = bars(chart.series, first, span);
    let highest = bars.iter().map(|b| b.point.external + b.point.internal).max().unwrap_or(0);
    let y_top = (u64::from(highest.max(chart.limit)) * 23 / 20 + 1).max(2);
    let x_range = f64::from(first)..f64::from(first + span.max(2));
    svg_of(|root| {
        let mut c = ChartBuilder::on(root)
            .caption(chart.account, (FONT, 17))
            .margin(10)
            .margin_right(36)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(x_range.clone(), 0u64..y_top)?;
        let y_desc =
            if group == 1 { "recipients per hour".to_owned() } else { format!("busiest hour of each {group} h") };
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| hour_label(*x))
            .y_desc(y_desc)
            .label_style((FONT, 12))
            .draw()?;
        let rect = |b: &Bar, from: u32, to: u32, color: RGBColor| {
            let x0 = f64::from(b.start);
            let x1 = x0 + f64::from(b.hours) * 0.9;
            Rectangle::new([(x0, u64::from(from)), (x1, u64::from(to))], color.filled())
        };
        c.draw_series(bars.iter().map(|b| rect(b, 0, b.point.external, EXTERNAL)))?
            .label("external")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], EXTERNAL.filled()));
        c.draw_series(bars.iter().map(|b| rect(b, b.point.external, b.point.external + b.point.internal, INTERNAL)))?
            .label("internal")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], INTERNAL.filled()));
        if bars.iter().any(|b| b.point.refused > 0) {
            c.draw_series(bars.iter().filter(|b| b.point.refused > 0).map(|b| {
                let top = b.point.external + b.point.internal;
                rect(b, top.saturating_sub(b.point.refused), top, REFUSED)
            }))?
            .label("refused")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], REFUSED.filled()));
        }
        if chart.limit > 0 {
            let y = u64::from(chart.limit);
            c.draw_series(std::iter::once(PathElement::new(
                vec![(x_range.start, y), (x_range.end, y)],
                LIMIT.stroke_width(2),
            )))?
            .label(format!("limit {} external/h", chart.limit))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], LIMIT.stroke_width(2)));
        }
        if let Some(at) = at {
            c.draw_series(std::iter::once(PathElement::new(vec![(at, 0), (at, y_top)], MARKER.stroke_width(2))))?
                .label("restricted")
                .legend(|(x, y)| PathElement::new(vec![(x + 6, y - 6), (x + 6, y + 6)], MARKER.stroke_width(2)));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 12))
            .draw()?;
        Ok(())
    })
}

/// Where `value` falls on the distribution's x axis: bucket `i` spans `i..i+1`, from the
/// bound before it (exclusive) to its own (inclusive).
fn bucket_position(value: u32) -> f64 {
    let i = PEAK_BUCKETS.iter().position(|&b| value <= b).unwrap_or(PEAK_BUCKETS.len() - 1);
    let low = if i == 0 { 0 } else { PEAK_BUCKETS[i - 1] };
    let high = PEAK_BUCKETS[i];
    if high == u32::MAX {
        return i as f64 + 0.5;
    }
    i as f64 + f64::from(value - low) / f64::from(high - low)
}

/// The label of a bucket boundary at `x` (only whole numbers are boundaries).
fn boundary_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 || x < 0.0 {
        return String::new();
    }
    match x.round() as usize {
        0 => "0".to_owned(),
        k => PEAK_BUCKETS.get(k - 1).filter(|&&b| b != u32::MAX).map(u32::to_string).unwrap_or_default(),
    }
}

/// A policy's accounts by their peak external recipients in an hour, with its limit and the
/// suggested one as vertical lines.
///
/// # Errors
/// What plotters reports (nothing is expected: it draws into a string).
pub fn peaks(policy: &str, distribution: &[PeakBucket], limit: u32, suggested: Option<u32>) -> Result<String, Failure> {
    let mut buckets = distribution.len();
    for v in std::iter::once(limit).filter(|&l| l > 0).chain(suggested) {
        // A line on a boundary gets the bucket after it, so that it is not drawn on the frame.
        buckets = buckets.max(bucket_position(v).floor() as usize + 1);
    }
    let buckets = buckets.max(1);
    let highest = distribution.iter().map(|b| b.accounts).max().unwrap_or(0);
    let y_top = (highest * 23 / 20 + 1).max(2);
    let x_range = 0f64..buckets as f64;
    let title = format!("policy {policy}: accounts by peak external recipients in an hour");
    svg_of(|root| {
        let mut c = ChartBuilder::on(root)
            .caption(&title, (FONT, 17))
            .margin(10)
            .margin_right(36)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(x_range.clone(), 0u64..y_top)?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(buckets + 1)
            .y_labels(6)
            .x_label_formatter(&|x| boundary_label(*x))
            .y_desc("accounts")
            .label_style((FONT, 12))
            .draw()?;
        c.draw_series(
            distribution
                .iter()
                .enumerate()
                .map(|(i, b)| Rectangle::new([(i as f64 + 0.05, 0), (i as f64 + 0.95, b.accounts)], EXTERNAL.filled())),
        )?
        .label("accounts")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], EXTERNAL.filled()));
        let vertical = |value: u32, color: RGBColor| {
            let x = bucket_position(value);
            PathElement::new(vec![(x, 0), (x, y_top)], color.stroke_width(2))
        };
        if limit > 0 {
            c.draw_series(std::iter::once(vertical(limit, LIMIT)))?
                .label(format!("limit {limit}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], LIMIT.stroke_width(2)));
        }
        if let Some(s) = suggested {
            c.draw_series(std::iter::once(vertical(s, SUGGESTED)))?
                .label(format!("suggested {s}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], SUGGESTED.stroke_width(2)));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 12))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(hour: u32, external: u32) -> HourPoint {
        HourPoint { hour, external, internal: 0, refused: 0 }
    }

    #[test]
    fn a_long_log_is_drawn_in_at_most_max_bars_busiest_hours() {
        let series: Vec<HourPoint> = (0..2000).map(|h| point(h, h % 7)).collect();
        let (group, bars) = bars(&series, 0, 2000);
        assert_eq!(group, 6);
        assert!(bars.len() as u32 <= MAX_BARS);
        assert_eq!(bars[0].point.external, 5, "the busiest of hours 0..6");
        let svg = account(&AccountChart { account: "a", series: &series, limit: 3, restricted_at: None }).unwrap();
        assert!(svg.matches("<rect").count() < 2 * MAX_BARS as usize + 20);
    }

    #[test]
    fn bucket_positions_follow_the_bounds() {
        assert_eq!(bucket_position(1), 1.0);
        assert_eq!(bucket_position(2), 2.0);
        assert!((bucket_position(3) - (2.0 + 1.0 / 3.0)).abs() < 1e-9);
        assert_eq!(bucket_position(100), 7.0);
        assert_eq!(bucket_position(20_000), 13.5);
        assert_eq!(boundary_label(3.0), "5");
        assert_eq!(boundary_label(0.0), "0");
        assert_eq!(boundary_label(2.5), "");
        assert_eq!(boundary_label(14.0), "");
    }
}
