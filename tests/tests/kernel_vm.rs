//! Kernel WireGuard for real: boots a Debian kernel under qemu (TCG) with a small initramfs and
//! runs `tests/vm/scenario.sh` inside it. The scenario builds client ─ NAT router ─ server network
//! namespaces with **kernel** WireGuard on both ends and RouterOS conntrack timeouts (10 s / 180 s),
//! and checks, on the serial console:
//!
//! - the environment: a kick done by hand with `wg set` at +2.5 s promotes the NAT entry;
//! - `wgkeep agent` (follow-up mode) on the client: the entry is `[ASSURED]` with > 170 s left
//!   within 5 s of the handshake, a server → client ping after 14 s idle passes,
//!   PersistentKeepalive stays 150 (also after SIGTERM);
//! - `wgkeep agent --mode adapt`: PersistentKeepalive 150 → 144 over netlink, 150 again after
//!   SIGTERM;
//! - the control without the agent: the entry stays short (< 11 s, not assured) and the ping after
//!   14 s idle is lost.
//!
//! The host kernel need not have WireGuard; it needs `qemu-system-x86_64`, a `/boot/vmlinuz-*`
//! whose modules include `wireguard.ko`, `busybox` (static) and `modprobe` (see
//! `tests/vm/README.md` for the packages). Without them the test skips loudly, or fails under
//! `CI=true`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The VM is killed after this long.
const VM_TIME_LIMIT: Duration = Duration::from_secs(240);

/// Every check the scenario must report as PASS.
const EXPECTED_CHECKS: &[&str] = &[
    "env-wg-kick-assured",
    "env-wg-kick-keepalive",
    "agent-attached",
    "agent-assured",
    "agent-inbound-after-idle",
    "agent-keepalive-unchanged",
    "agent-sigterm",
    "adapt-set",
    "adapt-restored",
    "control-short",
    "control-inbound-after-idle",
];

const PACKAGES: &str = "qemu-system-x86 busybox-static linux-image-cloud-amd64 kmod";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// What the test needs from the host.
#[derive(Debug)]
struct Host {
    kernel: PathBuf,
    kernel_version: String,
    qemu: PathBuf,
}

/// Finds a program in PATH (and the sbin directories, which a non-login PATH may lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A `/boot/vmlinuz-VERSION` whose `/usr/lib/modules/VERSION` ships WireGuard (any compression);
/// a `-cloud-` flavour if there is one.
fn find_kernel() -> Option<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            let wg_dir = Path::new("/usr/lib/modules")
                .join(&version)
                .join("kernel/drivers/net/wireguard");
            let has_wg = std::fs::read_dir(wg_dir)
                .ok()?
                .flatten()
                .any(|m| m.file_name().to_string_lossy().starts_with("wireguard.ko"));
            has_wg.then(|| (e.path(), version))
        })
        .collect();
    // The cloud flavour (the one .ci/run installs: small, boots fast) first, then the newest.
    found.sort_by_key(|(_, v)| (v.contains("cloud"), v.clone()));
    found.pop()
}

/// The host's kernel image, qemu and tools, or what is missing.
fn find_host() -> Result<Host, String> {
    let mut missing = Vec::new();
    let kernel = find_kernel();
    if kernel.is_none() {
        missing.push(
            "a /boot/vmlinuz-* with wireguard.ko in /usr/lib/modules/VERSION (linux-image-cloud-amd64)",
        );
    }
    let qemu = find_program("qemu-system-x86_64");
    if qemu.is_none() {
        missing.push("qemu-system-x86_64 (qemu-system-x86)");
    }
    if find_program("busybox").is_none() {
        missing.push("busybox (busybox-static)");
    }
    if find_program("modprobe").is_none() {
        missing.push("modprobe (kmod)");
    }
    match (kernel, qemu) {
        (Some((kernel, kernel_version)), Some(qemu)) if missing.is_empty() => Ok(Host {
            kernel,
            kernel_version,
            qemu,
        }),
        _ => Err(missing.join(", ")),
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("wgkeep-kernel-vm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the VM ended.
#[derive(Debug)]
struct VmRun {
    console: String,
    timed_out: bool,
    elapsed: Duration,
}

/// Boots the kernel with the initramfs; returns the serial console once qemu exits or is killed
/// at the time limit.
fn boot(host: &Host, initramfs: &Path) -> VmRun {
    let start = Instant::now();
    let mut child = Command::new(&host.qemu)
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&host.kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet loglevel=0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu");
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut readers = Vec::new();
    for mut pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let console = Arc::clone(&console);
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        }));
    }
    let mut timed_out = false;
    loop {
        if child.try_wait().expect("waiting for qemu").is_some() {
            break;
        }
        if start.elapsed() > VM_TIME_LIMIT {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in readers {
        let _ = r.join();
    }
    let bytes = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
    VmRun {
        console: clean_console(&String::from_utf8_lossy(&bytes)),
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// Drops carriage returns and terminal escape sequences (the firmware clears the screen).
fn clean_console(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                // CSI: ESC [ params final-byte (0x40..=0x7e); other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&d) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// One `WGKEEP-CHECK name PASS|FAIL detail` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    name: String,
    pass: bool,
    detail: String,
}

fn parse_checks(console: &str) -> Vec<Check> {
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("WGKEEP-CHECK ")? + "WGKEEP-CHECK ".len()..];
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_owned();
            let pass = match parts.next()? {
                "PASS" => true,
                "FAIL" => false,
                _ => return None,
            };
            let detail = parts.next().unwrap_or("").trim().to_owned();
            Some(Check { name, pass, detail })
        })
        .collect()
}

