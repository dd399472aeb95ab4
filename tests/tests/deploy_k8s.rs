//! deploy/kubernetes: the manifests parse, have the structure node-level and sidecar WireGuard
//! need (host network or a shared pod, NET_ADMIN, the UAPI socket directory, a /healthz probe on
//! the metrics port), the agent's arguments are accepted by the real `wgkeep agent`, the monitors
//! select the workloads, the PrometheusRule carries exactly deploy/prometheus/wgkeep-rules.yml,
//! and `kubernetes-validate --strict` (PyPI: kubernetes-validate, offline schemas) accepts the
//! built-in kinds. Without kubernetes-validate that test prints a loud SKIPPED notice, and fails
//! under CI=true. The operator's kinds (ServiceMonitor, PodMonitor, PrometheusRule) have no
//! schema there: their fields are checked here.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value as Yaml;
use wgkeep_tests::deploy::{assert_cli_accepts, flag, read, repo, tool};

const DIR: &str = "deploy/kubernetes";

/// Every document of a multi-document YAML file.
fn documents(file: &str) -> Vec<Yaml> {
    let text = read(format!("{DIR}/{file}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{file}: not YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The one object of `kind` in `file`.
fn object(file: &str, kind: &str) -> Yaml {
    let mut found = documents(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect::<Vec<_>>();
    assert_eq!(found.len(), 1, "{file}: expected one {kind}");
    found.remove(0)
}

fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq<'a>(v: &'a Yaml, what: &str) -> &'a [Yaml] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

fn container<'a>(pod_spec: &'a Yaml, name: &str) -> &'a Yaml {
    seq(&pod_spec["containers"], "containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container `{name}`"))
}

fn strings(v: &Yaml, what: &str) -> Vec<String> {
    seq(v, what)
        .iter()
        .map(|s| str_of(s, what).to_owned())
        .collect()
}

#[test]
fn manifests_parse_with_the_expected_kinds() {
    let expect: [(&str, &[(&str, &str)]); 4] = [
        (
            "daemonset.yaml",
            &[("v1", "Namespace"), ("apps/v1", "DaemonSet")],
        ),
        ("sidecar.yaml", &[("apps/v1", "Deployment")]),
        (
            "service-monitor.yaml",
            &[
                ("v1", "Service"),
                ("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("monitoring.coreos.com/v1", "PodMonitor"),
            ],
        ),
        (
            "prometheus-rule.yaml",
            &[("monitoring.coreos.com/v1", "PrometheusRule")],
        ),
    ];
    for (file, kinds) in expect {
        let docs = documents(file);
        let got: Vec<(&str, &str)> = docs
            .iter()
            .map(|d| {
                (
                    str_of(&d["apiVersion"], "apiVersion"),
                    str_of(&d["kind"], "kind"),
                )
            })
            .collect();
        assert_eq!(got, kinds, "{file}");
        for d in &docs {
            assert!(
                d["metadata"]["name"].as_str().is_some(),
                "{file}: unnamed {d:?}"
            );
        }
    }
    // Nothing else in the directory goes untested.
    let mut files: Vec<String> = std::fs::read_dir(repo().join(DIR))
        .expect("deploy/kubernetes")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "daemonset.yaml",
            "prometheus-rule.yaml",
            "service-monitor.yaml",
            "sidecar.yaml"
        ]
    );
}

/// What every wgkeep container must have: NET_ADMIN and nothing else, not privileged, a
/// liveness probe on /healthz at the port --metrics-listen names, the UAPI directory, the state
/// directory on a volume. Returns its expanded arguments.
fn check_wgkeep_container(pod_spec: &Yaml, what: &str) -> Vec<String> {
    let c = container(pod_spec, "wgkeep");
    let sc = &c["securityContext"];
    assert_eq!(
        strings(&sc["capabilities"]["add"], "capabilities.add"),
        ["NET_ADMIN"],
        "{what}"
    );
    assert_eq!(
        strings(&sc["capabilities"]["drop"], "capabilities.drop"),
        ["ALL"],
        "{what}"
    );
    assert_ne!(sc["privileged"], Yaml::Bool(true), "{what}: privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], Yaml::Bool(false), "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], Yaml::Bool(true), "{what}");
    assert!(
        c["image"].as_str().is_some_and(|i| i.contains("wgkeep")),
        "{what}: image"
    );

    let args = expand_env(c, &strings(&c["args"], "args"));
    assert_eq!(
        args[0], "agent",
        "{what}: the image's entrypoint is `wgkeep`"
    );
    // --metrics-listen ADDR:PORT: PORT is the container's metrics port, which the probe uses.
    let listen =
        flag(&args, "--metrics-listen").unwrap_or_else(|| panic!("{what}: no --metrics-listen"));
    let port: u16 = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{what}: --metrics-listen {listen}"));
    let ports = seq(&c["ports"], "ports");
    let metrics_port = ports
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(port)))
        .unwrap_or_else(|| panic!("{what}: no containerPort {port} (--metrics-listen {listen})"));
    assert_eq!(metrics_port["protocol"], "TCP", "{what}");
    let port_name = str_of(&metrics_port["name"], "port name");
    assert!(
        port_name.len() <= 15,
        "{what}: port name `{port_name}` is longer than 15"
    );
    let probe = &c["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz", "{what}: liveness probe");
    assert!(
        probe["port"] == port_name || probe["port"].as_u64() == Some(u64::from(port)),
        "{what}: the liveness probe's port {:?} is not the metrics port {port}",
        probe["port"]
    );
    // The probe connects to the pod's IP: the agent must listen there.
    let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or_default();
    assert!(
        host == "0.0.0.0" || host == "[::]" || raw_flag(c, "--metrics-listen").starts_with("$("),
        "{what}: --metrics-listen {listen} is not reachable by the kubelet's probe"
    );
    assert!(
        c["resources"]["requests"]["memory"].as_str().is_some(),
        "{what}: requests"
    );
    assert!(
        c["resources"]["limits"]["memory"].as_str().is_some(),
        "{what}: limits"
    );

    let mounts = mounts(c);
    let uapi = mounts
        .get("/var/run/wireguard")
        .unwrap_or_else(|| panic!("{what}: /var/run/wireguard is not mounted"));
    assert!(volume(pod_spec, uapi).is_mapping(), "{what}: volume {uapi}");
    let state = flag(&args, "--state-dir").unwrap_or_else(|| panic!("{what}: no --state-dir"));
    assert!(
        mounts.contains_key(state.as_str()),
        "{what}: --state-dir {state} is not a volume (read-only root)"
    );
    args
}

