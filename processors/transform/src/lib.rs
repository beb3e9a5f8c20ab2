//! `transform` (bridge): sets, renames and removes JSON fields and attributes.
//!
//! Configuration, applied in the order given:
//! - `set.<target>=<value>`: sets a JSON field (`set.data.status="paid"`) or
//!   an attribute (`set.subject=invoices`, `set.region=eu` for an extension).
//!   Values are JSON literals or bare strings.
//! - `rename.<target>=<target>`: moves a value (`rename.data.amt=data.amount`).
//! - `remove=<target>[,<target>...]`: removes fields or optional attributes.
//!
//! A target is `data.<json path>` or a CloudEvents attribute name. An event
//! whose data is not JSON while a rule needs it fails with an event error.

use flow_sdk::serde_json::{self, Value};
use flow_sdk::{
    Batch, Bridge, Error, Event, ExtensionValue, NewEvent, Output, Processor, Selector, Setup, json,
};
use std::borrow::Cow;

#[derive(Debug, Clone)]
enum Rule {
    Set(Selector, Value),
    Rename(Selector, Selector),
    Remove(Selector),
}

/// The parsed, ordered rules of one transform.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    needs_data: bool,
}

const REQUIRED: [&str; 3] = ["id", "source", "type"];

fn check_writable(key: &str, target: &Selector, removing: bool) -> Result<(), Error> {
    if let Selector::Attribute(name) = target {
        if name == "specversion" {
            return Err(Error::config(format!(
                "`{key}`: `specversion` is always 1.0"
            )));
        }
        if removing && REQUIRED.contains(&name.as_str()) {
            return Err(Error::config(format!(
                "`{key}`: `{name}` is a required CloudEvents attribute"
            )));
        }
    }
    Ok(())
}

impl Rules {
    pub fn parse(config: &flow_sdk::Config) -> Result<Self, Error> {
        let mut rules = Vec::new();
        for (key, value) in config.iter() {
            if let Some(target) = key.strip_prefix("set.") {
                let target = Selector::parse(key, target)?;
                check_writable(key, &target, false)?;
                rules.push(Rule::Set(target, json::literal(value)));
            } else if let Some(from) = key.strip_prefix("rename.") {
                let from = Selector::parse(key, from)?;
                let to = Selector::parse(key, value)?;
                check_writable(key, &from, true)?;
                check_writable(key, &to, false)?;
                rules.push(Rule::Rename(from, to));
            } else if key == "remove" {
                for target in value.split(',').filter(|t| !t.trim().is_empty()) {
                    let target = Selector::parse(key, target)?;
                    check_writable(key, &target, true)?;
                    rules.push(Rule::Remove(target));
                }
            } else {
                return Err(Error::config(format!(
                    "unknown key `{key}` (expected `set.<target>`, `rename.<target>` or `remove`)"
                )));
            }
        }
        if rules.is_empty() {
            return Err(Error::config(
                "no rules: give `set.<target>=`, `rename.<target>=` or `remove=`",
            ));
        }
        let needs_data = rules.iter().any(|r| match r {
            Rule::Set(t, _) | Rule::Remove(t) => t.is_data(),
            Rule::Rename(a, b) => a.is_data() || b.is_data(),
        });
        Ok(Rules { rules, needs_data })
    }

    /// Applies every rule to `event`, returning the transformed copy.
    pub fn apply<'a>(&self, event: &Event<'a>) -> Result<NewEvent<'a>, Error> {
        let mut new = event.to_new();
        let mut data = if self.needs_data {
            let bytes = new.data.as_deref().unwrap_or(b"null");
            Some(
                serde_json::from_slice::<Value>(bytes)
                    .map_err(|e| Error::event(event.index(), format!("data is not JSON: {e}")))?,
            )
        } else {
            None
        };
        for rule in &self.rules {
            match rule {
                Rule::Set(target, value) => put(&mut new, data.as_mut(), target, value.clone())
                    .map_err(|m| Error::event(event.index(), m))?,
                Rule::Rename(from, to) => {
                    if let Some(value) = take(&mut new, data.as_mut(), from) {
                        put(&mut new, data.as_mut(), to, value)
                            .map_err(|m| Error::event(event.index(), m))?;
                    }
                }
                Rule::Remove(target) => {
                    take(&mut new, data.as_mut(), target);
                }
            }
        }
        if let Some(data) = data {
            new.set_json(&data)?;
        }
        Ok(new)
    }
}

fn attribute_slot<'e, 'a>(
    event: &'e mut NewEvent<'a>,
    name: &str,
) -> Option<&'e mut Option<Cow<'a, str>>> {
    Some(match name {
        "subject" => &mut event.subject,
        "time" => &mut event.time,
        "datacontenttype" => &mut event.datacontenttype,
        "dataschema" => &mut event.dataschema,
        _ => return None,
    })
}

fn put(
    event: &mut NewEvent<'_>,
    data: Option<&mut Value>,
    target: &Selector,
    value: Value,
) -> Result<(), String> {
    match target {
        Selector::Data(path) => {
            let data = data.ok_or("data rules need JSON data")?;
            if json::set(data, path, value) {
                Ok(())
            } else {
                Err(format!(
                    "cannot set `data.{path}`: the path crosses a non-object"
                ))
            }
        }
        Selector::Attribute(name) => {
            let text = match &value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let required = match name.as_str() {
                "id" => Some(&mut event.id),
                "source" => Some(&mut event.source),
                "type" => Some(&mut event.ty),
                _ => None,
            };
            if let Some(slot) = required {
                if text.is_empty() {
                    return Err(format!("`{name}` cannot be empty"));
                }
                *slot = Cow::Owned(text);
            } else if let Some(slot) = attribute_slot(event, name) {
                *slot = (!text.is_empty()).then_some(Cow::Owned(text));
            } else {
                let ext = match value {
                    Value::Bool(b) => ExtensionValue::Boolean(b),
                    Value::Number(n) if n.is_i64() => {
                        ExtensionValue::Integer(n.as_i64().unwrap_or_default())
                    }
                    _ => ExtensionValue::String(text),
                };
                event.set_extension(name, ext);
            }
            Ok(())
        }
    }
}

fn take(event: &mut NewEvent<'_>, data: Option<&mut Value>, target: &Selector) -> Option<Value> {
    match target {
        Selector::Data(path) => data.and_then(|d| json::remove(d, path)),
        Selector::Attribute(name) => match attribute_slot(event, name) {
            Some(slot) => slot.take().map(|v| Value::String(v.into_owned())),
            None => event.remove_extension(name).map(|v| v.to_json()),
        },
    }
}

pub struct Transform {
    rules: Rules,
}

impl Processor for Transform {
    fn init(setup: &Setup) -> Result<Self, Error> {
        Ok(Transform {
            rules: Rules::parse(&setup.config)?,
        })
    }
}

impl Bridge for Transform {
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        for event in batch.iter() {
            out.emit(&self.rules.apply(&event)?);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::bridge!(Transform);
