//! `flow new`: a processor project outside this repository that builds with
//! one command and passes its own `flow test` cases.
//!
//! Every SDK travels inside the `flow` binary: the project gets a copy of
//! the SDK of its language and of the WIT contract, of exactly the version
//! this host speaks, so it builds without a checkout of flowd and without a
//! registry release of the SDK. Rust: `flow-sdk` and `flow-abi` under
//! `vendor/` (cargo still fetches `wit-bindgen` and `serde` from
//! crates.io); Python: the package `flowd-flow-sdk`, whose wheel the build
//! makes; JavaScript: the npm package `@flowd/flow-sdk`, installed from the
//! tarball the build packs; C: `flow.h` and `flow.c`; Go: the module
//! `github.com/flowd-project/flowd/sdk/go/flow` under `flowd/`, which
//! `go.mod` replaces it with.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The processor kinds a project can start as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bridge,
    Collector,
    Distributor,
    Signal,
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(Kind::Bridge),
            "collector" => Ok(Kind::Collector),
            "distributor" => Ok(Kind::Distributor),
            "signal" => Ok(Kind::Signal),
            other => Err(format!(
                "`{other}`: a kind is bridge, collector, distributor or signal"
            )),
        }
    }
}

/// The languages a project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
    Go,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            "c" => Ok(Lang::C),
            "go" => Ok(Lang::Go),
            other => Err(format!(
                "`{other}`: a language is rust, python, js, c or go"
            )),
        }
    }
}

/// The WIT contract this host speaks: (file name, contents); every project
/// gets a copy next to its SDK.
const WIT: &[(&str, &str)] = &[
    ("host.wit", include_str!("../../../wit/host.wit")),
    (
        "processors.wit",
        include_str!("../../../wit/processors.wit"),
    ),
    ("types.wit", include_str!("../../../wit/types.wit")),
];

/// `files` under their project paths, then the WIT contract in `wit_dir`.
fn vendored(files: &[(&str, &str)], wit_dir: &str) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .chain(
            WIT.iter()
                .map(|(name, text)| (format!("{wit_dir}/{name}"), (*text).to_owned())),
        )
        .collect()
}

/// The SDK's files, as this binary was built with them: (path in the
/// project, contents).
const VENDORED: &[(&str, &str)] = &[
    (
        "vendor/flow-sdk/src/lib.rs",
        include_str!("../../../sdk/src/lib.rs"),
    ),
    (
        "vendor/flow-sdk/src/bindings.rs",
        include_str!("../../../sdk/src/bindings.rs"),
    ),
    (
        "vendor/flow-sdk/src/config.rs",
        include_str!("../../../sdk/src/config.rs"),
    ),
    (
        "vendor/flow-sdk/src/error.rs",
        include_str!("../../../sdk/src/error.rs"),
    ),
    (
        "vendor/flow-sdk/src/event.rs",
        include_str!("../../../sdk/src/event.rs"),
    ),
    (
        "vendor/flow-sdk/src/glue.rs",
        include_str!("../../../sdk/src/glue.rs"),
    ),
    (
        "vendor/flow-sdk/src/host.rs",
        include_str!("../../../sdk/src/host.rs"),
    ),
    (
        "vendor/flow-sdk/src/json.rs",
        include_str!("../../../sdk/src/json.rs"),
    ),
    (
        "vendor/flow-sdk/src/kinds.rs",
        include_str!("../../../sdk/src/kinds.rs"),
    ),
    (
        "vendor/flow-sdk/src/output.rs",
        include_str!("../../../sdk/src/output.rs"),
    ),
    (
        "vendor/flow-sdk/src/select.rs",
        include_str!("../../../sdk/src/select.rs"),
    ),
    (
        "vendor/flow-abi/src/lib.rs",
        include_str!("../../../sdk/abi/src/lib.rs"),
    ),
];

const SDK_MANIFEST: &str = r#"[package]
name = "flow-sdk"
description = "Write ESON flow processors as WebAssembly components (vendored by flow new)."
version = "VERSION"
edition = "2024"
license = "Apache-2.0"

[dependencies]
flow-abi = { path = "../flow-abi" }
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
serde = { version = "1", features = ["derive"] }
serde_json = "1"
"#;

