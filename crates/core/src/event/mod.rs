//! Events as the host handles them: CloudEvents 1.0 ([`cloudevents::Event`]),
//! read from and written to JSON lines ([`jsonl`]), and packed into the
//! batches processors see ([`packed`]).

pub mod jsonl;
pub mod packed;

pub use cloudevents::Event;
