//! `tripmine-torch`: the whole command line with the network part (libtorch). The `tripmine`
//! binary runs what needs no network itself and hands `embed`, `train` and `--model` to this
//! one, so that mining, evaluating, auditing and drawing files never load libtorch.

use std::process::ExitCode;

use clap::Parser;
use tripmine::cli::{exit_status, run_tool, FullCli, FullCommand};
use tripmine::embed::{self, CheckpointNetwork};
use tripmine::exit::Failure;
use tripmine::train;

/// Summaries go to stdout; a reader that went away is not an error (see `cli::summary`).
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let cli = FullCli::parse();
    ExitCode::from(exit_status(run(cli.command)))
}

fn run(command: FullCommand) -> Result<(), Failure> {
    match command {
        FullCommand::Embed(args) => {
            let cfg = args.to_config().map_err(Failure::options)?;
            let done = embed::run(&cfg)?;
            for label in &done.singleton_labels {
                eprintln!("warning: label {label:?} has a single image: it can never be an anchor");
            }
            let skipped = match (done.problems.first(), cfg.shard_rows) {
                (None, _) => String::new(),
                // A shard directory has no skipped.csv: the first reason is given here.
                (Some(first), Some(_)) => format!(
                    "; skipped {} file(s) ({}: {})",
                    done.problems.len(),
                    first.path,
                    first.reason
                ),
                (Some(_), None) => format!(
                    "; skipped {} file(s), see {}",
                    done.problems.len(),
                    cfg.out.join(tripmine::store::SKIPPED_CSV).display()
                ),
            };
            println!(
                "embedded {} images ({}-d, {}) into {}{skipped}",
                done.set.len(),
                done.set.dim,
                embed::model_summary(&done.set.meta.model),
                cfg.out.display()
            );
        }
        FullCommand::Train(args) => {
            let (cfg, resume) = args.to_config().map_err(Failure::options)?;
            let done = train::run(&cfg, resume)?;
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            let (first, last) = (&done.rows[0], done.rows.last().expect("epoch 0 row"));
            println!(
                "trained {} epochs ({} steps): validation MAP@R {:.4} -> {:.4}, P@1 {:.4} -> {:.4}; best epoch {}",
                last.epoch, last.step, first.map_at_r, last.map_at_r, first.p_at_1, last.p_at_1, done.best_epoch
            );
            println!(
                "run: {} (metrics.csv, best/, last/, rounds/, report.html)",
                cfg.out.display()
            );
        }
        FullCommand::Tool(tool) => run_tool(tool, Some(&CheckpointNetwork))?,
    }
    Ok(())
}
