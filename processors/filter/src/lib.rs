//! `filter` (bridge): keeps the events matching a predicate.
//!
//! Configuration:
//! - `where=<selector> <op> [<value>]`, repeatable. The selector is a
//!   CloudEvents attribute (`type`, `subject`, an extension ...) or
//!   `data.<json path>`; `op` is one of `== != > >= < <= contains prefix
//!   exists missing`; the value is a JSON literal or a bare string.
//! - `match=all|any` (default `all`): whether every or any `where` must hold.

use flow_sdk::serde_json::Value;
use flow_sdk::{Batch, Bridge, Error, Event, Output, Processor, Selector, Setup, json};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
    Prefix,
    Exists,
    Missing,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "==" | "=" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "contains" => Op::Contains,
            "prefix" => Op::Prefix,
            "exists" => Op::Exists,
            "missing" => Op::Missing,
            _ => return None,
        })
    }

    fn takes_value(self) -> bool {
        !matches!(self, Op::Exists | Op::Missing)
    }
}

/// One `where` clause.
#[derive(Debug, Clone)]
pub struct Predicate {
    selector: Selector,
    op: Op,
    value: Value,
}

impl Predicate {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut parts = text.trim().splitn(3, char::is_whitespace);
        let selector = Selector::parse("where", parts.next().unwrap_or_default())?;
        let op_text = parts.next().unwrap_or_default();
        let op = Op::parse(op_text).ok_or_else(|| {
            Error::config(format!(
                "`where={text}`: unknown operator `{op_text}` (expected one of \
                 == != > >= < <= contains prefix exists missing)"
            ))
        })?;
        let rest = parts.next().map(str::trim).unwrap_or_default();
        if op.takes_value() == rest.is_empty() {
            let need = if op.takes_value() {
                "needs"
            } else {
                "takes no"
            };
            return Err(Error::config(format!(
                "`where={text}`: operator `{op_text}` {need} value"
            )));
        }
        Ok(Predicate {
            selector,
            op,
            value: json::literal(rest),
        })
    }

    fn holds(&self, event: &Event<'_>, data: Option<&Value>) -> bool {
        let actual = self.selector.get_in(event, data);
        match (self.op, actual) {
            (Op::Exists, found) => found.is_some(),
            (Op::Missing, found) => found.is_none(),
            (_, None) => self.op == Op::Ne,
            (Op::Eq, Some(a)) => compare(&a, &self.value) == Some(Ordering::Equal),
            (Op::Ne, Some(a)) => compare(&a, &self.value) != Some(Ordering::Equal),
            (Op::Gt, Some(a)) => compare(&a, &self.value) == Some(Ordering::Greater),
            (Op::Ge, Some(a)) => matches!(
                compare(&a, &self.value),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            (Op::Lt, Some(a)) => compare(&a, &self.value) == Some(Ordering::Less),
            (Op::Le, Some(a)) => matches!(
                compare(&a, &self.value),
                Some(Ordering::Less | Ordering::Equal)
            ),
            (Op::Contains, Some(a)) => match (&a, &self.value) {
                (Value::Array(items), v) => items.iter().any(|i| i == v),
                (Value::String(s), v) => s.contains(text_of(v).as_str()),
                _ => false,
            },
            (Op::Prefix, Some(Value::String(s))) => s.starts_with(text_of(&self.value).as_str()),
            (Op::Prefix, Some(_)) => false,
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Numbers (or numeric strings) compare numerically, strings as strings,
/// anything else only for equality.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if (a.is_number() || b.is_number())
        && let (Some(x), Some(y)) = (number(a), number(b))
    {
        return x.partial_cmp(&y);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::String(x), y) | (y, Value::String(x)) if x == &text_of(y) => Some(Ordering::Equal),
        (x, y) if x == y => Some(Ordering::Equal),
        _ => None,
    }
}

pub struct Filter {
    predicates: Vec<Predicate>,
    any: bool,
    needs_data: bool,
}

impl Processor for Filter {
    fn init(setup: &Setup) -> Result<Self, Error> {
        let config = &setup.config;
        config.reject_unknown(&["where", "match"], &[])?;
        let predicates = config
            .iter()
            .filter(|(k, _)| *k == "where")
            .map(|(_, v)| Predicate::parse(v))
            .collect::<Result<Vec<_>, _>>()?;
        if predicates.is_empty() {
            return Err(Error::config(
                "missing required key `where` (e.g. `where=data.amount > 100`)",
            ));
        }
        let any = match config.get("match").unwrap_or("all") {
            "all" => false,
            "any" => true,
            other => {
                return Err(Error::config(format!(
                    "`match={other}`: expected `all` or `any`"
                )));
            }
        };
        let needs_data = predicates.iter().any(|p| p.selector.is_data());
        Ok(Filter {
            predicates,
            any,
            needs_data,
        })
    }
}

impl Filter {
    /// Whether `event` passes the filter.
    pub fn keeps(&self, event: &Event<'_>) -> bool {
        let data = if self.needs_data {
            event.json_value()
        } else {
            None
        };
        let mut results = self
            .predicates
            .iter()
            .map(|p| p.holds(event, data.as_ref()));
        if self.any {
            results.any(|r| r)
        } else {
            results.all(|r| r)
        }
    }
}

impl Bridge for Filter {
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        for event in batch.iter() {
            if self.keeps(&event) {
                out.forward(&event);
            }
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::bridge!(Filter);
