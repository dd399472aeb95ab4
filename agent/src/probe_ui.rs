//! How `wgkeep probe` shows itself: a progress bar on stderr while it runs ([`ProgressUi`]) and an
//! SVG plot of what it observed ([`write_plot`], `--plot FILE`).
//!
//! The plot needs no fonts on the machine: plotters is built without its font backends, sizes text
//! with a built-in estimate, and the SVG holds `<text>` elements the viewer renders.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use wgkeep_probe::report::{secs, Bracket, Observation, Pattern, Progress, Report};

/// The progress bar's template: elapsed time, a bar, and [`Progress::phase`].
const TEMPLATE: &str = "{elapsed_precise} [{bar:30.cyan/blue}] {wide_msg}";

/// A progress bar on stderr, fed with [`Progress`] snapshots. Disabled, it draws nothing.
#[derive(Debug)]
pub struct ProgressUi {
    bar: ProgressBar,
    max_s: f64,
}

/// The bar's length in seconds: the planner's estimate when it has one, else a guess from the
/// longest idle time (`max_s × 1.25 + 10`); never shorter than the time already elapsed.
fn bar_length(progress: &Progress, max_s: f64) -> u64 {
    let len = match progress.expected_total_s {
        Some(t) if t.is_finite() && t > 0.0 => t,
        _ => max_s * 1.25 + 10.0,
    };
    whole_secs(len).max(whole_secs(progress.elapsed_s)).max(1)
}

fn whole_secs(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        s.round() as u64
    } else {
        0
    }
}

