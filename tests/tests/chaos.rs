//! Chaos: the real `wgkeep agent` beside real wireguard-go, in network namespaces, while things
//! go wrong around it. Each test proves one property the agent must keep whatever happens:
//!
//! 1. [`kill9_at_random_instants_never_loses_a_persistent_keepalive`]: four wireguard-go "servers"
//!    re-handshake with one client interface, about three handshakes a second in all (a server
//!    removes and re-adds the client's peer with a keepalive, which starts a handshake; each
//!    server at most every 1.2 s, as the agent takes closer ones for the same), so follow-ups
//!    (keepalive toggles) and adapt-mode changes happen all the time. The agent on the client, in
//!    `--mode adapt` or `--mode follow-up` (chosen at random each round), is killed with SIGKILL
//!    at 50 random instants (40% within 150 ms of its start: attach, restore of leftovers,
//!    first-sight follow-ups; the rest up to 1.5 s; a seeded RNG, the seed is printed and
//!    `CHAOS_SEED=N` replays the instants and modes) and restarted each time. After every kill, each peer's PersistentKeepalive is either what the
//!    user set or the adapted value *with the user's value recorded in the state file* (so that
//!    the next start restores it); after a final clean SIGTERM it is exactly what the user set
//!    (150, 25, off and 144, the adapted value itself) and no state file is left.
//! 2. [`wg_quick_down_up_20_times`]: the client's `wg-quick down`/`up` 20 times (through a real
//!    NAT) under one agent in adapt mode: it notices each down (`wgkeep_interface_up` 0),
//!    re-attaches each up (`wgkeep_interface_up` 1, an "attached" log line), follows up the new
//!    handshake each time (`wgkeep_follow_ups_total` grows), re-adapts the keepalive wg-quick put
//!    back, never exits, and SIGTERM leaves the user's PersistentKeepalive.
//! 3. [`a_thousand_peer_adds_and_removes`]: 1000 peers added and 1000 removed (100 rounds of 10
//!    adds and 10 removes over UAPI, about 100 churn peers alive at a time, a third of them with a
//!    PersistentKeepalive) beside one real peer that keeps handshaking: the agent sees every add
//!    and every remove (after each round its per-peer series are exactly the live peers, the
//!    keepalive gauges right, removed peers' series gone; its log counts 1001 added and 1000
//!    removed), keeps following up the real peer, and its RSS does not grow with the churn (at
//!    most 2 MiB over the second half; it stays near 12 MiB).
//! 4. [`hung_uapi_socket_times_out_and_the_other_interface_is_served`]: a Unix socket at
//!    `/var/run/wireguard/NAME.sock` that accepts connections and never answers, beside a real
//!    wireguard-go interface, both given to one agent (adapt mode): its log says the hung one did
//!    not answer, the connections it opens to it stay few (one attempt at a time), the real one is
//!    adapted and followed up, `/metrics` answers promptly, and SIGTERM exits 0 within seconds
//!    and restores the real interface's keepalive.
//! 5. [`wireguard_go_frozen_at_shutdown_keeps_the_users_keepalive`]: a wireguard-go that stops
//!    answering (SIGSTOP) after adapt mode changed its peer's keepalive: the agent's polls time
//!    out (logged), SIGTERM still exits promptly, and the user's keepalive is not lost: either
//!    restored or still recorded in the state file for the next start (checked by resuming
//!    wireguard-go and running the agent once more).
//!
//! The reflector flooded from thousands of source ports (bytes out ≤ bytes in, bounded RSS) is
//! covered by `tests/tests/reflector_abuse.rs` (`flood_from_thousands_of_ports_stays_bounded`)
//! and not repeated here.
//!
//! Tests 1, 3, 4 and 5 keep everything in the client namespace of a [`NetLab`] and talk over
//! 127.0.0.1 (no NAT is needed to exercise the agent, and servers can start handshakes);
//! test 2 uses the lab's NAT and `wg-quick` on both sides like `agent_e2e.rs`. Every interface
//! name carries the test's tag and the process id (`/var/run/wireguard/*.sock` is shared by all
//! namespaces). The agent runs with a RouterOS-like NAT (10 s / 180 s, so adapt mode sets 144 s)
//! but a 100 ms grace, a 300 ms follow-up delay and a 100 ms poll interval, so that it acts many
//! times a second. Needs root (skipped loudly otherwise, a failure under `CI=true`).
//! Everything (agents, wireguard-go, namespaces, sockets, files) is removed at the end, also when
//! an assertion fails (then the agents' logs are printed). The five tests take about 40 s with
//! the default two test threads on two cores (`cargo test -p wgkeep-tests --test chaos`), plus
//! the agent's build (`wgkeep_tests::wgkeep_bin`); the kill -9 test alone ~30 s, the others
//! 7–12 s each.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgkeep_agent::wg::Key;
use wgkeep_tests::{
    exec_in, http_get_in, parse_prometheus_text, require_root, send_signal, spawn_in, wgkeep_bin,
    LabConfig, NetLab, Ns, Sample,
};

