//! Thin entry point: all work happens in the library so that editing it does not
//! re-monomorphise openraft in the binary crate.

fn main() -> std::process::ExitCode {
    pgquorum::cli::main()
}