/// The unexpanded value of a flag in the container's args.
fn raw_flag(c: &Yaml, name: &str) -> String {
    flag(&strings(&c["args"], "args"), name).unwrap_or_default()
}

/// Kubernetes' `$(VAR)` expansion with the container's env; the downward API's addresses become
/// 127.0.0.1.
fn expand_env(c: &Yaml, args: &[String]) -> Vec<String> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = str_of(&e["name"], "env name").to_owned();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Yaml::String(v), _) => v.clone(),
            (_, Yaml::String(path)) => {
                assert!(
                    ["status.podIP", "status.hostIP"].contains(&path.as_str()),
                    "env {name}: fieldRef {path}"
                );
                "127.0.0.1".to_owned()
            }
            other => panic!("env {name}: {other:?}"),
        };
        env.insert(name, value);
    }
    args.iter()
        .map(|a| {
            let mut out = a.clone();
            while let Some(start) = out.find("$(") {
                let end = out[start..].find(')').expect("$(VAR)") + start;
                let var = &out[start + 2..end];
                let value = env.get(var).unwrap_or_else(|| {
                    panic!("`{a}` uses $({var}), which the container's env lacks")
                });
                out.replace_range(start..=end, value);
            }
            out
        })
        .collect()
}

/// mountPath → volume name.
fn mounts(c: &Yaml) -> BTreeMap<String, String> {
    c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                str_of(&m["mountPath"], "mountPath").to_owned(),
                str_of(&m["name"], "mount name").to_owned(),
            )
        })
        .collect()
}

fn volume<'a>(pod_spec: &'a Yaml, name: &str) -> &'a Yaml {
    seq(&pod_spec["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume `{name}`"))
}

