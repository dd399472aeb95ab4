//! Helpers for the tests of deploy/ and of the Debian package (tests/tests/deploy_*.rs): the
//! repository's files, external tools that may be missing (a loud skip notice, or a failure under
//! CI=true), temporary directories, running commands, and running the real `wgkeep` with a
//! command line taken from a deploy file until it serves /healthz.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::wgkeep_bin;

/// The workspace root (the tests crate's parent directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
}

/// The text of `path`, relative to the workspace root (or absolute). Panics naming the file.
pub fn read(path: impl AsRef<Path>) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Says that `test` is skipped because it needs `what`: a loud notice on stderr, except under CI
/// (`CI=true`), where a skip is a failure and this panics.
pub fn skip(test: &str, what: &str) {
    let msg = format!("SKIPPED: {test} needs {what}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: a skip is a failure)");
    }
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
}

/// `name` on PATH, or `None` after a loud skip notice (a panic under CI=true); `install` says how
/// to get it.
pub fn tool(name: &str, install: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip(test, &format!("`{name}` ({install})"));
    }
    found
}

/// A directory under the system's temporary directory, unique to this process and call, removed
/// on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "wgkeep-deploy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // Left by an earlier process with the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion. Panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` to completion; its stdout. Panics with its status and output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of `--name VALUE` or `--name=VALUE`.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(name)?.strip_prefix('=').map(str::to_owned)
        }
    })
}

/// `GET path` over HTTP/1.1 to `addr`; the body. Panics unless the status is 200.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}

/// The [`wgkeep_bin`] binary running (without `RUST_LOG` and `JOURNAL_STREAM`, its stderr read
/// line by line), killed on drop.
#[derive(Debug)]
pub struct Wgkeep {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Wgkeep {
    /// Starts `wgkeep ARGS`.
    pub fn spawn<I, S>(args: I) -> Wgkeep
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(wgkeep_bin())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wgkeep");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Wgkeep {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads stderr until "serving /metrics and /healthz on http://ADDR"; the address. Panics
    /// with `what` and the log if that does not come within 30 s.
    pub fn wait_serving(&mut self, what: &str) -> String {
        const MARK: &str = "serving /metrics and /healthz on http://";
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(i) = line.find(MARK) {
                        return line[i + MARK.len()..].trim().to_owned();
                    }
                    self.log.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.child.try_wait().ok().flatten();
        panic!(
            "{what}: did not start (exit: {status:?}):\n{}",
            self.log.join("\n")
        );
    }
}

impl Drop for Wgkeep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `wgkeep ARGS`, as written in a deploy file, with whatever would touch this machine swapped
/// for stand-ins (listen addresses → 127.0.0.1:0, --state-dir → a temporary directory,
/// --interface → a name that does not exist), until it serves /healthz. Panics with its log if
/// it exits instead: the arguments parse and pass the agent's own checks. `origin` names the
/// deploy file in messages.
pub fn assert_cli_accepts(args: &[String], origin: &str) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = TempDir::new("cli");
    assert!(
        flag(args, "--reflector").is_none(),
        "{origin}: --reflector would probe a real host"
    );
    let mut run = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (a.as_str(), None),
        };
        let stand_in = match name {
            "--metrics-listen" | "--listen" => Some("127.0.0.1:0".to_owned()),
            "--state-dir" => Some(dir.path().join("state").to_string_lossy().into_owned()),
            "--interface" | "-i" => Some(format!("wkchk{}x{n}", std::process::id() % 10_000)),
            _ => None,
        };
        match (stand_in, inline) {
            (Some(v), Some(_)) => run.push(format!("{name}={v}")),
            (Some(v), None) => {
                run.push(a.clone());
                it.next()
                    .unwrap_or_else(|| panic!("{origin}: {a} without a value"));
                run.push(v);
            }
            (None, _) => run.push(a.clone()),
        }
    }
    let mut wgkeep = Wgkeep::spawn(&run);
    let addr = wgkeep.wait_serving(&format!("{origin}: wgkeep {}", run.join(" ")));
    assert!(http_get(&addr, "/healthz").starts_with("ok"), "{origin}");
    drop(wgkeep);
    drop(dir);
}
