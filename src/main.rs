//! The `tripmine` binary, free of libtorch: it parses the command line and runs what needs no
//! network (`mine`, `eval`, `audit` given `--embeddings`, and `view`) itself; `embed`, `train`
//! and `--model` are handed, with the same arguments, to `tripmine-torch` beside it (the same
//! process: exec). Exit status: 0 ok, 2 usage or input error, 1 failure.

use std::ffi::OsString;
use std::process::ExitCode;

use tripmine_core::cli::{dispatch, Dispatch};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match dispatch(argv.iter().cloned()) {
        Dispatch::Ran(status) => ExitCode::from(status),
        Dispatch::NeedsNetwork => run_network_part(&argv),
    }
}

/// Replaces this process with `tripmine-torch` (same pid, so signals and exit status pass
/// through); returns only when that binary cannot be started, with status 2 as the pip
/// package's command gives (this build cannot do what was asked).
fn run_network_part(argv: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map(|exe| exe.with_file_name("tripmine-torch"))
        .unwrap_or_else(|_| "tripmine-torch".into());
    let err = std::process::Command::new(&exe)
        .arg0(&argv[0])
        .args(&argv[1..])
        .exec();
    eprintln!(
        "error: {}: {err}: embed, train and --model need tripmine's network part (libtorch); \
         build it with `make build` (README)",
        exe.display()
    );
    ExitCode::from(2)
}
