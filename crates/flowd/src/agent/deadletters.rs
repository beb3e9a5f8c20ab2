//! Dead letters: the events processors gave up on, read, replayed to the
//! processor that failed on them, or discarded.
//!
//! A dead letter is the original input event with the `deadletter*`
//! attributes the runner adds (error, processor, fused step, input flow),
//! stored in the processor's dead-letter flow. A replay writes the event
//! back to the flow it came from, without those attributes, with two
//! others:
//! - `replayid`, new for every dead letter replayed: it takes the event
//!   past the flow's duplicate window on purpose (its message id is the
//!   replay's, not the event's), and should it fail again its new dead
//!   letter is not taken for a duplicate of the first;
//! - `replayfor` (`<processor>@<flow>`): other processors reading the same
//!   flow skip it, since they processed the event the first time.
//!
//! The replay is idempotent: its message id is derived from the dead
//! letter's place, so replaying the same letter twice (a retried command)
//! writes it once within the flow's duplicate window. The letter is removed
//! once its replay is stored, and the replay is recorded in the processor
//! log.

use super::{Agent, AgentError};
use cloudevents::{AttributesReader, Event};
use flowd_broker::logs::{Level, LogRecord, Logs, Retention};
use flowd_broker::{FlowName, Outgoing, codec};
use flowd_engine::ProcessorSpec;
use std::collections::BTreeSet;
use std::time::Duration;

/// Dead letters listed at most by one call.
pub const MAX_LISTED: usize = 1000;
/// Messages of one dead-letter flow looked at by one call.
const MAX_SCANNED: usize = 100_000;

/// The attributes the runner adds to a dead letter.
pub const DEAD_LETTER_ATTRIBUTES: [&str; 4] = [
    "deadlettererror",
    "deadletterprocessor",
    "deadletterstep",
    "deadletterflow",
];

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The dead-letter flow it is stored in, and where.
    pub flow: FlowName,
    pub sequence: u64,
    /// The processor that gave up on it.
    pub processor: String,
    /// The fused step that failed on it, if one did.
    pub step: Option<String>,
    /// The flow it was read from.
    pub input: String,
    /// Why.
    pub error: String,
    /// The event as it was read (without the dead-letter attributes).
    pub event: Event,
}

/// Which dead letters a command is about.
#[derive(Debug, Clone)]
pub enum Which {
    All,
    /// These, by their sequence in the dead-letter flow.
    Sequences(BTreeSet<u64>),
}

impl Which {
    fn takes(&self, sequence: u64) -> bool {
        match self {
            Which::All => true,
            Which::Sequences(s) => s.contains(&sequence),
        }
    }
}

/// What a replay or a discard did with one dead letter.
#[derive(Debug, Clone)]
pub struct Handled {
    pub sequence: u64,
    pub event: String,
    /// Where it went (a replay), or nothing (a discard).
    pub to: Option<String>,
}

fn text(event: &Event, name: &str) -> Option<String> {
    event.extension(name).map(ToString::to_string)
}

