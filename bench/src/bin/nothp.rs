//! `nothp CMD [ARGS...]`: runs CMD with transparent huge pages disabled for it
//! (`prctl(PR_SET_THP_DISABLE)`, inherited across `execve`), so that its resident memory grows
//! page by page instead of in 2 MiB steps. `bench/run.sh` starts every server of an idle
//! scenario through it: with huge pages, RSS per idle connection depends on where the 2 MiB
//! steps fall, not on what a connection costs.

use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("usage: nothp CMD [ARGS...]");
        std::process::exit(2);
    };
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "nothp: prctl(PR_SET_THP_DISABLE): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let err = Command::new(&cmd).args(args).exec();
    eprintln!("nothp: {}: {err}", cmd.to_string_lossy());
    std::process::exit(127);
}
