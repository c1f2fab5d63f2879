//! The permitd binary: parse the command line and run the command it names
//! (by default: serve until signalled). Everything else is in the library.

use std::process::ExitCode;

// malloc and free were an eighth of the server's CPU under load (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
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
