//! Helpers for wgkeep's root-only tests against the real kernel: a three-namespace NAT lab
//! (client ─ router with masquerade ─ server), sockets created inside a namespace without spawning
//! processes, and a parser for `conntrack -L` output.
//!
//! ```text
//!  client ns                 router ns                              server ns
//!  eth0 LAN.2/24  <──veth──>  lan0 LAN.1/24   wan0 WAN.1/24  <──veth──>  eth0 WAN.2/24
//!  default via LAN.1          ip_forward=1, masquerade out of wan0,    (no route back: WAN.1
//!                             input/forward drop `ct state new` on wan0  is on-link)
//! ```
//!
//! Every lab has its own namespaces (`wgk<pid>x<n>c`, `…r`, `…s`); interface names are fixed and
//! short because each namespace has its own set. Dropping the [`NetLab`] deletes them (also while
//! unwinding from a failed assertion); namespaces left by a killed test process are removed by the
//! next [`NetLab::new`].

pub mod deploy;
mod netns;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};

pub use netns::{
    exec_in, exec_in_with_stdin, netns_path, run_in_netns, send_signal, spawn_in, tcp_connect_in,
    udp_socket_in,
};

/// Whether the test may run: true as root. Otherwise prints a loud skip notice to stderr and returns
/// false, except under CI (`CI=true`), where a skipped root test is a failure and this panics.
pub fn require_root(test_name: &str) -> bool {
    if netns::euid() == 0 {
        return true;
    }
    let msg = format!(
        "SKIPPED: {test_name} needs root (network namespaces, nftables, conntrack); \
         run the tests as root to exercise the real kernel"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: a skip is a failure)");
    }
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    false
}

/// One of the lab's three namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ns {
    /// Behind the NAT.
    Client,
    /// The NAT router.
    Router,
    /// On the router's public side.
    Server,
}

/// How to build a [`NetLab`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabConfig {
    /// The /24 behind the NAT (its `.0`): client `.2`, router `.1`.
    pub lan: Ipv4Addr,
    /// The public /24 (its `.0`): router `.1`, server `.2`.
    pub wan: Ipv4Addr,
    /// Router `net.netfilter.nf_conntrack_udp_timeout`, seconds.
    pub udp_timeout: u32,
    /// Router `net.netfilter.nf_conntrack_udp_timeout_stream`, seconds.
    pub udp_timeout_stream: u32,
}

impl LabConfig {
    /// 172.16.0.0/24 behind the NAT, 198.51.100.0/24 outside, the given conntrack UDP timeouts.
    /// The same addresses can be used by several labs at once: each lab has its own namespaces.
    pub fn new(udp_timeout: u32, udp_timeout_stream: u32) -> LabConfig {
        LabConfig {
            lan: Ipv4Addr::new(172, 16, 0, 0),
            wan: Ipv4Addr::new(198, 51, 100, 0),
            udp_timeout,
            udp_timeout_stream,
        }
    }
}

impl Default for LabConfig {
    /// The Linux defaults (30 s / 120 s).
    fn default() -> LabConfig {
        LabConfig::new(30, 120)
    }
}