/// floor(0.8 × 180 s): what adapt mode sets with the RouterOS profile.
const ADAPTED: u16 = 144;
/// The agent's flags shared by every test: RouterOS timeouts (adapt mode sets 144 s), but a
/// 100 ms grace, a 300 ms follow-up delay and a 100 ms poll interval, so that it acts often.
const FAST: [&str; 9] = [
    "--nat-profile",
    "routeros",
    "--grace",
    "100ms",
    "--follow-up-delay",
    "300ms",
    "--poll-interval",
    "100ms",
    "-v",
];

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Polls `f` every 50 ms until it returns `Some`, or `timeout` passed.
fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wgkeep_tests::wait_for_every(timeout, Duration::from_millis(50), f)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s.parse().expect("CHAOS_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and UAPI.

/// A key pair from `wg genkey` / `wg pubkey`.
#[derive(Clone, Debug)]
struct Keys {
    private: Key,
    public: Key,
}

fn wg_tool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("wg {args:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "wg {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn keypair() -> Keys {
    let private = wg_tool(&["genkey"], None);
    let public = wg_tool(&["pubkey"], Some(&private));
    Keys {
        private: Key::from_base64(&private).unwrap(),
        public: Key::from_base64(&public).unwrap(),
    }
}

/// A random 32-byte public key (wireguard-go accepts any).
fn random_key(rng: &mut impl Rng) -> Key {
    Key(rng.gen())
}

fn socket_path(iface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{iface}.sock"))
}

/// One UAPI exchange with `iface`'s socket (a filesystem socket: no namespace needed).
fn uapi(iface: &str, request: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket_path(iface))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\n\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A `set=1` transaction (`body`: lines ending in `\n`); panics unless wireguard-go says errno=0.
fn uapi_set(iface: &str, body: &str) {
    let reply = uapi(iface, &format!("set=1\n{body}\n"))
        .unwrap_or_else(|e| panic!("UAPI set on {iface}: {e}"));
    assert!(
        reply.contains("errno=0"),
        "UAPI set on {iface} refused: {reply:?}\n{body}"
    );
}

/// Every peer's PersistentKeepalive (0: off), by key, read over UAPI.
fn keepalives(iface: &str) -> BTreeMap<Key, u16> {
    let reply = uapi(iface, "get=1\n\n").unwrap_or_else(|e| panic!("UAPI get on {iface}: {e}"));
    let mut out = BTreeMap::new();
    let mut current = None;
    for line in reply.lines() {
        if let Some(hex) = line.strip_prefix("public_key=") {
            let key = Key::from_hex(hex).unwrap();
            out.insert(key, 0);
            current = Some(key);
        } else if let Some(v) = line.strip_prefix("persistent_keepalive_interval=") {
            if let Some(key) = current {
                out.insert(key, v.parse().unwrap());
            }
        }
    }
    out
}

/// `wg show IFACE persistent-keepalive` inside `ns`: base64 key → `N` or `off`, as a user sees it.
fn wg_show_keepalives(ns: &str, iface: &str) -> BTreeMap<String, String> {
    let out = exec_in(ns, &["wg", "show", iface, "persistent-keepalive"]).unwrap();
    assert!(out.status.success(), "wg show {iface}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn show(pk: Option<u16>) -> String {
    match pk {
        Some(n) if n > 0 => n.to_string(),
        _ => "off".to_owned(),
    }
}

/// A state file's peers: base64 key → (original, set) PersistentKeepalive (`None`: off).
type Recorded = BTreeMap<String, (Option<u16>, Option<u16>)>;

/// The agent's state file for `iface`, if it exists.
fn state_file(dir: &Path, iface: &str) -> Option<Recorded> {
    let body = fs::read_to_string(dir.join(format!("{iface}.json"))).ok()?;
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("state file {body:?}: {e}"));
    let num = |x: &serde_json::Value| x.as_u64().map(|n| n as u16);
    Some(
        v["peers"]
            .as_object()
            .unwrap_or_else(|| panic!("state file without peers: {body}"))
            .iter()
            .map(|(k, c)| (k.clone(), (num(&c["original"]), num(&c["set"]))))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// The lab (only its namespaces are used by most tests) and a directory; on drop, whatever still
/// runs in the namespaces (started by this test) is stopped, the sockets of `ifaces` and the
/// directory are removed, then the namespaces.
struct Scene {
    name: &'static str,
    dir: PathBuf,
    ifaces: Vec<String>,
    lab: NetLab,
}

impl Scene {
    fn new(name: &'static str, cfg: LabConfig) -> Scene {
        let lab = NetLab::new(cfg).expect("lab");
        let dir = std::env::temp_dir().join(format!("wgkeep-chaos-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scene {
            name,
            dir,
            ifaces: Vec::new(),
            lab,
        }
    }

    fn ns(&self) -> &str {
        self.lab.ns(Ns::Client)
    }

    /// A unique interface name: `ch` + test tag (2) + role + pid in hex.
    fn iface(&mut self, tag: &str, role: &str) -> String {
        let name = format!("ch{tag}{role}{:x}", std::process::id());
        assert!(name.len() <= 15, "{name}");
        self.ifaces.push(name.clone());
        name
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Starts `wgkeep agent ARGS…` in the client namespace, its output in `log`.
    fn agent(&self, label: &str, log: &Path, args: &[String]) -> Agent {
        let file = File::create(log).unwrap();
        let mut cmd = Command::new(wgkeep_bin());
        cmd.arg("agent")
            .args(FAST)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = spawn_in(self.ns(), &mut cmd).expect("cannot start the agent");
        Agent {
            child: Some(child),
            log: log.to_owned(),
            label: format!("{}/{label}", self.name),
            started: Instant::now(),
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.lab.stop_all_processes();
        for iface in &self.ifaces {
            let _ = fs::remove_file(socket_path(iface));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `wireguard-go -f NAME` in a namespace, configured over UAPI and up. Killed on drop.
struct WgGo {
    name: String,
    port: u16,
    keys: Keys,
    child: Option<Child>,
}

impl WgGo {
    fn start(ns: &str, name: &str, port: u16) -> WgGo {
        let keys = keypair();
        let child = spawn_in(
            ns,
            Command::new("wireguard-go")
                .args(["-f", name])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .env_remove("LOG_LEVEL")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("wireguard-go");
        let wg = WgGo {
            name: name.to_owned(),
            port,
            keys,
            child: Some(child),
        };
        let sock = socket_path(name);
        assert!(
            wait_for(Duration::from_secs(5), || UnixStream::connect(&sock).ok()).is_some(),
            "{} does not answer after starting wireguard-go",
            sock.display()
        );
        uapi_set(
            name,
            &format!(
                "private_key={}\nlisten_port={port}\n",
                wg.keys.private.to_hex()
            ),
        );
        let out = exec_in(ns, &["ip", "link", "set", name, "up"]).unwrap();
        assert!(
            out.status.success(),
            "ip link set {name} up: {}",
            text(&out)
        );
        wg
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn public(&self) -> String {
        self.keys.public.to_base64()
    }
}

impl Drop for WgGo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = send_signal(child.id(), libc::SIGCONT);
            let _ = send_signal(child.id(), libc::SIGTERM);
            if wait_for(Duration::from_secs(3), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_file(socket_path(&self.name));
    }
}

/// A client interface with one peer per server, and servers that each hold the client as a peer.
/// `user[i]` is the client's PersistentKeepalive for server `i`, as "the user" configured it.
fn client_with_servers(client: &WgGo, servers: &[WgGo], user: &[Option<u16>], subnet: u8) {
    let mut body = String::from("replace_peers=true\n");
    for (i, (s, pk)) in servers.iter().zip(user).enumerate() {
        body += &format!(
            "public_key={}\nendpoint=127.0.0.1:{}\nallowed_ip=10.{subnet}.{i}.0/24\n\
             persistent_keepalive_interval={}\n",
            s.keys.public.to_hex(),
            s.port,
            pk.unwrap_or(0)
        );
    }
    uapi_set(&client.name, &body);
    for s in servers {
        uapi_set(&s.name, &server_peer(client, subnet));
    }
}

/// A server's peer section for `client`, with a 25 s keepalive: created on an up interface, it
/// sends a keepalive at once, so a handshake starts from the server.
fn server_peer(client: &WgGo, subnet: u8) -> String {
    format!(
        "public_key={}\nendpoint=127.0.0.1:{}\nallowed_ip=10.{}.0.2/32\n\
         persistent_keepalive_interval=25\n",
        client.keys.public.to_hex(),
        client.port,
        subnet.wrapping_add(1)
    )
}

/// The least time between two handshakes of one server.
const PER_SERVER_GAP: Duration = Duration::from_millis(1200);

/// Makes the servers re-handshake with the client at random, every `gap` (random in the range)
/// one of them: it removes and re-adds the client's peer in one transaction (the new peer has no
/// session, and its keepalive starts a handshake at once). Stops on drop.
struct Handshaker {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Handshaker {
    fn start(
        client: &WgGo,
        servers: &[&WgGo],
        subnet: u8,
        gap_ms: std::ops::Range<u64>,
        seed: u64,
    ) -> Handshaker {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let body = format!(
            "public_key={}\nremove=true\n{}",
            client.keys.public.to_hex(),
            server_peer(client, subnet)
        );
        let thread = {
            let (stop, count) = (stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut last: Vec<Option<Instant>> = vec![None; names.len()];
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(rng.gen_range(gap_ms.clone())));
                    // The agent takes handshakes less than 1 s apart for the same one (real
                    // ones are at least 5 s apart): give each server a little more.
                    let ready: Vec<usize> = (0..names.len())
                        .filter(|&i| last[i].is_none_or(|t| t.elapsed() > PER_SERVER_GAP))
                        .collect();
                    if ready.is_empty() {
                        continue;
                    }
                    let i = ready[rng.gen_range(0..ready.len())];
                    // A server may be gone at the very end of a test: ignore errors.
                    let reply = uapi(&names[i], &format!("set=1\n{body}\n"));
                    if reply.is_ok_and(|r| r.contains("errno=0")) {
                        count.fetch_add(1, Ordering::Relaxed);
                        last[i] = Some(Instant::now());
                    }
                }
            })
        };
        Handshaker {
            stop,
            count,
            thread: Some(thread),
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handshaker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `wgkeep agent`; SIGKILL on drop (the tests stop it explicitly), its log printed if
/// the test is failing.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
    label: String,
    started: Instant,
}

impl Agent {
    fn raw_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log(&self) -> String {
        format!("---- agent {} ----\n{}", self.label, self.raw_log())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent stopped").id()
    }

    /// `Some(status)` if it exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("agent {} exited ({status})", self.label);
        }
    }

    /// SIGTERM; the exit status and how long the exit took (panics after 10 s).
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("agent already stopped");
        let t = Instant::now();
        send_signal(child.id(), libc::SIGTERM).unwrap();
        match wait_for(Duration::from_secs(10), || child.try_wait().unwrap()) {
            Some(status) => (status, t.elapsed()),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent {} did not exit within 10 s of SIGTERM", self.label);
            }
        }
    }

    /// SIGKILL and wait.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /metrics` from inside `ns`, and how long it took.
fn try_scrape(ns: &str, port: u16) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let t = Instant::now();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = http_get_in(ns, addr, "/metrics", Duration::from_secs(5))?;
    anyhow::ensure!(status == 200, "GET /metrics: {status} {body}");
    Ok((parse_prometheus_text(&body), t.elapsed()))
}

fn scrape(ns: &str, port: u16) -> (Vec<Sample>, Duration) {
    try_scrape(ns, port).unwrap_or_else(|e| panic!("GET /metrics: {e:#}"))
}

/// The sum of `name`'s samples that have `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .sum()
}

fn gauge(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 at random instants.

/// Number of SIGKILLs.
const KILLS: usize = 50;

/// A peer's state after a kill: the user's value, or the adapted one with the user's recorded.
fn check_recoverable(
    client: &str,
    state_dir: &Path,
    user: &BTreeMap<Key, Option<u16>>,
) -> Result<(), String> {
    let now = keepalives(client);
    let state = state_file(state_dir, client);
    let mut problems = Vec::new();
    for (key, want) in user {
        let b64 = key.to_base64();
        let Some(&got) = now.get(key) else {
            problems.push(format!("peer {b64} is missing"));
            continue;
        };
        let want_n = want.unwrap_or(0);
        if got == want_n {
            continue;
        }
        let recorded = state.as_ref().and_then(|s| s.get(&b64)).copied();
        if got == ADAPTED && recorded == Some((*want, Some(ADAPTED))) {
            continue;
        }
        problems.push(format!(
            "peer {b64}: PersistentKeepalive {} (user: {}), state file records {recorded:?}",
            show(Some(got)),
            show(*want)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\nstate file: {state:?}", problems.join("\n")))
    }
}

#[test]
fn kill9_at_random_instants_never_loses_a_persistent_keepalive() {
    if !require_root("chaos::kill9_at_random_instants_never_loses_a_persistent_keepalive") {
        return;
    }
    let _ = wgkeep_bin();
    let seed = seed();
    eprintln!("[kill9] seed {seed} (CHAOS_SEED={seed} replays the kill instants and modes)");
    let mut rng = StdRng::seed_from_u64(seed);
    let t_start = Instant::now();

    let mut scene = Scene::new("kill9", LabConfig::default());
    let ns = scene.ns().to_owned();
    let client_if = scene.iface("k9", "c");
    let server_ifs: Vec<String> = (0..4)
        .map(|i| scene.iface("k9", &format!("s{i}")))
        .collect();
    let client = WgGo::start(&ns, &client_if, 52000);
    let servers: Vec<WgGo> = server_ifs
        .iter()
        .enumerate()
        .map(|(i, n)| WgGo::start(&ns, n, 52001 + i as u16))
        .collect();
    // 144 is the adapted value itself: adapt leaves it, the toggles write it back.
    let user_pk = [Some(150), Some(25), None, Some(ADAPTED)];
    client_with_servers(&client, &servers, &user_pk, 90);
    let user: BTreeMap<Key, Option<u16>> = servers
        .iter()
        .zip(user_pk)
        .map(|(s, pk)| (s.keys.public, pk))
        .collect();
    let mut handshaker = Handshaker::start(
        &client,
        &servers.iter().collect::<Vec<_>>(),
        90,
        50..300,
        seed ^ 1,
    );

    let state = scene.state_dir();
    let logs = scene.dir.join("logs");
    fs::create_dir_all(&logs).unwrap();
    let mut history: Vec<String> = Vec::new();
    let mut modes = BTreeMap::new();
    let log_of = |round: usize| logs.join(format!("agent-{round:02}.log"));
    let args = |mode: &str| -> Vec<String> {
        ["--mode", mode, "--metrics-listen", "none", "-i", &client_if]
            .map(String::from)
            .to_vec()
    };
    for round in 0..KILLS {
        let mode = if rng.gen_bool(0.5) {
            "adapt"
        } else {
            "follow-up"
        };
        *modes.entry(mode).or_insert(0) += 1;
        // Often right after the start (attach, restore of leftovers, first-sight follow-ups),
        // otherwise anywhere in the next 1.5 s (adapt, toggles of fresh handshakes).
        let at = Duration::from_millis(if rng.gen_bool(0.4) {
            rng.gen_range(0..150)
        } else {
            rng.gen_range(150..1500)
        });
        let mut agent = scene.agent(&format!("{round:02}-{mode}"), &log_of(round), &args(mode));
        std::thread::sleep(at.saturating_sub(agent.started.elapsed()));
        if let Some(status) = agent.exited() {
            panic!("round {round}: the agent ({mode}) exited by itself ({status}) before the kill");
        }
        agent.kill9();
        history.push(format!(
            "round {round:2}: {mode:9} killed at {:4} ms",
            at.as_millis()
        ));
        std::thread::sleep(Duration::from_millis(30));
        if let Err(problem) = check_recoverable(&client_if, &state, &user) {
            let prev = round
                .checked_sub(1)
                .map(|r| fs::read_to_string(log_of(r)).unwrap_or_default())
                .unwrap_or_default();
            panic!(
                "after round {round} (seed {seed}) a PersistentKeepalive is lost: neither the \
                 user's value nor recorded for restoring:\n{problem}\n\nhistory:\n{}\n\n---- log \
                 of round {} ----\n{prev}",
                history.join("\n"),
                round.saturating_sub(1),
            );
        }
    }
    eprintln!(
        "[kill9] {KILLS} kills in {:.1}s, modes {modes:?}, {} handshakes forced",
        secs(t_start.elapsed()),
        handshaker.count()
    );

    // A clean end: one more agent in adapt mode, then SIGTERM.
    let mut last = scene.agent("final-adapt", &log_of(KILLS), &args("adapt"));
    std::thread::sleep(Duration::from_millis(1500));
    last.assert_running();
    handshaker.stop();
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = last.terminate();
    assert!(status.success(), "final agent: {status}");

    let all: String = (0..=KILLS)
        .map(|r| fs::read_to_string(log_of(r)).unwrap_or_default())
        .collect();
    let follow_ups = count_lines(&all, "keepalive-toggle)");
    let adapted = count_lines(&all, &format!("-> {ADAPTED} s"));
    let restored = count_lines(&all, "restored PersistentKeepalive");
    let panics = count_lines(&all, "panicked");
    eprintln!(
        "[kill9] over all runs: {follow_ups} follow-up lines, {adapted} adapt changes, {restored} \
         restores; final SIGTERM took {:.2}s; total {:.1}s",
        secs(took),
        secs(t_start.elapsed())
    );
    assert_eq!(panics, 0, "a run panicked:\n{all}");
    assert!(
        follow_ups > 0 && adapted > 0 && restored > 0,
        "the chaos did not exercise follow-ups, adapt and restores"
    );

    let shown = wg_show_keepalives(&ns, &client_if);
    let want: BTreeMap<String, String> = user
        .iter()
        .map(|(k, pk)| (k.to_base64(), show(*pk)))
        .collect();
    assert_eq!(
        shown,
        want,
        "after the final SIGTERM every PersistentKeepalive must be the user's (seed {seed})\n\
         history:\n{}",
        history.join("\n"),
    );
    assert_eq!(
        state_file(&state, &client_if),
        None,
        "the state file is left after a clean exit"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. wg-quick down / up.

const CYCLES: usize = 20;

#[test]
fn wg_quick_down_up_20_times() {
    if !require_root("chaos::wg_quick_down_up_20_times") {
        return;
    }
    let _ = wgkeep_bin();
    const METRICS_PORT: u16 = 19611;
    const USER_PK: u16 = 150;
    let t_start = Instant::now();
    let mut scene = Scene::new("reup", LabConfig::new(10, 180));
    let client_if = scene.iface("du", "c");
    let server_if = scene.iface("du", "s");
    let (ck, sk) = (keypair(), keypair());
    let server_ip = scene.lab.server_ip();
    let conf = |iface: &str, body: String| {
        use std::os::unix::fs::OpenOptionsExt;
        let path = scene.dir.join(format!("{iface}.conf"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(body.as_bytes()).unwrap();
        path
    };
    let server_conf = conf(
        &server_if,
        format!(
            "[Interface]\nAddress = 10.204.0.1/24\nListenPort = 51820\nPrivateKey = {}\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.204.0.2/32\n",
            sk.private.to_base64(),
            ck.public.to_base64()
        ),
    );
    let client_conf = conf(
        &client_if,
        format!(
            "[Interface]\nAddress = 10.204.0.2/24\nPrivateKey = {}\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.204.0.1/32\nEndpoint = {server_ip}:51820\n\
             PersistentKeepalive = {USER_PK}\n",
            ck.private.to_base64(),
            sk.public.to_base64()
        ),
    );
    let wg_quick = |ns: Ns, verb: &str, conf: &Path| {
        let t = Instant::now();
        let out = scene.lab.exec(
            ns,
            &[
                "env",
                "-u",
                "LOG_LEVEL",
                "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go",
                "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                "wg-quick",
                verb,
                &conf.display().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "wg-quick {verb} {}: {}",
            conf.display(),
            text(&out)
        );
        t.elapsed()
    };
    wg_quick(Ns::Server, "up", &server_conf);
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    let log = scene.dir.join("agent.log");
    let mut agent = scene.agent(
        "reup",
        &log,
        &[
            "--mode",
            "adapt",
            "--metrics-listen",
            &listen,
            "-i",
            &client_if,
        ]
        .map(String::from),
    );
    let ns = scene.ns().to_owned();
    let peer = sk.public.to_base64();
    let up_metric = |samples: &[Sample]| {
        gauge(
            samples,
            "wgkeep_interface_up",
            &[("interface", client_if.as_str())],
        )
    };
    let follow_ups = |samples: &[Sample]| {
        total(
            samples,
            "wgkeep_follow_ups_total",
            &[("interface", client_if.as_str()), ("public_key", &peer)],
        )
    };
    let client_pk = || {
        wg_show_keepalives(&ns, &client_if)
            .get(&peer)
            .cloned()
            .unwrap_or_default()
    };

    let mut per_cycle = Vec::new();
    let mut last_follow_ups = 0.0;
    for cycle in 0..=CYCLES {
        let t = Instant::now();
        if cycle > 0 {
            wg_quick(Ns::Client, "down", &client_conf);
            let seen_down = wait_for(Duration::from_secs(5), || {
                (up_metric(&scrape(&ns, METRICS_PORT).0) == Some(0.0)).then_some(())
            });
            agent.assert_running();
            assert!(
                seen_down.is_some(),
                "cycle {cycle}: wgkeep_interface_up did not drop to 0 after wg-quick down"
            );
        }
        let up_took = wg_quick(Ns::Client, "up", &client_conf);
        let got = wait_for(Duration::from_secs(6), || {
            let (s, _) = scrape(&ns, METRICS_PORT);
            let n = follow_ups(&s);
            (up_metric(&s) == Some(1.0) && n > last_follow_ups).then_some(n)
        });
        agent.assert_running();
        let n = got.unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: no re-attach or no new follow-up within 6 s of wg-quick up \
                 (follow-ups so far {last_follow_ups})"
            )
        });
        last_follow_ups = n;
        // Adapt mode puts its value back over the one wg-quick set.
        let adapted = wait_for(Duration::from_secs(3), || {
            (client_pk() == ADAPTED.to_string()).then_some(())
        });
        assert!(
            adapted.is_some(),
            "cycle {cycle}: PersistentKeepalive is {}, not {ADAPTED}, after wg-quick up",
            client_pk(),
        );
        per_cycle.push(t.elapsed());
        if cycle == 0 {
            eprintln!(
                "[reup] first up: wg-quick up {:.2}s, attached, followed up and adapted in {:.2}s",
                secs(up_took),
                secs(t.elapsed())
            );
        }
    }
    let log_text = agent.raw_log();
    let attaches = count_lines(&log_text, "attached (wireguard-go)");
    let gone = count_lines(&log_text, "waiting for it to come back");
    let (status, took) = agent.terminate();
    let slowest = per_cycle.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[reup] {CYCLES} down/up cycles: {attaches} attaches, {gone} detaches, {last_follow_ups} \
         follow-ups; slowest cycle {:.2}s; SIGTERM exit {:.2}s; total {:.1}s",
        secs(slowest),
        secs(took),
        secs(t_start.elapsed())
    );
    assert!(status.success(), "agent exit after SIGTERM: {status}");
    assert!(
        attaches > CYCLES && gone >= CYCLES,
        "{attaches} attach and {gone} detach log lines for {CYCLES} cycles:"
    );
    assert!(last_follow_ups >= (CYCLES + 1) as f64);
    assert_eq!(
        client_pk(),
        USER_PK.to_string(),
        "SIGTERM must restore the user's PersistentKeepalive"
    );
    assert_eq!(state_file(&scene.state_dir(), &client_if), None);
    wg_quick(Ns::Client, "down", &client_conf);
    wg_quick(Ns::Server, "down", &server_conf);
}

// ---------------------------------------------------------------------------------------------
// 3. 1000 peer adds and removes.

#[test]
fn a_thousand_peer_adds_and_removes() {
    if !require_root("chaos::a_thousand_peer_adds_and_removes") {
        return;
    }
    let _ = wgkeep_bin();
    const METRICS_PORT: u16 = 19612;
    const ROUNDS: usize = 100;
    const BATCH: usize = 10;
    const KEEP_AROUND: usize = 100;
    const REAL_PK: u16 = 25;
    let seed = seed();
    eprintln!("[churn] seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let t_start = Instant::now();
    let mut scene = Scene::new("churn", LabConfig::default());
    let ns = scene.ns().to_owned();
    let client_if = scene.iface("pc", "c");
    let server_if = scene.iface("pc", "s");
    let client = WgGo::start(&ns, &client_if, 52100);
    let server = WgGo::start(&ns, &server_if, 52101);
    client_with_servers(&client, std::slice::from_ref(&server), &[Some(REAL_PK)], 92);
    let _handshaker = Handshaker::start(&client, &[&server], 92, 100..300, seed ^ 2);
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    let log = scene.dir.join("agent.log");
    let mut agent = scene.agent(
        "churn",
        &log,
        &[
            "--mode",
            "follow-up",
            "--metrics-listen",
            &listen,
            "-i",
            &client_if,
        ]
        .map(String::from),
    );
    let real = server.public();
    let iface = client_if.as_str();
    // The peers the agent exports: key → PersistentKeepalive gauge.
    let exported = |samples: &[Sample]| -> (BTreeSet<String>, BTreeMap<String, f64>) {
        let mut keys = BTreeSet::new();
        let mut pk = BTreeMap::new();
        for s in samples {
            if s.labels.get("interface").map(String::as_str) != Some(iface) {
                continue;
            }
            if let Some(k) = s.labels.get("public_key") {
                keys.insert(k.clone());
                if s.name == "wgkeep_peer_persistent_keepalive_seconds" {
                    pk.insert(k.clone(), s.value);
                }
            }
        }
        (keys, pk)
    };
    let real_follow_ups = |samples: &[Sample]| {
        total(
            samples,
            "wgkeep_follow_ups_total",
            &[("interface", iface), ("public_key", &real)],
        )
    };
    // The live churn peers: base64 key → (key, PersistentKeepalive).
    let mut live: BTreeMap<String, (Key, u16)> = BTreeMap::new();
    let mut next_ip = 0u32;
    let (mut adds, mut removes) = (0usize, 0usize);
    let mut slowest_sync = Duration::ZERO;
    let mut slowest_scrape = Duration::ZERO;
    let mut sync = |live: &BTreeMap<String, (Key, u16)>, when: &str, agent: &mut Agent| {
        let t = Instant::now();
        let mut last = None;
        let ok = wait_for(Duration::from_secs(5), || {
            // The first scrape may come before the agent listens.
            let (samples, took) = try_scrape(&ns, METRICS_PORT).ok()?;
            slowest_scrape = slowest_scrape.max(took);
            let (keys, pk) = exported(&samples);
            let want_keys: BTreeSet<String> = live
                .keys()
                .cloned()
                .chain(std::iter::once(real.clone()))
                .collect();
            let pk_ok = live
                .iter()
                .all(|(k, (_, v))| pk.get(k) == Some(&f64::from(*v)));
            let ok = keys == want_keys && pk_ok && pk.get(&real) == Some(&f64::from(REAL_PK));
            last = Some((keys.len(), want_keys.len(), pk_ok));
            ok.then_some(samples)
        });
        agent.assert_running();
        slowest_sync = slowest_sync.max(t.elapsed());
        ok.unwrap_or_else(|| {
            panic!(
                "{when}: the agent's per-peer series do not follow the interface within 5 s \
                 (exported keys, expected keys, keepalives right): {last:?}"
            )
        })
    };
    let first = sync(&live, "start", &mut agent);
    let follow_ups_before = real_follow_ups(&first);
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        // Add a batch; a third with a keepalive (no endpoint: they send nothing).
        let older: Vec<String> = live.keys().cloned().collect();
        let mut body = String::new();
        for _ in 0..BATCH {
            let key = random_key(&mut rng);
            let pk = if rng.gen_bool(0.33) {
                rng.gen_range(1..=600)
            } else {
                0
            };
            next_ip += 1;
            body += &format!(
                "public_key={}\nallowed_ip=10.{}.{}.{}/32\npersistent_keepalive_interval={pk}\n",
                key.to_hex(),
                128 + (next_ip >> 16),
                (next_ip >> 8) & 0xff,
                next_ip & 0xff
            );
            live.insert(key.to_base64(), (key, pk));
            adds += 1;
        }
        uapi_set(&client_if, &body);
        // Remove a batch of older ones (the agent saw them in an earlier round; one it never
        // saw could not show that it notices removals).
        if older.len() > KEEP_AROUND {
            let mut body = String::new();
            let mut picked = BTreeSet::new();
            while picked.len() < BATCH {
                picked.insert(older[rng.gen_range(0..older.len())].clone());
            }
            for k in picked {
                let (key, _) = live.remove(&k).unwrap();
                body += &format!("public_key={}\nremove=true\n", key.to_hex());
                removes += 1;
            }
            uapi_set(&client_if, &body);
        }
        sync(&live, &format!("round {round}"), &mut agent);
        if round + 1 == ROUNDS / 5 || round + 1 == ROUNDS / 2 + 10 || round + 1 == ROUNDS {
            rss.push((round + 1, agent.rss_kib()));
        }
    }
    // Remove the rest: 1000 adds, 1000 removes.
    let mut body = String::new();
    for (key, _) in std::mem::take(&mut live).into_values() {
        body += &format!("public_key={}\nremove=true\n", key.to_hex());
        removes += 1;
    }
    uapi_set(&client_if, &body);
    let end = sync(&live, "after removing every churn peer", &mut agent);
    let rss_end = agent.rss_kib();
    let follow_ups_after = real_follow_ups(&end);
    let log_text = agent.raw_log();
    // "IFACE: N peer(s) added, M in all"
    let added: usize = log_text
        .lines()
        .filter_map(|l| l.split_once(" peer(s) added"))
        .filter_map(|(before, _)| before.split_whitespace().last()?.parse::<usize>().ok())
        .sum();
    let removed = count_lines(&log_text, " removed");
    assert_eq!(
        wg_show_keepalives(&ns, &client_if),
        BTreeMap::from([(real.clone(), REAL_PK.to_string())]),
        "the real peer's keepalive changed or churn peers are left"
    );
    let (status, took) = agent.terminate();
    eprintln!(
        "[churn] {adds} adds, {removes} removes in {ROUNDS} rounds; the agent logged {added} \
         added, {removed} removed; real peer follow-ups {follow_ups_before} -> {follow_ups_after}; \
         slowest sync {:.2}s, slowest scrape {:.3}s; RSS KiB (after round) {rss:?}, at the end \
         {rss_end}; SIGTERM {:.2}s; total {:.1}s",
        secs(slowest_sync),
        secs(slowest_scrape),
        secs(took),
        secs(t_start.elapsed())
    );
    assert!(status.success(), "agent exit after SIGTERM: {status}");
    assert_eq!((adds, removes), (1000, 1000));
    assert_eq!(
        added, 1001,
        "peers the agent saw added (1000 + the real one)"
    );
    assert_eq!(removed, 1000, "peers the agent saw removed");
    assert!(
        follow_ups_after >= follow_ups_before + 3.0,
        "the real peer was not followed up during the churn: {follow_ups_before} -> \
         {follow_ups_after}"
    );
    // The second half of the churn must not grow the RSS like a leak would.
    let at = |r: usize| rss.iter().find(|(x, _)| *x == r).unwrap().1;
    let (mid, last) = (at(ROUNDS / 2 + 10), at(ROUNDS));
    assert!(
        last <= mid + 2048 && rss_end <= mid + 2048,
        "RSS grows with the churn: {rss:?}, {rss_end} KiB at the end"
    );
    assert!(rss_end < 64 * 1024, "RSS {rss_end} KiB");
}

// ---------------------------------------------------------------------------------------------
// 4. A UAPI socket that accepts and never answers.

/// A Unix socket at `/var/run/wireguard/NAME.sock` that accepts every connection and holds it,
/// never reading or writing. Counts connections; closes everything on drop.
struct HungSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HungSocket {
    fn new(iface: &str) -> HungSocket {
        let path = socket_path(iface);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            held.push(conn);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        HungSocket {
            path,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for HungSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

#[test]
fn hung_uapi_socket_times_out_and_the_other_interface_is_served() {
    if !require_root("chaos::hung_uapi_socket_times_out_and_the_other_interface_is_served") {
        return;
    }
    let _ = wgkeep_bin();
    const METRICS_PORT: u16 = 19613;
    const USER_PK: u16 = 150;
    const WATCH: Duration = Duration::from_secs(8);
    let t_start = Instant::now();
    let mut scene = Scene::new("hung", LabConfig::default());
    let ns = scene.ns().to_owned();
    let hung_if = scene.iface("hu", "x");
    let client_if = scene.iface("hu", "c");
    let server_if = scene.iface("hu", "s");
    let hung = HungSocket::new(&hung_if);
    let client = WgGo::start(&ns, &client_if, 52200);
    let server = WgGo::start(&ns, &server_if, 52201);
    client_with_servers(&client, std::slice::from_ref(&server), &[Some(USER_PK)], 94);
    let _handshaker = Handshaker::start(&client, &[&server], 94, 100..300, seed());
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    let log = scene.dir.join("agent.log");
    // The hung interface first: it must not hold up the other.
    let mut agent = scene.agent(
        "hung",
        &log,
        &[
            "--mode",
            "adapt",
            "--metrics-listen",
            &listen,
            "-i",
            &hung_if,
            "-i",
            &client_if,
        ]
        .map(String::from),
    );
    let peer = server.public();
    let follow_ups = |s: &[Sample]| {
        total(
            s,
            "wgkeep_follow_ups_total",
            &[("interface", client_if.as_str()), ("public_key", &peer)],
        )
    };
    let timed_out = wait_for(Duration::from_secs(6), || {
        agent
            .raw_log()
            .lines()
            .find(|l| l.contains(&hung_if) && l.contains("did not answer within"))
            .map(str::to_owned)
    });
    agent.assert_running();
    let timed_out =
        timed_out.unwrap_or_else(|| panic!("the log does not say that {hung_if} did not answer"));
    eprintln!("[hung] +{:.2}s: {timed_out}", secs(agent.started.elapsed()));

    // Watch for 8 s: the real interface is adapted and followed up, /metrics answers promptly.
    let (s0, _) = scrape(&ns, METRICS_PORT);
    let f0 = follow_ups(&s0);
    let watch_from = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut scrapes = 0;
    while watch_from.elapsed() < WATCH {
        let (_, took) = scrape(&ns, METRICS_PORT);
        slowest = slowest.max(took);
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.assert_running();
    let (s1, _) = scrape(&ns, METRICS_PORT);
    let f1 = follow_ups(&s1);
    let up = |i: &str| gauge(&s1, "wgkeep_interface_up", &[("interface", i)]);
    let pk_now = wg_show_keepalives(&ns, &client_if)
        .get(&peer)
        .cloned()
        .unwrap_or_default();
    let elapsed = agent.started.elapsed();
    let connections = hung.accepted();
    let (status, took) = agent.terminate();
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "[hung] {} handshakes forced, {} seen by the agent, {} follow-ups sent, {} not needed",
        _handshaker.count(),
        count_lines(&log_text, "handshake with"),
        count_lines(&log_text, "keepalive-toggle)"),
        count_lines(&log_text, "not needed"),
    );
    eprintln!(
        "[hung] follow-ups on {client_if}: {f0} -> {f1} in {WATCH:?}; {scrapes} scrapes, slowest \
         {:.3}s; interface_up hung {:?} real {:?}; {connections} connections to the hung socket \
         in {:.1}s; SIGTERM exit {:.2}s ({status}); total {:.1}s",
        secs(slowest),
        up(&hung_if),
        up(&client_if),
        secs(elapsed),
        secs(took),
        secs(t_start.elapsed())
    );
    assert!(
        f1 >= f0 + 3.0,
        "the real interface was not followed up while the other hung: {f0} -> {f1}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/metrics took {slowest:?}"
    );
    assert_eq!(up(&hung_if), Some(0.0));
    assert_eq!(up(&client_if), Some(1.0));
    assert_eq!(
        pk_now,
        ADAPTED.to_string(),
        "adapt mode on the real interface"
    );
    // One attempt at a time, each bounded by the 2 s device timeout.
    assert!(
        connections <= secs(elapsed) as u64 / 2 + 2,
        "{connections} connections to the hung socket in {elapsed:?}"
    );
    assert!(status.success(), "agent exit after SIGTERM: {status}");
    assert!(took < Duration::from_secs(5), "SIGTERM exit took {took:?}");
    assert_eq!(
        wg_show_keepalives(&ns, &client_if).get(&peer).cloned(),
        Some(USER_PK.to_string()),
        "SIGTERM must restore the real interface's keepalive"
    );
    assert_eq!(state_file(&scene.state_dir(), &client_if), None);
}

// ---------------------------------------------------------------------------------------------
// 5. wireguard-go frozen when the agent stops.

#[test]
fn wireguard_go_frozen_at_shutdown_keeps_the_users_keepalive() {
    if !require_root("chaos::wireguard_go_frozen_at_shutdown_keeps_the_users_keepalive") {
        return;
    }
    let _ = wgkeep_bin();
    const USER_PK: u16 = 150;
    let t_start = Instant::now();
    let mut scene = Scene::new("frozen", LabConfig::default());
    let ns = scene.ns().to_owned();
    let iface = scene.iface("fz", "c");
    let wg = WgGo::start(&ns, &iface, 52300);
    let peer = Key([7; 32]);
    uapi_set(
        &iface,
        &format!(
            "public_key={}\nallowed_ip=10.96.0.0/24\npersistent_keepalive_interval={USER_PK}\n",
            peer.to_hex()
        ),
    );
    let pk = || keepalives(&iface).get(&peer).copied();
    let logs = scene.dir.join("agent.log");
    let args =
        |mode: &str| ["--mode", mode, "--metrics-listen", "none", "-i", &iface].map(String::from);
    let mut agent = scene.agent("adapt", &logs, &args("adapt"));
    let adapted = wait_for(Duration::from_secs(5), || {
        (pk() == Some(ADAPTED)).then_some(())
    });
    assert!(adapted.is_some(), "not adapted: {:?}", pk());

    send_signal(wg.pid(), libc::SIGSTOP).unwrap();
    let frozen_at = Instant::now();
    let noticed = wait_for(Duration::from_secs(5), || {
        agent
            .raw_log()
            .lines()
            .find(|l| l.contains(&iface) && l.contains("did not answer within"))
            .map(str::to_owned)
    });
    agent.assert_running();
    let noticed = noticed.unwrap_or_else(|| panic!("no timeout logged for the frozen {iface}"));
    eprintln!(
        "[frozen] +{:.2}s after SIGSTOP: {noticed}",
        secs(frozen_at.elapsed())
    );
    let (status, took) = agent.terminate();
    let recorded = state_file(&scene.state_dir(), &iface);
    send_signal(wg.pid(), libc::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after_resume = pk();
    eprintln!(
        "[frozen] SIGTERM exit {:.2}s ({status}); after SIGCONT: PersistentKeepalive {:?}, state \
         file {recorded:?}",
        secs(took),
        after_resume
    );
    assert!(status.success(), "agent exit after SIGTERM: {status}");
    assert!(took < Duration::from_secs(6), "SIGTERM exit took {took:?}");
    let key = peer.to_base64();
    let kept = after_resume == Some(USER_PK)
        || recorded
            .as_ref()
            .and_then(|r| r.get(&key))
            .is_some_and(|c| *c == (Some(USER_PK), Some(ADAPTED)));
    assert!(
        kept,
        "the user's PersistentKeepalive {USER_PK} is lost: after the agent stopped on a frozen \
         wireguard-go it is {after_resume:?} once wireguard-go resumes, and the state file \
         records {recorded:?}"
    );
    // The next start restores whatever is recorded.
    let mut again = scene.agent(
        "follow-up",
        &scene.dir.join("again.log"),
        &args("follow-up"),
    );
    let restored = wait_for(Duration::from_secs(5), || {
        (pk() == Some(USER_PK)).then_some(())
    });
    let (status, _) = again.terminate();
    assert!(status.success());
    assert!(
        restored.is_some(),
        "the next start did not restore {USER_PK}: {:?}",
        pk()
    );
    eprintln!("[frozen] total {:.1}s", secs(t_start.elapsed()));
}
