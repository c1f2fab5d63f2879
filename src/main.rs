//! The permitd binary: parse the command line and run the command it names
//! (by default: serve until signalled). Everything else is in the library.

use std::process::ExitCode;

// malloc and free were an eighth of the server's CPU under load (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in its
/// v2 and v3); libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> anyhow::Result<ExitCode> {
    // mimalloc keeps freed pages for 10 ms before giving them back, and under
    // load some are always waiting. Measured after the contended benchmark
    // (peak RSS, and page faults per uncontended memory-store cycle):
    // 10 ms 15.8-16.9 MiB, 0.01; 5 ms 15.3-16.8 MiB, 0.06; 0 ms 14.8-15.6
    // MiB, 0.26. Immediate purging is the one that stays within 16 MiB run
    // after run; its price is a page fault for some pages just given back,
    // about 1 µs (4 %) more CPU per uncontended memory-store cycle.
    // SAFETY: called before any other thread exists, as mimalloc asks of
    // option setters (they are not thread-safe).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let cli = permitd::cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.settings.worker_threads > 0 {
        runtime.worker_threads(cli.settings.worker_threads);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(permitd::cli::run(cli))
}
