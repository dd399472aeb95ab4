//! The systemd units in deploy/systemd/: `systemd-analyze verify` finds nothing to say about
//! them, `systemd-analyze security` rates them low, their capabilities are the ones the
//! end-to-end tests give the agent, and the example environment files name real flags.
//!
//! Needs `systemd-analyze` (Debian: systemd) and `man` (man-db, for the Documentation= check);
//! without them the tests are skipped with a loud message, or fail under CI=true.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgkeep_tests::deploy::{read, repo, run, run_ok, skip, TempDir};
use wgkeep_tests::wgkeep_bin;

/// Highest `systemd-analyze security` exposure accepted (0 = locked down, 10 = unprotected).
/// The agent is root with CAP_NET_ADMIN and CAP_NET_RAW in the host's network namespace; the
/// reflector a dynamic user without capabilities. Measured with systemd 252 (Debian 12): see
/// the README.
const MAX_EXPOSURE_AGENT: f64 = 2.5;
const MAX_EXPOSURE_REFLECT: f64 = 1.5;

const UNITS: [&str; 2] = ["wgkeep@.service", "wgkeep-reflect.service"];

fn systemd_dir() -> PathBuf {
    repo().join("deploy/systemd")
}

/// Whether `tool` can run. Otherwise a loud skip notice, or a panic under CI=true.
fn require_tool(test: &str, tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    skip(test, &format!("`{tool}` (Debian package {package})"));
    false
}

/// `KEY=value` assignments of `section` in a unit file, in order (comments and continuation
/// lines are not used in these units).
fn unit_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].to_owned();
        } else if current == section && !line.starts_with('#') && !line.starts_with(';') {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    out.push(v.trim().to_owned());
                }
            }
        }
    }
    out
}

fn one_value(text: &str, section: &str, key: &str) -> String {
    let v = unit_values(text, section, key);
    assert_eq!(v.len(), 1, "[{section}] {key}= should appear once: {v:?}");
    v.into_iter().next().unwrap()
}

/// A capability list of a unit (`CAP_NET_ADMIN CAP_NET_RAW`) as setpriv names (`net_admin`).
fn capability_set(value: &str) -> BTreeSet<String> {
    value
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("`{c}`: not CAP_…"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// The capability sets tests/tests/agent_e2e.rs runs the agent with: the `Some("…")` argument of
/// every `agent_with_caps(…)` call.
fn e2e_capability_sets() -> Vec<BTreeSet<String>> {
    let src = read("tests/tests/agent_e2e.rs");
    let mut sets = Vec::new();
    for (at, _) in src.match_indices("agent_with_caps(") {
        if src[..at].ends_with("fn ") {
            continue; // the definition
        }
        // The call's arguments: up to the matching parenthesis.
        let args_at = at + "agent_with_caps(".len();
        let mut depth = 1;
        let end = src[args_at..]
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| args_at + i)
            .expect("agent_with_caps( is closed");
        let call = &src[args_at..end];
        if let Some(start) = call.find("Some(\"") {
            let rest = &call[start + 6..];
            let caps = &rest[..rest.find('"').unwrap()];
            sets.push(caps.split(',').map(|c| c.trim().to_owned()).collect());
        }
    }
    sets
}

#[test]
fn agent_capabilities_are_those_of_the_e2e_tests() {
    let unit = read(systemd_dir().join("wgkeep@.service"));
    let bounding = capability_set(&one_value(&unit, "Service", "CapabilityBoundingSet"));
    let ambient = capability_set(&one_value(&unit, "Service", "AmbientCapabilities"));
    assert_eq!(bounding, ambient, "bounding and ambient sets differ");

    let sets = e2e_capability_sets();
    assert!(
        !sets.is_empty(),
        "found no `agent_with_caps(…, Some(\"caps\"), …)` call in tests/tests/agent_e2e.rs: \
         this test reads the capability sets from there"
    );
    let union: BTreeSet<String> = sets.iter().flatten().cloned().collect();
    eprintln!("unit: {bounding:?}; e2e tests: {sets:?}");
    assert_eq!(
        bounding, union,
        "wgkeep@.service grants {bounding:?}, but the end-to-end tests prove the agent works with \
         (and needs) {union:?}: change both together"
    );
    // The smallest set the e2e tests use is CAP_NET_ADMIN alone (the default method).
    assert!(
        sets.iter().any(|s| s.len() == 1 && s.contains("net_admin")),
        "{sets:?}"
    );
    // Root with a cut-down bounding set, as under setpriv in the e2e tests: no User=.
    assert!(unit_values(&unit, "Service", "User").is_empty());
    assert!(unit_values(&unit, "Service", "DynamicUser").is_empty());

    let reflect = read(systemd_dir().join("wgkeep-reflect.service"));
    assert_eq!(one_value(&reflect, "Service", "CapabilityBoundingSet"), "");
    assert_eq!(one_value(&reflect, "Service", "AmbientCapabilities"), "");
    assert_eq!(one_value(&reflect, "Service", "DynamicUser"), "yes");
}

#[test]
fn agent_unit_follows_wg_quick_and_keeps_state_in_its_runtime_directory() {
    let unit = read(systemd_dir().join("wgkeep@.service"));
    for key in ["BindsTo", "After", "PartOf"] {
        assert_eq!(
            one_value(&unit, "Unit", key),
            "wg-quick@%i.service",
            "{key}"
        );
    }
    assert_eq!(
        one_value(&unit, "Install", "WantedBy"),
        "wg-quick@%i.service"
    );
    assert_eq!(
        unit_values(&unit, "Service", "EnvironmentFile"),
        ["-/etc/default/wgkeep", "-/etc/default/wgkeep-%i"]
    );
    let exec = one_value(&unit, "Service", "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        &words[..3],
        ["/usr/bin/wgkeep", "agent", "--interface"],
        "{exec}"
    );
    assert_eq!(words[3], "%i");
    assert_eq!(words.last(), Some(&"$WGKEEP_ARGS"));
    let state_dir = words[words.iter().position(|w| *w == "--state-dir").unwrap() + 1];
    // The state directory is the unit's own runtime directory (systemd creates it under /run,
    // the sandbox leaves it writable, and it is per instance).
    let runtime = one_value(&unit, "Service", "RuntimeDirectory");
    assert_eq!(format!("/run/{runtime}"), state_dir);
    assert!(
        runtime.ends_with("/%i"),
        "{runtime}: one directory per instance"
    );
    assert_eq!(
        one_value(&unit, "Service", "RuntimeDirectoryPreserve"),
        "restart"
    );

    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictNamespaces", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(one_value(&unit, "Service", key), want, "{key}");
    }
    assert_eq!(
        unit_values(&unit, "Service", "SystemCallFilter")[0],
        "@system-service"
    );

    let reflect = read(systemd_dir().join("wgkeep-reflect.service"));
    let exec = one_value(&reflect, "Service", "ExecStart");
    assert_eq!(
        exec,
        "/usr/bin/wgkeep reflect --listen ${WGKEEP_REFLECT_LISTEN} $WGKEEP_REFLECT_ARGS"
    );
    assert_eq!(
        one_value(&reflect, "Service", "EnvironmentFile"),
        "-/etc/default/wgkeep-reflect"
    );
}

