//! What `wgkeep probe` found: the [`Report`] (its JSON is a public contract, read by
//! `wgkeep agent --timeouts-from`), the [`Recommendation`] derived from it, and the [`Progress`]
//! snapshots a running probe hands to its progress display.
//!
//! Every timeout is a [`Bracket`] `(low_s, high_s]` that contains the true value: an entry idle for
//! `low_s` seconds was seen alive, one idle for `high_s` seconds was seen gone. `high_s` is `None`
//! (JSON `null`) when the entry survived even the longest idle time tried (the probe's `--max`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Share of a measured timeout that a recommended PersistentKeepalive may use: the rest is room
/// for timer jitter and for one lost keepalive. The same factor as the agent's keeper
/// (`floor(0.8 × sustained timeout)`).
pub const KEEPALIVE_SHARE: f64 = 0.8;

/// The follow-up delay in seconds when the grace period was not measured (or not bounded): the
/// agent's default, which is later than Linux conntrack's 2 s grace.
pub const DEFAULT_FOLLOW_UP_DELAY: f64 = 2.5;

/// Margin added to the measured grace period's upper end before rounding up to
/// [`FOLLOW_UP_DELAY_STEP`].
pub const FOLLOW_UP_DELAY_MARGIN: f64 = 0.25;

/// Recommended follow-up delays are multiples of this many seconds.
pub const FOLLOW_UP_DELAY_STEP: f64 = 0.5;

/// The PersistentKeepalive recommended when no timeout at all was measured: the "sensible interval
/// that works with a wide variety of firewalls" of wg(8).
pub const FALLBACK_KEEPALIVE: u32 = 25;

/// A traffic pattern the probe measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// A WireGuard handshake's packets, then silence: the timeout after a handshake.
    Handshake,
    /// A handshake plus one packet after the grace period: the stream timeout.
    Stream,
    /// One packet that is never answered: the unreplied timeout.
    Unreplied,
    /// The smallest follow-up delay that promotes an entry to the stream timeout.
    Grace,
    /// Whether traffic from the reflector alone keeps an entry alive.
    Refresh,
}

impl Pattern {
    /// Every pattern, in the order reports list them.
    pub const ALL: [Pattern; 5] = [
        Pattern::Handshake,
        Pattern::Stream,
        Pattern::Unreplied,
        Pattern::Grace,
        Pattern::Refresh,
    ];

    /// The name used in the JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Handshake => "handshake",
            Pattern::Stream => "stream",
            Pattern::Unreplied => "unreplied",
            Pattern::Grace => "grace",
            Pattern::Refresh => "refresh",
        }
    }

    /// One line on the packets this pattern sends.
    pub fn what(self) -> &'static str {
        match self {
            Pattern::Handshake => "148 B out, 92 B back, 32 B out, then silence",
            Pattern::Stream => "the same, plus 32 B at 2.5 s",
            Pattern::Unreplied => "one 148 B packet, no answer",
            Pattern::Grace => "a handshake, then one 32 B follow-up after a varied delay",
            Pattern::Refresh => "a handshake, then 32 B from the far side only",
        }
    }

    /// The letter a bracket of this pattern is written with: `G` for the grace period, else `T`.
    pub fn symbol(self) -> &'static str {
        match self {
            Pattern::Grace => "G",
            _ => "T",
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A measured value lies in `(low_s, high_s]`; `high_s` is `None` when it is above the largest
/// value tried.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bracket {
    /// Seen alive (or, for the grace period, not promoted) at this value.
    pub low_s: f64,
    /// Seen gone (promoted) at this value; `None`: never, up to the largest value tried.
    pub high_s: Option<f64>,
}

impl Bracket {
    /// The bracket `(low_s, high_s]`.
    pub fn new(low_s: f64, high_s: Option<f64>) -> Bracket {
        Bracket { low_s, high_s }
    }

    /// `high_s - low_s`, `None` when unbounded.
    pub fn width(&self) -> Option<f64> {
        self.high_s.map(|h| h - self.low_s)
    }

    /// Whether `x` lies in `(low_s, high_s]`.
    pub fn contains(&self, x: f64) -> bool {
        x > self.low_s && self.high_s.is_none_or(|h| x <= h)
    }

