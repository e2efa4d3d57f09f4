//! The command-line reference (`docs/reference/cli.md`), generated from the clap definitions,
//! so that the documented options, defaults and examples are the parsed ones. `tests/docs.rs`
//! fails when the checked-in page differs; `make docs` rewrites it.

use std::fmt::Write;

use clap::{Arg, ArgAction, Command, CommandFactory};

use super::FullCli;

/// The whole reference page, in Markdown.
pub fn markdown() -> String {
    let mut cli = FullCli::command();
    cli.build();
    let mut out = String::from(
        "# Command line\n\n<!-- Generated from the clap definitions by `make docs`; do not edit. -->\n\n",
    );
    let _ = writeln!(
        out,
        "{}\n\nEvery subcommand prints this with `--help`. Exit codes: 0 success, 2 bad input or \
         usage (the message names the file or option), 1 any other failure.\n",
        cli.get_about().map(|a| a.to_string()).unwrap_or_default()
    );
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        subcommand(&mut out, sub);
    }
    out
}

fn subcommand(out: &mut String, cmd: &Command) {
    let _ = writeln!(out, "## `tripmine {}`\n", cmd.get_name());
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    let positionals: Vec<&Arg> = cmd.get_positionals().collect();
    let options: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let _ = writeln!(out, "| argument | default | meaning |\n|---|---|---|");
    for arg in positionals.iter().chain(&options) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            name(arg),
            default(arg),
            cell(&arg.get_help().map(|h| h.to_string()).unwrap_or_default())
        );
    }
    if let Some(after) = cmd.get_after_help() {
        let _ = writeln!(out, "\n```text\n{}\n```", after.to_string().trim_end());
    }
    out.push('\n');
}

fn name(arg: &Arg) -> String {
    if arg.is_positional() {
        return format!(
            "`{}`",
            arg.get_value_names()
                .map_or_else(|| arg.get_id().to_string(), |v| v.join(" "))
        );
    }
    let long = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
    let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
    let value = if takes_value {
        let names = arg
            .get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
        format!(" {names}")
    } else {
        String::new()
    };
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    let choices = if choices.is_empty() || !takes_value {
        String::new()
    } else {
        format!(" ({})", choices.join(", "))
    };
    format!("`{long}{value}`{choices}")
}

fn default(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if values.is_empty() {
        String::new()
    } else {
        format!("`{}`", values.join(","))
    }
}

/// One table cell: pipes and angle brackets escaped (`root/<label>` is text, not HTML), line
/// breaks folded.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subcommand_has_a_section_and_a_table() {
        let page = super::markdown();
        for sub in ["embed", "train", "mine", "eval", "audit", "view"] {
            assert!(page.contains(&format!("## `tripmine {sub}`")), "{sub}");
        }
        assert!(page.contains("| `--margin MARGIN` | `0.2` |"), "{page}");
    }
}
