//! `cortexid`, the command people type. It answers `cortexid token` itself, because kubectl's
//! exec plugin and scripts start it for every token and its start-up is most of a token's cost:
//! this binary links neither the async runtime, nor TLS and crypto, nor clap, so it maps, relocates
//! and initialises little. Every other command line (and a `token` command line the fast path
//! declines: `--help`, a mistake clap explains) goes to `cortexid-agent`, the whole command line
//! installed next to this binary, by `exec`: same process, arguments, `argv[0]` and environment.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use cortexid::cmd::EXIT_FAILURE;
use cortexid::cmd::client::fast;

// The unwinder linked in (gcc's `-static-libgcc`), so that this binary does not load
// libgcc_s.so: loading it, and its constructor's CPU-feature detection (`cpuid`, which traps to
// the hypervisor in a VM), cost ~70 µs of a ~1 ms `cortexid token`. Listed before the libraries
// of the standard library, the archive's `_Unwind_*` leave `-lgcc_s` nothing to provide, and
// `--as-needed` drops it.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")
)]
unsafe extern "C" {}

/// The whole command line's binary, looked for next to this one.
const FULL: &str = "cortexid-agent";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("cortexid"));
    let args: Vec<OsString> = args.collect();
    let code = match fast::token(&args) {
        Some(code) => code,
        None => hand_over(arg0, &args),
    };
    // An exit code outside 0..=255 cannot be passed on: report it as a failure.
    ExitCode::from(u8::try_from(code).unwrap_or(1))
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
