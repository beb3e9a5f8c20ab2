//! The pipeline manifest (YAML) as written, with the location of every value
//! that validation may have to point at. The reference is
//! `docs/pipelines.md`.

use marked_yaml::Spanned;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A place in the manifest, 1-based.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Where a spanned value starts.
pub fn at<T>(value: &Spanned<T>) -> Location {
    value
        .span()
        .start()
        .map(|m| Location {
            line: m.line(),
            column: m.column(),
        })
        .unwrap_or_default()
}

/// A pipeline as its manifest declares it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// Optional: `flowd/v1` when given.
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<Spanned<String>>,
    /// Optional: `Pipeline` when given.
    #[serde(default)]
    pub kind: Option<Spanned<String>>,
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Edge name -> flow URI the pipeline reads.
    pub inputs: BTreeMap<String, Spanned<String>>,
    /// Edge name -> flow URI the pipeline writes.
    pub outputs: BTreeMap<String, Spanned<String>>,
    pub steps: Vec<Step>,
    /// Limits of every step, unless the step sets its own.
    #[serde(default)]
    pub limits: Option<StepLimits>,
}

/// One processor of the pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Step {
    pub name: Spanned<String>,
    /// `name@version`, `name` or `sha256:<hex>` of a registered component.
    pub component: Spanned<String>,
    /// The kind the author expects; checked against the component's.
    #[serde(default)]
    pub kind: Option<Spanned<String>>,
    /// Edges read, in input-port order.
    pub from: OneOrMany,
    /// Edges written, in output-port order (default: one edge named after
    /// the step).
    #[serde(default)]
    pub to: Option<OneOrMany>,
    #[serde(default)]
    pub config: Config,
    #[serde(default)]
    pub limits: Option<StepLimits>,
    /// Read the input through a durable flow even where the step could
    /// run fused into the step before it.
    #[serde(default)]
    pub durable: bool,
    /// Instances of the step, spread over the participant's hosts and
    /// sharing its input (default 1).
    #[serde(default)]
    pub parallelism: Option<Spanned<u32>>,
    /// Partitions the step's events by this key (`data.<path>` or an
    /// attribute): the events of one key go to one instance at a time, in
    /// order, and its keyed state is per partition.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// Partitions of a keyed step (default 64): at least the largest
    /// parallelism it will run, fixed once it has state.
    #[serde(default)]
    pub partitions: Option<Spanned<u32>>,
}

impl Step {
    /// The instances asked for (1 when not given).
    pub fn parallelism(&self) -> u32 {
        self.parallelism.as_ref().map_or(1, |p| **p)
    }
}

/// Limits of a step (all optional; the host's defaults apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepLimits {
    pub memory_mib: Option<usize>,
    pub deadline_ms: Option<u64>,
    pub batch: Option<usize>,
    pub max_attempts: Option<u32>,
    pub tick_ms: Option<u64>,
}

impl StepLimits {
    /// `self` where set, else `fallback`.
    pub fn or(&self, fallback: &StepLimits) -> StepLimits {
        StepLimits {
            memory_mib: self.memory_mib.or(fallback.memory_mib),
            deadline_ms: self.deadline_ms.or(fallback.deadline_ms),
            batch: self.batch.or(fallback.batch),
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            tick_ms: self.tick_ms.or(fallback.tick_ms),
        }
    }
}

/// One edge name or a list of them.
#[derive(Debug, Default)]
pub struct OneOrMany(pub Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Untagged enums lose the spans, so: the whole node spanned, and
        // a visitor that takes either form.
        enum Form {
            One(String),
            Many(Vec<Spanned<String>>),
        }
        struct FormVisitor;
        impl<'de> Visitor<'de> for FormVisitor {
            type Value = Form;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an edge name or a list of edge names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Form, E> {
                Ok(Form::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Form, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    out.push(item);
                }
                Ok(Form::Many(out))
            }
        }
        impl<'de> Deserialize<'de> for Form {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(FormVisitor)
            }
        }
        let form: Spanned<Form> = Spanned::deserialize(d)?;
        Ok(match &*form {
            Form::One(one) => OneOrMany(vec![Spanned::new(*form.span(), one.clone())]),
            Form::Many(many) => OneOrMany(many.clone()),
        })
    }
}