    /// `9 < T ≤ 10 s`, or `T > 600 s` when unbounded.
    pub fn describe(&self, symbol: &str) -> String {
        match self.high_s {
            Some(h) => format!("{} < {symbol} ≤ {} s", secs(self.low_s), secs(h)),
            None => format!("{symbol} > {} s", secs(self.low_s)),
        }
    }
}

/// One test the probe ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The pattern tested.
    pub pattern: Pattern,
    /// How long the entry was left idle before the reflector tried to reach it.
    pub idle_s: f64,
    /// Whether the reflector's packet got through; for [`Pattern::Grace`]: whether the entry was
    /// promoted to the stream timeout.
    pub survived: bool,
    /// [`Pattern::Grace`] only: the follow-up delay tested.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub follow_up_s: Option<f64>,
}

/// What to configure, derived from the brackets by [`Recommendation::from_brackets`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// PersistentKeepalive with `wgkeep agent`, which keeps the entry on the stream timeout:
    /// `floor(KEEPALIVE_SHARE × stream.low_s)`.
    pub persistent_keepalive_s: u32,
    /// PersistentKeepalive without wgkeep, where the entry stays on the short timeout after each
    /// handshake: `floor(KEEPALIVE_SHARE × min(handshake.low_s, unreplied.low_s))`; `None` when
    /// neither was measured.
    pub persistent_keepalive_without_agent_s: Option<u32>,
    /// How long after a handshake the agent's follow-up should go out: later than the grace
    /// period's upper end.
    pub follow_up_delay_s: f64,
}

/// `floor(KEEPALIVE_SHARE × timeout)` within 1..=65535 (WireGuard's range).
fn keepalive_for(timeout_s: f64) -> u32 {
    let v = (KEEPALIVE_SHARE * timeout_s).floor();
    if v.is_nan() {
        return 1;
    }
    v.clamp(1.0, 65535.0) as u32
}

impl Recommendation {
    /// The recommendation for these brackets (each the safe end: the low end of a timeout, the
    /// high end of the grace period).
    ///
    /// - `persistent_keepalive_s`: from the stream timeout; without one, from the shorter of the
    ///   handshake and unreplied timeouts; without any, [`FALLBACK_KEEPALIVE`].
    /// - `persistent_keepalive_without_agent_s`: from the shorter of the handshake and unreplied
    ///   timeouts.
    /// - `follow_up_delay_s`: `grace.high_s + 0.25` rounded up to a multiple of 0.5 s (Linux's 2 s
    ///   grace measured as `(1.875, 2.125]` gives 2.5); [`DEFAULT_FOLLOW_UP_DELAY`] without a
    ///   bounded grace period.
    pub fn from_brackets(
        handshake: Option<&Bracket>,
        stream: Option<&Bracket>,
        unreplied: Option<&Bracket>,
        grace: Option<&Bracket>,
    ) -> Recommendation {
        let short = [handshake, unreplied]
            .into_iter()
            .flatten()
            .map(|b| b.low_s)
            .reduce(f64::min);
        let persistent_keepalive_without_agent_s = short.map(keepalive_for);
        let persistent_keepalive_s = match stream {
            Some(s) => keepalive_for(s.low_s),
            None => persistent_keepalive_without_agent_s.unwrap_or(FALLBACK_KEEPALIVE),
        };
        let follow_up_delay_s = match grace.and_then(|g| g.high_s) {
            Some(h) if h.is_finite() => {
                let steps = ((h + FOLLOW_UP_DELAY_MARGIN) / FOLLOW_UP_DELAY_STEP - 1e-9).ceil();
                (steps * FOLLOW_UP_DELAY_STEP).max(FOLLOW_UP_DELAY_STEP)
            }
            _ => DEFAULT_FOLLOW_UP_DELAY,
        };
        Recommendation {
            persistent_keepalive_s,
            persistent_keepalive_without_agent_s,
            follow_up_delay_s,
        }
    }
}

