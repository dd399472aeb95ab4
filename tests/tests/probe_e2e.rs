//! End to end: `wgkeep probe` against `wgkeep reflect` through a real kernel NAT (the lab's
//! router namespace: nftables masquerade, conntrack with the UDP timeouts set by sysctl), running
//! the real binary.
//!
//! ```text
//!  client ns               router ns                              server ns
//!  wgkeep probe  ──────>  masquerade, conntrack with         ──────>  wgkeep reflect
//!  (≤ 256 sockets)        nf_conntrack_udp_timeout{,_stream}          :51900, /metrics :9590
//! ```
//!
//! What is checked, and why:
//! - the brackets contain the sysctl values the kernel actually enforces (handshake and unreplied:
//!   `udp_timeout`; stream: `udp_timeout_stream`; grace: Linux's fixed 2 s), are at most 1 s wide
//!   (grace 0.25 s), and inbound-only traffic refreshes an entry (it does in Linux conntrack):
//!   the planner's tests use a model of conntrack, this is the kernel itself;
//! - the speed promise of the issue: handshake, stream and grace answered within
//!   `1.25 × T_stream + 10 s`, with at most 256 NAT entries; the whole run's `duration_s` is
//!   checked against the same bound plus [`WHOLE_RUN_SLACK`];
//! - the reflector's safety counters: it never sent more bytes than it received; with a PSK, a
//!   probe with another key gets nothing at all (0 packets sent, `bad_mac` drops) and fails fast
//!   with an error that names `--psk-file`;
//! - usage errors exit with status 2 before touching the network.
//!
//! Settings: a CI-sized 5 s / 25 s (about 40 s) and RouterOS 10 s / 180 s with the default
//! `--max 600s` (about 4 minutes). Every test has its own lab, so they run in parallel and the file
//! takes about as long as the RouterOS test. libtest starts tests in name order as threads free
//! up (one per core by default), so the RouterOS test is named to sort first
//! (`measures_routeros_…`) and starts at once even on two cores; the others run beside it.
//!
//! On a failure the assertion message holds every failed check, the probe's stdout and stderr,
//! the reflector's log and metrics, and the router's `conntrack -L`.

use std::cell::RefCell;
use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use wgkeep_probe::report::{Bracket, Pattern, Report};
use wgkeep_tests::{
    http_get_in, parse_prometheus_text, require_root, send_signal, wgkeep_bin, LabConfig, NetLab,
    Ns, Sample,
};

const REFLECTOR_PORT: u16 = 51900;
const METRICS_PORT: u16 = 9590;
/// Linux conntrack's grace period: a packet more than 2 s after the first one, once a reply was
/// seen, moves the entry to the stream timeout (not a sysctl).
const LINUX_GRACE_S: f64 = 2.0;
/// The issue's bound on the wall time of handshake, stream and grace: `1.25 × T_stream + 10 s`.
fn time_bound(stream_s: u32) -> f64 {
    1.25 * f64::from(stream_s) + 10.0
}
/// What the whole run (unreplied and refresh too) may take beyond [`time_bound`].
const WHOLE_RUN_SLACK: f64 = 5.0;
/// Float slack for width comparisons.
const EPS: f64 = 1e-6;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `wg genpsk`-like: 32 random bytes in standard base64 (44 characters with one `=`).
fn genpsk() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: [u8; 32] = rand::random();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    assert_eq!(out.len(), 44, "{out}");
    out
}

