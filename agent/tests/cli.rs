//! The `wgkeep` binary as a user runs it: output, JSON, exit codes.

use std::process::{Command, Output};

fn wgkeep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgkeep"))
        .args(args)
        .output()
        .expect("run wgkeep")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn lab_default_prints_the_seed_failure_and_the_fix() {
    let o = wgkeep(&["lab"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("routeros"), "{out}");
    assert!(
        out.contains("without wgkeep: the server can reach the client 6.7% of the time"),
        "{out}"
    );
    assert!(
        out.contains("with wgkeep on the client: the server can reach the client all the time"),
        "{out}"
    );
}

#[test]
fn lab_json_is_machine_readable() {
    let o = wgkeep(&[
        "lab",
        "--json",
        "--profile",
        "linux",
        "--duration",
        "10m",
        "--inbound-every",
        "30s",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["profile"], "linux");
    assert_eq!(v["runs"][0]["keeper"], "off");
    assert_eq!(v["runs"][1]["keeper"], "on");
    assert_eq!(v["runs"][1]["reachability"], 1.0);
    assert!(v["runs"][1]["inbound_sent"].as_u64().unwrap() > 0);
}

#[test]
fn lab_timeline_lists_packets() {
    let o = wgkeep(&[
        "lab",
        "--timeline",
        "--duration",
        "3m",
        "--keeper",
        "on",
        "--side",
        "server",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("148 B  → server handshake initiation"),
        "{out}"
    );
    assert!(out.contains("keeper: follow-up (handshake)"), "{out}");
}

#[test]
fn usage_errors_exit_2_with_a_clear_message() {
    for (args, needle) in [
        (
            &["lab", "--profile", "mikrotik"][..],
            "unknown NAT profile `mikrotik`",
        ),
        (&["lab", "--keepalive", "1.5s"][..], "whole seconds"),
        (&["lab", "--duration", "soon"][..], "is not a duration"),
        (
            &["lab", "--duration", "0s"][..],
            "--duration must be between",
        ),
        (
            &["lab", "--profile", "pf", "--udp-timeout", "5s"][..],
            "pf profile has no such timeouts",
        ),
        (&["lab", "--profile", "custom"][..], "custom profile needs"),
        (&["lab", "--keeper", "maybe"][..], "invalid value 'maybe'"),
        (&["frobnicate"][..], "unrecognized subcommand"),
    ] {
        let o = wgkeep(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn help_and_version() {
    let o = wgkeep(&["lab", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("Examples:"));
    let o = wgkeep(&["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("wgkeep "));
}
