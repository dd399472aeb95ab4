//! What the agent changed, written down before it changes it, so that nothing is left changed:
//! adapt mode records each peer's original PersistentKeepalive in `STATE_DIR/IFACE.json` before
//! setting a new one; a clean exit restores and deletes it; after a crash the next start of the
//! agent (in any mode) restores what the file says.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One peer's change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// PersistentKeepalive before wgkeep touched it (`null`: off).
    pub original: Option<u16>,
    /// What wgkeep set. A peer whose current value differs was changed by someone else since,
    /// and is left alone.
    pub set: Option<u16>,
}

/// The changes on one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Interface name.
    pub interface: String,
    /// By base64 public key.
    pub peers: BTreeMap<String, Change>,
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what the agent writes.
    #[error("{path}: not a wgkeep state file ({source}); move it away if it is not needed")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// The state directory (default `/run/wgkeep`).
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

impl StateDir {
    /// Use `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("{iface}.json"))
    }

    /// The saved changes for `iface`, if any.
    pub fn load(&self, iface: &str) -> Result<Option<Saved>, StateError> {
        let path = self.path(iface);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Write atomically and durably (temporary file, fsync, rename, fsync the directory).
    pub fn save(&self, saved: &Saved) -> Result<(), StateError> {
        let path = self.path(&saved.interface);
        let tmp = self.dir.join(format!(".{}.json.tmp", saved.interface));
        let body = serde_json::to_vec_pretty(saved).expect("state serializes");
        {
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&body).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Forget `iface`'s changes.
    pub fn remove(&self, iface: &str) -> Result<(), StateError> {
        let path = self.path(iface);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove() {
        let dir = std::env::temp_dir().join(format!("wgkeep-state-test-{}", std::process::id()));
        let sd = StateDir::open(&dir).unwrap();
        assert_eq!(sd.load("wg0").unwrap(), None);
        let mut saved = Saved {
            interface: "wg0".into(),
            ..Saved::default()
        };
        saved.peers.insert(
            "k".into(),
            Change {
                original: Some(150),
                set: Some(144),
            },
        );
        sd.save(&saved).unwrap();
        assert_eq!(sd.load("wg0").unwrap(), Some(saved));
        sd.remove("wg0").unwrap();
        sd.remove("wg0").unwrap();
        assert_eq!(sd.load("wg0").unwrap(), None);
        fs::write(dir.join("bad.json"), b"{").unwrap();
        assert!(matches!(sd.load("bad"), Err(StateError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