/// Every failed check of one test, reported together with the context at the end.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// The bracket of `pattern` contains `truth` and is at most `width` wide.
    fn bracket(&mut self, report: &Report, pattern: Pattern, truth: f64, width: f64) {
        let Some(b) = report.bracket(pattern) else {
            self.0.push(format!("{pattern}: not measured"));
            return;
        };
        self.check(b.contains(truth), || {
            format!("{pattern}: {} does not contain {truth} s", show(b))
        });
        self.check(b.width().is_some_and(|w| w <= width + EPS), || {
            format!("{pattern}: {} is wider than {width} s", show(b))
        });
    }

    /// `finished_s` of handshake, stream and grace (those present in `patterns`) within the
    /// issue's bound; returns the latest.
    fn time_bound(&mut self, report: &Report, patterns: &[Pattern], stream_s: u32) -> f64 {
        let bound = time_bound(stream_s);
        let mut latest: f64 = 0.0;
        for &p in patterns {
            match report.finished_s.get(&p) {
                Some(&t) => latest = latest.max(t),
                None => self.0.push(format!("finished_s has no {p}")),
            }
        }
        self.check(latest <= bound, || {
            format!(
                "{patterns:?} answered after {latest:.1} s, over the bound 1.25 × {stream_s} + 10 \
                 = {bound} s (finished_s {:?})",
                report.finished_s
            )
        });
        latest
    }

    fn finish(self, test: &str, context: impl FnOnce() -> String) {
        if !self.0.is_empty() {
            panic!(
                "{test}: {} check(s) failed:\n  - {}\n{}",
                self.0.len(),
                self.0.join("\n  - "),
                context()
            );
        }
    }
}

/// `(low, high]` for messages.
fn show(b: &Bracket) -> String {
    match b.high_s {
        Some(h) => format!("({}, {h}]", b.low_s),
        None => format!("({}, ∞)", b.low_s),
    }
}

fn show_opt(b: Option<&Bracket>) -> String {
    b.map_or_else(|| "-".to_owned(), show)
}

/// A lab with a reflector in the server namespace; the reflector is stopped and the scratch
/// directory removed on drop (the directory is kept, and its path printed, after a failure).
struct Rig {
    name: &'static str,
    dir: PathBuf,
    /// In a cell so that failure messages (built from `&self`) can ask whether it still runs.
    reflector: RefCell<Option<Child>>,
    reflector_log: PathBuf,
    /// Declared last: the namespaces go after the reflector.
    lab: NetLab,
}

/// One finished `wgkeep probe`.
struct ProbeRun {
    out: Output,
    /// Wall time of the process, as seen by the test.
    wall: Duration,
    args: Vec<String>,
}