/// The result of `wgkeep probe`; `--json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The reflector, as given (`host:port`).
    pub reflector: String,
    /// How long the probe ran.
    pub duration_s: f64,
    /// How many sockets (so NAT entries) it used.
    pub sockets_used: u32,
    /// The bracket width the searches stopped at.
    pub resolution_s: f64,
    /// The longest idle time tried (`--max`).
    pub max_s: f64,
    /// Round-trip time to the reflector.
    pub rtt_ms: f64,
    /// `"parallel"` or `"serial"`.
    pub strategy: String,
    /// The timeout after a WireGuard handshake and silence.
    pub handshake: Option<Bracket>,
    /// The timeout after a handshake and a follow-up past the grace period.
    pub stream: Option<Bracket>,
    /// The timeout of an entry that never saw a reply.
    pub unreplied: Option<Bracket>,
    /// The smallest follow-up delay that promotes an entry to the stream timeout.
    pub grace: Option<Bracket>,
    /// Whether packets from the reflector alone keep an entry alive.
    pub inbound_refresh: Option<bool>,
    /// When the stream pattern's follow-up was sent, after the handshake.
    pub stream_follow_up_s: f64,
    /// What to configure.
    pub recommendation: Recommendation,
    /// Remarks for humans (anomalies, retries, caveats).
    pub notes: Vec<String>,
    /// Every test run, in the order run.
    pub observations: Vec<Observation>,
    /// When each measurement had its answer, in seconds from the start (the time bound
    /// `1.25 × stream + 10 s` is about handshake, stream and grace).
    #[serde(default)]
    pub finished_s: std::collections::BTreeMap<Pattern, f64>,
}

impl Report {
    /// The bracket measured for `pattern` (`None` for [`Pattern::Refresh`], which is a yes/no).
    pub fn bracket(&self, pattern: Pattern) -> Option<&Bracket> {
        match pattern {
            Pattern::Handshake => self.handshake.as_ref(),
            Pattern::Stream => self.stream.as_ref(),
            Pattern::Unreplied => self.unreplied.as_ref(),
            Pattern::Grace => self.grace.as_ref(),
            Pattern::Refresh => None,
        }
    }

    /// The observations of one pattern, in the order run.
    pub fn observations_of(&self, pattern: Pattern) -> impl Iterator<Item = &Observation> + '_ {
        self.observations
            .iter()
            .filter(move |o| o.pattern == pattern)
    }

    /// The recommendation these brackets give (what [`Report::recommendation`] should hold).
    pub fn recommend(&self) -> Recommendation {
        Recommendation::from_brackets(
            self.handshake.as_ref(),
            self.stream.as_ref(),
            self.unreplied.as_ref(),
            self.grace.as_ref(),
        )
    }

    /// The report as indented JSON (what `wgkeep probe --json` prints).
    pub fn to_json_pretty(&self) -> String {
        // A struct of strings, numbers, bools and options cannot fail to serialize (non-finite
        // numbers become `null`).
        serde_json::to_string_pretty(self).expect("a Report always serializes")
    }

    /// A report from `wgkeep probe --json` output.
    pub fn from_json(json: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn describe_timeout(&self, pattern: Pattern) -> String {
        match self.bracket(pattern) {
            None => "not measured".to_owned(),
            Some(b @ Bracket { high_s: None, .. }) => {
                let mut s = b.describe(pattern.symbol());
                if b.low_s >= self.max_s {
                    s.push_str(" (the --max)");
                }
                s
            }
            Some(b) => b.describe(pattern.symbol()),
        }
    }

    /// A plain-text summary for humans: the brackets, what each pattern sent, the recommended
    /// PersistentKeepalive, and the notes.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let entries = if self.sockets_used == 1 {
            "NAT entry"
        } else {
            "NAT entries"
        };
        let _ = writeln!(
            out,
            "wgkeep probe → {}: {} s, {} {entries}, RTT {} ms",
            self.reflector,
            fmt_num(self.duration_s, 0),
            self.sockets_used,
            fmt_rtt(self.rtt_ms),
        );
        out.push('\n');

        let mut rows: Vec<[String; 3]> = Vec::new();
        for pattern in [Pattern::Handshake, Pattern::Stream, Pattern::Unreplied] {
            let what = match pattern {
                Pattern::Stream => {
                    format!("the same, plus 32 B at {} s", secs(self.stream_follow_up_s))
                }
                p => p.what().to_owned(),
            };
            rows.push([
                pattern.as_str().to_owned(),
                self.describe_timeout(pattern),
                what,
            ]);
        }
        let grace_what = match self.grace {
            Some(_) => "a follow-up later than G promotes the entry",
            None => Pattern::Grace.what(),
        };
        rows.push([
            "grace".to_owned(),
            self.describe_timeout(Pattern::Grace),
            grace_what.to_owned(),
        ]);
        let (refresh, refresh_what) = match self.inbound_refresh {
            Some(true) => (
                "yes",
                "packets from the far side alone keep the entry alive",
            ),
            Some(false) => (
                "no",
                "packets from the far side alone do not keep the entry alive",
            ),
            None => ("not measured", Pattern::Refresh.what()),
        };
        rows.push([
            "refresh".to_owned(),
            refresh.to_owned(),
            refresh_what.to_owned(),
        ]);

        let header = ["pattern", "timeout", "what was sent"];
        let w0 = rows
            .iter()
            .map(|r| r[0].chars().count())
            .chain([header[0].len()])
            .max()
            .unwrap_or(0)
            + 2;
        let w1 = rows
            .iter()
            .map(|r| r[1].chars().count())
            .chain([header[1].len()])
            .max()
            .unwrap_or(0)
            + 2;
        let header = header.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            let _ = writeln!(out, "  {}{}", pad(&row[0], w0), pad(&row[1], w1) + &row[2]);
        }

        let r = &self.recommendation;
        out.push_str("\nRecommendation (wg-quick):\n");
        if self.stream.is_some() {
            let _ = writeln!(
                out,
                "  PersistentKeepalive = {} with wgkeep agent (follow-up delay {} s)",
                r.persistent_keepalive_s,
                secs(r.follow_up_delay_s)
            );
        } else {
            let _ = writeln!(
                out,
                "  PersistentKeepalive = {} (the stream timeout was not measured)",
                r.persistent_keepalive_s
            );
        }
        match r.persistent_keepalive_without_agent_s {
            Some(pk) => {
                let _ = writeln!(out, "  PersistentKeepalive = {pk} without it");
            }
            None => out.push_str(
                "  without wgkeep: not measured (neither the handshake nor the unreplied timeout)\n",
            ),
        }
        if self.stream.is_some() {
            out.push_str(
                "  Save this with --json and run: \
                 wgkeep agent --interface wg0 --timeouts-from probe.json\n",
            );
        }

        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "note: {note}");
            }
        }
        out
    }
}

