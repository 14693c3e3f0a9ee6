fn main() -> std::process::ExitCode {
    artifactstore::cli::main()
}