impl ProbeRun {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

impl Rig {
    fn new(name: &'static str, udp_timeout: u32, udp_timeout_stream: u32) -> Rig {
        let lab = NetLab::new(LabConfig::new(udp_timeout, udp_timeout_stream)).expect("lab");
        let dir =
            std::env::temp_dir().join(format!("wgkeep-probe-e2e-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Rig {
            name,
            reflector_log: dir.join("reflector.log"),
            dir,
            reflector: RefCell::new(None),
            lab,
        }
    }

    fn reflector_addr(&self) -> String {
        SocketAddrV4::new(self.lab.server_ip(), REFLECTOR_PORT).to_string()
    }

    fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.lab.server_ip(), METRICS_PORT))
    }

    /// Writes `contents` to a file in the rig's directory (mode 0600) and returns its path.
    fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
        path
    }

    /// Starts `wgkeep reflect --listen SERVER:51900 --metrics-listen SERVER:9590 [--psk-file F]`
    /// in the server namespace and waits until it has bound its UDP port and /healthz answers.
    fn start_reflector(&mut self, psk: Option<&Path>) {
        assert!(self.reflector.borrow().is_none());
        let log = fs::File::create(&self.reflector_log).unwrap();
        let mut cmd = Command::new(wgkeep_bin());
        cmd.args(["reflect", "--listen", &self.reflector_addr()])
            .arg("--metrics-listen")
            .arg(self.metrics_addr().to_string());
        if let Some(psk) = psk {
            cmd.arg("--psk-file").arg(psk);
        }
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = self
            .lab
            .spawn(Ns::Server, &mut cmd)
            .unwrap_or_else(|e| panic!("cannot start the reflector: {e}"));
        eprintln!(
            "[{}] reflector pid {} (psk: {})",
            self.name,
            child.id(),
            psk.is_some()
        );
        *self.reflector.borrow_mut() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // /metrics is served before the UDP socket is bound: wait for both.
            if self.reflector_log().contains(" reflector on udp ")
                && matches!(self.get("/healthz"), Ok((200, _)))
            {
                return;
            }
            let exited = self
                .reflector
                .borrow_mut()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap();
            if let Some(status) = exited {
                panic!(
                    "{}: the reflector exited ({status}) at start:\n{}",
                    self.name,
                    self.reflector_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: the reflector did not bind its UDP port or answer /healthz within 10 s:\n{}",
                self.name,
                self.reflector_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get_in(
            self.lab.ns(Ns::Server),
            self.metrics_addr(),
            path,
            Duration::from_secs(3),
        )
    }

    /// The reflector's /metrics, parsed, and the raw text.
    fn metrics(&self) -> (Vec<Sample>, String) {
        match self.get("/metrics") {
            Ok((200, body)) => (parse_prometheus_text(&body), body),
            other => panic!(
                "{}: GET /metrics of the reflector: {other:?}\n{}",
                self.name,
                self.reflector_log()
            ),
        }
    }

    fn reflector_log(&self) -> String {
        fs::read_to_string(&self.reflector_log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Whether the reflector still runs: a reflector that exited during a probe (its log then
    /// ends with `stopping` if it got SIGTERM or SIGINT) explains a probe's "port unreachable".
    fn reflector_state(&self) -> String {
        match self.reflector.borrow_mut().as_mut().map(Child::try_wait) {
            None => "not started".to_owned(),
            Some(Ok(None)) => "still running".to_owned(),
            Some(Ok(Some(status))) => {
                format!("EXITED during the test with {status}: a signal from outside this test?")
            }
            Some(Err(e)) => format!("state unknown: {e}"),
        }
    }

    fn conntrack_dump(&self) -> String {
        let out = self.lab.exec(Ns::Router, &["conntrack", "-L", "-p", "udp"]);
        text(&out)
    }

    /// Runs `wgkeep probe SERVER:51900 ARGS…` in the client namespace and waits for it, at most
    /// `limit` (then it is killed and the test fails with its output).
    fn probe(&self, args: &[&str], limit: Duration) -> ProbeRun {
        let out_path = self.dir.join("probe.stdout");
        let err_path = self.dir.join("probe.stderr");
        let mut cmd = Command::new(wgkeep_bin());
        let mut all: Vec<String> = vec!["probe".into(), self.reflector_addr()];
        all.extend(args.iter().map(|s| s.to_string()));
        cmd.args(&all)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap());
        eprintln!("[{}] wgkeep {}", self.name, all.join(" "));
        let t0 = Instant::now();
        let mut child = self
            .lab
            .spawn(Ns::Client, &mut cmd)
            .unwrap_or_else(|e| panic!("cannot start the probe: {e}"));
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: `wgkeep {}` still running after {:.0} s: killed\n--- stdout ---\n{}\n\
                     --- stderr ---\n{}\n--- reflector ({}) log ---\n{}\n--- router conntrack ---\n{}",
                    self.name,
                    all.join(" "),
                    secs(limit),
                    fs::read_to_string(&out_path).unwrap_or_default(),
                    fs::read_to_string(&err_path).unwrap_or_default(),
                    self.reflector_state(),
                    self.reflector_log(),
                    self.conntrack_dump()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let wall = t0.elapsed();
        let out = Output {
            status,
            stdout: fs::read(&out_path).unwrap_or_default(),
            stderr: fs::read(&err_path).unwrap_or_default(),
        };
        eprintln!(
            "[{}] probe exited {status} after {:.1} s",
            self.name,
            secs(wall)
        );
        ProbeRun {
            out,
            wall,
            args: all,
        }
    }

    /// What a failure message carries: the probe's output, the reflector's log and metrics, the
    /// router's conntrack table.
    fn context(&self, run: Option<&ProbeRun>) -> String {
        let mut s = String::new();
        if let Some(run) = run {
            s += &format!(
                "--- `wgkeep {}` ({}, {:.1} s) ---\n{}\n",
                run.args.join(" "),
                run.out.status,
                secs(run.wall),
                text(&run.out)
            );
        }
        s += &format!(
            "--- reflector ({}) log ---\n{}\n",
            self.reflector_state(),
            self.reflector_log()
        );
        if let Ok((_, body)) = self.get("/metrics") {
            let counters: String = body
                .lines()
                .filter(|l| l.starts_with("wgkeep_reflector_"))
                .map(|l| format!("{l}\n"))
                .collect();
            s += &format!("--- reflector metrics ---\n{counters}");
        }
        s += &format!("--- router conntrack -L ---\n{}", self.conntrack_dump());
        s
    }

    /// The report of a successful `--json` run; panics with the context otherwise.
    fn report(&self, run: &ProbeRun) -> Report {
        if !run.out.status.success() {
            panic!(
                "{}: the probe failed ({})\n{}",
                self.name,
                run.out.status,
                self.context(Some(run))
            );
        }
        Report::from_json(&run.stdout()).unwrap_or_else(|e| {
            panic!(
                "{}: the probe's stdout is not a report ({e})\n{}",
                self.name,
                self.context(Some(run))
            )
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.reflector.get_mut().take() {
            // Never signal a pid that was already reaped (it may belong to someone else now).
            if let Ok(None) = child.try_wait() {
                let _ = send_signal(child.id(), libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("[{}] files kept in {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A reflector counter (no labels) or a `wgkeep_reflector_dropped_total{reason}`.
fn counter(samples: &[Sample], name: &str, reason: Option<&str>) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && match reason {
                    Some(r) => s.has_labels(&[("reason", r)]),
                    None => s.labels.is_empty(),
                }
        })
        .map(|s| s.value)
}

/// The reflector's bytes in and out, checked: out ≤ in (no amplification) and something was
/// sent.
fn check_no_amplification(c: &mut Checks, samples: &[Sample]) -> (f64, f64) {
    let received = counter(samples, "wgkeep_reflector_received_bytes_total", None);
    let sent = counter(samples, "wgkeep_reflector_sent_bytes_total", None);
    c.check(received.is_some() && sent.is_some(), || {
        "the reflector's metrics lack wgkeep_reflector_{received,sent}_bytes_total".into()
    });
    let (received, sent) = (received.unwrap_or(0.0), sent.unwrap_or(0.0));
    c.check(sent <= received, || {
        format!("the reflector sent {sent} bytes but received only {received}")
    });
    c.check(sent > 0.0, || "the reflector sent nothing".into());
    (received, sent)
}

/// The full measurement (every pattern) of a NAT with `udp_timeout` / `udp_timeout_stream`:
/// brackets, widths, refresh, the time bound, the socket cap, the recommendation, no
/// amplification. Returns the report.
fn full_measurement(
    rig: &mut Rig,
    extra: &[&str],
    limit: Duration,
    wall_checks: impl FnOnce(&mut Checks, &ProbeRun),
) -> Report {
    let cfg = rig.lab.config().clone();
    rig.start_reflector(None);
    let mut args = vec!["--json", "--quiet"];
    args.extend_from_slice(extra);
    let run = rig.probe(&args, limit);
    let report = rig.report(&run);
    let mut c = Checks::default();
    let (t, ts) = (
        f64::from(cfg.udp_timeout),
        f64::from(cfg.udp_timeout_stream),
    );
    c.bracket(&report, Pattern::Handshake, t, 1.0);
    c.bracket(&report, Pattern::Unreplied, t, 1.0);
    c.bracket(&report, Pattern::Stream, ts, 1.0);
    c.bracket(&report, Pattern::Grace, LINUX_GRACE_S, 0.25);
    c.check(report.inbound_refresh == Some(true), || {
        format!(
            "inbound_refresh is {:?}; Linux conntrack refreshes on inbound packets",
            report.inbound_refresh
        )
    });
    let latest = c.time_bound(
        &report,
        &[Pattern::Handshake, Pattern::Stream, Pattern::Grace],
        cfg.udp_timeout_stream,
    );
    let whole = time_bound(cfg.udp_timeout_stream) + WHOLE_RUN_SLACK;
    c.check(report.duration_s <= whole, || {
        format!(
            "the whole run took duration_s = {:.1} s, over {whole} s",
            report.duration_s
        )
    });
    c.check(report.duration_s <= secs(run.wall) + 0.5, || {
        format!(
            "duration_s = {:.1} s but the process ran only {:.1} s",
            report.duration_s,
            secs(run.wall)
        )
    });
    c.check(report.sockets_used <= 256, || {
        format!("{} sockets used, over 256", report.sockets_used)
    });
    c.check(report.recommendation == report.recommend(), || {
        format!(
            "recommendation {:?} is not what the brackets give: {:?}",
            report.recommendation,
            report.recommend()
        )
    });
    // The JSON contract's keys, as text (more keys are welcome).
    let stdout = run.stdout();
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
        "persistent_keepalive_s",
        "follow_up_delay_s",
    ] {
        c.check(stdout.contains(&format!("\"{key}\"")), || {
            format!("the JSON has no key {key:?}")
        });
    }
    let (samples, _) = rig.metrics();
    let (received, sent) = check_no_amplification(&mut c, &samples);
    wall_checks(&mut c, &run);
    eprintln!(
        "[{}] {}/{} s: handshake {} unreplied {} stream {} grace {} refresh {:?}; \
         handshake+stream+grace done at {latest:.1} s (bound {}), duration_s {:.1} (process {:.1} \
         s), {} sockets, reflector {received} B in / {sent} B out, recommendation {:?}",
        rig.name,
        cfg.udp_timeout,
        cfg.udp_timeout_stream,
        show_opt(report.handshake.as_ref()),
        show_opt(report.unreplied.as_ref()),
        show_opt(report.stream.as_ref()),
        show_opt(report.grace.as_ref()),
        report.inbound_refresh,
        time_bound(cfg.udp_timeout_stream),
        report.duration_s,
        secs(run.wall),
        report.sockets_used,
        report.recommendation,
    );
    c.finish(rig.name, || rig.context(Some(&run)));
    report
}

/// RouterOS 7 (10 s / 180 s) with the default `--max 600s`: about four minutes. Named to sort
/// first, so that libtest starts it at once (see the module documentation).
#[test]
fn measures_routeros_10s_180s_with_the_default_max() {
    const NAME: &str = "routeros";
    if !require_root(NAME) {
        return;
    }
    let mut rig = Rig::new(NAME, 10, 180);
    // 235 s is the bound; a hung probe is killed well after it.
    full_measurement(&mut rig, &[], Duration::from_secs(420), |_, _| {});
}

/// A CI-sized 5 s / 25 s NAT with `--max 60s`, plus `--plot`.
#[test]
fn probe_ci_sized_5s_25s_and_plot() {
    const NAME: &str = "ci-5-25";
    if !require_root(NAME) {
        return;
    }
    let mut rig = Rig::new(NAME, 5, 25);
    let plot = rig.dir.join("survival.svg");
    let plot_arg = plot.display().to_string();
    full_measurement(
        &mut rig,
        &["--max", "60s", "--plot", &plot_arg],
        Duration::from_secs(120),
        |c, _| match fs::read_to_string(&plot) {
            Ok(svg) => {
                let svg = svg.trim();
                c.check(
                    svg.contains("<svg") && svg.ends_with("</svg>") && svg.len() > 500,
                    || format!("--plot wrote no SVG ({} bytes): {:.200}", svg.len(), svg),
                );
            }
            Err(e) => c.check(false, || format!("--plot {}: {e}", plot.display())),
        },
    );
}

/// `--psk-file`: a probe with the reflector's key measures (handshake and stream, 5 s / 25 s); one
/// with another key gets not a single packet back and fails within seconds, naming `--psk-file`.
#[test]
fn psk_file_same_key_measures_other_key_gets_nothing() {
    const NAME: &str = "psk";
    if !require_root(NAME) {
        return;
    }
    let mut rig = Rig::new(NAME, 5, 25);
    let psk = rig.write_file("probe.psk", &format!("{}\n", genpsk()));
    let other = rig.write_file("other.psk", &format!("{}\n", genpsk()));
    rig.start_reflector(Some(&psk));
    let mut c = Checks::default();

    // First the wrong key, while the reflector has sent nothing yet.
    let other_arg = other.display().to_string();
    let bad = rig.probe(
        &[
            "--json",
            "--quiet",
            "--max",
            "60s",
            "--psk-file",
            &other_arg,
        ],
        Duration::from_secs(60),
    );
    c.check(bad.out.status.code() == Some(1), || {
        format!("a probe with another PSK exited {}, not 1", bad.out.status)
    });
    c.check(bad.wall <= Duration::from_secs(15), || {
        format!(
            "a probe with another PSK took {:.1} s to give up (≈ 10 s at most expected)",
            secs(bad.wall)
        )
    });
    c.check(bad.stderr().contains("--psk-file"), || {
        "the error of a probe with another PSK does not mention --psk-file".into()
    });
    c.check(bad.out.stdout.is_empty(), || {
        "a probe with another PSK printed a report".into()
    });
    let (samples, _) = rig.metrics();
    let sent = counter(&samples, "wgkeep_reflector_sent_packets_total", None);
    let received = counter(&samples, "wgkeep_reflector_received_packets_total", None);
    let bad_mac = counter(&samples, "wgkeep_reflector_dropped_total", Some("bad_mac"));
    c.check(sent == Some(0.0), || {
        format!("the reflector sent {sent:?} packets to a probe with another PSK")
    });
    c.check(bad_mac.is_some_and(|n| n > 0.0), || {
        format!("bad_mac drops: {bad_mac:?}, received packets {received:?}")
    });
    eprintln!(
        "[{NAME}] other PSK: {} after {:.1} s; reflector received {received:?} packets, \
         sent {sent:?}, bad_mac {bad_mac:?}; stderr: {}",
        bad.out.status,
        secs(bad.wall),
        bad.stderr().trim()
    );
    c.finish(NAME, || rig.context(Some(&bad)));

    // Then the right key.
    let mut c = Checks::default();
    let psk_arg = psk.display().to_string();
    let good = rig.probe(
        &[
            "--json",
            "--quiet",
            "--max",
            "60s",
            "--measure",
            "handshake,stream",
            "--psk-file",
            &psk_arg,
        ],
        Duration::from_secs(120),
    );
    let report = rig.report(&good);
    c.bracket(&report, Pattern::Handshake, 5.0, 1.0);
    c.bracket(&report, Pattern::Stream, 25.0, 1.0);
    c.check(report.grace.is_none() && report.unreplied.is_none(), || {
        format!(
            "--measure handshake,stream measured grace {:?} / unreplied {:?}",
            report.grace, report.unreplied
        )
    });
    let latest = c.time_bound(&report, &[Pattern::Handshake, Pattern::Stream], 25);
    c.check(
        report.duration_s <= time_bound(25) + WHOLE_RUN_SLACK,
        || format!("the whole run took duration_s = {:.1} s", report.duration_s),
    );
    c.check(report.sockets_used <= 256, || {
        format!("{} sockets used, over 256", report.sockets_used)
    });
    let (samples, _) = rig.metrics();
    let (received, sent) = check_no_amplification(&mut c, &samples);
    eprintln!(
        "[{NAME}] same PSK, 5/25 s: handshake {} stream {}; done at {latest:.1} s, duration_s \
         {:.1} (process {:.1} s), {} sockets, reflector {received} B in / {sent} B out",
        show_opt(report.handshake.as_ref()),
        show_opt(report.stream.as_ref()),
        report.duration_s,
        secs(good.wall),
        report.sockets_used
    );
    c.finish(NAME, || rig.context(Some(&good)));
}

/// Usage errors exit with status 2, at once, and say what is wrong (no namespace needed: they are
/// found before any socket is opened).
#[test]
fn usage_errors_exit_2() {
    let dir = std::env::temp_dir().join(format!("wgkeep-probe-e2e-{}-usage", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("no-such.psk").display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["probe", "127.0.0.1:9", "--max", "1s"], "--max"),
        (
            &["probe", "127.0.0.1:9", "--max-sockets", "10"],
            "--max-sockets",
        ),
        (
            &["probe", "127.0.0.1:9", "--psk-file", &missing],
            "--psk-file",
        ),
        (&["probe", "127.0.0.1:9", "--max", "ten"], "--max"),
        (
            &["probe", "127.0.0.1:9", "--resolution", "1fortnight"],
            "--resolution",
        ),
        (&["reflect"], "--listen"),
    ];
    let mut failures = Vec::new();
    for (args, mention) in cases {
        let t0 = Instant::now();
        let out = Command::new(wgkeep_bin())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = t0.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2)
            || !stderr.contains(mention)
            || took > Duration::from_secs(5)
        {
            failures.push(format!(
                "`wgkeep {}`: {} after {:.1} s (want exit 2 at once, mentioning {mention})\n{}",
                args.join(" "),
                out.status,
                secs(took),
                text(&out)
            ));
        }
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
