//! The command lines of the two binaries, kept in the library so that the
//! binaries are a `main` each:
//!
//! - [`flow`]: the user agent (FNUA), one FNAP exchange per command, and
//!   the management API's component and pipeline commands;
//! - [`flowd`]: the host: `serve`, `run` (one processor over JSON lines)
//!   and `account`.

pub mod flow;
pub mod flowd;