/// Every `--flag` in an example environment file is one the subcommand has.
#[test]
fn example_environment_files_name_real_flags() {
    let bin = wgkeep_bin();
    for (file, sub, vars) in [
        ("wgkeep.default", "agent", &["WGKEEP_ARGS"][..]),
        (
            "wgkeep-reflect.default",
            "reflect",
            &["WGKEEP_REFLECT_LISTEN", "WGKEEP_REFLECT_ARGS"][..],
        ),
    ] {
        let text = read(systemd_dir().join(file));
        let help = run_ok(Command::new(&bin).args([sub, "--help"]));
        let mut flags = 0;
        for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == '=' || c == '`') {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = flag.trim_end_matches([',', '.', ')']);
                if flag.is_empty() {
                    continue;
                }
                flags += 1;
                assert!(
                    help.contains(&format!("--{flag}")),
                    "{file} names --{flag}, which `wgkeep {sub}` does not have"
                );
            }
        }
        assert!(flags >= 2, "{file}: expected some documented flags");
        // The variables the unit expands are set (possibly empty), uncommented, exactly once.
        for var in vars {
            let set: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{var}=")))
                .collect();
            assert_eq!(set.len(), 1, "{file}: {var}= should be set once: {set:?}");
        }
    }
}

/// deploy/systemd/README.md mentions every file of the directory.
#[test]
fn readme_lists_every_file() {
    let readme = read(systemd_dir().join("README.md"));
    for entry in std::fs::read_dir(systemd_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "README.md" {
            assert!(
                readme.contains(&name),
                "deploy/systemd/README.md does not mention {name}"
            );
        }
    }
}

/// A copy of the units in which systemd-analyze can check everything: ExecStart= points at the
/// built binary (verify checks that it is executable), man pages generated by it (verify runs
/// `man` for each Documentation=man:… entry).
struct VerifyRoot {
    dir: TempDir,
}

