//! Reading NAT timeouts from `wgkeep probe --json` output (`--timeouts-from`).
//!
//! The probe reports each timeout as a bracket `(low_s, high_s]` that contains the true value
//! (`high_s` is null above the probe's `--max`). The agent takes the safe end of each: the low
//! end for the timeouts (a PersistentKeepalive derived from it is never too long; an entry believed
//! gone may still exist, which only costs one packet), the high end for the grace period (a
//! follow-up later than it surely promotes).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use wgkeep_probe::middlebox::Profile;

#[derive(Debug, Deserialize)]
struct Bracket {
    low_s: f64,
    high_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct ProbeReport {
    handshake: Option<Bracket>,
    unreplied: Option<Bracket>,
    stream: Option<Bracket>,
    grace: Option<Bracket>,
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{what} is {v}, not a usable number of seconds"))
    }
}

/// Conntrack rules from a probe report.
pub fn profile_from_str(json: &str) -> Result<Profile, String> {
    let r: ProbeReport = serde_json::from_str(json)
        .map_err(|e| format!("not a `wgkeep probe --json` report: {e}"))?;
    let short = r
        .handshake
        .as_ref()
        .or(r.unreplied.as_ref())
        .ok_or("the report has neither `handshake` nor `unreplied`")?;
    let unreplied = secs(short.low_s, "the unreplied/handshake timeout")?;
    let stream = r.stream.as_ref().ok_or(
        "the report has no stream timeout: probe again with `stream` in --measure (the default)",
    )?;
    let stream = secs(stream.low_s, "stream.low_s")?;
    let grace = match &r.grace {
        Some(g) => secs(g.high_s.unwrap_or(g.low_s), "grace.high_s")?,
        None => wgkeep_probe::middlebox::LINUX_STREAM_GRACE,
    };
    Ok(Profile::conntrack(unreplied, stream, grace))
}

/// Conntrack rules from a probe report file.
pub fn profile_from_file(path: &Path) -> Result<Profile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--timeouts-from {}: {e}", path.display()))?;
    profile_from_str(&text).map_err(|e| format!("--timeouts-from {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgkeep_probe::report::{Bracket as B, Recommendation, Report};

    fn report(stream: Option<B>) -> Report {
        let handshake = Some(B::new(9.4, Some(10.4)));
        let grace = Some(B::new(1.875, Some(2.125)));
        Report {
            reflector: "r:1".into(),
            duration_s: 230.0,
            sockets_used: 190,
            resolution_s: 1.0,
            max_s: 600.0,
            rtt_ms: 0.2,
            strategy: "parallel".into(),
            handshake,
            stream,
            unreplied: handshake,
            grace,
            inbound_refresh: Some(true),
            stream_follow_up_s: 2.5,
            recommendation: Recommendation::from_brackets(
                handshake.as_ref(),
                stream.as_ref(),
                handshake.as_ref(),
                grace.as_ref(),
            ),
            notes: vec![],
            observations: vec![],
            finished_s: Default::default(),
        }
    }

    #[test]
    fn reads_what_the_probe_writes() {
        let p =
            profile_from_str(&report(Some(B::new(179.6, Some(180.6)))).to_json_pretty()).unwrap();
        let t = p.rules.conntrack().unwrap();
        assert_eq!(t.unreplied, Duration::from_secs_f64(9.4));
        assert_eq!(t.stream, Duration::from_secs_f64(179.6));
        assert_eq!(t.grace, Duration::from_secs_f64(2.125));
        // Above --max: the low end is still a safe timeout.
        let p = profile_from_str(&report(Some(B::new(600.0, None))).to_json_pretty()).unwrap();
        assert_eq!(
            p.rules.conntrack().unwrap().stream,
            Duration::from_secs(600)
        );
        let e = profile_from_str(&report(None).to_json_pretty()).unwrap_err();
        assert!(e.contains("--measure"), "{e}");
    }

    #[test]
    fn takes_the_safe_end_of_each_bracket() {
        let p = profile_from_str(
            r#"{"reflector":"r:1","duration_s":230,"sockets_used":90,
                "handshake":{"low_s":9.0,"high_s":10.0},"stream":{"low_s":179.0,"high_s":180.0},
                "unreplied":{"low_s":9.0,"high_s":10.0},"grace":{"low_s":2.0,"high_s":2.25},
                "inbound_refresh":true,"recommendation":{"persistent_keepalive_s":143,"follow_up_delay_s":2.75}}"#,
        )
        .unwrap();
        let t = p.rules.conntrack().unwrap();
        assert_eq!(t.unreplied, Duration::from_secs(9));
        assert_eq!(t.stream, Duration::from_secs(179));
        assert_eq!(t.grace, Duration::from_millis(2250));
    }

    #[test]
    fn clear_errors() {
        assert!(profile_from_str("{")
            .unwrap_err()
            .contains("not a `wgkeep probe --json` report"));
        assert!(
            profile_from_str(r#"{"stream":{"low_s":100,"high_s":null}}"#)
                .unwrap_err()
                .contains("neither")
        );
        assert!(profile_from_str(
            r#"{"handshake":{"low_s":-1,"high_s":1},"stream":{"low_s":100,"high_s":null}}"#
        )
        .unwrap_err()
        .contains("not a usable"));
    }
}