/// A step's configuration: a mapping whose values are scalars or lists of
/// scalars (a list repeats the key, for keys such as `where`), turned into
/// the ordered `key=value` pairs processors receive.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Config(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ConfigVisitor;
        impl<'de> Visitor<'de> for ConfigVisitor {
            type Value = Config;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of keys to values or lists of values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let Values(values) = map.next_value()?;
                    for value in values {
                        pairs.push((key.clone(), value));
                    }
                }
                Ok(Config(pairs))
            }
        }
        d.deserialize_map(ConfigVisitor)
    }
}

/// A scalar as text, or a list of them.
struct Values(Vec<String>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;
        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Values, E> {
                Ok(Values(vec![v.to_owned()]))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Values, E> {
                Ok(Values(vec![v]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Values, E> {
                Ok(Values(vec![v.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Values, E> {
                Ok(Values(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Values, E> {
                Ok(Values(vec![v.to_string()]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Values, E> {
                Ok(Values(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut out = Vec::new();
                while let Some(Values(more)) = seq.next_element()? {
                    out.extend(more);
                }
                Ok(Values(out))
            }
        }
        d.deserialize_any(ValuesVisitor)
    }
}

/// One problem found in a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// The most problems one reading reports: each unknown field costs a
/// reading of the whole manifest, so a hostile one cannot make it quadratic
/// without bound.
pub const MAX_DIAGNOSTICS: usize = 64;

/// The largest manifest read. A pipeline of the largest size allowed takes
/// a few KiB; this leaves room for comments and long configurations.
pub const MAX_MANIFEST_BYTES: usize = 256 << 10;

/// The deepest nesting of mappings and sequences read. A manifest needs
/// four levels (steps, a step, its config, a value list); the tree is
/// built, walked, read and dropped recursively, so a deep one would
/// overflow the stack.
pub const MAX_DEPTH: usize = 32;

/// A manifest too large or too deep to read, found with the YAML event
/// parser (which keeps its own stack on the heap) before any tree is built.
fn unreadable(text: &str) -> Option<Diagnostic> {
    use yaml_rust2::parser::{Event, Parser};
    if text.len() > MAX_MANIFEST_BYTES {
        return Some(Diagnostic {
            at: Location::default(),
            message: format!(
                "the manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} read",
                text.len()
            ),
        });
    }
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), mark)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(Diagnostic {
                        at: Location {
                            line: mark.line(),
                            column: mark.col() + 1,
                        },
                        message: format!("nested deeper than {MAX_DEPTH} levels"),
                    });
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            Ok((Event::StreamEnd, _)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads a manifest. Unknown fields do not stop the reading: each is
/// reported with its place and left out, so that the checks after this one
/// run too and an author sees every problem in one pass. Any other shape
/// error (a missing field, a value of the wrong type) or a syntax error
/// stops it, and the manifest is `None`.
pub fn read(text: &str) -> (Option<Manifest>, Vec<Diagnostic>) {
    if let Some(refused) = unreadable(text) {
        return (None, vec![refused]);
    }
    let mut node = match marked_yaml::parse_yaml(0, text) {
        Ok(node) => node,
        Err(e) => return (None, vec![syntax(&e)]),
    };
    let mut errors = Vec::new();
    loop {
        let e = match marked_yaml::from_node::<Manifest>(&node) {
            Ok(manifest) => return (Some(manifest), errors),
            Err(e) => e,
        };
        let at = e.start_mark().map(location).unwrap_or_default();
        let unknown = matches!(&*e, marked_yaml::Error::UnknownFieldError(..));
        errors.push(Diagnostic {
            at,
            message: e.to_string(),
        });
        if !unknown || errors.len() >= MAX_DIAGNOSTICS || !remove_key_at(&mut node, at) {
            return (None, errors);
        }
    }
}

/// Reads a manifest that must have no problem of shape at all.
pub fn parse(text: &str) -> Result<Manifest, Vec<Diagnostic>> {
    match read(text) {
        (Some(manifest), errors) if errors.is_empty() => Ok(manifest),
        (_, errors) => Err(errors),
    }
}

/// The manifest with step `step` pointed at component `component`, every
/// other byte as written (comments and layout kept): how `flow dev` swaps a
/// development build into a pipeline that runs, by applying it again.
pub fn with_step_component(text: &str, step: &str, component: &str) -> Result<String, String> {
    if component.is_empty()
        || !component
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@:._-".contains(c))
    {
        return Err(format!("`{component}` is not a component reference"));
    }
    // Lines are counted on `\n` below; YAML also breaks on a lone `\r`.
    if text.replace("\r\n", "\n").contains('\r') {
        return Err("the manifest breaks lines with a lone carriage return".into());
    }
    let edited = edit_step_component(text, step, component)?;
    // Whatever the edit met (quotes, escapes, a decoy at the same place),
    // the result must be the manifest with only that value changed.
    let components = |m: &Manifest| -> Vec<(String, String)> {
        m.steps
            .iter()
            .map(|s| (s.name.to_string(), s.component.to_string()))
            .collect()
    };
    if let (Ok(before), Ok(after)) = (parse(text), parse(&edited)) {
        let expected: Vec<(String, String)> = components(&before)
            .into_iter()
            .map(|(name, c)| {
                let c = if name == step {
                    component.to_owned()
                } else {
                    c
                };
                (name, c)
            })
            .collect();
        if components(&after) == expected {
            return Ok(edited);
        }
    }
    Err(format!(
        "step `{step}`: its component cannot be changed in place; write it as `component: <reference>` on a line of its own"
    ))
}

fn edit_step_component(text: &str, step: &str, component: &str) -> Result<String, String> {
    let manifest = parse(text).map_err(|errors| {
        errors
            .iter()
            .map(|d| format!("{}: {}", d.at, d.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let Some(found) = manifest.steps.iter().find(|s| *s.name == step) else {
        let names: Vec<&str> = manifest.steps.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "pipeline `{}` has no step `{step}` (its steps: {})",
            *manifest.name,
            names.join(", ")
        ));
    };
    let Location { line, column } = at(&found.component);
    let value = found.component.as_str();
    // The line's byte range and the value's first byte in it (columns count
    // characters).
    let start_of_line = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let line_text = text[start_of_line..].split('\n').next().unwrap_or_default();
    let offset = line_text
        .char_indices()
        .nth(column.saturating_sub(1))
        .map(|(i, _)| i)
        .ok_or_else(|| format!("step `{step}`: the component is not where the manifest says"))?;
    let rest = &line_text[offset..];
    let len = if rest.starts_with(value) {
        value.len()
    } else if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        rest[1..].find(quote).map(|end| end + 2).ok_or_else(|| {
            format!("step `{step}`: the component's quotes do not close on its line")
        })?
    } else {
        return Err(format!(
            "step `{step}`: the component is not written on one line; write `component: {value}` to swap it"
        ));
    };
    let at = start_of_line + offset;
    Ok(format!("{}{component}{}", &text[..at], &text[at + len..]))
}

fn location(mark: marked_yaml::Marker) -> Location {
    Location {
        line: mark.line(),
        column: mark.column(),
    }
}

fn syntax(e: &marked_yaml::LoadError) -> Diagnostic {
    use marked_yaml::LoadError::*;
    let (mark, message) = match e {
        TopLevelMustBeMapping(m) => (Some(*m), "a manifest is a mapping".to_owned()),
        TopLevelMustBeSequence(m) => (Some(*m), "expected a sequence".to_owned()),
        UnexpectedAnchor(m) => (Some(*m), "anchors are not read".to_owned()),
        MappingKeyMustBeScalar(m) => (Some(*m), "keys must be plain values".to_owned()),
        UnexpectedTag(m) => (Some(*m), "tags are not read".to_owned()),
        ScanError(m, e) => (Some(*m), e.to_string()),
        DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            format!("`{}` is given twice", inner.key.as_str()),
        ),
        #[allow(unreachable_patterns)]
        _ => (None, e.to_string()),
    };
    Diagnostic {
        at: mark.map(location).unwrap_or_default(),
        message,
    }
}

/// Removes the mapping key that starts at `at`, wherever it is.
fn remove_key_at(node: &mut marked_yaml::Node, at: Location) -> bool {
    use marked_yaml::Node;
    match node {
        Node::Scalar(_) => false,
        Node::Sequence(items) => items.iter_mut().any(|item| remove_key_at(item, at)),
        Node::Mapping(map) => {
            let key = map
                .keys()
                .find(|k| k.span().start().copied().map(location) == Some(at))
                .cloned();
            match key {
                Some(key) => map.remove(&key).is_some(),
                None => map.values_mut().any(|value| remove_key_at(value, at)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_component_is_swapped_in_place_keeping_the_rest() {
        let text = "name: p\ninputs: {a: flow://a.x.example.com}\noutputs: {}\nsteps:\n  - name: one   # first\n    component: filter@1.0.0   # released\n    from: a\n  - {name: two, component: \"filter@1.0.0\", from: one}\n";
        let one = with_step_component(text, "one", "sha256:ab").expect("swapped");
        assert_eq!(
            one,
            text.replace(
                "component: filter@1.0.0   # released",
                "component: sha256:ab   # released"
            )
        );
        let two = with_step_component(text, "two", "sha256:cd").expect("swapped");
        assert!(
            two.contains("{name: two, component: sha256:cd, from: one}"),
            "{two}"
        );
        assert!(
            two.contains("component: filter@1.0.0   # released"),
            "{two}"
        );
        let err = with_step_component(text, "three", "sha256:ef").expect_err("no such step");
        assert!(
            err.contains("no step `three`") && err.contains("one, two"),
            "{err}"
        );
        assert!(with_step_component("name: [", "one", "x").is_err());
        // A reference that would change the YAML is refused.
        assert!(with_step_component(text, "one", "a: b").is_err());
        // Escaped quotes, a lone carriage return: refused, not misplaced.
        let quoted = text.replace("filter@1.0.0   # released", "'fil''ter@1.0.0'");
        let err = with_step_component(&quoted, "one", "sha256:ab").expect_err("escapes");
        assert!(err.contains("cannot be changed in place"), "{err}");
        let cr = text.replace("steps:", "# note\rsteps:");
        assert!(with_step_component(&cr, "one", "sha256:ab").is_err());
    }

    const EXAMPLE: &str = "\
name: invoices
inputs:
  orders: flow://created.order.shop.example.com
outputs:
  big: flow://big.invoice.finance.example.com
steps:
  - name: keep
    component: filter@1.0.0
    from: orders
    config:
      where:
        - type == created.order
        - data.amount > 10
      match: all
  - name: route
    component: router@1.0.0
    kind: distributor
    from: [keep]
    to: [big, small]
    limits:
      batch: 50
";

    #[test]
    fn reads_a_manifest_with_locations() {
        let m = parse(EXAMPLE).expect("valid");
        assert_eq!(m.name.as_str(), "invoices");
        assert_eq!(m.steps.len(), 2);
        let keep = &m.steps[0];
        assert_eq!(at(&keep.name).line, 7);
        assert_eq!(keep.from.0[0].as_str(), "orders");
        assert_eq!(
            keep.config.0,
            vec![
                ("where".into(), "type == created.order".into()),
                ("where".into(), "data.amount > 10".into()),
                ("match".into(), "all".into()),
            ]
        );
        let route = &m.steps[1];
        assert_eq!(route.to.as_ref().map(|t| t.0.len()), Some(2));
        assert_eq!(at(&route.to.as_ref().expect("to").0[1]).line, 19);
        assert_eq!(route.limits.as_ref().and_then(|l| l.batch), Some(50));
        assert_eq!(at(&m.outputs["big"]).line, 5);
    }

    #[test]
    fn shape_errors_name_their_place() {
        let err = parse("name: x\ninputs: {}\noutputs: {}\nsteps:\n  - name: a\n    colour: red\n")
            .expect_err("unknown field");
        assert_eq!(
            err.len(),
            2,
            "the unknown field and the missing one: {err:?}"
        );
        assert_eq!(err[0].at, Location { line: 6, column: 5 });
        assert!(err[0].message.contains("colour"), "{err:?}");
        assert!(
            err[1].message.contains("missing field `component`"),
            "{err:?}"
        );
        let err = parse("name: [\n").expect_err("syntax");
        assert_eq!(err.len(), 1);
        assert_ne!(err[0].at.line, 0, "{err:?}");
    }

    #[test]
    fn every_unknown_field_is_reported_and_the_rest_is_read() {
        let text = "name: x\ninptus: {}\ninputs: {}\noutputs: {}\nsteps:\n  - name: a\n    compnent: c\n    component: c\n    from: i\n    limits: {batch: 5, bach: 6}\n";
        let (manifest, errors) = read(text);
        let manifest = manifest.expect("read without the unknown fields");
        assert_eq!(
            manifest.steps[0].limits.as_ref().and_then(|l| l.batch),
            Some(5)
        );
        let places: Vec<(usize, usize)> = errors.iter().map(|e| (e.at.line, e.at.column)).collect();
        assert_eq!(places, vec![(2, 1), (7, 5), (10, 24)], "{errors:?}");
        for (e, field) in errors.iter().zip(["inptus", "compnent", "bach"]) {
            assert!(e.message.contains(field), "{e}");
        }
        // A wrong type stops the reading, after the unknown fields before it.
        let (manifest, errors) = read("name: x\ncolour: red\ninputs: {}\noutputs: {}\nsteps: 5\n");
        assert!(manifest.is_none());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[1].at.line, 5, "{errors:?}");
    }

    #[test]
    fn deep_or_large_manifests_are_refused_before_a_tree_is_built() {
        // Block nesting has no limit in YAML itself: 200 000 levels would
        // overflow the stack of any recursive walk.
        let mut deep = String::from("name: x\ninputs: {}\noutputs: {}\nsteps:\n");
        deep.push_str(&"- ".repeat(100_000));
        deep.push_str("x\n");
        let (manifest, errors) = read(&deep);
        assert!(manifest.is_none());
        assert!(errors[0].message.contains("nested deeper"), "{errors:?}");
        assert_eq!(errors[0].at.line, 5, "{errors:?}");
        let flow_deep = format!("name: {}x{}\n", "[".repeat(40), "]".repeat(40));
        assert!(read(&flow_deep).1[0].message.contains("nested deeper"));
        let large = format!("name: x\n# {}\n", "y".repeat(MAX_MANIFEST_BYTES));
        assert!(read(&large).1[0].message.contains("bytes"));
        // What a manifest needs is well within the bound.
        assert!(parse(EXAMPLE).is_ok());
    }

    #[test]
    fn a_manifest_of_unknown_fields_is_bounded() {
        let mut text = String::from("name: x\ninputs: {}\noutputs: {}\nsteps: []\n");
        for i in 0..1000 {
            text.push_str(&format!("unknown{i}: 1\n"));
        }
        let (manifest, errors) = read(&text);
        assert!(manifest.is_none());
        assert_eq!(errors.len(), MAX_DIAGNOSTICS);
    }
}
