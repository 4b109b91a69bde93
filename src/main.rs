//! `cortexid`, the command people type. It answers `cortexid token` itself, because kubectl's
//! exec plugin and scripts start it for every token and its start-up is most of a token's cost:
//! this binary links neither the async runtime, nor TLS and crypto, nor clap, so it maps, relocates
//! and initialises little. Every other command line (and a `token` command line the fast path
//! declines: `--help`, a mistake clap explains) goes to `cortexid-agent`, the whole command line
//! installed next to this binary, by `exec`: same process, arguments, `argv[0]` and environment.
//!
//! Unsafe code, each use said why below: the link attribute's `extern` block, and a C `main`
//! instead of the standard library's start-up, which spends ~0.1 ms of CPU per process on what
//! a command that lives ~1 ms never needs (chiefly a guard page and `SIGSEGV` handler for the
//! main thread's stack, located by reading `/proc/self/maps`). What of that start-up matters
//! here is done in [`main`]: `SIGPIPE` ignored, standard descriptors 0-2 open, stdout flushed.

#![no_main]

use std::ffi::{OsString, c_char, c_int};
use std::io::Write;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{SigHandler, Signal};

use cortexid::cmd::EXIT_FAILURE;
use cortexid::cmd::client::fast;

// The unwinder linked in (gcc's `-static-libgcc`), so that this binary does not load
// libgcc_s.so: loading it, and its constructor's CPU-feature detection (`cpuid`, which traps to
// the hypervisor in a VM), cost ~70 µs of a ~1 ms `cortexid token`. Listed before the libraries
// of the standard library, the archive's `_Unwind_*` leave `-lgcc_s` nothing to provide, and
// `--as-needed` drops it.
// SAFETY: an empty block: it declares nothing, it only carries the link attribute.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")
)]
unsafe extern "C" {}

/// The whole command line's binary, looked for next to this one.
const FULL: &str = "cortexid-agent";

/// The process's entry, called by the C library's start-up (`std::env::args_os` still works:
/// the standard library reads the arguments from an initialiser of its own on Linux).
// SAFETY: the one `main` symbol of this binary (`#![no_main]`), with C's signature; it does not
// unwind (a panic here aborts), and reads neither argument.
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // As the standard library's start-up does: a closed pipe on stdout is an error to report
    // (`cannot write to stdout`), not a silent death by signal; `cortexid-agent` sets its own.
    // SAFETY: no handler function is installed, and no other thread exists yet.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    // And a descriptor 0-2 that was closed is opened on /dev/null, so that a socket or file
    // opened later can never become stdout and receive the token.
    for fd in 0..=2 {
        // SAFETY: only asks the kernel about the number; the borrow ends with the call.
        let closed = nix::fcntl::fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD) == Err(Errno::EBADF);
        if closed {
            // The lowest free descriptor is the one just found closed.
            match nix::fcntl::open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
                Ok(null) => {
                    let _ = null.into_raw_fd();
                }
                Err(_) => return EXIT_FAILURE,
            }
        }
    }
    let code = run();
    if std::io::stdout().flush().is_err() {
        return EXIT_FAILURE;
    }
    // An exit code outside 0..=255 cannot be passed on: report it as a failure.
    if (0..=255).contains(&code) { code } else { EXIT_FAILURE }
}

fn run() -> i32 {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("cortexid"));
    let args: Vec<OsString> = args.collect();
    match fast::token(&args) {
        Some(code) => code,
        None => hand_over(arg0, &args),
    }
}

/// Replaces this process with `cortexid-agent` from this binary's directory (the real path,
/// never `$PATH`), with the same arguments; returns only when that cannot be done.
fn hand_over(arg0: OsString, args: &[OsString]) -> i32 {
    let full = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(FULL),
        Err(e) => {
            eprintln!("cortexid: cannot find its own executable, and so {FULL} next to it: {e}");
            return EXIT_FAILURE;
        }
    };
    let e = std::process::Command::new(&full).arg0(arg0).args(args).exec();
    eprintln!(
        "cortexid: cannot run {}: {e} (cortexid runs every command but `token` with {FULL}: install both in the same directory)",
        full.display()
    );
    EXIT_FAILURE
}
