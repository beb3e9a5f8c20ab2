use crate::Error;
use std::str::FromStr;

/// A processor's configuration: ordered `key=value` pairs as the user gave
/// them (`--config key=value` on the command line). Keys may repeat; order is
/// kept because some processors (transform) apply their rules in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// A configuration of these pairs, in order (the SDK makes it from the setup; tests make their own).
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config { pairs }
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or a configuration error naming it.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::config(format!("missing required key `{key}`")))
    }

    /// The value of `key` parsed as `T`, `None` when absent.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|e| Error::config(format!("`{key}={v}`: {e}")))
            })
            .transpose()
    }

    /// Every pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Fails on any key that is not in `known` (or starts with one of the
    /// `prefixes`), so a typo is reported instead of silently ignored.
    pub fn reject_unknown(&self, known: &[&str], prefixes: &[&str]) -> Result<(), Error> {
        for (k, _) in self.iter() {
            if !known.contains(&k) && !prefixes.iter().any(|p| k.starts_with(p)) {
                let mut expected: Vec<String> = known.iter().map(|s| s.to_string()).collect();
                expected.extend(prefixes.iter().map(|p| format!("{p}<name>")));
                return Err(Error::config(format!(
                    "unknown key `{k}` (expected one of: {})",
                    expected.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// What the host tells a new processor: its configuration and the names of
/// its input and output ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// The `key=value` configuration.
    pub config: Config,
    /// The input port names, in port order.
    pub inputs: Vec<String>,
    /// The output port names, in port order.
    pub outputs: Vec<String>,
}

impl Setup {
    /// The port number of the output called `name`. Outputs bound to flows
    /// are named by the flow's FQDN; `name` may also be just its first label
    /// (`eu` for `eu.orders.example.com`) when no other output shares it.
    pub fn output(&self, name: &str) -> Option<u32> {
        if let Some(i) = self.outputs.iter().position(|o| o == name) {
            return Some(i as u32);
        }
        let mut by_label = self
            .outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.split('.').next() == Some(name));
        match (by_label.next(), by_label.next()) {
            (Some((i, _)), None) => Some(i as u32),
            _ => None,
        }
    }

    /// The port number of the output called `name`, or a configuration error
    /// that lists the outputs this processor has.
    pub fn require_output(&self, key: &str, name: &str) -> Result<u32, Error> {
        self.output(name).ok_or_else(|| {
            Error::config(format!(
                "`{key}` names output `{name}`, but the outputs are: {}",
                self.outputs.join(", ")
            ))
        })
    }
}
