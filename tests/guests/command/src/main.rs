//! A plain WASI command: a valid component that is not a flow processor.
fn main() {
    println!("hello from a command component");
}
