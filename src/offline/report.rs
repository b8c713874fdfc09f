//! The evaluation report: four PNG plots, `metrics.json` and an `index.html` tying them together.
//!
//! Everything is drawn from an [`Evaluation`] alone (curves are stored downsampled, the score
//! histogram pre-binned), so a report can be regenerated from `metrics.json`.
//!
//! Text is rendered with DejaVu Sans embedded in the binary (`assets/fonts`, Bitstream Vera
//! license alongside): plotters' `ab_glyph` backend has no system font lookup, and a report that
//! silently loses its labels on a machine without fonts would be worse than a bigger binary.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::eval::{Evaluation, ThresholdMetrics};

/// The embedded font; see `assets/fonts/DejaVuSans-LICENSE.txt`.
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family name plotters uses for its own default labels, so registering under it covers
/// both our explicit styles and anything plotters draws by default.
const FONT: &str = "sans-serif";

const WIDTH: u32 = 900;
const HEIGHT: u32 = 700;

const LEGIT_COLOR: RGBColor = RGBColor(31, 119, 180);
const FRAUD_COLOR: RGBColor = RGBColor(214, 39, 40);
const CURVE_COLOR: RGBColor = RGBColor(31, 119, 180);
const REFERENCE_COLOR: RGBColor = RGBColor(140, 140, 140);
const REVIEW_COLOR: RGBColor = RGBColor(255, 127, 14);
const DECLINE_COLOR: RGBColor = RGBColor(148, 103, 189);

/// Why the report could not be written. Each variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("cannot serialize the evaluation to {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the embedded report font could not be loaded")]
    Font,
}

/// Writes `roc.png`, `pr.png`, `scores.png`, `card_precision.png`, `metrics.json` and
/// `index.html` into `dir` (created if missing) and returns their paths in that order.
/// `title` heads the HTML page (it is escaped).
pub fn write_report(
    dir: &Path,
    title: &str,
    eval: &Evaluation,
) -> Result<Vec<PathBuf>, ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    register_font()?;

    let roc = dir.join("roc.png");
    plot(&roc, |root| draw_roc(root, eval))?;
    let pr = dir.join("pr.png");
    plot(&pr, |root| draw_pr(root, eval))?;
    let scores = dir.join("scores.png");
    plot(&scores, |root| draw_scores(root, eval))?;
    let card = dir.join("card_precision.png");
    plot(&card, |root| draw_card_precision(root, eval))?;

    let json_path = dir.join("metrics.json");
    let json = serde_json::to_string_pretty(eval).map_err(|source| ReportError::Json {
        path: json_path.clone(),
        source,
    })?;
    write_file(&json_path, json.as_bytes())?;

    let html_path = dir.join("index.html");
    write_file(&html_path, render_html(title, eval).as_bytes())?;

    Ok(vec![roc, pr, scores, card, json_path, html_path])
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    fs::write(path, bytes).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers the embedded DejaVu Sans as plotters' `sans-serif` font, once per process (plotters
/// keeps a global font table). [`write_report`] calls it; it is public because with the
/// `ab_glyph` feature plotters has *no* font until one is registered, so anything else in the
/// process that draws text with plotters (criterion's HTML report in `benches/`, for one) must
/// call it first or panic on its first label.
pub fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draws one PNG: white canvas, `draw`, then `present` (which encodes and writes the file).
fn plot<F>(path: &Path, draw: F) -> Result<(), ReportError>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult<BitMapBackend<'static>>,
{
    let plot_err = |e: &dyn std::fmt::Display| ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    draw(&root).map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))
}

/// `0.1234` or `n/a`.
fn fmt_metric(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}

/// `1.234%` or `n/a`.
fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.3}%", v * 100.0))
}

fn threshold_color(name: &str) -> RGBColor {
    if name == "decline" {
        DECLINE_COLOR
    } else {
        REVIEW_COLOR
    }
}

/// Caption / axis / tick text styles, shared so all four plots look alike.
fn caption_style() -> TextStyle<'static> {
    (FONT, 24).into_font().color(&BLACK)
}

fn axis_style() -> TextStyle<'static> {
    (FONT, 18).into_font().color(&BLACK)
}

fn tick_style() -> TextStyle<'static> {
    (FONT, 14).into_font().color(&BLACK)
}

fn legend_style() -> TextStyle<'static> {
    (FONT, 15).into_font().color(&BLACK)
}

/// Draws a centred "no data" note for plots whose metric is undefined.
fn no_data<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, why: &str) -> DrawResult<DB> {
    let (w, h) = root.dim_in_pixel();
    let style = axis_style().pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Center,
    ));
    root.draw(&Text::new(
        why.to_string(),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))
}