/// Where one search of a running probe stands.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchProgress {
    /// The pattern searched.
    pub pattern: Pattern,
    /// The bracket so far: `(low_s, high_s]`.
    pub low_s: f64,
    /// `None`: no upper bound yet.
    pub high_s: Option<f64>,
    /// Whether the search has finished.
    pub done: bool,
}

impl SearchProgress {
    fn describe(&self) -> String {
        if self.low_s <= 0.0 && self.high_s.is_none() && !self.done {
            return "searching".to_owned();
        }
        Bracket::new(self.low_s, self.high_s).describe(self.pattern.symbol())
    }
}

/// A snapshot of a running probe, for its progress display.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Time since the probe started.
    pub elapsed_s: f64,
    /// Sockets (NAT entries) used so far.
    pub sockets_used: u32,
    /// The searches started so far.
    pub searches: Vec<SearchProgress>,
    /// The refresh result, once known.
    pub inbound_refresh: Option<bool>,
    /// The planner's estimate of the whole probe's duration, when it has one.
    pub expected_total_s: Option<f64>,
}

impl Progress {
    /// One line on where the searches stand, unfinished ones first:
    /// `stream: 120 < T ≤ 138 s · handshake ✓ 9 < T ≤ 10 s`.
    pub fn phase(&self) -> String {
        let unfinished = self.searches.iter().filter(|s| !s.done);
        let finished = self.searches.iter().filter(|s| s.done);
        let mut parts: Vec<String> = unfinished
            .map(|s| format!("{}: {}", s.pattern, s.describe()))
            .chain(finished.map(|s| format!("{} ✓ {}", s.pattern, s.describe())))
            .collect();
        if let Some(refresh) = self.inbound_refresh {
            parts.push(format!("refresh ✓ {}", if refresh { "yes" } else { "no" }));
        }
        if parts.is_empty() {
            return "starting".to_owned();
        }
        parts.join(" · ")
    }
}

/// `s` padded with spaces to `width` characters.
fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = s.to_owned();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
    out
}

/// `v` with at most `decimals` decimals, trailing zeros (and a trailing point) removed.
pub fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    if s == "-0" {
        "0".to_owned()
    } else {
        s
    }
}

