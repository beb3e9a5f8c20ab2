//! A runner's log: its failures (traps, deadline stops, retries, dead
//! letters) and what its guests said, written to the participant's
//! processor log ([`flowd_broker::logs`]) and to the host's own log.
//!
//! Rate-limited per runner, in two budgets so that a chatty guest cannot
//! hide its processor's failures: a processor failing on every event, or
//! a guest printing for every event, costs at most a few records a second
//! once its burst is spent; what the limit held back is counted and said
//! in a `dropped` record.

use flowd_broker::logs::{Level, LogRecord, Logs};
use flowd_wasm::{Said, Source};
use std::sync::Arc;
use tokio::time::Instant;

/// Records a second, and the burst, for failures.
const FAILURES: (f64, f64) = (20.0, 200.0);
/// Records a second, and the burst, for what guests say.
const GUEST: (f64, f64) = (20.0, 200.0);

struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    held_back: u64,
}

impl Budget {
    fn new((rate, burst): (f64, f64)) -> Self {
        Budget {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            held_back: 0,
        }
    }

    /// Takes a token; `false` (and counted) when none is left.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.held_back += 1;
            false
        }
    }
}

/// What one record is about.
pub(crate) struct Entry<'a> {
    pub level: Level,
    pub kind: &'a str,
    pub processor: &'a str,
    pub event: Option<String>,
    pub message: String,
}

/// One runner's log.
pub(crate) struct Logbook {
    logs: Option<Logs>,
    host: Arc<str>,
    instance: u32,
    failures: Budget,
    guest: Budget,
}

impl Logbook {
    pub(crate) fn new(logs: Option<Logs>, host: Arc<str>, instance: u32) -> Self {
        Logbook {
            logs,
            host,
            instance,
            failures: Budget::new(FAILURES),
            guest: Budget::new(GUEST),
        }
    }

    /// Logs a failure of the processor (or of a fused step).
    pub(crate) async fn failure(&mut self, entry: Entry<'_>) {
        if !self.failures.take() {
            return;
        }
        match entry.level {
            Level::Error => tracing::error!(
                processor = entry.processor,
                event = entry.event.as_deref().unwrap_or("-"),
                kind = entry.kind,
                "{}",
                entry.message
            ),
            _ => tracing::warn!(
                processor = entry.processor,
                event = entry.event.as_deref().unwrap_or("-"),
                kind = entry.kind,
                "{}",
                entry.message
            ),
        }
        let processor = entry.processor.to_owned();
        self.write(entry).await;
        self.held_back(&processor, false).await;
    }

    /// Logs what the guest of `processor` said during a call.
    pub(crate) async fn said(&mut self, processor: &str, said: Said) {
        self.guest.held_back = self.guest.held_back.saturating_add(said.dropped);
        for line in said.lines {
            if !self.guest.take() {
                continue;
            }
            let level = match line.source {
                Source::Log(level) => match level {
                    flowd_wasm::wit::log::Level::Trace => Level::Trace,
                    flowd_wasm::wit::log::Level::Debug => Level::Debug,
                    flowd_wasm::wit::log::Level::Info => Level::Info,
                    flowd_wasm::wit::log::Level::Warn => Level::Warn,
                    flowd_wasm::wit::log::Level::Error => Level::Error,
                },
                Source::Stdout => Level::Info,
                Source::Stderr => Level::Warn,
            };
            let kind = match line.source {
                Source::Log(_) => "guest",
                other => other.as_str(),
            };
            if !matches!(line.source, Source::Log(_)) {
                tracing::debug!(processor, kind, "{}", line.text);
            }
            self.write(Entry {
                level,
                kind,
                processor,
                event: None,
                message: line.text,
            })
            .await;
        }
        self.held_back(processor, true).await;
    }

    /// Says how many records the limit held back, when the budget allows
    /// one more record (the count waits otherwise, and grows).
    async fn held_back(&mut self, processor: &str, guest: bool) {
        let budget = if guest {
            &mut self.guest
        } else {
            &mut self.failures
        };
        let count = budget.held_back;
        if count == 0 {
            return;
        }
        if !budget.take() {
            budget.held_back = count;
            return;
        }
        budget.held_back = 0;
        let what = if guest { "guest output" } else { "failure" };
        self.write(Entry {
            level: Level::Warn,
            kind: "dropped",
            processor,
            event: None,
            message: format!("{count} {what} record(s) held back by the log's rate limit"),
        })
        .await;
    }

    async fn write(&mut self, entry: Entry<'_>) {
        let Some(logs) = &self.logs else {
            return;
        };
        let record = LogRecord {
            time_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            level: entry.level,
            kind: entry.kind.to_owned(),
            processor: entry.processor.to_owned(),
            host: self.host.to_string(),
            instance: self.instance,
            event: entry.event,
            message: entry.message,
            sequence: 0,
        };
        if let Err(e) = logs.append(&record).await {
            tracing::debug!(processor = entry.processor, "log record not written: {e}");
        }
    }
}
