//! deploy/prometheus and deploy/grafana: the alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`), the scrape example passes `promtool check config`, the
//! dashboard is well-formed and its queries parse, and every `wgkeep_*` name in the rules, their
//! tests and the dashboard is a metric the agent or the reflector really exposes.
//!
//! promtool comes with Debian's `prometheus` package. Without it the promtool tests print a loud
//! SKIPPED notice, and fail under CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use wgkeep_agent::metrics::Metrics;
use wgkeep_probe::middlebox::Profile;
use wgkeep_probe::reflector::ReflectorStats;
use wgkeep_tests::deploy::{http_get, read, repo, tool, TempDir, Wgkeep};

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: not JSON: {e}"))
}

const RULES: &str = "deploy/prometheus/wgkeep-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/wgkeep-rules.test.yml";
const SCRAPE: &str = "deploy/prometheus/scrape.yml";
const DASHBOARD: &str = "deploy/grafana/wgkeep-dashboard.json";

fn promtool(test: &str) -> Option<PathBuf> {
    tool("promtool", "apt-get install prometheus", test)
}

/// Run `promtool ARGS` in `dir`; panic with its output unless it succeeds.
fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn rules_pass_promtool_check_rules() {
    let Some(promtool) = promtool("rules_pass_promtool_check_rules") else {
        return;
    };
    let out = run_promtool(
        &promtool,
        &repo().join("deploy/prometheus"),
        &["check", "rules", "wgkeep-rules.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn scrape_example_passes_promtool_check_config() {
    // Its own jobs are the ones the rules select.
    let config = yaml(SCRAPE);
    let jobs: BTreeSet<&str> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|c| c["job_name"].as_str().expect("job_name"))
        .collect();
    assert_eq!(jobs, BTreeSet::from(["wgkeep", "wgkeep-reflect"]));
    let rules = read(RULES);
    for job in quoted_after(&rules, "job=\"") {
        assert!(
            jobs.contains(job.as_str()),
            "{RULES} selects job=\"{job}\", which {SCRAPE} does not scrape"
        );
    }
    let rule_files: Vec<&str> = config["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(rule_files, ["wgkeep-rules.yml"]);

    let Some(promtool) = promtool("scrape_example_passes_promtool_check_config") else {
        return;
    };
    let out = run_promtool(
        &promtool,
        &repo().join("deploy/prometheus"),
        &["check", "config", "scrape.yml"],
    );
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
}

#[test]
fn rule_unit_tests_pass_and_cover_every_alert() {
    // Every alert has a case where it fires; at least two have one where they do not.
    let alerts: BTreeSet<String> = alert_names();
    let tests = yaml(RULE_TESTS);
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for t in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = t["alertname"].as_str().expect("alertname").to_owned();
            assert!(
                alerts.contains(&name),
                "{RULE_TESTS} tests `{name}`, which {RULES} does not define"
            );
            match t["exp_alerts"].as_sequence() {
                Some(a) if !a.is_empty() => firing.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    let untested: Vec<_> = alerts.difference(&firing).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing case in {RULE_TESTS}: {untested:?}"
    );
    assert!(silent.len() >= 2, "not-firing cases only for {silent:?}");

    let Some(promtool) = promtool("rule_unit_tests_pass_and_cover_every_alert") else {
        return;
    };
    let out = run_promtool(
        &promtool,
        &repo().join("deploy/prometheus"),
        &["test", "rules", "wgkeep-rules.test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

fn alert_names() -> BTreeSet<String> {
    let rules = yaml(RULES);
    let names: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    for expected in [
        "WgkeepAgentDown",
        "WgkeepHandshakeStale",
        "WgkeepFollowUpsFailing",
        "WgkeepEndpointChurn",
        "WgkeepInterfaceDown",
    ] {
        assert!(names.contains(expected), "{RULES} lacks {expected}");
    }
    names
}

/// The string after each `prefix` up to the next `"`.
fn quoted_after(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

// ---- the dashboard ----------------------------------------------------------------------------

/// Every panel, rows' nested panels included.
fn panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every target's `expr`, with the panel's title.
fn dashboard_queries(dash: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["definition"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

#[test]
fn dashboard_is_well_formed() {
    let dash = dashboard();
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 36, "schemaVersion {schema}: Grafana 9 or later");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));

    // The template variables: a Prometheus data source, and $interface (with $instance above it).
    let vars: BTreeMap<&str, &Json> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for name in ["instance", "interface"] {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("no ${name} variable"));
        assert_eq!(v["type"], "query", "${name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "${name}");
        assert!(
            v["definition"]
                .as_str()
                .is_some_and(|d| d.starts_with("label_values(")),
            "${name}"
        );
    }

    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in panels(&dash) {
        let title = p["title"]
            .as_str()
            .expect("every panel has a title")
            .to_owned();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        let g = &p["gridPos"];
        let pos = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(pos[0] + pos[2] <= 24, "{title}: wider than the grid");
        for (other, o) in &boxes {
            let overlap = pos[0] < o[0] + o[2]
                && o[0] < pos[0] + pos[2]
                && pos[1] < o[1] + o[3]
                && o[1] < pos[1] + pos[3];
            assert!(!overlap, "panels `{title}` and `{other}` overlap");
        }
        boxes.push((title.clone(), pos));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: the panel's datasource must be $datasource"
        );
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("{title}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr"
            );
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: duplicate refId"
            );
            if !t["datasource"].is_null() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            }
        }
    }
    assert!(ids.len() >= 10, "only {} panels", ids.len());

    // Every selector of a per-interface metric honours $interface (and $instance).
    let per_interface = agent_families()
        .into_iter()
        .filter(|f| f != "wgkeep_nat_timeout_seconds" && f != "wgkeep_build_info")
        .collect::<Vec<_>>();
    for (title, expr) in dashboard_queries(&dash) {
        if title.starts_with("variable") {
            continue;
        }
        for (i, _) in expr.match_indices("wgkeep_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let after = &expr[i + name.len()..];
            let selector = after
                .strip_prefix('{')
                .and_then(|s| s.split_once('}'))
                .map(|(s, _)| s)
                .unwrap_or("");
            assert!(
                selector.contains("instance=~\"$instance\""),
                "{title}: `{name}` without instance=~\"$instance\" in `{expr}`"
            );
            if per_interface.contains(&name) {
                assert!(
                    selector.contains("interface=~\"$interface\""),
                    "{title}: `{name}` without interface=~\"$interface\" in `{expr}`"
                );
            }
        }
    }
}

/// Each dashboard query, with Grafana's variables filled in, as a recording rule: promtool
/// parses them all.
#[test]
fn dashboard_queries_parse() {
    let dash = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries(&dash).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "6h")
            .replace("$instance", ".*")
            .replace("$interface", ".*");
        let expr = if expr.starts_with("label_values(") {
            // A Grafana function, not PromQL: check its selector.
            let inner = &expr["label_values(".len()..expr.rfind(',').expect("label_values(M, L)")];
            inner.to_owned()
        } else {
            expr
        };
        assert!(!expr.contains('$'), "{title}: unknown variable in `{expr}`");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("a JSON string is a YAML string")
        ));
    }
    let Some(promtool) = promtool("dashboard_queries_parse") else {
        return;
    };
    let dir = TempDir::new("dashboard-queries");
    std::fs::write(dir.path().join("queries.yml"), &rules).expect("write queries.yml");
    let out = run_promtool(&promtool, dir.path(), &["check", "rules", "queries.yml"]);
    assert!(out.contains("SUCCESS"), "{out}\n{rules}");
}

