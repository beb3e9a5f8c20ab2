//! Dotted paths into JSON values: `a.b.0.c` is field `a`, field `b`, array
//! element 0, field `c`.

use serde_json::{Map, Value};

fn index(segment: &str) -> Option<usize> {
    segment.parse().ok()
}

/// The value at `path` (an empty path is the value itself).
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => index(seg).and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Sets the value at `path`, creating objects on the way. Fails (returns
/// `false`) when a step crosses a scalar or an array index out of range.
pub fn set(value: &mut Value, path: &str, new: Value) -> bool {
    if path.is_empty() {
        *value = new;
        return true;
    }
    let mut current = value;
    let mut segments = path.split('.').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
        current = match current {
            Value::Object(m) => {
                if last {
                    m.insert(seg.to_owned(), new);
                    return true;
                }
                m.entry(seg.to_owned()).or_insert(Value::Null)
            }
            Value::Array(a) => match index(seg).and_then(|i| a.get_mut(i)) {
                Some(slot) if last => {
                    *slot = new;
                    return true;
                }
                Some(slot) => slot,
                None => return false,
            },
            _ => return false,
        };
    }
    false
}

/// Removes and returns the value at `path`.
pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, leaf) = match path.rsplit_once('.') {
        Some((parent, leaf)) => (get_mut(value, parent)?, leaf),
        None => (value, path),
    };
    match parent {
        Value::Object(m) => m.remove(leaf),
        Value::Array(a) => {
            let i = index(leaf)?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// The value at `path`, mutable.
pub fn get_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, seg| match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => index(seg).and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

/// A configuration value as JSON: JSON literals (`42`, `true`, `"x"`,
/// `{"a":1}`) are parsed, anything else is a plain string.
pub fn literal(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_get_set_remove() {
        let mut v = json!({"a": {"b": [1, {"c": 2}]}});
        assert_eq!(get(&v, "a.b.1.c"), Some(&json!(2)));
        assert_eq!(get(&v, "a.x"), None);
        assert!(set(&mut v, "a.d.e", json!("new")));
        assert_eq!(get(&v, "a.d.e"), Some(&json!("new")));
        assert!(!set(&mut v, "a.b.7", json!(0)), "index out of range");
        assert!(!set(&mut v, "a.d.e.f", json!(0)), "crosses a scalar");
        assert_eq!(remove(&mut v, "a.b.0"), Some(json!(1)));
        assert_eq!(get(&v, "a.b.0.c"), Some(&json!(2)));
        assert_eq!(remove(&mut v, "nope.x"), None);
    }

    #[test]
    fn literals() {
        assert_eq!(literal("42"), json!(42));
        assert_eq!(literal("\"42\""), json!("42"));
        assert_eq!(literal("paid"), json!("paid"));
    }
}
