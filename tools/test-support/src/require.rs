//! The one rule for tests that need root, a tool or hardware: outside CI
//! they are skipped with a printed reason; under `CI=true` they fail, so CI
//! never passes by skipping.

use std::process::{Command, Stdio};

/// Whether this test runs under CI (`CI=true` or `CI=1`).
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns whether to run a test that needs `what`, given whether the need
/// is `met`: skips with a printed reason outside CI.
///
/// # Panics
///
/// Under CI when the need is not met.
#[must_use]
pub fn needs(met: bool, what: &str) -> bool {
    if met {
        return true;
    }
    assert!(!in_ci(), "this test needs {what}, and CI must run it");
    eprintln!("skipping: this test needs {what}");
    false
}

/// [`needs`] root.
#[must_use]
pub fn needs_root() -> bool {
    needs(is_root(), "root")
}

/// Whether this process runs as root.
#[must_use]
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Whether `tool` is installed: `tool --version` starts (whatever it
/// answers: `wrk` and `openssl` know no `--version` and exit non-zero).
#[must_use]
pub fn has_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
