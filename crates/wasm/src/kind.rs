//! The four processor kinds of the draft (figure 7) and how a component's
//! exports tell which one it is.

use super::LoadError;
use std::fmt;

/// A processor kind. A component is of the kind whose interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 1 input flow to 1 output flow.
    Bridge,
    /// N input flows to 1 output flow.
    Collector,
    /// 1 input flow to N output flows.
    Distributor,
    /// N input flows to N output flows, plus timer ticks.
    Signal,
}

/// Functions every processor world exports besides its kind interface.
pub(crate) const LIFECYCLE: [&str; 3] = ["init", "update", "teardown"];

impl Kind {
    /// Every kind, in the draft's order.
    pub const ALL: [Kind; 4] = [
        Kind::Bridge,
        Kind::Collector,
        Kind::Distributor,
        Kind::Signal,
    ];

    /// The exported interface that marks this kind.
    pub fn interface(self) -> &'static str {
        match self {
            Kind::Bridge => "eson:flow/bridge@0.1.0",
            Kind::Collector => "eson:flow/collector@0.1.0",
            Kind::Distributor => "eson:flow/distributor@0.1.0",
            Kind::Signal => "eson:flow/signal@0.1.0",
        }
    }

    /// The WIT world a component of this kind implements.
    pub fn world(self) -> &'static str {
        match self {
            Kind::Bridge => "eson:flow/bridge-processor@0.1.0",
            Kind::Collector => "eson:flow/collector-processor@0.1.0",
            Kind::Distributor => "eson:flow/distributor-processor@0.1.0",
            Kind::Signal => "eson:flow/signal-processor@0.1.0",
        }
    }

    /// The kind's lowercase name, as in specs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bridge => "bridge",
            Kind::Collector => "collector",
            Kind::Distributor => "distributor",
            Kind::Signal => "signal",
        }
    }

    /// Whether this kind takes several inputs (collector, signal).
    pub fn many_inputs(self) -> bool {
        matches!(self, Kind::Collector | Kind::Signal)
    }

    /// Whether this kind writes to several outputs (distributor, signal).
    pub fn many_outputs(self) -> bool {
        matches!(self, Kind::Distributor | Kind::Signal)
    }

    /// Checks the number of input and output ports against this kind's arity.
    pub fn check_ports(self, inputs: usize, outputs: usize) -> Result<(), String> {
        let fits = |n: usize, many: bool| if many { n >= 1 } else { n == 1 };
        let want = |many: bool| if many { "one or more" } else { "exactly one" };
        if !fits(inputs, self.many_inputs()) {
            return Err(format!(
                "a {self} takes {} input flow(s), {inputs} given",
                want(self.many_inputs())
            ));
        }
        if !fits(outputs, self.many_outputs()) {
            return Err(format!(
                "a {self} writes {} output flow(s), {outputs} given",
                want(self.many_outputs())
            ));
        }
        Ok(())
    }

    /// The kind of a component, from the names it exports.
    pub fn detect<'n>(exports: impl IntoIterator<Item = &'n str>) -> Result<Kind, LoadError> {
        let exports: Vec<&str> = exports.into_iter().collect();
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| exports.contains(&k.interface()))
            .collect();
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => {
                return Err(LoadError::NotAProcessor {
                    exports: exports.iter().map(|s| s.to_string()).collect(),
                });
            }
            several => {
                return Err(LoadError::AmbiguousKind {
                    kinds: several.to_vec(),
                });
            }
        };
        if let Some(missing) = LIFECYCLE.iter().find(|f| !exports.contains(f)) {
            return Err(LoadError::MissingExport {
                kind,
                missing: (*missing).to_owned(),
            });
        }
        Ok(kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown processor kind `{s}` (bridge, collector, distributor, signal)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kind_and_missing_lifecycle() {
        let bridge = ["init", "update", "teardown", "eson:flow/bridge@0.1.0"];
        assert_eq!(Kind::detect(bridge).ok(), Some(Kind::Bridge));
        let half = ["eson:flow/signal@0.1.0", "init"];
        let err = Kind::detect(half).expect_err("missing update");
        assert!(err.to_string().contains("`update`"), "{err}");
        let none = ["wasi:cli/run@0.2.6"];
        let err = Kind::detect(none).expect_err("not a processor");
        assert!(err.to_string().contains("wasi:cli/run@0.2.6"), "{err}");
    }

    #[test]
    fn arity() {
        assert!(Kind::Bridge.check_ports(1, 1).is_ok());
        assert!(Kind::Bridge.check_ports(2, 1).is_err());
        assert!(Kind::Collector.check_ports(3, 1).is_ok());
        assert!(Kind::Collector.check_ports(3, 2).is_err());
        assert!(Kind::Distributor.check_ports(1, 4).is_ok());
        assert!(Kind::Signal.check_ports(2, 3).is_ok());
        assert!(Kind::Signal.check_ports(0, 3).is_err());
    }
}
