//! The `peer-agent` binary: parse the config, start the runtime
//! (`--worker-threads`), start telemetry, bind the TCP listeners and
//! run the agent until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use p2p_services::{listen, local, shutdown, telemetry};
use peer_agent::{Command, Config};

fn main() -> ExitCode {
    let config = Config::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(usize::from(config.worker_threads));
    }
    let runtime = runtime.enable_all().build();
    match runtime {
        Ok(runtime) => runtime.block_on(agent(config)),
        Err(err) => {
            eprintln!("peer-agent: cannot start its runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Everything after the runtime is up.
async fn agent(config: Config) -> ExitCode {
    if let Some(Command::Manual(manual)) = config.command {
        return manual.print(Config::command());
    }
    if let Some(Command::Healthcheck) = config.command {
        return match local::probe_unix(&config.control_socket(), "").await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("peer-agent healthcheck: {err}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.telemetry.log_format);
    let shutdown = shutdown::signal();
    let listeners = async {
        let peer = listen::bind(&config.listen).await?;
        let control = match config.control_listen() {
            Some(addr) => Some(listen::bind(addr).await?),
            None => None,
        };
        let web = match config.web_listen() {
            Some(addr) => Some(listen::bind(addr).await?),
            None => None,
        };
        Ok::<_, listen::BindError>((peer, control, web))
    };
    let (peer, control, web) = match listeners.await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("peer-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    match peer_agent::run(config, peer, control, web, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "peer-agent stopped");
            eprintln!("peer-agent: {err}");
            ExitCode::FAILURE
        }
    }
}
