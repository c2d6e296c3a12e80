// jemalloc, not the system allocator: after 10 000 TCP connections had come
// and gone, glibc's malloc kept 83 MB of their freed memory resident (only
// `malloc_trim` gave it back), so a daemon's RSS only ever grew with the
// busiest hour it had seen; jemalloc's background thread returns it
// (tests/under_load.rs holds this).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    icegate::cli::main()
}
