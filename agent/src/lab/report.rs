//! How the lab's results are shown: a short table, JSON, and a timeline.

use std::fmt::Write as _;

use serde::Serializer;
use serde_json::json;

use super::{LabReport, RunReport};
use crate::keeper::keepalive_advice;

pub(super) fn keeper_label<S: Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *on { "on" } else { "off" })
}

fn pk(v: Option<u16>) -> String {
    v.map_or_else(|| "off".to_owned(), |s| format!("{s} s"))
}

/// The table, one row per run, and one line that says what it means.
pub fn render_human(report: &LabReport) -> String {
    let c = &report.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NAT {}\nclient PersistentKeepalive {}, {} of virtual time, RTT {} ms{}{}\n",
        c.profile,
        pk(c.keepalive),
        humantime::format_duration(c.duration),
        c.rtt.as_millis(),
        c.inbound_every
            .map(|d| format!(
                ", server sends data every {}",
                humantime::format_duration(d)
            ))
            .unwrap_or_default(),
        c.random_traffic
            .map(|seed| format!(", random traffic (seed {seed})"))
            .unwrap_or_default()
    );
    let inbound = c.inbound_every.is_some() || c.random_traffic.is_some();
    let _ = write!(
        out,
        "{:<7} {:<7} {:>9} {:>13}",
        "keeper", "side", "client PK", "reachability"
    );
    if inbound {
        let _ = write!(out, " {:>17}", "inbound delivered");
    }
    let _ = writeln!(out, " {:>10} {:>12}", "packets/h", "NAT entries");
    for r in &report.runs {
        let _ = write!(
            out,
            "{:<7} {:<7} {:>9} {:>12.1}%",
            if r.keeper { "on" } else { "off" },
            r.side.map_or("-", |s| s.as_str()),
            pk(r.client_keepalive),
            r.reachability * 100.0
        );
        if inbound {
            let _ = write!(
                out,
                " {:>17}",
                format!("{}/{}", r.inbound_delivered, r.inbound_sent)
            );
        }
        let _ = writeln!(
            out,
            " {:>10.0} {:>12}",
            r.packets_per_hour, r.nat_entries_created
        );
    }
    let _ = writeln!(out);
    for r in &report.runs {
        let _ = writeln!(out, "{}", verdict(r));
        if let Some(hint) = hint(report, r) {
            let _ = writeln!(out, "  hint: {hint}");
        }
    }
    out
}

/// What the user can do when the keeper alone could not reach 100%.
fn hint(report: &LabReport, r: &RunReport) -> Option<String> {
    if !r.keeper || r.reachability >= 0.9995 {
        return None;
    }
    let rules = &report.config.profile.rules;
    let advice = keepalive_advice(rules, r.client_keepalive);
    if advice.configured_is_safe {
        return None;
    }
    Some(format!(
        "the client's PersistentKeepalive of {} s outlives the NAT's {} s timeout; set it to {} s or less on \
         the client, or run wgkeep there (--side client)",
        r.client_keepalive.unwrap_or_default(),
        rules.sustained_timeout().as_secs(),
        advice.recommended
    ))
}

fn verdict(r: &RunReport) -> String {
    let pct = r.reachability * 100.0;
    let who = match r.side {
        None => "without wgkeep".to_owned(),
        Some(side) => format!("with wgkeep on the {}", side.as_str()),
    };
    let how = if pct >= 99.95 {
        "the server can reach the client all the time".to_owned()
    } else {
        format!(
            "the server can reach the client {pct:.1}% of the time; the NAT dropped {} of its datagrams and \
             created {} entries",
            r.nat_dropped_inbound, r.nat_entries_created
        )
    };
    let keeper = if r.keeper {
        format!(
            " ({} follow-ups, {} not needed)",
            r.keeper_stats.follow_ups,
            r.keeper_stats.skipped_traffic + r.keeper_stats.skipped_expired
        )
    } else {
        String::new()
    };
    format!("{who}: {how}{keeper}.")
}

/// The JSON document (`--json`).
pub fn render_json(report: &LabReport) -> String {
    let c = &report.config;
    let doc = json!({
        "profile": c.profile.name.as_str(),
        "nat": c.profile.rules,
        "keepalive_s": c.keepalive,
        "duration_s": c.duration.as_secs_f64(),
        "rtt_ms": c.rtt.as_secs_f64() * 1000.0,
        "inbound_every_s": c.inbound_every.map(|d| d.as_secs_f64()),
        "random_traffic_seed": c.random_traffic,
        "runs": report.runs,
    });
    serde_json::to_string_pretty(&doc).expect("lab report serializes")
}

/// Every packet and NAT event of each run, in virtual seconds.
pub fn render_timeline(report: &LabReport) -> String {
    let mut out = String::new();
    for r in &report.runs {
        let _ = writeln!(
            out,
            "--- keeper {}{} ---",
            if r.keeper { "on" } else { "off" },
            r.side
                .map(|s| format!(" ({} side)", s.as_str()))
                .unwrap_or_default()
        );
        for e in &r.timeline {
            let bytes = e.bytes.map(|b| format!("{b:>4} B")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:>10.3}  {:<6} {:>6}  {}",
                e.t, e.source, bytes, e.event
            );
        }
        let _ = writeln!(out);
    }
    out
}