const ABI_MANIFEST: &str = r#"[package]
name = "flow-abi"
description = "The packed batch layout of the eson:flow processor contract (vendored by flow new)."
version = "VERSION"
edition = "2024"
license = "Apache-2.0"

[dependencies]
"#;

const PROJECT_MANIFEST: &str = r#"[package]
name = "NAME"
version = "0.1.0"
edition = "2024"

# One crate makes one component.
[lib]
crate-type = ["cdylib"]

[dependencies]
flow-sdk = { path = "vendor/flow-sdk" }

# Small, fast guests.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A project of its own, even inside another workspace.
[workspace]
"#;

const FLOW_TOML: &str = r#"# flow test / flow dev (docs/authoring.md)
[processor]
name = "NAME"
component = "target/wasm32-wasip2/release/CRATE.wasm"
build = "cargo build --release --target wasm32-wasip2"
"#;

/// The Python SDK and its build script, laid out as in a checkout so that
/// the script finds `wit/` and `sdk/python/` next to itself.
const VENDORED_PYTHON: &[(&str, &str)] = &[
    (
        "vendor/sdk/python/flow_sdk/__init__.py",
        include_str!("../../../sdk/python/flow_sdk/__init__.py"),
    ),
    (
        "vendor/sdk/python/build-component",
        include_str!("../../../sdk/python/build-component"),
    ),
    (
        "vendor/sdk/python/pyproject.toml",
        include_str!("../../../sdk/python/pyproject.toml"),
    ),
    (
        "vendor/sdk/python/wheel_backend.py",
        include_str!("../../../sdk/python/wheel_backend.py"),
    ),
];

const PYTHON_FLOW_TOML: &str = r#"# flow test / flow dev (docs/authoring.md)
[processor]
name = "NAME"
component = "build/MODULE.wasm"
build = "bash vendor/sdk/python/build-component . MODULE WORLD build/MODULE.wasm"

[test]
deadline-ms = 2000   # the first calls of a Python component warm it up
"#;

const PYTHON_README: &str = r#"# NAME

A KIND processor for flowd (ESON), in Python.

```sh
scripts/setup of flowd, once: componentize-py and wasm-tools in ~/.local/share/flowd
bash vendor/sdk/python/build-component . MODULE WORLD build/MODULE.wasm   # the component
flow test                                          # tests/: outputs compared with expected ones
flow dev -p <processor>                            # rebuild, test and swap into a running processor
```

`MODULE.py` is the processor; `tests/<case>/` its fixtures; `flow.toml` tells
`flow test` and `flow dev` what to build and test. `vendor/` holds the flow
Python SDK (`vendor/sdk/python`, the package `flowd-flow-sdk`: the build
makes its wheel and bundles it; `pip install vendor/sdk/python` puts it in
an environment for your own tests), its build script and the WIT contract of
the host that made this project. See docs/authoring.md and docs/python.md of
flowd.
"#;

/// The JavaScript SDK, its build script and its toolchain's pinned
/// versions, laid out as in a checkout (the script finds `wit/` and
/// `sdk/js/node_modules` from where it is).
const VENDORED_JS: &[(&str, &str)] = &[
    (
        "vendor/sdk/js/flow-sdk/flow-sdk.js",
        include_str!("../../../sdk/js/flow-sdk/flow-sdk.js"),
    ),
    (
        "vendor/sdk/js/flow-sdk/package.json",
        include_str!("../../../sdk/js/flow-sdk/package.json"),
    ),
    (
        "vendor/sdk/js/build-component",
        include_str!("../../../sdk/js/build-component"),
    ),
    (
        "vendor/sdk/js/package.json",
        include_str!("../../../sdk/js/package.json"),
    ),
    (
        "vendor/sdk/js/package-lock.json",
        include_str!("../../../sdk/js/package-lock.json"),
    ),
];