fn draw_roc<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    eval: &Evaluation,
) -> DrawResult<DB> {
    let caption = format!("ROC curve  (AUC {})", fmt_metric(eval.auc_roc));
    let mut chart = ChartBuilder::on(root)
        .caption(caption, caption_style())
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("False positive rate")
        .y_desc("True positive rate (recall)")
        .axis_desc_style(axis_style())
        .label_style(tick_style())
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            8,
            6,
            REFERENCE_COLOR.stroke_width(1),
        ))?
        .label("chance")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], REFERENCE_COLOR));
    if eval.roc.is_empty() {
        return no_data(root, "ROC undefined: the data has only one class");
    }
    chart
        .draw_series(LineSeries::new(
            eval.roc.iter().map(|p| (p.fpr, p.tpr)),
            CURVE_COLOR.stroke_width(3),
        ))?
        .label("model")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], CURVE_COLOR.stroke_width(3)));
    for t in &eval.at_thresholds {
        let c = &t.confusion;
        let (Some(fpr), Some(tpr)) = (ratio(c.fp, c.fp + c.tn), ratio(c.tp, c.tp + c.fn_)) else {
            continue;
        };
        draw_operating_point(&mut chart, t, (fpr, tpr))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn draw_pr<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, eval: &Evaluation) -> DrawResult<DB> {
    let caption = format!(
        "Precision-recall  (AP {}, fraud rate {})",
        fmt_metric(eval.average_precision),
        fmt_pct(eval.fraud_rate())
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, caption_style())
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
    chart
        .configure_mesh()
        .x_desc("Recall")
        .y_desc("Precision")
        .axis_desc_style(axis_style())
        .label_style(tick_style())
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if eval.pr.is_empty() {
        return no_data(root, "Precision-recall undefined: no frauds in the data");
    }
    // A random ranking has precision equal to the fraud rate at every recall.
    if let Some(base) = eval.fraud_rate() {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, base), (1.0, base)],
                8,
                6,
                REFERENCE_COLOR.stroke_width(1),
            ))?
            .label(format!("base rate {}", fmt_pct(Some(base))))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], REFERENCE_COLOR));
    }
    chart
        .draw_series(LineSeries::new(
            eval.pr.iter().map(|p| (p.recall, p.precision)),
            CURVE_COLOR.stroke_width(3),
        ))?
        .label("model")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], CURVE_COLOR.stroke_width(3)));
    for t in &eval.at_thresholds {
        if let (Some(r), Some(p)) = (t.recall, t.precision) {
            draw_operating_point(&mut chart, t, (r, p))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Marks a review / decline operating point on a curve, with a legend entry.
fn draw_operating_point<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    t: &ThresholdMetrics,
    at: (f64, f64),
) -> DrawResult<DB> {
    let color = threshold_color(&t.name);
    chart
        .draw_series(std::iter::once(Circle::new(at, 7, color.filled())))?
        .label(format!("{} >= {:.3}", t.name, t.threshold))
        .legend(move |(x, y)| Circle::new((x + 10, y), 6, color.filled()));
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(legend_style())
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .margin(12)
        .draw()
}

fn draw_scores<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    eval: &Evaluation,
) -> DrawResult<DB> {
    let h = &eval.score_histogram;
    let max_count = h
        .legit
        .iter()
        .chain(&h.fraud)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    // Log y so the rare fraud class is visible next to the legitimate mass; counts of 0 are
    // simply not drawn (log 0 does not exist), and the axis starts just below 1.
    let y_top = max_count as f64 * 2.0;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "Score distribution by class  ({} rows, {} frauds)",
                eval.rows, eval.frauds
            ),
            caption_style(),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(
            f64::from(h.lo)..f64::from(h.hi),
            (0.7f64..y_top).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("Fraud score")
        .y_desc("Transactions (log scale)")
        .axis_desc_style(axis_style())
        .label_style(tick_style())
        .y_label_formatter(&|v| format_count(*v))
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    for (counts, color, name) in [
        (&h.legit, LEGIT_COLOR, "legitimate"),
        (&h.fraud, FRAUD_COLOR, "fraud"),
    ] {
        let style = color.mix(0.5).filled();
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(move |(i, &c)| {
                        let (x0, x1) = h.bin_edges(i);
                        Rectangle::new([(x0, 0.7), (x1, c as f64)], style)
                    }),
            )?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], style));
    }
    for t in &eval.at_thresholds {
        let color = threshold_color(&t.name);
        let x = f64::from(t.threshold);
        chart
            .draw_series(DashedLineSeries::new(
                [(x, 0.7), (x, y_top)],
                8,
                5,
                color.stroke_width(2),
            ))?
            .label(format!("{} >= {:.3}", t.name, t.threshold))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Tick label for a count axis: `1`, `100`, `10k`, `1M`.
fn format_count(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

fn draw_card_precision<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    eval: &Evaluation,
) -> DrawResult<DB> {
    let days = &eval.card_precision_per_day;
    let caption = format!(
        "Card precision@{} per day  (mean {})",
        eval.k,
        fmt_metric(eval.card_precision_at_k)
    );
    let n = days.len().max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, caption_style())
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(65)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..1.02f64)?;
    let date_of = |v: &f64| -> String {
        // Ticks fall on fractional positions too; label only those that are a day.
        let i = v.round();
        if (v - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        days.get(i as usize)
            .map(|d| d.date.clone())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .x_desc("Day (UTC)")
        .y_desc(format!(
            "Fraction of top {} cards that were fraudulent",
            eval.k
        ))
        .axis_desc_style(axis_style())
        .label_style(tick_style())
        .x_labels(days.len().clamp(1, 10))
        .x_label_formatter(&date_of)
        .disable_x_mesh()
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if days.is_empty() {
        return no_data(root, "No scored days");
    }
    if let Some(mean) = eval.card_precision_at_k {
        chart
            .draw_series(DashedLineSeries::new(
                [(-0.5, mean), (n - 0.5, mean)],
                8,
                6,
                REFERENCE_COLOR.stroke_width(2),
            ))?
            .label(format!("mean {mean:.3}"))
            .legend(|(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], REFERENCE_COLOR.stroke_width(2))
            });
    }
    let points = days
        .iter()
        .enumerate()
        .map(|(i, d)| (i as f64, d.precision));
    chart
        .draw_series(LineSeries::new(points.clone(), CURVE_COLOR.stroke_width(2)))?
        .label("daily precision")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], CURVE_COLOR.stroke_width(2)));
    // Markers only while they stay legible; beyond that the line carries the information.
    if days.len() <= 120 {
        chart.draw_series(points.map(|p| Circle::new(p, 4, CURVE_COLOR.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Minimal HTML escaping for text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML index: headline metrics, threshold table, the four plots and the per-day table.
fn render_html(title: &str, eval: &Evaluation) -> String {
    let title = escape(title);
    let mut h = String::new();
    // Writing to a String cannot fail; the `let _` discards the always-Ok fmt::Result.
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1860px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.plots img {{ width: 900px; max-width: 100%; margin: 4px; border: 1px solid #ddd; }}
</style></head><body>
<h1>{title}</h1>
<table>
<tr><th>metric</th><th>value</th></tr>
<tr><td>rows</td><td>{rows}</td></tr>
<tr><td>frauds</td><td>{frauds} ({rate})</td></tr>
<tr><td>AUC ROC</td><td>{auc}</td></tr>
<tr><td>average precision</td><td>{ap}</td></tr>
<tr><td>card precision@{k} (mean over {days} days)</td><td>{cp}</td></tr>
</table>
<table>
<tr><th>threshold</th><th>score &ge;</th><th>precision</th><th>recall</th><th>F1</th><th>flagged</th><th>tp</th><th>fp</th><th>tn</th><th>fn</th></tr>
"#,
        rows = eval.rows,
        frauds = eval.frauds,
        rate = fmt_pct(eval.fraud_rate()),
        auc = fmt_metric(eval.auc_roc),
        ap = fmt_metric(eval.average_precision),
        k = eval.k,
        days = eval.card_precision_per_day.len(),
        cp = fmt_metric(eval.card_precision_at_k),
    );
    for t in &eval.at_thresholds {
        let c = &t.confusion;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.name),
            t.threshold,
            fmt_metric(t.precision),
            fmt_metric(t.recall),
            fmt_metric(t.f1),
            fmt_pct(t.flagged_rate),
            c.tp,
            c.fp,
            c.tn,
            c.fn_
        );
    }
    h.push_str(
        "</table>\n<div class=\"plots\">\n\
         <img src=\"roc.png\" alt=\"ROC curve\">\n\
         <img src=\"pr.png\" alt=\"Precision-recall curve\">\n\
         <img src=\"scores.png\" alt=\"Score histogram by class\">\n\
         <img src=\"card_precision.png\" alt=\"Card precision at k per day\">\n\
         </div>\n<details><summary>Card precision per day</summary>\n<table>\n\
         <tr><th>date</th><th>cards</th><th>fraud cards</th><th>hits</th><th>precision</th></tr>\n",
    );
    for d in &eval.card_precision_per_day {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>",
            escape(&d.date),
            d.cards,
            d.fraud_cards,
            d.hits,
            d.precision
        );
    }
    h.push_str(
        "</table></details>\n<p>Raw numbers: <a href=\"metrics.json\">metrics.json</a></p>\n\
         </body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(escape("<a & 'b'>\""), "&lt;a &amp; &#39;b&#39;&gt;&quot;");
    }

    #[test]
    fn count_labels_are_compact() {
        assert_eq!(format_count(1.0), "1");
        assert_eq!(format_count(10_000.0), "10k");
        assert_eq!(format_count(2_000_000.0), "2M");
    }

    #[test]
    fn embedded_font_is_valid() {
        register_font().unwrap();
    }
}
