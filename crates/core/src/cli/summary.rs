//! Running a network-free subcommand and its one-line summaries on stdout (warnings on
//! stderr); the binary and the Python console script both come here.

use super::Tool;
use crate::definitions::TripletKind;
use crate::embeddings::Network;
use crate::exit::Failure;
use crate::{audit, eval, mine, view};

/// Summaries go to stdout; a reader that went away (`tripmine audit ... | head`) is not an
/// error, so a failed write is ignored instead of panicking as `std::println!` does.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// This process's peak resident memory (Linux's `VmHWM`), for the summaries of long jobs.
fn peak_memory() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `tool`; `network` embeds a corpus given with `--model` (the libtorch build's).
pub fn run_tool(tool: Tool, network: Option<&dyn Network>) -> Result<(), Failure> {
    match tool {
        Tool::Mine(args) => {
            let cfg = args.to_config().map_err(Failure::options)?;
            let done = mine::run(&cfg, network)?;
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            let s = &done.stats;
            let kind = |k| s.per_kind.get(&k).copied().unwrap_or(0);
            let skipped: usize = s.skipped.values().sum();
            let backend = match done.backend["out_of_core"].as_bool() {
                Some(true) => format!(
                    "{} out of core over {} shards",
                    done.backend["backend"].as_str().unwrap_or("?"),
                    done.backend["shards"]
                ),
                _ => done.backend["backend"].as_str().unwrap_or("?").to_string(),
            };
            let msg = format!(
                "mined {} triplets ({} hard, {} semihard, {} easy) from {} anchors with {} in {:.1}s{}; {} anchors skipped{}",
                s.triplets,
                kind(TripletKind::Hard),
                kind(TripletKind::Semihard),
                kind(TripletKind::Easy),
                s.anchors_with_triplets,
                backend,
                done.seconds,
                peak_memory()
                    .map(|mb| format!(" (peak memory {mb:.0} MB)"))
                    .unwrap_or_default(),
                skipped,
                cfg.out.as_ref().map(|p| format!(" -> {}", p.display())).unwrap_or_default(),
            );
            // With --out - the CSV owns stdout; the summary goes to stderr.
            if cfg.out.is_some() {
                println!("{msg}");
            } else {
                eprintln!("{msg}");
            }
        }
        Tool::Eval(args) => {
            let json = args.json;
            let m = eval::run(&args.to_config().map_err(Failure::options)?, network)?;
            if json {
                let out = m.to_json();
                println!("{out}");
            } else {
                println!("| metric | value |\n|---|---|");
                println!(
                    "| P@1 | {:.4} |\n| R-Precision | {:.4} |\n| MAP@R | {:.4} |",
                    m.p_at_1, m.r_precision, m.map_at_r
                );
                for (k, v) in &m.recall_at_k {
                    println!("| Recall@{k} | {v:.4} |");
                }
                println!(
                    "({} queries, {} skipped: their label has no other sample)",
                    m.queries, m.skipped_queries
                );
            }
        }
        Tool::Audit(args) => {
            let cfg = args.to_config().map_err(Failure::options)?;
            let a = audit::run(&cfg, network)?;
            println!("audited {} samples -> {}", a.samples, cfg.out.display());
            println!(
                "  duplicate groups: {} ({} with identical pixels); label conflicts: {}; split leaks: {}",
                a.duplicate_groups, a.exact_duplicate_groups, a.conflict_groups, a.leak_groups
            );
            println!(
                "  likely mislabels: {}; outliers: {}",
                a.label_issues.len(),
                a.outliers.len()
            );
            for issue in a.label_issues.iter().take(5) {
                println!(
                    "    {} is {:?}, neighbours say {:?} (P(wrong label) {:.2})",
                    issue.path, issue.label, issue.suggested_label, issue.probability
                );
            }
            for o in a.outliers.iter().take(3) {
                println!(
                    "    outlier {} ({:?}, {}, z {:.1})",
                    o.path, o.label, o.signal, o.score
                );
            }
            let q = &a.model_quality;
            println!(
                "  model on this corpus: leave-one-out P@1 {:.3} (chance {:.3}), MAP@R within k {:.3}",
                q.p_at_1, q.chance_p_at_1, q.map_at_r_within_k
            );
            if let Some(w) = &a.warning {
                eprintln!("{w}");
            }
            if !a.tiny_classes.is_empty() {
                println!("  tiny classes: {}", a.tiny_classes.join(", "));
            }
            println!(
                "  unreadable files: {}; exclude.csv lists {} samples",
                a.decode_problems, a.excluded
            );
        }
        Tool::View(args) => {
            let v = view::run(&args.to_config().map_err(|e| Failure::options(e.into()))?)?;
            for (path, why) in &v.missing {
                eprintln!("warning: {path}: {why}; drawn as a placeholder");
            }
            println!(
                "rendered {} of {} triplets on {} page(s), margin {} -> {}",
                v.shown,
                v.rows,
                v.pages,
                v.margin,
                v.index.display()
            );
        }
    }
    Ok(())
}