const JS_FLOW_TOML: &str = r#"# flow test / flow dev (docs/authoring.md)
[processor]
name = "NAME"
component = "build/MODULE.wasm"
# The toolchain (componentize-js, rolldown) is installed once, from the npm
# registry, at the versions vendor/sdk/js/package-lock.json pins.
# The SDK is the npm package @flowd/flow-sdk: its tarball is packed from
# vendor/sdk/js/flow-sdk and installed into node_modules the first time.
build = "test -x vendor/sdk/js/node_modules/.bin/componentize-js || npm ci --prefix vendor/sdk/js --no-audit --no-fund --loglevel=error; test -d node_modules/@flowd/flow-sdk || { mkdir -p build && npm pack ./vendor/sdk/js/flow-sdk --pack-destination build --silent >/dev/null && npm install --no-audit --no-fund --loglevel=error; }; bash vendor/sdk/js/build-component MODULE.js WORLD build/MODULE.wasm"

[test]
deadline-ms = 2000   # the first calls of a JavaScript component warm it up
"#;

const JS_README: &str = r#"# NAME

A KIND processor for flowd (ESON), in JavaScript.

```sh
npm ci --prefix vendor/sdk/js                      # once: componentize-js and rolldown
npm pack ./vendor/sdk/js/flow-sdk --pack-destination build && npm install   # once: the SDK package
bash vendor/sdk/js/build-component MODULE.js WORLD build/MODULE.wasm   # the component
flow test                                          # tests/: outputs compared with expected ones
flow dev -p <processor>                            # rebuild, test and swap into a running processor
```

`MODULE.js` is the processor; `tests/<case>/` its fixtures; `flow.toml` tells
`flow test` and `flow dev` what to build and test (its build installs the
toolchain and the SDK when they are missing). `vendor/` holds the flow
JavaScript SDK (`vendor/sdk/js/flow-sdk`, the npm package `@flowd/flow-sdk`
that `package.json` installs from its tarball), its build script, the
toolchain's pinned versions and the WIT contract of the host that made this
project. See docs/authoring.md and docs/javascript.md of
flowd.
"#;

/// The sample events of every project.
const SAMPLE: &str = r#"{"specversion":"1.0","id":"e-1","source":"urn:example","type":"created.order","datacontenttype":"application/json","data":{"amount":17}}
{"specversion":"1.0","id":"e-2","source":"urn:example","type":"deleted.order","datacontenttype":"application/json","data":{"amount":41}}
{"specversion":"1.0","id":"e-3","source":"urn:example","type":"created.order","datacontenttype":"application/json","data":{"amount":5}}
"#;