/// Seconds as the report writes them: up to millisecond precision, no trailing zeros
/// (`9`, `2.5`, `1.875`).
pub fn secs(v: f64) -> String {
    fmt_num(v, 3)
}

/// A round-trip time: one decimal, or two below 0.1 ms.
fn fmt_rtt(ms: f64) -> String {
    if ms > 0.0 && ms < 0.1 {
        fmt_num(ms, 2)
    } else {
        fmt_num(ms, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(low: f64, high: f64) -> Bracket {
        Bracket::new(low, Some(high))
    }

    fn routeros() -> Report {
        let handshake = b(9.0, 10.0);
        let stream = b(179.0, 180.0);
        let unreplied = b(9.0, 10.0);
        let grace = b(1.875, 2.125);
        Report {
            reflector: "198.51.100.2:51900".into(),
            duration_s: 228.4,
            sockets_used: 187,
            resolution_s: 1.0,
            max_s: 600.0,
            rtt_ms: 0.213,
            strategy: "parallel".into(),
            recommendation: Recommendation::from_brackets(
                Some(&handshake),
                Some(&stream),
                Some(&unreplied),
                Some(&grace),
            ),
            handshake: Some(handshake),
            stream: Some(stream),
            unreplied: Some(unreplied),
            grace: Some(grace),
            inbound_refresh: Some(true),
            stream_follow_up_s: 2.5,
            notes: vec!["the reflector answered every packet".into()],
            finished_s: Default::default(),
            observations: vec![
                Observation {
                    pattern: Pattern::Handshake,
                    idle_s: 9.0,
                    survived: true,
                    follow_up_s: None,
                },
                Observation {
                    pattern: Pattern::Handshake,
                    idle_s: 10.0,
                    survived: false,
                    follow_up_s: None,
                },
                Observation {
                    pattern: Pattern::Grace,
                    idle_s: 15.0,
                    survived: true,
                    follow_up_s: Some(2.125),
                },
            ],
        }
    }

    #[test]
    fn brackets() {
        let x = b(9.0, 10.0);
        assert_eq!(x.width(), Some(1.0));
        assert!(!x.contains(9.0));
        assert!(x.contains(9.5));
        assert!(x.contains(10.0));
        assert!(!x.contains(10.01));
        let open = Bracket::new(600.0, None);
        assert_eq!(open.width(), None);
        assert!(open.contains(1e9));
        assert!(!open.contains(600.0));
        assert_eq!(x.describe("T"), "9 < T ≤ 10 s");
        assert_eq!(open.describe("T"), "T > 600 s");
    }

    #[test]
    fn patterns() {
        assert_eq!(
            serde_json::to_string(&Pattern::Unreplied).unwrap(),
            "\"unreplied\""
        );
        for p in Pattern::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Pattern>(&json).unwrap(), p);
            assert!(!p.what().is_empty());
        }
    }

    #[test]
    fn json_round_trip() {
        let r = routeros();
        let json = r.to_json_pretty();
        assert_eq!(Report::from_json(&json).unwrap(), r);

        let mut open = routeros();
        open.stream = Some(Bracket::new(600.0, None));
        open.grace = None;
        open.recommendation = open.recommend();
        let json = open.to_json_pretty();
        assert!(json.contains("\"high_s\": null"), "{json}");
        assert!(json.contains("\"grace\": null"), "{json}");
        assert_eq!(Report::from_json(&json).unwrap(), open);
    }

    #[test]
    fn json_keys_and_order() {
        let json = routeros().to_json_pretty();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "reflector",
            "duration_s",
            "sockets_used",
            "handshake",
            "stream",
            "unreplied",
            "grace",
            "inbound_refresh",
            "recommendation",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["reflector"], "198.51.100.2:51900");
        assert_eq!(v["sockets_used"], 187);
        assert_eq!(v["handshake"]["low_s"], 9.0);
        assert_eq!(v["handshake"]["high_s"], 10.0);
        assert_eq!(v["stream"]["low_s"], 179.0);
        assert_eq!(v["inbound_refresh"], true);
        assert_eq!(v["recommendation"]["persistent_keepalive_s"], 143);
        assert_eq!(
            v["recommendation"]["persistent_keepalive_without_agent_s"],
            7
        );
        assert_eq!(v["recommendation"]["follow_up_delay_s"], 2.5);
        assert_eq!(v["observations"][0]["pattern"], "handshake");
        assert!(v["observations"][0].get("follow_up_s").is_none());
        assert_eq!(v["observations"][2]["follow_up_s"], 2.125);

        // Keys in the documented order.
        let order = [
            "\"reflector\"",
            "\"duration_s\"",
            "\"sockets_used\"",
            "\"resolution_s\"",
            "\"max_s\"",
            "\"rtt_ms\"",
            "\"strategy\"",
            "\"handshake\"",
            "\"stream\"",
            "\"unreplied\"",
            "\"grace\"",
            "\"inbound_refresh\"",
            "\"stream_follow_up_s\"",
            "\"recommendation\"",
            "\"notes\"",
            "\"observations\"",
        ];
        let at: Vec<usize> = order.iter().map(|k| json.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");

        // An observation without follow_up_s reads back.
        let o: Observation =
            serde_json::from_str(r#"{"pattern":"stream","idle_s":120,"survived":false}"#).unwrap();
        assert_eq!(o.follow_up_s, None);
    }

    #[test]
    fn recommendation_linux() {
        // Linux conntrack: 30 s unreplied, 120 s stream, 2 s grace.
        let r = Recommendation::from_brackets(
            Some(&b(30.0, 30.25)),
            Some(&b(120.0, 120.25)),
            Some(&b(30.0, 30.25)),
            Some(&b(1.875, 2.125)),
        );
        assert_eq!(
            r,
            Recommendation {
                persistent_keepalive_s: 96,
                persistent_keepalive_without_agent_s: Some(24),
                follow_up_delay_s: 2.5,
            }
        );
    }

    #[test]
    fn recommendation_routeros() {
        // RouterOS 7: 10 s udp-timeout, 180 s stream.
        let r = Recommendation::from_brackets(
            Some(&b(10.0, 10.25)),
            Some(&b(180.0, 180.25)),
            Some(&b(10.0, 10.25)),
            None,
        );
        assert_eq!(r.persistent_keepalive_s, 144);
        assert_eq!(r.persistent_keepalive_without_agent_s, Some(8));
        assert_eq!(r.follow_up_delay_s, DEFAULT_FOLLOW_UP_DELAY);

        // The low end is the safe end: (179, 180] gives floor(0.8 × 179).
        let r =
            Recommendation::from_brackets(Some(&b(9.0, 10.0)), Some(&b(179.0, 180.0)), None, None);
        assert_eq!(r.persistent_keepalive_s, 143);
        assert_eq!(r.persistent_keepalive_without_agent_s, Some(7));
    }

    #[test]
    fn recommendation_follow_up_delay() {
        let delay = |g: Bracket| {
            Recommendation::from_brackets(None, None, None, Some(&g)).follow_up_delay_s
        };
        assert_eq!(delay(b(0.875, 1.125)), 1.5);
        assert_eq!(delay(b(1.875, 2.125)), 2.5);
        assert_eq!(delay(b(2.0, 2.25)), 2.5);
        assert_eq!(delay(b(2.25, 2.5)), 3.0);
        assert_eq!(delay(b(0.5, 0.75)), 1.0);
        assert_eq!(delay(Bracket::new(5.0, None)), DEFAULT_FOLLOW_UP_DELAY);
    }

    #[test]
    fn recommendation_fallbacks_and_clamps() {
        // Stream missing: the shorter of handshake and unreplied.
        let r =
            Recommendation::from_brackets(Some(&b(40.0, 41.0)), None, Some(&b(30.0, 31.0)), None);
        assert_eq!(r.persistent_keepalive_s, 24);
        assert_eq!(r.persistent_keepalive_without_agent_s, Some(24));
        // Only unreplied.
        let r =
            Recommendation::from_brackets(None, Some(&b(120.0, 121.0)), Some(&b(60.0, 61.0)), None);
        assert_eq!(r.persistent_keepalive_s, 96);
        assert_eq!(r.persistent_keepalive_without_agent_s, Some(48));
        // Nothing measured.
        let r = Recommendation::from_brackets(None, None, None, None);
        assert_eq!(r.persistent_keepalive_s, FALLBACK_KEEPALIVE);
        assert_eq!(r.persistent_keepalive_without_agent_s, None);
        assert_eq!(r.follow_up_delay_s, DEFAULT_FOLLOW_UP_DELAY);
        // Clamped to WireGuard's 1..=65535.
        let r = Recommendation::from_brackets(
            Some(&b(0.5, 1.0)),
            Some(&Bracket::new(1e6, None)),
            None,
            None,
        );
        assert_eq!(r.persistent_keepalive_s, 65535);
        assert_eq!(r.persistent_keepalive_without_agent_s, Some(1));
    }

    #[test]
    fn table() {
        let t = routeros().render_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "wgkeep probe → 198.51.100.2:51900: 228 s, 187 NAT entries, RTT 0.2 ms"
        );
        for want in [
            "  pattern    timeout              what was sent",
            "  handshake  9 < T ≤ 10 s         148 B out, 92 B back, 32 B out, then silence",
            "  stream     179 < T ≤ 180 s      the same, plus 32 B at 2.5 s",
            "  unreplied  9 < T ≤ 10 s         one 148 B packet, no answer",
            "  grace      1.875 < G ≤ 2.125 s  a follow-up later than G promotes the entry",
            "  refresh    yes                  packets from the far side alone keep the entry alive",
            "Recommendation (wg-quick):",
            "  PersistentKeepalive = 143 with wgkeep agent (follow-up delay 2.5 s)",
            "  PersistentKeepalive = 7 without it",
            "  Save this with --json and run: wgkeep agent --interface wg0 --timeouts-from probe.json",
            "note: the reflector answered every packet",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{t}");
        }
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{t}");
    }

    #[test]
    fn table_unmeasured_and_open() {
        let mut r = routeros();
        r.handshake = None;
        r.unreplied = None;
        r.grace = None;
        r.inbound_refresh = None;
        r.stream = Some(Bracket::new(600.0, None));
        r.notes.clear();
        r.sockets_used = 1;
        r.recommendation = r.recommend();
        let t = r.render_table();
        assert!(t.contains(", 1 NAT entry,"), "{t}");
        assert!(t.contains("  handshake  not measured "), "{t}");
        assert!(
            t.contains("  stream     T > 600 s (the --max)  the same"),
            "{t}"
        );
        assert!(t.contains("  refresh    not measured "), "{t}");
        assert!(
            t.contains("PersistentKeepalive = 480 with wgkeep agent"),
            "{t}"
        );
        assert!(t.contains("without wgkeep: not measured"), "{t}");
        assert!(!t.contains("note:"), "{t}");

        r.stream = None;
        r.recommendation = r.recommend();
        let t = r.render_table();
        assert!(t.contains("  stream     not measured "), "{t}");
        assert!(t.contains("the stream timeout was not measured"), "{t}");
        assert!(!t.contains("--timeouts-from"), "{t}");
    }

    #[test]
    fn numbers() {
        assert_eq!(secs(9.0), "9");
        assert_eq!(secs(2.5), "2.5");
        assert_eq!(secs(1.875), "1.875");
        assert_eq!(secs(120.0004), "120");
        assert_eq!(secs(-0.0001), "0");
        assert_eq!(fmt_num(228.4, 0), "228");
        assert_eq!(fmt_rtt(0.213), "0.2");
        assert_eq!(fmt_rtt(0.04), "0.04");
        assert_eq!(fmt_rtt(23.0), "23");
    }

    #[test]
    fn progress_phase() {
        let p = Progress {
            elapsed_s: 130.0,
            sockets_used: 40,
            searches: vec![
                SearchProgress {
                    pattern: Pattern::Handshake,
                    low_s: 9.0,
                    high_s: Some(10.0),
                    done: true,
                },
                SearchProgress {
                    pattern: Pattern::Stream,
                    low_s: 120.0,
                    high_s: Some(138.0),
                    done: false,
                },
                SearchProgress {
                    pattern: Pattern::Grace,
                    low_s: 0.0,
                    high_s: None,
                    done: false,
                },
            ],
            inbound_refresh: Some(true),
            expected_total_s: None,
        };
        assert_eq!(
            p.phase(),
            "stream: 120 < T ≤ 138 s · grace: searching · handshake ✓ 9 < T ≤ 10 s · refresh ✓ yes"
        );
        let empty = Progress {
            elapsed_s: 0.0,
            sockets_used: 0,
            searches: vec![],
            inbound_refresh: None,
            expected_total_s: None,
        };
        assert_eq!(empty.phase(), "starting");
    }
}