impl Agent {
    /// The dead letters of `specs` (processors a caller may manage) and of
    /// their fused steps `steps` (empty: all of theirs), oldest first.
    pub async fn dead_letters(
        &self,
        specs: &[ProcessorSpec],
        steps: &[String],
        which: &Which,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, AgentError> {
        let ids: BTreeSet<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        let flows: BTreeSet<&FlowName> = specs.iter().map(|s| &s.dead_letter).collect();
        let mut found = Vec::new();
        for flow in flows {
            let mut reader = match self.reader(flow, Some(1)).await {
                Ok(reader) => reader,
                // No dead letter yet: the flow is made on the first.
                Err(AgentError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut scanned = 0;
            let (mut unreadable, mut first_unreadable) = (0usize, String::new());
            while scanned < MAX_SCANNED && found.len() < limit.min(MAX_LISTED) {
                let batch = reader.next_each(256, Duration::from_millis(200)).await?;
                if batch.is_empty() {
                    break;
                }
                scanned += batch.len();
                for (sequence, event) in batch {
                    // Not an event: no dead letter of the engine's, and no
                    // reason to hide the others.
                    let mut event = match event {
                        Ok(event) => event,
                        Err(e) => {
                            if unreadable == 0 {
                                first_unreadable = format!("#{sequence}: {e}");
                            }
                            unreadable += 1;
                            continue;
                        }
                    };
                    let Some(processor) = text(&event, "deadletterprocessor") else {
                        continue;
                    };
                    let step = text(&event, "deadletterstep").filter(|s| !s.is_empty());
                    let ours = ids.contains(processor.as_str())
                        && (steps.is_empty()
                            || steps.contains(&processor)
                            || step.as_ref().is_some_and(|s| steps.contains(s)));
                    if !ours || !which.takes(sequence) {
                        continue;
                    }
                    let error = text(&event, "deadlettererror").unwrap_or_default();
                    let input = text(&event, "deadletterflow").unwrap_or_default();
                    for name in DEAD_LETTER_ATTRIBUTES {
                        event.remove_extension(name);
                    }
                    found.push(DeadLetter {
                        flow: flow.clone(),
                        sequence,
                        processor,
                        step,
                        input,
                        error,
                        event,
                    });
                    if found.len() >= limit.min(MAX_LISTED) {
                        break;
                    }
                }
            }
            if unreadable > 0 {
                tracing::warn!(
                    %flow,
                    "{unreadable} messages are not events, left out of the listing (the first {first_unreadable})"
                );
            }
        }
        Ok(found)
    }

    /// Writes `letters` back to the flows they came from, for the
    /// processor that failed on them, and removes them; `by` names who
    /// asked, for the log.
    ///
    /// A letter says itself which flow it came from, and a dead-letter
    /// flow may hold what its writers put there: so each target is checked
    /// first, and nothing is replayed unless every one passes. The flow must
    /// be an input of the processor now (`specs`, the processors `who` may
    /// manage), and `who` must be allowed to write to it, unless it is an
    /// internal flow of the processor's own pipeline.
    pub async fn replay_dead_letters(
        &self,
        who: &super::Principal,
        specs: &[ProcessorSpec],
        letters: Vec<DeadLetter>,
    ) -> Result<Vec<Handled>, AgentError> {
        let by = who.user().unwrap_or("the host administrator").to_owned();
        let mut targets = Vec::with_capacity(letters.len());
        for letter in &letters {
            let refused = |why: &str| {
                AgentError::Forbidden(format!(
                    "dead letter #{} cannot be replayed: {why}",
                    letter.sequence
                ))
            };
            let input = FlowName::parse(&letter.input)
                .map_err(|e| refused(&format!("it names no flow it came from ({e})")))?;
            let spec = specs
                .iter()
                .find(|s| s.id == letter.processor)
                .ok_or_else(|| refused("its processor is not among those named"))?;
            if !spec.inputs.contains(&input) {
                return Err(refused(&format!(
                    "{input} is no input of processor {} now",
                    spec.id
                )));
            }
            let internal = spec
                .pipeline
                .as_ref()
                .is_some_and(|p| input.as_str().ends_with(&format!(".{p}.pipelines.flowd")));
            if !internal {
                self.check_write(who, &input).await?;
            }
            targets.push(input);
        }
        let logs = Logs::open(&self.broker, Retention::default()).await.ok();
        let mut handled = Vec::new();
        for (letter, input) in letters.into_iter().zip(targets) {
            let mut event = letter.event.clone();
            let place = format!("{}:{}", letter.flow, letter.sequence);
            let replay_id = hex::encode(&sha256(place.as_bytes())[..12]);
            event.set_extension("replayid", replay_id.as_str());
            event.set_extension(
                "replayfor",
                format!("{}@{}", letter.processor, input).as_str(),
            );
            let (headers, payload) = codec::message_for_event(&event);
            self.broker
                .publish([Outgoing {
                    subject: input.subject().into(),
                    message_id: format!("replay:{place}"),
                    headers,
                    payload,
                }])
                .await?;
            self.broker
                .remove_stored(&letter.flow, letter.sequence)
                .await?;
            let message = format!(
                "dead letter #{} of {} replayed to {input} by {by} (replay id {replay_id})",
                letter.sequence, letter.flow
            );
            handled.push(record(logs.as_ref(), &letter, "replay", message, Some(&input)).await);
        }
        Ok(handled)
    }

    /// Removes `letters` for good; `by` names who asked, for the log.
    pub async fn discard_dead_letters(
        &self,
        letters: Vec<DeadLetter>,
        by: &str,
    ) -> Result<Vec<Handled>, AgentError> {
        let logs = Logs::open(&self.broker, Retention::default()).await.ok();
        let mut handled = Vec::new();
        for letter in letters {
            if !self
                .broker
                .remove_stored(&letter.flow, letter.sequence)
                .await?
            {
                continue;
            }
            let message = format!(
                "dead letter #{} of {} discarded by {by}",
                letter.sequence, letter.flow
            );
            handled.push(record(logs.as_ref(), &letter, "discard", message, None).await);
        }
        Ok(handled)
    }
}

/// Records in the processor log (best effort: the letter is handled
/// already) what was done with `letter`, and says so to the caller.
async fn record(
    logs: Option<&Logs>,
    letter: &DeadLetter,
    kind: &str,
    message: String,
    to: Option<&FlowName>,
) -> Handled {
    let id = letter.event.id().to_owned();
    if let Some(logs) = logs {
        let record = LogRecord {
            time_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            level: Level::Info,
            kind: kind.into(),
            processor: letter.step.clone().unwrap_or(letter.processor.clone()),
            host: String::new(),
            instance: 0,
            event: Some(id.clone()),
            message,
            sequence: 0,
        };
        let _ = logs.append(&record).await;
    }
    Handled {
        sequence: letter.sequence,
        event: id,
        to: to.map(ToString::to_string),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
