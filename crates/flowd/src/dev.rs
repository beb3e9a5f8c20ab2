//! `flow dev`: the edit loop of a processor project. Watch the project's
//! files; on a change build the component (`[processor] build` of
//! `flow.toml`), run its fixture tests ([`crate::testing`]) and, when both
//! pass, hand the new component to a running processor. A failed build or
//! test leaves the running component as it is, and says why.
//!
//! This module holds the parts that need no host: the watcher and the
//! build. The swap itself is an FNAP `UPDATE PROCESSOR` with the new
//! component, sent by the `flow` command line; the host keeps the
//! processor's position and keyed state across it.

use anyhow::{Context, Result, bail};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Directories never watched: build output, version control, dependencies.
const SKIPPED: &[&str] = &["target", ".git", "node_modules", "__pycache__", ".venv"];

/// The most files a project may have watched; beyond it the watch fails
/// rather than spend its time walking.
pub const MAX_FILES: usize = 20_000;

/// How deep the watch goes below the project directory.
const MAX_DEPTH: usize = 16;

/// The longest a build may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The state of a project's files, to tell when one changed.
pub struct Watch {
    root: PathBuf,
    /// Files not watched (the component the build writes).
    skip: Vec<PathBuf>,
    last: u64,
}

impl Watch {
    /// Watches `root`, except the files in `skip`.
    pub fn new(root: &Path, skip: Vec<PathBuf>) -> Result<Watch> {
        let mut watch = Watch {
            root: root.to_owned(),
            skip: skip
                .into_iter()
                .map(|p| p.canonicalize().unwrap_or(p))
                .collect(),
            last: 0,
        };
        watch.last = watch.fingerprint()?;
        Ok(watch)
    }

    /// Whether a file was added, removed or written since the last call.
    pub fn changed(&mut self) -> Result<bool> {
        let now = self.fingerprint()?;
        let changed = now != self.last;
        self.last = now;
        Ok(changed)
    }

    /// A hash of every watched file's path, size and modification time.
    fn fingerprint(&self) -> Result<u64> {
        let mut hasher = DefaultHasher::new();
        let mut files = 0usize;
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| dir.display().to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for path in entries {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.as_deref().is_some_and(|n| SKIPPED.contains(&n)) {
                    continue;
                }
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    if depth < MAX_DEPTH {
                        stack.push((path, depth + 1));
                    }
                    continue;
                }
                if self
                    .skip
                    .iter()
                    .any(|s| path.canonicalize().is_ok_and(|p| &p == s))
                {
                    continue;
                }
                files += 1;
                if files > MAX_FILES {
                    bail!(
                        "{} has more than {MAX_FILES} files to watch",
                        self.root.display()
                    );
                }
                path.hash(&mut hasher);
                meta.len().hash(&mut hasher);
                meta.modified().ok().hash(&mut hasher);
            }
        }
        Ok(hasher.finish())
    }
}

/// Runs `command` with `sh -c` in `dir`: the time it took, or why it
/// failed with the end of what it printed.
pub fn build(dir: &Path, command: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{command}` did not start: {e}"))?;
    // The output is read on threads so that a chatty build cannot fill a
    // pipe and stall; only its end is kept.
    let tail = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    text.extend_from_slice(&chunk[..n]);
                    if text.len() > 64 << 10 {
                        text.drain(..text.len() - (32 << 10));
                    }
                }
            }
            text
        })
    };
    let out = tail(child.stdout.take().map(|p| Box::new(p) as _));
    let err = tail(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > BUILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{command}` ran longer than {}s and was stopped",
                    BUILD_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("`{command}`: {e}")),
        }
    };
    let mut printed = out.join().unwrap_or_default();
    printed.extend(err.join().unwrap_or_default());
    if status.success() {
        return Ok(started.elapsed());
    }
    let text = String::from_utf8_lossy(&printed);
    let lines: Vec<&str> = text.lines().collect();
    let end = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(format!("`{command}` failed ({status}):\n{end}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_once_and_build_output_is_not_watched() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("target")).expect("mkdir");
        std::fs::write(dir.path().join("src/lib.rs"), "a").expect("write");
        let built = dir.path().join("out.wasm");
        std::fs::write(&built, "1").expect("write");
        let mut watch = Watch::new(dir.path(), vec![built.clone()]).expect("watch");
        assert!(!watch.changed().expect("walk"));
        std::fs::write(&built, "22").expect("write");
        std::fs::write(dir.path().join("target/x"), "b").expect("write");
        assert!(
            !watch.changed().expect("walk"),
            "build output is not a change"
        );
        std::fs::write(dir.path().join("src/lib.rs"), "ab").expect("write");
        assert!(watch.changed().expect("walk"));
        assert!(!watch.changed().expect("walk"), "seen once");
        std::fs::write(dir.path().join("src/new.rs"), "").expect("write");
        assert!(watch.changed().expect("walk"), "a new file");
    }

    #[test]
    fn a_failed_build_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(build(dir.path(), "true").is_ok());
        let e = build(
            dir.path(),
            "echo compiling; echo 'error: no such thing' >&2; exit 3",
        )
        .expect_err("fails");
        assert!(e.contains("error: no such thing") && e.contains("3"), "{e}");
    }
}
