//! What the host grants a processor: logging, keyed state and a clock.
//! Nothing else (no files, network or environment) is reachable.

use crate::bindings::bridge::eson::flow::{clock, log as wit_log, state as wit_state};

/// Log levels of the host's structured log.
pub use wit_log::Level;

/// Writes `message` to the host's log, tagged with this processor's name.
pub fn log(level: Level, message: &str) {
    wit_log::log(level, message);
}

/// `log` at level info.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// `log` at level warn.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// `log` at level debug.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Wall-clock milliseconds since the Unix epoch, as the host sees it.
pub fn now_ms() -> u64 {
    clock::now_ms()
}

/// Keyed state private to this processor. Writes of a call are committed when
/// the call succeeds and rolled back when it fails, so a retried batch sees
/// the same state.
pub mod state {
    use super::wit_state;

    /// The value stored under `key`, if any.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        wit_state::get(key)
    }

    /// Stores `value` under `key` (within the state quota, or the call fails).
    pub fn set(key: &str, value: &[u8]) {
        wit_state::set(key, value);
    }

    /// Removes `key`.
    pub fn delete(key: &str) {
        wit_state::delete(key);
    }

    /// Keys starting with `prefix`, in byte order.
    pub fn keys(prefix: &str) -> Vec<String> {
        wit_state::keys(prefix)
    }

    /// The value of `key` decoded from JSON; `None` when absent or undecodable.
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Option<T> {
        get(key).and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            set(key, &bytes);
        }
    }
}
