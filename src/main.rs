fn main() -> std::process::ExitCode {
    icegate::cli::main()
}