// ---- metric names against the real exposition ---------------------------------------------------

/// `# TYPE` lines: family name → type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// The agent's exposition with one peer that has seen everything.
fn agent_exposition() -> String {
    let m = Metrics::new();
    m.set_nat(&Profile::routeros().rules);
    m.interface_up.with_label_values(&["wg0"]).set(1);
    let p = m.peer("wg0", "fakeKeyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    p.handshakes.fetch_add(3, Ordering::Relaxed);
    p.follow_up("keepalive-toggle");
    p.skip("traffic");
    p.failures.fetch_add(1, Ordering::Relaxed);
    p.endpoint_changes.fetch_add(1, Ordering::Relaxed);
    p.keepalive.store(25, Ordering::Relaxed);
    p.last_handshake.store(1_800_000_000, Ordering::Relaxed);
    m.render()
}

fn agent_families() -> Vec<String> {
    families(&agent_exposition()).into_keys().collect()
}

/// `wgkeep_*` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    text.match_indices("wgkeep_")
        .filter(|(i, _)| *i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Whether `name` is a series of one of `families`.
fn exposed(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|base| {
            matches!(
                families.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        })
    })
}

#[test]
fn every_metric_name_used_is_exposed() {
    let agent = agent_exposition();
    let reflector = wgkeep_agent::probe_cmd::render_reflector_metrics(&ReflectorStats::default());
    let mut all = families(&agent);
    all.extend(families(&reflector));
    assert!(all.len() >= 15, "too few families: {all:?}");

    // The in-process rendering is what the binary serves: same families.
    let served = families(&served_agent_metrics());
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        families(&agent).keys().collect::<Vec<_>>(),
        "the agent binary's /metrics and wgkeep_agent::metrics::Metrics disagree"
    );

    let mut missing = Vec::new();
    for file in [
        RULES,
        RULE_TESTS,
        DASHBOARD,
        "deploy/kubernetes/prometheus-rule.yaml",
    ] {
        let names = metric_names(&read(file));
        assert!(!names.is_empty(), "{file} uses no wgkeep metric");
        for name in names {
            if !exposed(&name, &all) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names that neither the agent nor the reflector exposes:\n  {}\nexposed: {:?}",
        missing.join("\n  "),
        all.keys().collect::<Vec<_>>()
    );

    // Samples really exist for every family with a peer (per-peer families render nothing without
    // one): the rules' label matchers have something to match.
    let samples = wgkeep_tests::parse_prometheus_text(&agent);
    for family in families(&agent).keys() {
        let s = samples
            .iter()
            .find(|s| &s.name == family)
            .unwrap_or_else(|| panic!("no sample of {family}"));
        if family.starts_with("wgkeep_peer_") || family.contains("follow_up") {
            assert!(s.labels.contains_key("interface") && s.labels.contains_key("public_key"));
        }
    }
}

#[test]
fn dashboard_covers_every_agent_metric() {
    let used = metric_names(&read(DASHBOARD));
    let missing: Vec<String> = agent_families()
        .into_iter()
        .filter(|f| !used.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} has no panel for {missing:?}: add one (a new metric belongs on the dashboard)"
    );
}

/// Start `wgkeep agent --mode observe` on an interface that does not exist (it waits for it and
/// serves its metrics meanwhile) and GET /metrics.
fn served_agent_metrics() -> String {
    let dir = TempDir::new("agent-metrics");
    let mut agent = Wgkeep::spawn([
        "agent",
        "--interface",
        &format!("wkdummy{}", std::process::id() % 10_000),
        "--mode",
        "observe",
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        dir.path().to_str().expect("UTF-8 temp dir"),
    ]);
    let addr = agent.wait_serving("wgkeep agent --mode observe");
    let body = http_get(&addr, "/metrics");
    assert!(http_get(&addr, "/healthz").starts_with("ok"));
    drop(agent);
    body
}