impl ProgressUi {
    /// A bar for a probe with this `--max`. Pass `enabled = false` for `--quiet`, `--json`, or
    /// when stderr is not a terminal: then nothing is drawn.
    pub fn new(enabled: bool, max_s: f64) -> ProgressUi {
        let bar = if enabled {
            let len = bar_length(
                &Progress {
                    elapsed_s: 0.0,
                    sockets_used: 0,
                    searches: Vec::new(),
                    inbound_refresh: None,
                    expected_total_s: None,
                },
                max_s,
            );
            let style = ProgressStyle::with_template(TEMPLATE)
                .expect("the progress template is valid")
                .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message("starting");
            if !bar.is_hidden() {
                // Keeps the elapsed time moving between snapshots.
                bar.enable_steady_tick(Duration::from_secs(1));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        ProgressUi { bar, max_s }
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Shows a snapshot: position = elapsed seconds, length = the expected total (or a guess from
    /// `max_s`), message = [`Progress::phase`].
    pub fn update(&self, progress: &Progress) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_length(bar_length(progress, self.max_s));
        self.bar.set_position(whole_secs(progress.elapsed_s));
        if progress.elapsed_s.is_finite() && progress.elapsed_s >= 0.0 {
            self.bar
                .set_elapsed(Duration::from_secs_f64(progress.elapsed_s));
        }
        self.bar.set_message(progress.phase());
    }

    /// Prints a log line to stderr, above the bar when it is shown. Whether a line is wanted at
    /// all (`--quiet`) is the caller's decision.
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

const WIDTH: u32 = 960;
const TITLE_HEIGHT: u32 = 44;
const PANEL_HEIGHT: u32 = 200;
/// The panels of the plot, top to bottom.
const PANELS: [Pattern; 4] = [
    Pattern::Handshake,
    Pattern::Stream,
    Pattern::Unreplied,
    Pattern::Grace,
];
/// The grace search's range (0.5–5 s) plus a margin: the grace panel's x axis at least.
const GRACE_AXIS_S: f64 = 5.5;

fn colour(pattern: Pattern) -> RGBColor {
    match pattern {
        Pattern::Handshake => RGBColor(0x1f, 0x77, 0xb4),
        Pattern::Stream => RGBColor(0x2c, 0xa0, 0x2c),
        Pattern::Unreplied => RGBColor(0xd6, 0x27, 0x28),
        Pattern::Grace | Pattern::Refresh => RGBColor(0x94, 0x67, 0xbd),
    }
}

/// Writes an SVG plot of survival versus idle time per pattern: one panel each for handshake,
/// stream and unreplied (x = idle time, a filled circle for each entry that survived, a cross for
/// each that expired, the bracket shaded and labelled), and one for the grace period
/// (x = follow-up delay, promoted or not).
pub fn write_plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    let svg = render_plot(report).context("drawing the plot")?;
    std::fs::write(path, svg).with_context(|| format!("writing the plot to {}", path.display()))
}

/// The SVG [`write_plot`] writes.
pub fn render_plot(report: &Report) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let height = TITLE_HEIGHT + PANEL_HEIGHT * PANELS.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(TITLE_HEIGHT);
        title.draw(&Text::new(
            format!(
                "wgkeep probe → {}: survival versus idle time per pattern",
                report.reflector
            ),
            (WIDTH as i32 / 2, TITLE_HEIGHT as i32 / 2),
            ("sans-serif", 20)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
        let panels = body.split_evenly((PANELS.len(), 1));
        for (area, pattern) in panels.iter().zip(PANELS) {
            draw_panel(area, report, pattern)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Where an observation goes on its panel's x axis: the follow-up delay for grace, else the idle
/// time.
fn x_of(o: &Observation) -> f64 {
    match o.pattern {
        Pattern::Grace => o.follow_up_s.unwrap_or(o.idle_s),
        _ => o.idle_s,
    }
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &Report,
    pattern: Pattern,
) -> anyhow::Result<()> {
    let bracket = report.bracket(pattern).copied();
    let observations: Vec<&Observation> = report
        .observations_of(pattern)
        .filter(|o| x_of(o).is_finite())
        .collect();
    let caption = match &bracket {
        Some(b) => format!(
            "{pattern}: {} · {}",
            b.describe(pattern.symbol()),
            pattern.what()
        ),
        None => format!("{pattern}: not measured · {}", pattern.what()),
    };
    if bracket.is_none() && observations.is_empty() {
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            caption,
            (w as i32 / 2, h as i32 / 2),
            ("sans-serif", 16)
                .into_font()
                .color(&BLACK.mix(0.6))
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
        return Ok(());
    }

    let (x_desc, yes, no) = match pattern {
        Pattern::Grace => ("follow-up delay (s)", "promoted", "not promoted"),
        _ => ("idle time (s)", "survived", "expired"),
    };
    let data_max = observations
        .iter()
        .map(|o| x_of(o))
        .chain(bracket.iter().map(|b| b.high_s.unwrap_or(b.low_s)))
        .filter(|x| x.is_finite())
        .fold(0.0_f64, f64::max);
    let x_max = match pattern {
        Pattern::Grace => (data_max * 1.05).max(GRACE_AXIS_S),
        _ => (data_max * 1.05).max(1.0),
    };
    let (y_min, y_max) = (-0.6, 1.6);

    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(34)
        .y_label_area_size(96)
        .build_cartesian_2d(0.0..x_max, y_min..y_max)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(5)
        .y_label_formatter(&|y: &f64| {
            if (y - 1.0).abs() < 1e-6 {
                yes.to_owned()
            } else if y.abs() < 1e-6 {
                no.to_owned()
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x: &f64| secs(*x))
        .x_desc(x_desc)
        .draw()?;

    let c = colour(pattern);
    if let Some(b) = bracket {
        draw_bracket(&mut chart, &b, pattern, x_max, (y_min, y_max), c)?;
    }

    // The y axis names the rows, so no legend (which would hide markers).
    chart.draw_series(
        observations
            .iter()
            .filter(|o| o.survived)
            .map(|o| Circle::new((x_of(o), 1.0), 5, c.filled())),
    )?;
    chart.draw_series(
        observations
            .iter()
            .filter(|o| !o.survived)
            .map(|o| Cross::new((x_of(o), 0.0), 5, c.stroke_width(2))),
    )?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The bracket as a shaded band between two vertical lines, labelled `low < T ≤ high s`.
fn draw_bracket(
    chart: &mut Chart<'_, '_>,
    b: &Bracket,
    pattern: Pattern,
    x_max: f64,
    (y_min, y_max): (f64, f64),
    c: RGBColor,
) -> anyhow::Result<()> {
    let high = b.high_s.unwrap_or(x_max).min(x_max);
    let low = b.low_s.min(x_max);
    chart.draw_series(std::iter::once(Rectangle::new(
        [(low, y_min), (high, y_max)],
        c.mix(0.18).filled(),
    )))?;
    let mut edges = vec![low];
    if b.high_s.is_some() {
        edges.push(high);
    }
    chart.draw_series(
        edges
            .into_iter()
            .map(|x| PathElement::new(vec![(x, y_min), (x, y_max)], c.mix(0.8).stroke_width(1))),
    )?;
    // The label beside the band, on the side with room.
    let label = b.describe(pattern.symbol());
    let style = ("sans-serif", 14).into_font().color(&c);
    let y = y_max - 0.05;
    if high < x_max * 0.6 {
        chart.draw_series(std::iter::once(
            EmptyElement::at((high, y))
                + Text::new(label, (6, 0), style.pos(Pos::new(HPos::Left, VPos::Top))),
        ))?;
    } else {
        chart.draw_series(std::iter::once(
            EmptyElement::at((low, y))
                + Text::new(label, (-6, 0), style.pos(Pos::new(HPos::Right, VPos::Top))),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgkeep_probe::report::{Recommendation, SearchProgress};

    fn obs(pattern: Pattern, idle_s: f64, survived: bool) -> Observation {
        Observation {
            pattern,
            idle_s,
            survived,
            follow_up_s: None,
        }
    }

    fn report() -> Report {
        let handshake = Bracket::new(9.0, Some(10.0));
        let stream = Bracket::new(179.0, Some(180.0));
        let grace = Bracket::new(1.875, Some(2.125));
        let mut observations = vec![
            obs(Pattern::Handshake, 5.0, true),
            obs(Pattern::Handshake, 9.0, true),
            obs(Pattern::Handshake, 10.0, false),
            obs(Pattern::Handshake, 20.0, false),
            obs(Pattern::Stream, 120.0, true),
            obs(Pattern::Stream, 179.0, true),
            obs(Pattern::Stream, 180.0, false),
            obs(Pattern::Stream, 240.0, false),
        ];
        for (d, promoted) in [(1.0, false), (1.875, false), (2.125, true), (3.0, true)] {
            observations.push(Observation {
                pattern: Pattern::Grace,
                idle_s: 15.0,
                survived: promoted,
                follow_up_s: Some(d),
            });
        }
        Report {
            reflector: "198.51.100.2:51900".into(),
            duration_s: 228.0,
            sockets_used: 187,
            resolution_s: 1.0,
            max_s: 600.0,
            rtt_ms: 0.2,
            strategy: "parallel".into(),
            recommendation: Recommendation::from_brackets(
                Some(&handshake),
                Some(&stream),
                None,
                Some(&grace),
            ),
            handshake: Some(handshake),
            stream: Some(stream),
            unreplied: None,
            grace: Some(grace),
            inbound_refresh: Some(true),
            stream_follow_up_s: 2.5,
            notes: vec![],
            observations,
            finished_s: Default::default(),
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wgkeep-probe-ui-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn plot_is_an_svg_with_the_labels() {
        let dir = temp_dir("plot");
        let path = dir.join("probe.svg");
        write_plot(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for want in [
            "wgkeep probe → 198.51.100.2:51900: survival versus idle time per pattern",
            "handshake: 9 &lt; T ≤ 10 s",
            "stream: 179 &lt; T ≤ 180 s",
            "unreplied: not measured",
            "grace: 1.875 &lt; G ≤ 2.125 s",
            "idle time (s)",
            "follow-up delay (s)",
            "survived",
            "expired",
            "promoted",
            "not promoted",
        ] {
            assert!(svg.contains(want), "missing {want:?}");
        }
        // The band labels repeat the brackets of the captions.
        assert_eq!(svg.matches("179 &lt; T ≤ 180 s").count(), 2);
        assert_eq!(svg.matches("1.875 &lt; G ≤ 2.125 s").count(), 2);
        // A filled circle per survivor (crosses are line pairs).
        assert_eq!(svg.matches("<circle").count(), 6, "{svg}");
        // No font files were needed: text stays text.
        assert!(svg.contains("font-family=\"sans-serif\""));
    }

    #[test]
    fn plot_of_an_open_bracket_and_nothing_measured() {
        let mut r = report();
        r.stream = Some(Bracket::new(600.0, None));
        r.observations.retain(|o| o.pattern != Pattern::Stream);
        r.observations.push(obs(Pattern::Stream, 600.0, true));
        let svg = render_plot(&r).unwrap();
        assert!(svg.contains("stream: T &gt; 600 s"), "{svg}");

        let mut empty = report();
        empty.handshake = None;
        empty.stream = None;
        empty.grace = None;
        empty.observations.clear();
        let svg = render_plot(&empty).unwrap();
        assert!(svg.contains("handshake: not measured"));
        assert!(svg.contains("grace: not measured"));
    }

    #[test]
    fn unwritable_plot_path_names_the_path() {
        let dir = temp_dir("unwritable");
        let file = dir.join("a-file");
        std::fs::write(&file, "").unwrap();
        // A path below a regular file cannot be created, even by root.
        let path = file.join("probe.svg");
        let err = write_plot(&report(), &path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.starts_with("writing the plot to"), "{msg}");
    }

    fn progress(elapsed_s: f64, expected_total_s: Option<f64>) -> Progress {
        Progress {
            elapsed_s,
            sockets_used: 3,
            searches: vec![SearchProgress {
                pattern: Pattern::Stream,
                low_s: 120.0,
                high_s: Some(138.0),
                done: false,
            }],
            inbound_refresh: None,
            expected_total_s,
        }
    }

    #[test]
    fn bar_length_uses_the_estimate_or_max() {
        assert_eq!(bar_length(&progress(5.0, Some(230.4)), 600.0), 230);
        assert_eq!(bar_length(&progress(5.0, None), 600.0), 760);
        assert_eq!(bar_length(&progress(5.0, Some(f64::NAN)), 600.0), 760);
        // Never shorter than what already elapsed.
        assert_eq!(bar_length(&progress(900.0, Some(230.0)), 600.0), 900);
    }

    #[test]
    fn disabled_ui_draws_nothing() {
        let ui = ProgressUi::new(false, 600.0);
        assert!(!ui.is_shown());
        ui.update(&progress(10.0, None));
        ui.finish();

        // Enabled, but stderr is not a terminal under the test harness (or is: either way no
        // panic, and an update reaches the bar when it is shown).
        let ui = ProgressUi::new(true, 600.0);
        ui.update(&progress(10.0, Some(200.0)));
        if ui.is_shown() {
            assert_eq!(ui.bar.length(), Some(200));
            assert_eq!(ui.bar.position(), 10);
            assert_eq!(ui.bar.message(), "stream: 120 < T ≤ 138 s");
        }
        ui.finish();
    }
}