fn host(net: Ipv4Addr, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// Interface names (each namespace has its own, so they need not be unique between labs).
const CLIENT_IF: &str = "eth0";
const ROUTER_LAN_IF: &str = "lan0";
const ROUTER_WAN_IF: &str = "wan0";
const SERVER_IF: &str = "eth0";
const NS_PREFIX: &str = "wgk";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts /run/netns on first use; concurrent first uses can race. Labs are built
/// one at a time (a few hundred milliseconds) and then run in parallel.
static SETUP_LOCK: Mutex<()> = Mutex::new(());

/// A client ─ NAT router ─ server lab in three fresh network namespaces. Deleted on drop.
#[derive(Debug)]
pub struct NetLab {
    client: String,
    router: String,
    server: String,
    config: LabConfig,
    created: Vec<String>,
}

impl NetLab {
    /// Creates and configures the namespaces. On error everything created so far is deleted.
    pub fn new(config: LabConfig) -> anyhow::Result<NetLab> {
        let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale_namespaces();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{}x{n}", std::process::id());
        let mut lab = NetLab {
            client: format!("{base}c"),
            router: format!("{base}r"),
            server: format!("{base}s"),
            config,
            created: Vec::new(),
        };
        lab.setup()?;
        Ok(lab)
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        for ns in [
            self.client.clone(),
            self.router.clone(),
            self.server.clone(),
        ] {
            run_host(&["ip", "netns", "add", &ns])?;
            self.created.push(ns.clone());
            run_host(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (c, r, s) = (&self.client, &self.router, &self.server);
        let cfg = &self.config;
        // veths are created directly inside the router namespace, so their names never clash
        // with the host's or another lab's.
        run_host(&[
            "ip",
            "-n",
            r,
            "link",
            "add",
            ROUTER_LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            c,
        ])?;
        run_host(&[
            "ip",
            "-n",
            r,
            "link",
            "add",
            ROUTER_WAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            s,
        ])?;
        let addrs = [
            (c, CLIENT_IF, self.client_ip()),
            (r, ROUTER_LAN_IF, self.router_lan_ip()),
            (r, ROUTER_WAN_IF, self.router_public_ip()),
            (s, SERVER_IF, self.server_ip()),
        ];
        for (ns, dev, ip) in addrs {
            let cidr = format!("{ip}/24");
            run_host(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev])?;
            run_host(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        let gw = self.router_lan_ip().to_string();
        run_host(&["ip", "-n", c, "route", "add", "default", "via", &gw])?;

        let ruleset = format!(
            "table ip nat {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"{wan}\" masquerade\n\
             \t}}\n\
             }}\n\
             table ip filter {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{wan}\" ct state new drop\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{wan}\" ct state new drop\n\
             \t}}\n\
             }}\n",
            wan = ROUTER_WAN_IF
        );
        check(
            exec_in_with_stdin(r, &["nft", "-f", "-"], Some(ruleset.as_bytes()))?,
            "nft -f - (router ruleset)",
        )?;
        // The nft rules above made the namespace use conntrack, so its sysctls exist now.
        for (key, value) in [
            ("net.ipv4.ip_forward", 1),
            ("net.netfilter.nf_conntrack_udp_timeout", cfg.udp_timeout),
            (
                "net.netfilter.nf_conntrack_udp_timeout_stream",
                cfg.udp_timeout_stream,
            ),
        ] {
            let kv = format!("{key}={value}");
            check(
                exec_in(r, &["sysctl", "-qw", &kv])?,
                &format!("sysctl -w {kv}"),
            )?;
            let got = check(exec_in(r, &["sysctl", "-n", key])?, key)?;
            if got.trim() != value.to_string() {
                bail!("router {key} is {got:?} after setting it to {value}");
            }
        }
        Ok(())
    }

    /// The namespace name of `which`.
    pub fn ns(&self, which: Ns) -> &str {
        match which {
            Ns::Client => &self.client,
            Ns::Router => &self.router,
            Ns::Server => &self.server,
        }
    }

    /// The configuration the lab was built with.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The client's address (LAN `.2`).
    pub fn client_ip(&self) -> Ipv4Addr {
        host(self.config.lan, 2)
    }

    /// The router's LAN address (`.1`), the client's default gateway.
    pub fn router_lan_ip(&self) -> Ipv4Addr {
        host(self.config.lan, 1)
    }

    /// The router's public address (WAN `.1`): the masquerade source.
    pub fn router_public_ip(&self) -> Ipv4Addr {
        host(self.config.wan, 1)
    }

    /// The server's address (WAN `.2`).
    pub fn server_ip(&self) -> Ipv4Addr {
        host(self.config.wan, 2)
    }

    /// Runs a command inside `which` and returns its output, whatever its exit status. Panics if
    /// it cannot be started.
    pub fn exec(&self, which: Ns, args: &[&str]) -> Output {
        exec_in(self.ns(which), args)
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {}: {e}", self.ns(which)))
    }

    /// Runs a command inside `which` and returns its stdout; panics with its stderr when it fails.
    pub fn exec_ok(&self, which: Ns, args: &[&str]) -> String {
        let out = self.exec(which, args);
        check(out, &format!("{args:?} in {}", self.ns(which))).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A UDP socket bound to `bind` inside `which`.
    pub fn udp_socket(&self, which: Ns, bind: SocketAddrV4) -> std::io::Result<UdpSocket> {
        udp_socket_in(self.ns(which), bind)
    }

    /// The router's UDP conntrack entries.
    pub fn conntrack_udp(&self) -> anyhow::Result<Vec<CtEntry>> {
        conntrack_udp(&self.router)
    }

    /// Spawns `cmd` inside `which` without waiting for it (see [`spawn_in`]).
    pub fn spawn(&self, which: Ns, cmd: &mut Command) -> std::io::Result<Child> {
        spawn_in(self.ns(which), cmd)
    }

    /// The pids of every process living in `which` (`ip netns pids`).
    pub fn pids(&self, which: Ns) -> Vec<u32> {
        run_host(&["ip", "netns", "pids", self.ns(which)])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every process still running in the lab's namespaces (started by the test that owns
    /// the lab): SIGCONT (a frozen process must be able to exit) and SIGTERM, then SIGKILL after
    /// a second, for at most three seconds.
    pub fn stop_all_processes(&self) {
        for round in 0..30 {
            let pids: Vec<u32> = [Ns::Client, Ns::Router, Ns::Server]
                .iter()
                .flat_map(|&ns| self.pids(ns))
                .collect();
            if pids.is_empty() {
                break;
            }
            let sig = if round < 10 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            for pid in pids {
                let _ = netns::send_signal(pid, libc::SIGCONT);
                let _ = netns::send_signal(pid, sig);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run_host(&["ip", "netns", "del", &ns]) {
                eprintln!("warning: could not delete network namespace {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces named like ours whose creating process no longer exists (a test run that was
/// killed before its `Drop`s ran).
fn remove_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_owner(&name) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_host(&["ip", "netns", "del", &name]);
        }
    }
}

/// The pid in a namespace name `wgk<pid>x<n><c|r|s>`, if the name has exactly that shape.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, tail) = rest.split_once('x')?;
    let (n, role) = tail.split_at(tail.len().checked_sub(1)?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) || !matches!(role, "c" | "r" | "s") {
        return None;
    }
    pid.parse().ok()
}

fn run_host(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    check(out, &format!("{args:?}"))
}

/// stdout of a successful command, or an error with its stderr.
fn check(out: Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of `conntrack -L -p udp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// Original direction source (the client behind the NAT).
    pub src: Ipv4Addr,
    /// Original direction destination (the server).
    pub dst: Ipv4Addr,
    /// Original source port.
    pub sport: u16,
    /// Original destination port.
    pub dport: u16,
    /// Reply direction source (the server).
    pub reply_src: Ipv4Addr,
    /// Reply direction destination (the router's public address after masquerade).
    pub reply_dst: Ipv4Addr,
    /// Reply source port.
    pub reply_sport: u16,
    /// Reply destination port: the public port the NAT chose.
    pub reply_dport: u16,
    /// Whole seconds left before the entry expires (the kernel truncates).
    pub remaining_secs: u64,
    /// `[ASSURED]`.
    pub assured: bool,
    /// `[UNREPLIED]`: no reply-direction packet seen yet.
    pub unreplied: bool,
    /// The line as printed.
    pub line: String,
}

impl CtEntry {
    /// The original direction's source.
    pub fn original_src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src, self.sport)
    }

    /// The original direction's destination.
    pub fn original_dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst, self.dport)
    }

    /// The translated (public) address and port replies are sent to.
    pub fn public(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.reply_dst, self.reply_dport)
    }
}

impl fmt::Display for CtEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

/// Parses one line of `conntrack -L -p udp` (IPv4), e.g.
/// `udp 17 179 src=172.16.0.2 dst=198.51.100.2 sport=40000 dport=51820 src=198.51.100.2
/// dst=198.51.100.1 sport=51820 dport=40000 [ASSURED] mark=0 use=1`. `None` for anything else.
pub fn parse_conntrack_line(line: &str) -> Option<CtEntry> {
    let mut tokens = line.split_whitespace();
    if tokens.next()? != "udp" || tokens.next()? != "17" {
        return None;
    }
    let remaining_secs = tokens.next()?.parse().ok()?;
    let mut addrs: Vec<(&str, Ipv4Addr)> = Vec::new();
    let mut ports: Vec<(&str, u16)> = Vec::new();
    let (mut assured, mut unreplied) = (false, false);
    for tok in tokens {
        match tok {
            "[ASSURED]" => assured = true,
            "[UNREPLIED]" => unreplied = true,
            _ => {
                let Some((k, v)) = tok.split_once('=') else {
                    continue;
                };
                match k {
                    "src" | "dst" => addrs.push((k, v.parse().ok()?)),
                    "sport" | "dport" => ports.push((k, v.parse().ok()?)),
                    _ => {}
                }
            }
        }
    }
    fn key_order<T>(v: &[(&str, T)], a: &str, b: &str) -> bool {
        v.len() == 4 && v[0].0 == a && v[1].0 == b && v[2].0 == a && v[3].0 == b
    }
    if !key_order(&addrs, "src", "dst") || !key_order(&ports, "sport", "dport") {
        return None;
    }
    Some(CtEntry {
        src: addrs[0].1,
        dst: addrs[1].1,
        sport: ports[0].1,
        dport: ports[1].1,
        reply_src: addrs[2].1,
        reply_dst: addrs[3].1,
        reply_sport: ports[2].1,
        reply_dport: ports[3].1,
        remaining_secs,
        assured,
        unreplied,
        line: line.trim().to_owned(),
    })
}

/// Parses the stdout of `conntrack -L -p udp`, skipping lines that are not IPv4 UDP entries.
pub fn parse_conntrack_output(stdout: &str) -> Vec<CtEntry> {
    stdout.lines().filter_map(parse_conntrack_line).collect()
}

/// The UDP conntrack entries of namespace `ns` (`conntrack -L -p udp` run inside it).
pub fn conntrack_udp(ns: &str) -> anyhow::Result<Vec<CtEntry>> {
    let out = exec_in(ns, &["conntrack", "-L", "-p", "udp"])
        .with_context(|| format!("cannot run conntrack in {ns}"))?;
    let stdout = check(out, &format!("conntrack -L -p udp in {ns}"))?;
    Ok(parse_conntrack_output(&stdout))
}

/// `GET path` over HTTP/1.0 to `addr`, from inside the network namespace `ns` (no curl needed).
/// Returns the status code and the body.
pub fn http_get_in(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = tcp_connect_in(ns, addr, timeout)
        .with_context(|| format!("connecting to {addr} in {ns}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response of {addr}{path} in {ns}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// One sample of the Prometheus text exposition format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// The labels, by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Whether every `(name, value)` of `want` is among the labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Parses Prometheus text format (`name{a="b",c="d"} value [timestamp]`), skipping comments and
/// lines it does not understand.
pub fn parse_prometheus_text(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(labels);
        }
        let (key, rest) = s.split_once('=')?;
        let mut chars = rest.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        s = &rest[1 + end + 1..];
    }
}

/// The `wgkeep` binary, built once per test process with `cargo build -p wgkeep-agent --bin
/// wgkeep` in the test's own profile (debug, or `--release` when the tests were built with
/// it), honouring `CARGO` and `CARGO_TARGET_DIR`. `WGKEEP_BIN=/path/to/wgkeep` skips the build.
/// Panics if the build fails.
pub fn wgkeep_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_wgkeep().map_err(|e| format!("{e:#}")))
        .clone()
        .unwrap_or_else(|e| panic!("cannot build wgkeep: {e}"))
}

fn build_wgkeep() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("WGKEEP_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?;
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "wgkeep-agent", "--bin", "wgkeep"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cargo:?}"))?;
    if !status.success() {
        bail!("`cargo build -p wgkeep-agent --bin wgkeep` failed ({status})");
    }
    // A relative CARGO_TARGET_DIR is resolved against the build's working directory.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| workspace.join(dir))
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("wgkeep");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Polls `f` every `every` until it returns `Some`, or `timeout` passed (the end-to-end tests'
/// one waiting loop).
pub fn wait_for_every<T>(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP wgkeep_handshakes_total Handshakes.\n\
             # TYPE wgkeep_handshakes_total counter\n\
             wgkeep_handshakes_total{interface=\"wg0\",public_key=\"a+b/c=\"} 3\n\
             wgkeep_build_info{version=\"0.1.0\"} 1\n\
             odd{x=\"q\\\"uote\\\\\",y=\"\"} -2.5e1 1700000000\n\
             plain 7\n\
             broken{x=1} 2\n";
        let v = parse_prometheus_text(text);
        assert_eq!(v.len(), 4, "{v:?}");
        assert_eq!(v[0].name, "wgkeep_handshakes_total");
        assert!(v[0].has_labels(&[("interface", "wg0"), ("public_key", "a+b/c=")]));
        assert!(!v[0].has_labels(&[("interface", "wg1")]));
        assert_eq!(v[0].value, 3.0);
        assert_eq!(v[2].labels["x"], "q\"uote\\");
        assert_eq!(v[2].labels["y"], "");
        assert_eq!(v[2].value, -25.0);
        assert_eq!((v[3].name.as_str(), v[3].value), ("plain", 7.0));
    }

    const ASSURED: &str = "udp      17 179 src=172.16.0.2 dst=198.51.100.2 sport=40000 \
        dport=51820 src=198.51.100.2 dst=198.51.100.1 sport=51820 dport=40000 [ASSURED] mark=0 \
        use=1";
    const UNREPLIED: &str = "udp      17 9 src=172.16.0.2 dst=198.51.100.2 sport=40003 \
        dport=51820 [UNREPLIED] src=198.51.100.2 dst=198.51.100.1 sport=51820 dport=1234 mark=0 \
        use=1";
    const REPLIED: &str = "udp      17 28 src=172.16.0.2 dst=198.51.100.2 sport=40001 \
        dport=51820 src=198.51.100.2 dst=198.51.100.1 sport=51820 dport=40001 mark=0 use=1";

    #[test]
    fn parses_an_assured_entry() {
        let e = parse_conntrack_line(ASSURED).unwrap();
        assert_eq!(e.original_src(), "172.16.0.2:40000".parse().unwrap());
        assert_eq!(e.original_dst(), "198.51.100.2:51820".parse().unwrap());
        assert_eq!(e.reply_src, Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(e.reply_sport, 51820);
        assert_eq!(e.public(), "198.51.100.1:40000".parse().unwrap());
        assert_eq!(e.remaining_secs, 179);
        assert!(e.assured && !e.unreplied);
        assert_eq!(e.to_string(), ASSURED);
    }

    #[test]
    fn parses_unreplied_and_a_translated_port() {
        let e = parse_conntrack_line(UNREPLIED).unwrap();
        assert_eq!((e.sport, e.reply_dport), (40003, 1234));
        assert_eq!(e.remaining_secs, 9);
        assert!(!e.assured && e.unreplied);
        let e = parse_conntrack_line(REPLIED).unwrap();
        assert!(!e.assured && !e.unreplied);
        assert_eq!(e.remaining_secs, 28);
    }

    #[test]
    fn skips_other_lines() {
        let out = format!(
            "{ASSURED}\n\
             tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 \
             dst=10.0.0.1 sport=2 dport=1 [ASSURED] mark=0 use=1\n\
             udp      17 20 src=fe80::1 dst=ff02::1 sport=1 dport=2 src=ff02::1 dst=fe80::1 \
             sport=2 dport=1 mark=0 use=1\n\
             conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n\
             \n{UNREPLIED}\n"
        );
        let v = parse_conntrack_output(&out);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].sport, v[1].sport), (40000, 40003));
        assert_eq!(parse_conntrack_line("udp 17 x src=1.2.3.4"), None);
        assert_eq!(parse_conntrack_line(""), None);
    }

    #[test]
    fn stale_namespace_names() {
        assert_eq!(stale_owner("wgk1234x0c"), Some(1234));
        assert_eq!(stale_owner("wgk1234x12s"), Some(1234));
        assert_eq!(stale_owner("wgk1234x12q"), None);
        assert_eq!(stale_owner("wgk1234xc"), None);
        assert_eq!(stale_owner("wgkx1r"), None);
        assert_eq!(stale_owner("other"), None);
    }

    #[test]
    fn host_addresses() {
        let cfg = LabConfig::new(10, 180);
        assert_eq!(host(cfg.lan, 2), Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(host(cfg.wan, 1), Ipv4Addr::new(198, 51, 100, 1));
    }
}
