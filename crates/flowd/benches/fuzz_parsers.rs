//! A mutation fuzzer for what flowd reads from users beyond FNAP command
//! lines (which `fuzz/` covers with cargo-fuzz): pipeline manifests (YAML)
//! and the host's TOML configuration. Inputs are seeds (the tour's
//! manifest, the configuration reference) mutated at random: bytes
//! flipped, inserted, deleted, ranges duplicated, tokens of either
//! language spliced in (keys, brackets, huge and negative numbers).
//!
//! Properties, for every input:
//! - nothing panics (each run is under `catch_unwind`);
//! - a manifest that parses can be checked for structure, and its steps'
//!   limits and parallelism read;
//! - a configuration that parses derives its FNAP limits, its limit checks
//!   and peer checks answer, and it serializes back to TOML that parses to
//!   the same configuration.
//!
//! No coverage guidance (that needs a sanitizer build of the whole host);
//! the dictionary stands in for it. Run with
//! `cargo bench -p flowd --bench fuzz_parsers`; `FUZZ_RUNS` (default 10
//! million per target) and `FUZZ_SEED` change the run. Exits non-zero,
//! printing the input, at the first failure.

use flowd::config::Config;
use flowd::pipeline::{manifest, plan};
use std::time::Instant;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "\n",
    " ",
    "  ",
    "- ",
    ": ",
    ":",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "#",
    "=",
    ".",
    "&a",
    "*a",
    "!!str",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "18446744073709551615",
    "1e400",
    "-0",
    "0x10",
    "name",
    "steps",
    "from",
    "to",
    "component",
    "kind",
    "config",
    "limits",
    "parallelism",
    "key",
    "inputs",
    "outputs",
    "flow://",
    "@",
    "deadline-ms",
    "batch",
    "memory-mib",
    "[fnap]",
    "[[peers]]",
    "[limits]",
    "[limits.max]",
    "[quotas]",
    "[logins]",
    "listen",
    "\"off\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:0\"",
    "namespace",
    "tls",
    "\"plain\"",
    "hosts",
    "max_line",
    "cache_secs",
    "\u{feff}",
    "\u{0}",
    "é",
    "\t",
    "\r\n",
    "<<: *a",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    *input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                input.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                let part = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, part);
            }
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
        }
        if input.len() > 16 << 10 {
            input.truncate(16 << 10);
        }
    }
}

fn manifest_properties(text: &str) -> bool {
    let (Some(m), _) = manifest::read(text) else {
        return false;
    };
    {
        let _ = plan::structural_errors(&m);
        for step in &m.steps {
            let _ = step.parallelism();
            if let (Some(own), Some(all)) = (&step.limits, &m.limits) {
                let _ = own.or(all);
            }
        }
    }
    true
}

fn config_properties(text: &str) -> Result<bool, String> {
    let Ok(config) = toml::from_str::<Config>(text) else {
        return Ok(false);
    };
    let _ = config.fnap.limits();
    let _ = flowd::agent::processors::check_limits(&config.limits.defaults, &config.limits.max);
    for peer in &config.peers {
        let _ = peer.check();
        let _ = peer.may_serve("fnaa.example.com");
    }
    let again = toml::to_string(&config).map_err(|e| format!("does not serialize: {e}"))?;
    let back: Config =
        toml::from_str(&again).map_err(|e| format!("its TOML does not parse: {e}\n{again}"))?;
    if back != config {
        return Err(format!("round trip changed it:\n{again}"));
    }
    Ok(true)
}

fn run(
    name: &str,
    seeds: &[Vec<u8>],
    runs: u64,
    seed: u64,
    property: impl Fn(&str) -> Result<bool, String> + std::panic::RefUnwindSafe,
) -> bool {
    let mut rng = Rng(seed | 1);
    let mut input = Vec::new();
    let started = Instant::now();
    let mut parsed_text = 0u64;
    let mut accepted = 0u64;
    for i in 0..runs {
        mutate(&mut rng, seeds, &mut input);
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        parsed_text += 1;
        let outcome = std::panic::catch_unwind(|| property(text));
        let failure = match outcome {
            Ok(Ok(parsed)) => {
                accepted += u64::from(parsed);
                None
            }
            Ok(Err(why)) => Some(why),
            Err(_) => Some("panicked".to_owned()),
        };
        if let Some(why) = failure {
            eprintln!(
                "{name}: run {i} failed: {why}\ninput ({} bytes):\n{text:?}",
                text.len()
            );
            return false;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: {runs} runs ({parsed_text} UTF-8 inputs, {accepted} accepted) in {secs:.0} s, {:.0} runs/s, seed {seed}: no failure",
        runs as f64 / secs
    );
    true
}

fn main() {
    let runs: u64 = std::env::var("FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f10d);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let tour = std::fs::read(format!("{root}/docs/tour/pipeline.yaml")).unwrap_or_default();
    let manifests = vec![
        tour,
        b"name: p\ninputs:\n  a: flow://a.example.com\noutputs:\n  b: flow://b.example.com\nsteps:\n  - name: s\n    component: filter\n    from: a\n    to: b\n    parallelism: 2\n    key: data.id\n    limits:\n      batch: 10\n"
            .to_vec(),
    ];
    let config_doc = include_str!("../src/config.rs");
    let example: String = config_doc
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .skip_while(|l| !l.starts_with("[participant]"))
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    let configs = vec![
        example.into_bytes(),
        b"[fnap]\nlisten = \"off\"\n[[peers]]\nnamespace = \"flows.unix.ar\"\ntls = \"plain\"\nhosts = [\"fnaa.unix.ar\"]\n[limits]\nbatch = 10\n[limits.max]\nbatch = 100\n[quotas]\nanonymous_subscriptions = 2\n"
            .to_vec(),
    ];
    let ok = run("pipeline manifests", &manifests, runs, seed, |t| {
        Ok(manifest_properties(t))
    }) && run(
        "TOML configuration",
        &configs,
        runs,
        seed,
        config_properties,
    );
    if !ok {
        std::process::exit(1);
    }
}
