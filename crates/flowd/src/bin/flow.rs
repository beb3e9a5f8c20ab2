//! `flow`: the ESON user agent (FNUA). The commands are
//! [`flowd::cli::flow`].

fn main() {
    flowd::cli::flow::main();
}
