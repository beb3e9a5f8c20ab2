//! A bridge that misbehaves on command, to test the host's isolation.
//!
//! By event `type`: `test.spin` loops forever, `test.hog` allocates without
//! bound, `test.trap` panics (a trap), `test.fail` returns an event error,
//! `test.count` increments keyed state `count` and emits its value in the
//! `count` extension, `test.keycount` counts per `subject` (state
//! `count/<subject>`) and emits the count the same way, `test.badout` does the same but emits an event the
//! host refuses (a time that is not one), `test.log` forwards the event
//! after a `log` call,
//! a stdout line and a stderr line naming it, `test.chatter` forwards it
//! after writing 64 KiB to stderr. Anything else is forwarded. Config `init=spin|trap|fail`
//! misbehaves in `init` instead.

use flow_sdk::host::{self, state};
use flow_sdk::{Batch, Bridge, Error, ExtensionValue, Output, Processor, Setup};

pub struct Hostile;

#[inline(never)]
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn hog() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

impl Processor for Hostile {
    fn init(setup: &Setup) -> Result<Self, Error> {
        match setup.config.get("init") {
            Some("spin") => spin(),
            Some("trap") => panic!("hostile guest traps in init"),
            Some("fail") => Err(Error::config("`init=fail` asks init to fail")),
            _ => Ok(Hostile),
        }
    }
}

impl Bridge for Hostile {
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        for event in batch.iter() {
            match event.ty() {
                "test.spin" => spin(),
                "test.hog" => hog(),
                "test.trap" => panic!("hostile guest traps on event {}", event.id()),
                "test.fail" => return Err(Error::event(event.index(), "refused by test guest")),
                "test.count" => {
                    let count = state::get_json::<i64>("count").unwrap_or(0) + 1;
                    state::set_json("count", &count);
                    let mut new = event.to_new();
                    new.set_extension("count", ExtensionValue::Integer(count));
                    out.emit(&new);
                }
                "test.keycount" => {
                    // A count per subject, in state `count/<subject>`.
                    let key = format!("count/{}", event.subject().unwrap_or_default());
                    let count = state::get_json::<i64>(&key).unwrap_or(0) + 1;
                    state::set_json(&key, &count);
                    let mut new = event.to_new();
                    new.set_extension("count", ExtensionValue::Integer(count));
                    out.emit(&new);
                }
                "test.badout" => {
                    // Counts like test.count, then emits an event the host
                    // refuses (its time is not a timestamp): the call
                    // succeeds, its outputs do not.
                    let count = state::get_json::<i64>("count").unwrap_or(0) + 1;
                    state::set_json("count", &count);
                    let mut new = event.to_new();
                    new.time = Some("not a time".into());
                    out.emit(&new);
                }
                "test.log" => {
                    host::log(
                        host::Level::Info,
                        &format!("hostile guest logs {}", event.id()),
                    );
                    println!("hostile guest prints {}", event.id());
                    eprintln!("hostile guest complains about {}", event.id());
                    out.forward(&event);
                }
                "test.chatter" => {
                    let line = "x".repeat(1023);
                    for _ in 0..64 {
                        eprintln!("{line}");
                    }
                    out.forward(&event);
                }
                _ => out.forward(&event),
            }
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::bridge!(Hostile);