#[test]
fn daemonset_runs_beside_node_level_wireguard() {
    let ds = object("daemonset.yaml", "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], Yaml::Bool(true));
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        seq(&spec["tolerations"], "tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"),
        "the agent belongs on every node with a tunnel"
    );
    // The selector matches the pod template.
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(&labels[k], v, "selector {k:?}");
    }
    let args = check_wgkeep_container(spec, "daemonset");
    let c = container(spec, "wgkeep");
    let m = mounts(c);
    let uapi = volume(spec, &m["/var/run/wireguard"]);
    assert_eq!(
        uapi["hostPath"]["path"], "/var/run/wireguard",
        "the host's sockets"
    );
    let state = volume(
        spec,
        &m[flag(&args, "--state-dir").expect("--state-dir").as_str()],
    );
    assert!(
        state["hostPath"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/run/")),
        "adapt mode's record must outlive the pod and not a reboot: a hostPath in /run"
    );
    // The namespace admits hostNetwork + NET_ADMIN.
    let ns = object("daemonset.yaml", "Namespace");
    assert_eq!(ns["metadata"]["name"], ds["metadata"]["namespace"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    assert_cli_accepts(&args, "daemonset.yaml");
}

#[test]
fn sidecar_shares_the_wireguard_pod() {
    let d = object("sidecar.yaml", "Deployment");
    let spec = &d["spec"]["template"]["spec"];
    assert_ne!(
        spec["hostNetwork"],
        Yaml::Bool(true),
        "the pod's own network namespace"
    );
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    for (k, v) in d["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(&labels[k], v, "selector {k:?}");
    }
    let args = check_wgkeep_container(spec, "sidecar");
    let wg = container(spec, "wireguard");
    assert!(
        strings(
            &wg["securityContext"]["capabilities"]["add"],
            "capabilities.add"
        )
        .contains(&"NET_ADMIN".to_owned()),
        "the WireGuard container needs NET_ADMIN"
    );
    // Both mount the same in-pod volume at /var/run/wireguard.
    let keep = mounts(container(spec, "wgkeep"));
    let wg_mounts = mounts(wg);
    assert_eq!(keep["/var/run/wireguard"], wg_mounts["/var/run/wireguard"]);
    assert!(volume(spec, &keep["/var/run/wireguard"])["emptyDir"].is_mapping());
    // The socket is root's with mode 0700: wgkeep runs with the WireGuard container's uid.
    assert_eq!(
        container(spec, "wgkeep")["securityContext"]["runAsUser"],
        wg["securityContext"]["runAsUser"]
    );
    // The interface wgkeep keeps is the one the WireGuard container brings up.
    let iface = flag(&args, "--interface").expect("--interface");
    assert!(
        seq(&wg["env"], "env")
            .iter()
            .any(|e| e["value"] == iface.as_str()),
        "wgkeep keeps {iface}, the WireGuard container's env does not mention it"
    );
    assert_cli_accepts(&args, "sidecar.yaml");
}

#[test]
fn monitors_select_the_workloads() {
    let ds = object("daemonset.yaml", "DaemonSet");
    let ds_pod = &ds["spec"]["template"];
    let sidecar = object("sidecar.yaml", "Deployment");
    let sidecar_pod = &sidecar["spec"]["template"];

    let svc = object("service-monitor.yaml", "Service");
    assert_eq!(svc["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "headless: one endpoint per node"
    );
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(
            &ds_pod["metadata"]["labels"][k], v,
            "Service selector {k:?}"
        );
    }
    let svc_port = &seq(&svc["spec"]["ports"], "ports")[0];
    let ds_port = seq(&container(&ds_pod["spec"], "wgkeep")["ports"], "ports")
        .iter()
        .find(|p| p["name"] == svc_port["targetPort"])
        .expect("the Service's targetPort names a port of the DaemonSet's container");
    assert_eq!(svc_port["port"], ds_port["containerPort"]);

    let sm = object("service-monitor.yaml", "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k:?}"
        );
    }
    assert!(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"], "matchNames")
            .contains(&str_of(&svc["metadata"]["namespace"], "namespace").to_owned())
    );
    let endpoint = &seq(&sm["spec"]["endpoints"], "endpoints")[0];
    assert_eq!(endpoint["port"], svc_port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_job_wgkeep(endpoint, "ServiceMonitor");

    let pm = object("service-monitor.yaml", "PodMonitor");
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &sidecar_pod["metadata"]["labels"][k], v,
            "PodMonitor selector {k:?}"
        );
    }
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], Yaml::Bool(true));
    let endpoint = &seq(&pm["spec"]["podMetricsEndpoints"], "podMetricsEndpoints")[0];
    assert!(
        seq(&container(&sidecar_pod["spec"], "wgkeep")["ports"], "ports")
            .iter()
            .any(|p| p["name"] == endpoint["port"]),
        "the PodMonitor's port is not a port of the sidecar"
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_job_wgkeep(endpoint, "PodMonitor");
}

/// The rules select job="wgkeep": the monitor must set it.
fn assert_job_wgkeep(endpoint: &Yaml, what: &str) {
    assert!(
        seq(&endpoint["relabelings"], "relabelings")
            .iter()
            .any(|r| r["targetLabel"] == "job" && r["replacement"] == "wgkeep"),
        "{what}: no relabeling to job=\"wgkeep\", which the alert rules select"
    );
    assert!(read("deploy/prometheus/wgkeep-rules.yml").contains("up{job=\"wgkeep\"}"));
}

#[test]
fn prometheus_rule_carries_the_rules_file() {
    let rule = object("prometheus-rule.yaml", "PrometheusRule");
    let file: Yaml = serde_norway::from_str(&read("deploy/prometheus/wgkeep-rules.yml"))
        .expect("wgkeep-rules.yml is YAML");
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "deploy/kubernetes/prometheus-rule.yaml and deploy/prometheus/wgkeep-rules.yml differ: \
         copy the groups over"
    );
    assert!(!seq(&file["groups"], "groups").is_empty());
}

#[test]
fn kubernetes_validate_accepts_the_manifests() {
    let Some(kv) = tool(
        "kubernetes-validate",
        "python3 -m pip install kubernetes-validate",
        "kubernetes_validate_accepts_the_manifests",
    ) else {
        return;
    };
    // The oldest Kubernetes still common (1.29) and the newest the package knows.
    for version in [Some("1.29.0"), None] {
        let mut cmd = Command::new(&kv);
        cmd.current_dir(repo().join(DIR)).arg("--strict");
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        cmd.args(["daemonset.yaml", "sidecar.yaml", "service-monitor.yaml"]);
        let out = cmd.output().expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "kubernetes-validate {version:?}:\n{text}"
        );
        for resource in [
            "namespace/wgkeep",
            "daemonset/wgkeep",
            "deployment/wireguard-gateway",
            "service/wgkeep",
        ] {
            assert!(
                text.contains(&format!("passed for resource {resource}")),
                "kubernetes-validate did not check {resource}:\n{text}"
            );
        }
    }
}
