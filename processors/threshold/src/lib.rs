//! `threshold` (signal): watches a numeric field per key.
//!
//! - When the value of a key crosses a threshold (enters the zone above
//!   `above` or below `below`), emits an alert event to the `alerts` output.
//! - Accumulates count/sum/min/max per key in keyed state and, on every tick,
//!   emits one window event per key to the `stats` output and starts a new
//!   window.
//!
//! Configuration:
//! - `field=<selector>` (required): e.g. `data.temperature`.
//! - `above=<number>` and/or `below=<number>` (at least one).
//! - `key=<selector>` (default `source`): what the state is kept per.
//! - `alerts=<output>` (default: the first output), `stats=<output>`
//!   (default: the second output, if any; without one no window is kept).
//! - `alert-type` (default `eson.threshold.alert`), `stats-type` (default
//!   `eson.threshold.window`), `source` (default `flowd:threshold`).

use flow_sdk::host::state;
use flow_sdk::serde_json::{Value, json};
use flow_sdk::{Batch, Error, NewEvent, Processor, RoutedOutput, Selector, Setup, Signal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Zone {
    Above,
    Inside,
    Below,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Window {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

pub struct Threshold {
    field: Selector,
    key: Selector,
    above: Option<f64>,
    below: Option<f64>,
    alerts: u32,
    stats: Option<u32>,
    alert_type: String,
    stats_type: String,
    source: String,
}

fn port(setup: &Setup, key: &str, default: Option<usize>) -> Result<Option<u32>, Error> {
    match setup.config.get(key) {
        Some(name) => setup.require_output(key, name).map(Some),
        None => Ok(default
            .filter(|&i| i < setup.outputs.len())
            .map(|i| i as u32)),
    }
}

impl Processor for Threshold {
    fn init(setup: &Setup) -> Result<Self, Error> {
        let c = &setup.config;
        c.reject_unknown(
            &[
                "field",
                "above",
                "below",
                "key",
                "alerts",
                "stats",
                "alert-type",
                "stats-type",
                "source",
            ],
            &[],
        )?;
        let above = c.parse::<f64>("above")?;
        let below = c.parse::<f64>("below")?;
        if above.is_none() && below.is_none() {
            return Err(Error::config(
                "give `above=<number>`, `below=<number>` or both",
            ));
        }
        if let (Some(a), Some(b)) = (above, below)
            && b > a
        {
            return Err(Error::config(format!(
                "`below={b}` is greater than `above={a}`"
            )));
        }
        let alerts = port(setup, "alerts", Some(0))?
            .ok_or_else(|| Error::config("a threshold processor needs at least one output"))?;
        Ok(Threshold {
            field: Selector::parse("field", c.require("field")?)?,
            key: Selector::parse("key", c.get("key").unwrap_or("source"))?,
            above,
            below,
            alerts,
            stats: port(setup, "stats", Some(1))?,
            alert_type: c.get("alert-type").unwrap_or("eson.threshold.alert").into(),
            stats_type: c
                .get("stats-type")
                .unwrap_or("eson.threshold.window")
                .into(),
            source: c.get("source").unwrap_or("flowd:threshold").into(),
        })
    }
}

impl Threshold {
    fn zone(&self, value: f64) -> Zone {
        match (self.above, self.below) {
            (Some(a), _) if value > a => Zone::Above,
            (_, Some(b)) if value < b => Zone::Below,
            _ => Zone::Inside,
        }
    }
}

fn key_text(v: Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

impl Signal for Threshold {
    fn process(&mut self, _input: u32, batch: &Batch, out: &mut RoutedOutput) -> Result<(), Error> {
        for event in batch.iter() {
            let data = event.json_value();
            let Some(value) = self.field.get_in(&event, data.as_ref()) else {
                continue;
            };
            let value = match &value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| Error::event(event.index(), format!("`{value}` is not a number")))?;
            let key = key_text(self.key.get_in(&event, data.as_ref()));

            let zone = self.zone(value);
            let zone_key = format!("zone/{key}");
            let previous = state::get_json::<Zone>(&zone_key);
            if previous != Some(zone) {
                state::set_json(&zone_key, &zone);
                if zone != Zone::Inside {
                    let (direction, limit) = match zone {
                        Zone::Above => ("above", self.above),
                        _ => ("below", self.below),
                    };
                    let mut alert = NewEvent::new(
                        format!("{}-alert", event.id()),
                        &*self.source,
                        &*self.alert_type,
                    )
                    .with_json(&json!({
                        "key": key,
                        "value": value,
                        "direction": direction,
                        "threshold": limit,
                        "event": event.id(),
                    }))?;
                    alert.subject = (!key.is_empty()).then(|| key.clone().into());
                    alert.time = event.time().map(Into::into);
                    out.emit_to(self.alerts, &alert);
                }
            }

            if self.stats.is_some() {
                let window_key = format!("window/{key}");
                let mut w = state::get_json::<Window>(&window_key).unwrap_or(Window {
                    count: 0,
                    sum: 0.0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                });
                w.count += 1;
                w.sum += value;
                w.min = w.min.min(value);
                w.max = w.max.max(value);
                state::set_json(&window_key, &w);
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: u64, out: &mut RoutedOutput) -> Result<(), Error> {
        let Some(stats) = self.stats else {
            return Ok(());
        };
        for window_key in state::keys("window/") {
            let Some(w) = state::get_json::<Window>(&window_key) else {
                continue;
            };
            state::delete(&window_key);
            let key = window_key.trim_start_matches("window/");
            let mut event = NewEvent::new(
                format!("window-{key}-{now_ms}"),
                &*self.source,
                &*self.stats_type,
            )
            .with_json(&json!({
                "key": key,
                "count": w.count,
                "average": w.sum / w.count.max(1) as f64,
                "min": w.min,
                "max": w.max,
                "window_end_ms": now_ms,
            }))?;
            event.subject = (!key.is_empty()).then(|| key.into());
            out.emit_to(stats, &event);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::signal!(Threshold);
