//! Shared by the fuzz targets in `fuzz_targets/`: the datagram framing of `netlink_peers`,
//! independent encoders of kernel dumps and UAPI replies (for seeds and round trips), and the
//! reference UAPI parser the streaming one is checked against.
//!
//! The seed corpora (`corpus/<target>/seed-*`) are written, and checked, by the tests here:
//!
//! ```sh
//! cd fuzz && cargo test                                # are the seeds current?
//! cd fuzz && WGKEEP_WRITE_FUZZ_CORPUS=1 cargo test     # rewrite them
//! ```

pub mod netlink;
pub mod uapi;

/// Whether two parse results are the same: equal devices, or errors of the same kind with the
/// same message (compared without formatting the devices, which is most of a target's time).
pub fn same(
    a: &Result<wgkeep_agent::wg::DeviceInfo, wgkeep_agent::wg::WgError>,
    b: &Result<wgkeep_agent::wg::DeviceInfo, wgkeep_agent::wg::WgError>,
) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => {
            std::mem::discriminant(a) == std::mem::discriminant(b) && a.to_string() == b.to_string()
        }
        _ => false,
    }
}

/// `assert!(same(&a, &b), ...)`, showing both results when they differ.
#[macro_export]
macro_rules! assert_same {
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        assert!(
            $crate::same(a, b),
            "{}\n left: {:?}\nright: {:?}",
            format_args!($($msg)+),
            a,
            b
        );
    }};
}

/// Splits a fuzz input into datagrams: each is a little-endian `u16` length followed by that
/// many bytes (fewer if the input ends first); a single trailing byte is a datagram of its own.
pub fn datagrams(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some((len, body)) = rest.split_first_chunk::<2>() else {
            out.push(rest);
            break;
        };
        let n = usize::from(u16::from_le_bytes(*len)).min(body.len());
        out.push(&body[..n]);
        rest = &body[n..];
    }
    out
}

/// The inverse of [`datagrams`]: a fuzz input carrying `datagrams` (each under 64 KiB).
pub fn frame<D: AsRef<[u8]>>(datagrams: &[D]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        let d = d.as_ref();
        let len = u16::try_from(d.len()).expect("a datagram under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

/// Writes the seeds (`WGKEEP_WRITE_FUZZ_CORPUS=1`) into `dir` as `seed-<name>`, or checks that
/// the files there are current.
#[cfg(test)]
fn check_or_write_seeds(dir: &std::path::Path, seeds: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let write = std::env::var_os("WGKEEP_WRITE_FUZZ_CORPUS").is_some_and(|v| v == "1");
    if write {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (name, bytes) in seeds {
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; regenerate with `cd fuzz && WGKEEP_WRITE_FUZZ_CORPUS=1 cargo test`",
                    path.display()
                )
            });
            assert!(on_disk == bytes, "{} is stale", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        let ds: Vec<Vec<u8>> = vec![vec![1, 2, 3], vec![], vec![0xff; 300]];
        assert_eq!(datagrams(&frame(&ds)), ds);
        assert_eq!(datagrams(&[5]), vec![&[5u8][..]]);
        assert_eq!(datagrams(&[9, 0, 1, 2]), vec![&[1u8, 2][..]]);
        assert!(datagrams(&[]).is_empty());
    }
}
