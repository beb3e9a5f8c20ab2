use crate::{Error, Event, json};
use serde_json::Value;

/// Where a configured value lives in an event: `data` or `data.<path>` for
/// the JSON data, anything else names a CloudEvents attribute (core or
/// extension), e.g. `type`, `subject`, `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A dotted path into the JSON data (empty: the whole data).
    Data(String),
    /// A CloudEvents attribute by name.
    Attribute(String),
}

impl Selector {
    /// Parses a selector; `key` names the configuration key in errors.
    pub fn parse(key: &str, text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text == "data" {
            return Ok(Selector::Data(String::new()));
        }
        if let Some(path) = text.strip_prefix("data.") {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(Error::config(format!("`{key}`: empty segment in `{text}`")));
            }
            return Ok(Selector::Data(path.to_owned()));
        }
        let valid = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            return Err(Error::config(format!(
                "`{key}`: `{text}` is neither `data.<path>` nor a CloudEvents attribute name \
                 (lower-case letters and digits)"
            )));
        }
        Ok(Selector::Attribute(text.to_owned()))
    }

    /// The selected value of an input event, as JSON.
    pub fn get(&self, event: &Event<'_>) -> Option<Value> {
        match self {
            Selector::Data(path) => {
                let data = event.json_value()?;
                json::get(&data, path).cloned()
            }
            Selector::Attribute(name) => event.attribute(name).map(|v| v.to_json()),
        }
    }

    /// The selected value in already-parsed JSON data (for processors that
    /// parse the data once and select several fields).
    pub fn get_in(&self, event: &Event<'_>, data: Option<&Value>) -> Option<Value> {
        match self {
            Selector::Data(path) => data.and_then(|d| json::get(d, path)).cloned(),
            Selector::Attribute(_) => self.get(event),
        }
    }

    /// Whether this selector points into the data.
    pub fn is_data(&self) -> bool {
        matches!(self, Selector::Data(_))
    }
}
