//! The documentation against the code: the generated command-line reference is the one the
//! clap definitions give (`TRIPMINE_WRITE_DOCS=1` rewrites it, as `make docs` does), and the
//! README's command-line quick start is `make demo`'s commands and runs as written on the
//! fixtures.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn the_cli_reference_is_generated_from_the_clap_definitions() {
    let path = repo().join("docs/reference/cli.md");
    let generated = tripmine::cli::reference::markdown();
    if std::env::var_os("TRIPMINE_WRITE_DOCS").is_some() {
        fs::write(&path, &generated).unwrap();
    }
    let checked_in = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from what the clap definitions give: run `make docs` and commit it",
        path.display()
    );
}

/// The README's `sh` block: one command per line (a trailing backslash continues it).
fn readme_commands() -> Vec<String> {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has an sh block");
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// `make demo`'s commands, with the Makefile's variables spelled out.
fn demo_commands() -> Vec<String> {
    let makefile = fs::read_to_string(repo().join("Makefile")).unwrap();
    let recipe = makefile
        .split("\ndemo: build\n")
        .nth(1)
        .expect("a demo target");
    recipe
        .replace("\\\n", " ")
        .lines()
        .take_while(|l| l.starts_with('\t'))
        .map(|l| l.trim())
        .filter(|l| l.starts_with("$(BIN)"))
        .map(|l| {
            l.replace("$(BIN)", "tripmine")
                .replace("$(DEMO_OUT)", "out/demo")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn the_readme_quick_start_is_make_demo_and_runs_on_the_fixtures() {
    let commands = readme_commands();
    assert_eq!(
        commands,
        demo_commands(),
        "README and `make demo` must run the same commands"
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixtures(), dir.path().join("fixtures")).unwrap();
    for line in &commands {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let done = Command::new(env!("CARGO_BIN_EXE_tripmine"))
            .args(&args)
            .args(["--threads", "2"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    for page in [
        "sheets/index.html",
        "run/report.html",
        "audit/report.html",
        "triplets.csv",
    ] {
        assert!(dir.path().join("out/demo").join(page).is_file(), "{page}");
    }
}
