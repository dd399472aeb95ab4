//! The only place in this crate that talks to the kernel through `libc`: entering a network
//! namespace from a short-lived thread, and reading the effective user id.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The file `ip netns add NAME` bind-mounts the namespace on.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(ns)
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends signal `sig` (e.g. `libc::SIGTERM`) to process `pid`.
pub fn send_signal(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has first joined the network namespace `ns` (created by `ip
/// netns add`), and returns its result. Only that thread changes namespace, and it ends with `f`:
/// the caller's thread and the rest of the process stay where they were. Sockets created by `f`
/// keep the namespace they were created in, and processes spawned by `f` start in it.
pub fn run_in_netns<T, F>(ns: &str, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(netns_path(ns))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: `file` is an open descriptor of a network namespace file that lives until
            // the end of this closure; setns only reads it. CLONE_NEWNET changes the namespace of
            // the calling thread alone, which is this scoped thread, so no other code of the
            // process observes the change, and the thread exits right after `f`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(file);
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other(format!("thread inside netns {ns} panicked")))?
    })
}

/// A UDP socket bound to `bind` inside the network namespace `ns`, created without spawning a
/// process. It stays in that namespace for its whole life.
pub fn udp_socket_in(ns: &str, bind: SocketAddrV4) -> io::Result<UdpSocket> {
    run_in_netns(ns, move || UdpSocket::bind(bind))?
}

/// Runs `args[0]` with the remaining arguments inside the network namespace `ns` and waits for it.
/// The child is spawned from a thread that joined the namespace (no `ip netns exec`: no mount
/// namespace, no `/etc/netns` bind mounts, a few milliseconds faster).
pub fn exec_in(ns: &str, args: &[&str]) -> io::Result<Output> {
    exec_in_with_stdin(ns, args, None)
}

/// [`exec_in`], feeding `stdin` to the child (e.g. an `nft -f -` ruleset).
pub fn exec_in_with_stdin(ns: &str, args: &[&str], stdin: Option<&[u8]>) -> io::Result<Output> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    run_in_netns(ns, || {
        let mut cmd = Command::new(program);
        cmd.args(rest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn()?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)?;
        }
        child.wait_with_output()
    })?
}

/// Spawns `cmd` inside the network namespace `ns` without waiting for it (no `ip netns exec`).
/// The caller owns the [`Child`]: wait for it or kill it.
pub fn spawn_in(ns: &str, cmd: &mut Command) -> io::Result<Child> {
    run_in_netns(ns, || cmd.spawn())?
}

/// A TCP connection to `addr` made from inside the network namespace `ns` (the socket stays
/// there for its whole life).
pub fn tcp_connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    run_in_netns(ns, move || TcpStream::connect_timeout(&addr, timeout))?
}
