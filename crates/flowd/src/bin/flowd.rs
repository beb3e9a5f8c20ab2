//! `flowd`: the ESON participant host. The commands are
//! [`flowd::cli::flowd`].

fn main() -> anyhow::Result<()> {
    flowd::cli::flowd::main()
}
