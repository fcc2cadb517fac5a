//! `p2p`: the command-line client of the local peer-agent. It talks only to
//! the agent's `AgentControl` API; the agent holds the session and does the
//! transfers. Modules: `cli` (arguments and help), `commands` (one function
//! per command), `view` (what is shown, as JSON or text), `format` (sizes,
//! times, tables), `progress` (bars), `error` (messages that say what to do).

mod cli;
mod commands;
mod error;
mod format;
mod join;
mod progress;
mod view;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let out = commands::Output {
        json: cli.json,
        bars: !cli.json && std::io::stderr().is_terminal(),
    };
    let result = match cli.command {
        cli::Invocation::Manual(manual) => return manual.print(cli::Cli::command()),
        cli::Invocation::Join(args) => join::run(&cli.agent, out, args).await,
        cli::Invocation::Agent(command) => {
            async {
                let mut session = commands::connect(&cli.agent, out).await?;
                commands::run(&mut session, command).await
            }
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if out.json {
                let doc = serde_json::json!({
                    "ok": false,
                    "error": err.to_string(),
                    "exit_code": err.exit_code(),
                });
                println!("{doc}");
            }
            eprintln!("p2p: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