impl VerifyRoot {
    fn new(tag: &str) -> VerifyRoot {
        let dir = TempDir::new(tag);
        let bin = wgkeep_bin();
        let bin = bin.canonicalize().unwrap();
        let units = dir.path().join("units");
        std::fs::create_dir_all(&units).unwrap();
        for name in UNITS {
            let text = read(systemd_dir().join(name));
            assert!(text.contains("ExecStart=/usr/bin/wgkeep "), "{name}");
            let text = text.replace(
                "ExecStart=/usr/bin/wgkeep ",
                &format!("ExecStart={} ", bin.display()),
            );
            std::fs::write(units.join(name), text).unwrap();
        }
        // wg-quick@.service comes with wireguard-tools; a stand-in where it is not installed
        // (BindsTo= a unit that does not exist is an error).
        let have_wg_quick = [
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
            "/etc/systemd/system",
        ]
        .iter()
        .any(|d| Path::new(d).join("wg-quick@.service").exists());
        if !have_wg_quick {
            eprintln!("note: no wg-quick@.service installed (wireguard-tools); using a stand-in");
            std::fs::write(
                units.join("wg-quick@.service"),
                "[Unit]\nDescription=stand-in for wireguard-tools' wg-quick@.service\n\n\
                 [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
            )
            .unwrap();
        }
        let man1 = dir.path().join("man/man1");
        run_ok(Command::new(&bin).arg("man").arg("--dir").arg(&man1));
        // Documentation=man:wg-quick(8): wireguard-tools again.
        let have_wg_quick_man = Command::new("man")
            .args(["-w", "8", "wg-quick"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_wg_quick_man {
            let man8 = dir.path().join("man/man8");
            std::fs::create_dir_all(&man8).unwrap();
            std::fs::write(
                man8.join("wg-quick.8"),
                ".TH WG-QUICK 8\n.SH NAME\nwg-quick \\- stand-in\n",
            )
            .unwrap();
        }
        VerifyRoot { dir }
    }

    fn units(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("systemd-analyze");
        cmd.current_dir(self.units())
            .args(args)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", self.units().display()))
            .env(
                "MANPATH",
                format!("{}:", self.dir.path().join("man").display()),
            )
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .env("LC_ALL", "C.UTF-8");
        cmd
    }

    /// `systemd-analyze verify` on the units (and an instance of the template); its complaints
    /// about them.
    fn verify(&self, files: &[&str]) -> (Output, Vec<String>) {
        let mut args = vec!["verify", "--man=yes"];
        args.extend_from_slice(files);
        let out = run(&mut self.command(&args));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let unit_dir = self.units().display().to_string();
        let complaints = stderr
            .lines()
            .filter(|l| l.contains("wgkeep") || l.contains(&unit_dir))
            .map(str::to_owned)
            .collect();
        (out, complaints)
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let test = "deploy_systemd::units_pass_systemd_analyze_verify";
    if !require_tool(test, "systemd-analyze", "systemd") || !require_tool(test, "man", "man-db") {
        return;
    }
    let root = VerifyRoot::new("verify");
    let files = [
        "./wgkeep@.service",
        "./wgkeep@wg0.service",
        "./wgkeep-reflect.service",
    ];
    let (out, complaints) = root.verify(&files);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("systemd-analyze verify: {}\n{stderr}", out.status);
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify {files:?}: {}\n{stderr}",
        out.status
    );

    // The check is not vacuous: an unknown key, a missing man page and a missing binary are
    // each reported.
    let units = root.units();
    let good = read(units.join("wgkeep-reflect.service"));
    for (bad, expect) in [
        (
            good.replace("ProtectHome=yes", "ProtectHome=yes\nProtectEverything=yes"),
            "ProtectEverything",
        ),
        (
            good.replace("man:wgkeep-reflect(1)", "man:wgkeep-nonexistent(1)"),
            "wgkeep-nonexistent",
        ),
        (
            good.replace("ExecStart=/", "ExecStart=/nonexistent/"),
            "nonexistent",
        ),
    ] {
        std::fs::write(units.join("wgkeep-broken.service"), bad).unwrap();
        let (_, complaints) = root.verify(&["./wgkeep-broken.service"]);
        assert!(
            complaints.iter().any(|l| l.contains(expect)),
            "verify did not report {expect}: {complaints:?}"
        );
    }
    std::fs::remove_file(units.join("wgkeep-broken.service")).unwrap();
}

/// `systemd-analyze security --offline=yes UNIT`: the overall exposure (0–10) and the settings
/// it counts against the unit.
fn security(root: &VerifyRoot, unit: &str) -> (f64, Vec<String>) {
    let out = run(&mut root.command(&["security", "--offline=yes", "--no-pager", unit]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze security {unit}: no overall exposure ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let after = line.rsplit_once(": ").unwrap().1;
    let score: f64 = after
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in `{line}`"));
    let exposed = stdout
        .lines()
        .filter(|l| l.starts_with('✗'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (score, exposed)
}

#[test]
fn units_have_a_low_systemd_analyze_security_exposure() {
    if !require_tool(
        "deploy_systemd::units_have_a_low_systemd_analyze_security_exposure",
        "systemd-analyze",
        "systemd",
    ) {
        return;
    }
    let root = VerifyRoot::new("security");
    for (unit, max) in [
        ("wgkeep@.service", MAX_EXPOSURE_AGENT),
        ("wgkeep-reflect.service", MAX_EXPOSURE_REFLECT),
    ] {
        let (score, exposed) = security(&root, unit);
        eprintln!(
            "systemd-analyze security {unit}: exposure {score:.1} (at most {max:.1})\n  {}",
            exposed.join("\n  ")
        );
        assert!(
            score <= max,
            "{unit}: exposure {score} > {max}:\n{}",
            exposed.join("\n")
        );
    }
}
