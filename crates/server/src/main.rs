//! The `portcullis` binary: the command line of [`portcullis_server::cli`].

use std::process::ExitCode;

use clap::Parser;
use portcullis_server::cli::{Cli, Failure, run};

/// Large buffers (the hashing threads' ~19 MiB argon2 working memory) go straight to mmap, so that
/// when a thread releases its buffer after going idle the memory really returns to the OS. glibc would
/// otherwise raise its mmap threshold after the first such free and keep later buffers in per-thread
/// heaps that never shrink (measured: ~420 MB RSS with two hashing threads).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_allocations_on_mmap() {
    // SAFETY: mallopt only changes allocator tuning; it is called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations_on_mmap() {}

fn main() -> ExitCode {
    keep_large_allocations_on_mmap();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}
