//! Any bytes a client sends as a command line: the parser must return a
//! command or a syntax error, never panic; replies and data-block stuffing
//! must round-trip.
#![no_main]

use flowd::fnap::{Reply, command, framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = command::parse(line) {
        // What parses is a command a session knows how to gate.
        let _ = parsed.allowed_before_auth();
    }
    let _ = Reply::parse(line);
    let stuffed = framing::stuff(line);
    assert!(!framing::is_end(&stuffed));
    assert!(Reply::parse(&stuffed).is_none());
    assert_eq!(framing::unstuff(&stuffed), line);
});