/// A case of the project's own: what the skeleton does with the samples.
fn example_case(kind: Kind, name: &str) -> Vec<(String, String)> {
    let event = |id: &str, ty: &str, amount: u32, ext: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"urn:example","type":"{ty}","datacontenttype":"application/json","data":{{"amount":{amount}}}{ext}}}"#
        ) + "\n"
    };
    let file = |path: &str, text: String| (format!("tests/example/{path}"), text);
    match kind {
        Kind::Bridge => vec![
            file(
                "case.toml",
                "description = \"each event stamped with its type's count so far\"\n".into(),
            ),
            file("input/in.jsonl", SAMPLE.into()),
            file(
                "expected/out.jsonl",
                event("e-1", "created.order", 17, r#","seen":1"#)
                    + &event("e-2", "deleted.order", 41, r#","seen":1"#)
                    + &event("e-3", "created.order", 5, r#","seen":2"#),
            ),
        ],
        Kind::Collector => vec![
            file(
                "case.toml",
                "description = \"events of both inputs, tagged with their input\"\ninputs = [\"left\", \"right\"]\n".into(),
            ),
            file(
                "input/left.jsonl",
                SAMPLE.lines().take(2).map(|l| format!("{l}\n")).collect(),
            ),
            file(
                "input/right.jsonl",
                SAMPLE.lines().skip(2).map(|l| format!("{l}\n")).collect(),
            ),
            file(
                "expected/out.jsonl",
                event("e-1", "created.order", 17, r#","input":"left""#)
                    + &event("e-2", "deleted.order", 41, r#","input":"left""#)
                    + &event("e-3", "created.order", 5, r#","input":"right""#),
            ),
        ],
        Kind::Distributor => vec![
            file(
                "case.toml",
                "description = \"created events to the first output, the rest to the second\"\noutputs = [\"created\", \"other\"]\n".into(),
            ),
            file("input/in.jsonl", SAMPLE.into()),
            file(
                "expected/created.jsonl",
                event("e-1", "created.order", 17, "") + &event("e-3", "created.order", 5, ""),
            ),
            file("expected/other.jsonl", event("e-2", "deleted.order", 41, "")),
        ],
        Kind::Signal => vec![
            file(
                "case.toml",
                "description = \"one count at the tick after the events\"\noutputs = [\"counts\"]\ntick-every = 1000\ntick-ms = 1767225600000\n".into(),
            ),
            file("input/in.jsonl", SAMPLE.into()),
            file(
                "expected/counts.jsonl",
                format!(
                    r#"{{"specversion":"1.0","id":"count-1767225600000","source":"urn:{name}","type":"{name}.count","datacontenttype":"application/json","data":{{"at_ms":1767225600000,"count":3}}}}"#
                ) + "\n",
            ),
        ],
    }
}

const README: &str = r#"# NAME

A KIND processor for flowd (ESON), in Rust.

```sh
rustup target add wasm32-wasip2                   # once
cargo build --release --target wasm32-wasip2       # the component: COMPONENT
flow test                                          # tests/: outputs compared with expected ones
flow dev -p <processor>                            # rebuild, test and swap into a running processor
```

`src/lib.rs` is the processor; `tests/<case>/` its fixtures (input events per
port, the expected output per port, `case.toml`); `flow.toml` tells `flow test`
and `flow dev` what to build and test. `vendor/` holds the flow SDK and the
WIT contract of the host that made this project. See docs/authoring.md and
docs/wit.md of flowd.
"#;

/// Writes a new project `name` of `kind` in `lang` at `dir` (which must
/// not exist yet); returns the files written.
pub fn create(dir: &Path, name: &str, kind: Kind, lang: Lang) -> Result<Vec<PathBuf>> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}`: a project name is lower-case letters, digits, `-` and `_`, starting with a letter"
        );
    }
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let mut files = match lang {
        Lang::Rust => rust_files(name, kind),
        Lang::Python => python_files(name, kind),
        Lang::Js => js_files(name, kind),
        Lang::C => c_files(name, kind),
        Lang::Go => go_files(name, kind),
    };
    files.push((
        ".gitignore".into(),
        "/target\n/build\n/node_modules\n__pycache__/\n".into(),
    ));
    files.extend(example_case(kind, name));
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
        }
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
        written.push(path);
    }
    Ok(written)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Bridge => "bridge",
        Kind::Collector => "collector",
        Kind::Distributor => "distributor",
        Kind::Signal => "signal",
    }
}

fn rust_files(name: &str, kind: Kind) -> Vec<(String, String)> {
    let krate = name.replace('-', "_");
    let version = env!("CARGO_PKG_VERSION");
    let skeleton = skeleton(Lang::Rust, kind);
    let type_name = pascal(name);
    let component = format!("target/wasm32-wasip2/release/{krate}.wasm");
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), PROJECT_MANIFEST.replace("NAME", name)),
        (
            "flow.toml".into(),
            FLOW_TOML.replace("NAME", name).replace("CRATE", &krate),
        ),
        (
            "src/lib.rs".into(),
            skeleton
                .replace("Processor_", &type_name)
                .replace("NAME", name),
        ),
        (
            "README.md".into(),
            README
                .replace("NAME", name)
                .replace("KIND", kind_name(kind))
                .replace("COMPONENT", &component),
        ),
        (
            "vendor/flow-sdk/Cargo.toml".into(),
            SDK_MANIFEST.replace("VERSION", version),
        ),
        (
            "vendor/flow-abi/Cargo.toml".into(),
            ABI_MANIFEST.replace("VERSION", version),
        ),
    ];
    files.extend(vendored(VENDORED, "vendor/wit"));
    files
}

fn js_files(name: &str, kind: Kind) -> Vec<(String, String)> {
    let module = name.replace('-', "_");
    let world = format!("{}-processor", kind_name(kind));
    let skeleton = skeleton(Lang::Js, kind);
    let fill = |text: &str| {
        text.replace("NAME", name)
            .replace("MODULE", &module)
            .replace("WORLD", &world)
            .replace("KIND", kind_name(kind))
    };
    let mut files: Vec<(String, String)> = vec![
        ("flow.toml".into(), fill(JS_FLOW_TOML)),
        ("package.json".into(), js_package(name)),
        (format!("{module}.js"), fill(skeleton)),
        ("README.md".into(), fill(JS_README)),
    ];
    files.extend(vendored(VENDORED_JS, "vendor/wit"));
    files
}

/// The project's `package.json`: the SDK package from the tarball its
/// build packs (`build/flowd-flow-sdk-<version>.tgz`).
fn js_package(name: &str) -> String {
    let sdk: serde_json::Value =
        serde_json::from_str(include_str!("../../../sdk/js/flow-sdk/package.json"))
            .unwrap_or_default();
    let version = sdk["version"].as_str().unwrap_or("0.1.0");
    let package = serde_json::json!({
        "name": name,
        "private": true,
        "type": "module",
        "dependencies": {
            "@flowd/flow-sdk": format!("file:build/flowd-flow-sdk-{version}.tgz"),
        },
    });
    serde_json::to_string_pretty(&package).unwrap_or_default() + "\n"
}

fn python_files(name: &str, kind: Kind) -> Vec<(String, String)> {
    let module = name.replace('-', "_");
    let world = format!("{}-processor", kind_name(kind));
    let skeleton = skeleton(Lang::Python, kind);
    let fill = |text: &str| {
        text.replace("NAME", name)
            .replace("MODULE", &module)
            .replace("WORLD", &world)
            .replace("KIND", kind_name(kind))
    };
    let mut files: Vec<(String, String)> = vec![
        ("flow.toml".into(), fill(PYTHON_FLOW_TOML)),
        (format!("{module}.py"), fill(skeleton)),
        ("README.md".into(), fill(PYTHON_README)),
    ];
    files.extend(vendored(VENDORED_PYTHON, "vendor/wit"));
    files
}

/// The C SDK and its build script, laid out as in a checkout (the script
/// finds `wit/` two directories up).
const VENDORED_C: &[(&str, &str)] = &[
    ("vendor/sdk/c/flow.h", include_str!("../../../sdk/c/flow.h")),
    ("vendor/sdk/c/flow.c", include_str!("../../../sdk/c/flow.c")),
    (
        "vendor/sdk/c/build-component",
        include_str!("../../../sdk/c/build-component"),
    ),
];

const C_FLOW_TOML: &str = r#"# flow test / flow dev (docs/authoring.md)
[processor]
name = "NAME"
component = "build/MODULE.wasm"
build = "bash vendor/sdk/c/build-component KIND build/MODULE.wasm MODULE.c"
"#;

const C_README: &str = r#"# NAME

A KIND processor for flowd (ESON), in C.

```sh
scripts/setup of flowd, once: clang, lld, wasi-libc, wit-bindgen, wasm-tools, the WASI adapter
bash vendor/sdk/c/build-component KIND build/MODULE.wasm MODULE.c   # the component
flow test                                          # tests/: outputs compared with expected ones
flow dev -p <processor>                            # rebuild, test and swap into a running processor
```

`MODULE.c` is the processor; `tests/<case>/` its fixtures; `flow.toml` tells
`flow test` and `flow dev` what to build and test. `vendor/` holds the flow C
SDK (`flow.h` is its reference), its build script and the WIT contract of the
host that made this project. See docs/authoring.md and docs/c.md of flowd.
"#;

/// The Go SDK (a module of its own), its build scripts and the WIT, under
/// `flowd/`: Go gives `vendor/` a meaning of its own.
const VENDORED_GO: &[(&str, &str)] = &[
    (
        "flowd/sdk/go/build-component",
        include_str!("../../../sdk/go/build-component"),
    ),
    (
        "flowd/sdk/go/adapter-arena",
        include_str!("../../../sdk/go/adapter-arena"),
    ),
    (
        "flowd/sdk/go/flow/go.mod",
        include_str!("../../../sdk/go/flow/go.mod"),
    ),
    (
        "flowd/sdk/go/flow/doc.go",
        include_str!("../../../sdk/go/flow/doc.go"),
    ),
    (
        "flowd/sdk/go/flow/config.go",
        include_str!("../../../sdk/go/flow/config.go"),
    ),
    (
        "flowd/sdk/go/flow/event.go",
        include_str!("../../../sdk/go/flow/event.go"),
    ),
    (
        "flowd/sdk/go/flow/host.go",
        include_str!("../../../sdk/go/flow/host.go"),
    ),
    (
        "flowd/sdk/go/flow/output.go",
        include_str!("../../../sdk/go/flow/output.go"),
    ),
    (
        "flowd/sdk/go/flow/bridge/bridge.go",
        include_str!("../../../sdk/go/flow/bridge/bridge.go"),
    ),
    (
        "flowd/sdk/go/flow/collector/collector.go",
        include_str!("../../../sdk/go/flow/collector/collector.go"),
    ),
    (
        "flowd/sdk/go/flow/distributor/distributor.go",
        include_str!("../../../sdk/go/flow/distributor/distributor.go"),
    ),
    (
        "flowd/sdk/go/flow/signal/signal.go",
        include_str!("../../../sdk/go/flow/signal/signal.go"),
    ),
    (
        "flowd/sdk/go/flow/internal/glue/glue.go",
        include_str!("../../../sdk/go/flow/internal/glue/glue.go"),
    ),
    (
        "flowd/sdk/go/flow/internal/alloc/alloc.go",
        include_str!("../../../sdk/go/flow/internal/alloc/alloc.go"),
    ),
    (
        "flowd/sdk/go/flow/internal/alloc/adapter.go",
        include_str!("../../../sdk/go/flow/internal/alloc/adapter.go"),
    ),
];

const GO_FLOW_TOML: &str = r#"# flow test / flow dev (docs/authoring.md)
[processor]
name = "NAME"
component = "build/MODULE.wasm"
build = "bash flowd/sdk/go/build-component . WORLD build/MODULE.wasm"
"#;

const GO_README: &str = r#"# NAME

A KIND processor for flowd (ESON), in Go.

```sh
scripts/setup of flowd, once: Go, wasm-tools and the WASI adapter in ~/.local/share/flowd
bash flowd/sdk/go/build-component . WORLD build/MODULE.wasm   # the component
flow test                                          # tests/: outputs compared with expected ones
flow dev -p <processor>                            # rebuild, test and swap into a running processor
```

`main.go` is the processor; `tests/<case>/` its fixtures; `flow.toml` tells
`flow test` and `flow dev` what to build and test. `flowd/` holds the flow Go
SDK (module `github.com/flowd-project/flowd/sdk/go/flow`, which `go.mod`
replaces with it; `go doc` reads its reference), the build scripts and the
WIT contract of the host that made this project. See docs/authoring.md and
docs/go.md of flowd.
"#;

fn c_files(name: &str, kind: Kind) -> Vec<(String, String)> {
    let module = name.replace('-', "_");
    let skeleton = skeleton(Lang::C, kind);
    let fill = |text: &str| {
        text.replace("NAME", name)
            .replace("MODULE", &module)
            .replace("KIND", kind_name(kind))
    };
    let mut files: Vec<(String, String)> = vec![
        ("flow.toml".into(), fill(C_FLOW_TOML)),
        (format!("{module}.c"), fill(skeleton)),
        ("README.md".into(), fill(C_README)),
    ];
    files.extend(vendored(VENDORED_C, "vendor/wit"));
    files
}

fn go_files(name: &str, kind: Kind) -> Vec<(String, String)> {
    let module = name.replace('-', "_");
    let world = format!("{}-processor", kind_name(kind));
    let skeleton = skeleton(Lang::Go, kind);
    let fill = |text: &str| {
        text.replace("NAME", name)
            .replace("MODULE", &module)
            .replace("WORLD", &world)
            .replace("KIND", kind_name(kind))
    };
    let mut files: Vec<(String, String)> = vec![
        ("flow.toml".into(), fill(GO_FLOW_TOML)),
        (
            "go.mod".into(),
            include_str!("../templates/go/go.mod.in").replace("MODULE", name),
        ),
        ("main.go".into(), fill(skeleton)),
        ("README.md".into(), fill(GO_README)),
    ];
    files.extend(vendored(VENDORED_GO, "flowd/wit"));
    files
}

/// The kind's skeleton in a language: a processor that does something
/// small (the same in every language, so one fixture tests them all), with
/// `NAME` (and in Rust `Processor_`) to fill in. They live in `templates/`,
/// where `scripts/sdk-reference` shows them as each SDK's examples.
fn skeleton(lang: Lang, kind: Kind) -> &'static str {
    match (lang, kind) {
        (Lang::Rust, Kind::Bridge) => include_str!("../templates/rust/bridge.rs"),
        (Lang::Rust, Kind::Collector) => include_str!("../templates/rust/collector.rs"),
        (Lang::Rust, Kind::Distributor) => include_str!("../templates/rust/distributor.rs"),
        (Lang::Rust, Kind::Signal) => include_str!("../templates/rust/signal.rs"),
        (Lang::Python, Kind::Bridge) => include_str!("../templates/python/bridge.py"),
        (Lang::Python, Kind::Collector) => include_str!("../templates/python/collector.py"),
        (Lang::Python, Kind::Distributor) => include_str!("../templates/python/distributor.py"),
        (Lang::Python, Kind::Signal) => include_str!("../templates/python/signal.py"),
        (Lang::Js, Kind::Bridge) => include_str!("../templates/js/bridge.js"),
        (Lang::Js, Kind::Collector) => include_str!("../templates/js/collector.js"),
        (Lang::Js, Kind::Distributor) => include_str!("../templates/js/distributor.js"),
        (Lang::Js, Kind::Signal) => include_str!("../templates/js/signal.js"),
        (Lang::C, Kind::Bridge) => include_str!("../templates/c/bridge.c"),
        (Lang::C, Kind::Collector) => include_str!("../templates/c/collector.c"),
        (Lang::C, Kind::Distributor) => include_str!("../templates/c/distributor.c"),
        (Lang::C, Kind::Signal) => include_str!("../templates/c/signal.c"),
        (Lang::Go, Kind::Bridge) => include_str!("../templates/go/bridge.go"),
        (Lang::Go, Kind::Collector) => include_str!("../templates/go/collector.go"),
        (Lang::Go, Kind::Distributor) => include_str!("../templates/go/distributor.go"),
        (Lang::Go, Kind::Signal) => include_str!("../templates/go/signal.go"),
    }
}

/// `my-dedupe` -> `MyDedupe`: the processor's type name.
fn pascal(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_types_named_after_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "Upper", "1st", "a b", "../x", "a/b"] {
            assert!(
                create(&dir.path().join("p"), bad, Kind::Bridge, Lang::Rust).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(pascal("my-dedupe_2"), "MyDedupe2");
        let written =
            create(&dir.path().join("p"), "my-dedupe", Kind::Signal, Lang::Rust).expect("created");
        assert!(
            written
                .iter()
                .any(|p| p.ends_with("vendor/wit/processors.wit"))
        );
        let lib = std::fs::read_to_string(dir.path().join("p/src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("pub struct MyDedupe;") && lib.contains("signal!(MyDedupe)"));
        assert!(
            create(&dir.path().join("p"), "again", Kind::Bridge, Lang::Rust).is_err(),
            "an existing directory is left alone"
        );
        assert_eq!("go".parse::<Lang>(), Ok(Lang::Go));
        let unknown = "cobol".parse::<Lang>().expect_err("not a language");
        assert!(unknown.contains("rust, python, js, c or go"), "{unknown}");
        // A Go project keeps its SDK out of `vendor/` (Go's own module
        // vendoring) and points go.mod at it.
        create(&dir.path().join("g"), "go-thing", Kind::Bridge, Lang::Go).expect("created");
        let go_mod = std::fs::read_to_string(dir.path().join("g/go.mod")).expect("go.mod");
        assert!(go_mod.starts_with("module go-thing\n"), "{go_mod}");
        assert!(go_mod.contains("=> ./flowd/sdk/go/flow"), "{go_mod}");
        assert!(dir.path().join("g/flowd/sdk/go/flow/go.mod").is_file());
        assert!(!dir.path().join("g/vendor").exists());
    }
}
