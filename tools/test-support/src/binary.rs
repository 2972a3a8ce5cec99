//! The workspace's binaries, built once per test process, and copies of them
//! that another user can run.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// `target/release/<name>` of package `package`, built (or found up to
/// date) once per test process.
///
/// # Panics
///
/// If the build fails.
pub fn release(package: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let root = workspace_root();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|p| p == package) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // What cargo sets for the test's own package: a build script that
        // tracks one (ring tracks `CARGO_MANIFEST_DIR`) would otherwise see
        // it change between this build and a plain `cargo build`, and each
        // would rebuild ring, rustls and everything above them.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("CARGO_PKG_")
                || matches!(
                    &*key_str,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                )
            {
                cmd.env_remove(&key);
            }
        }
        let status = cmd
            .args(["build", "--release", "-q", "-p", package])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {package} failed");
        built.push(package.to_owned());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("release").join(name)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of executable `path` that every user can run: a test that starts
/// a binary as another user (`nobody`) must not depend on where the clone
/// is (a root-only directory such as `/root/corelane` cannot be traversed
/// by others). The copy sits in a fresh world-readable directory under the
/// system's temporary directory, named for the binary's size and mtime, and
/// is made once per build of the binary.
///
/// # Panics
///
/// If the copy cannot be made.
pub fn reachable_by_all(path: &Path) -> PathBuf {
    static COPIES: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    let copies = copies.get_or_insert_with(HashMap::new);
    if let Some(copy) = copies.get(path) {
        return copy.clone();
    }
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stamp = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let name = path.file_name().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "corelane-test-bin-{}-{}-{stamp}",
        name.to_string_lossy(),
        meta.len()
    ));
    let copy = dir.join(name);
    if !copy.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Copy then rename: a concurrent test process never runs half a file.
        let partial = dir.join(format!(
            ".{}.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::copy(path, &partial).unwrap();
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&partial, &copy).unwrap();
    }
    copies.insert(path.to_owned(), copy.clone());
    copy
}

/// The address in a server's start-up line (`corelane listening
/// addr=127.0.0.1:40123 ...`): `None` for any other line.
#[must_use]
pub fn listening_addr(line: &str) -> Option<std::net::SocketAddr> {
    if !line.contains("corelane listening") {
        return None;
    }
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
