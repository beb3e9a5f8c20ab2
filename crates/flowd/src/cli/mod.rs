//! The command lines of the two binaries, kept in the library so that the
//! binaries are a `main` each:
//!
//! - [`flow`]: the user agent (FNUA), one FNAP exchange per command, and
//!   the management API's component and pipeline commands;
//! - [`flowd`]: the host: `serve`, `run` (one processor over JSON lines)
//!   and `account`.

pub mod flow;
pub mod flowd;

/// Where compiled components are cached: `$FLOWD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/flowd`, else `~/.cache/flowd`.
pub(crate) fn default_cache_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("FLOWD_CACHE_DIR") {
        return Some(dir.into());
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|d| d.join("flowd"))
}