/// What is wrong with a run: checks missing or failed, a timeout, no end marker.
fn problems(run: &VmRun, checks: &[Check]) -> Vec<String> {
    let mut out = Vec::new();
    if run.timed_out {
        out.push(format!(
            "the VM did not power off within {VM_TIME_LIMIT:?} and was killed"
        ));
    }
    if !run.console.contains("WGKEEP-BOOTED") {
        out.push("the initramfs never reached /init (no WGKEEP-BOOTED)".into());
    }
    if !run.console.contains("WGKEEP-END") {
        out.push("the scenario did not finish (no WGKEEP-END)".into());
    }
    for c in checks.iter().filter(|c| !c.pass) {
        out.push(format!("{} FAILED: {}", c.name, c.detail));
    }
    for name in EXPECTED_CHECKS {
        if !checks.iter().any(|c| c.name == *name) {
            out.push(format!("{name}: not reported"));
        }
    }
    out
}

#[test]
fn kernel_wireguard_in_a_vm() {
    if !wgkeep_tests::require_root("kernel_vm") {
        return;
    }
    let host = match find_host() {
        Ok(h) => h,
        Err(missing) => {
            let msg = format!(
                "SKIPPED: kernel_vm needs {missing}; install with \
                 `apt-get install -y --no-install-recommends {PACKAGES}`"
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true: .ci/run must install them; see tests/vm/README.md)");
            }
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            return;
        }
    };
    let started = Instant::now();
    let bin = wgkeep_tests::wgkeep_bin();
    let tmp = TempDir::new();
    let initramfs = tmp.0.join("initramfs.cpio.gz");
    let script = workspace_root().join("tests/vm/build-initramfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&host.kernel_version)
        .arg(&bin)
        .arg(&initramfs)
        .output()
        .expect("cannot run bash");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let run = boot(&host, &initramfs);
    let checks = parse_checks(&run.console);
    // Shown on failure, or with --nocapture.
    println!(
        "==== serial console ({}, {:.1} s) ====\n{}\n==== end of console ====",
        host.kernel.display(),
        run.elapsed.as_secs_f64(),
        run.console
    );
    let problems = problems(&run, &checks);
    assert!(
        problems.is_empty(),
        "kernel WireGuard scenario failed (kernel {}, VM {:.1} s):\n  {}\n\n==== serial console ====\n{}\n==== end ====",
        host.kernel_version,
        run.elapsed.as_secs_f64(),
        problems.join("\n  "),
        run.console
    );
    eprintln!(
        "kernel_vm: {} checks passed on {} (VM {:.1} s, test {:.1} s)",
        checks.len(),
        host.kernel_version,
        run.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn console_parsing() {
    let raw = "\u{1b}c\u{1b}[?7l\u{1b}[2JWGKEEP-BOOTED kernel x\r\n\
               WGKEEP-CHECK agent-assured PASS entry assured, 179 s left\r\n\
               junk WGKEEP-CHECK control-short FAIL entry at +4.70 s: 9 s left\n\
               WGKEEP-CHECK broken MAYBE x\nWGKEEP-END rc=0\n";
    let console = clean_console(raw);
    assert!(
        console.starts_with("WGKEEP-BOOTED kernel x\n"),
        "{console:?}"
    );
    let checks = parse_checks(&console);
    assert_eq!(
        checks,
        vec![
            Check {
                name: "agent-assured".into(),
                pass: true,
                detail: "entry assured, 179 s left".into()
            },
            Check {
                name: "control-short".into(),
                pass: false,
                detail: "entry at +4.70 s: 9 s left".into()
            },
        ]
    );
    let run = VmRun {
        console,
        timed_out: false,
        elapsed: Duration::ZERO,
    };
    let p = problems(&run, &checks);
    assert!(p.iter().any(|s| s.starts_with("control-short FAILED")));
    assert!(p.iter().any(|s| s == "adapt-set: not reported"));
    assert!(!p.iter().any(|s| s.contains("agent-assured")));
}
