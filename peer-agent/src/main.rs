//! The `peer-agent` binary: parse the config, start telemetry, bind both
//! listeners and run the agent until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use p2p_services::{health, serve, shutdown, telemetry};
use peer_agent::{Command, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Healthcheck) = config.command {
        let addr = config.control.replace("0.0.0.0", "127.0.0.1");
        return match health::probe(&addr, "", &p2p_services::tls::ClientTls::Plaintext).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("peer-agent healthcheck: {err}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.telemetry.log_format);
    let listeners = async {
        let peer = serve::bind(&config.listen).await?;
        let control = serve::bind(&config.control).await?;
        Ok::<_, serve::BindError>((peer, control))
    };
    let (peer, control) = match listeners.await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("peer-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    match peer_agent::run(config, peer, control, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "peer-agent stopped");
            eprintln!("peer-agent: {err}");
            ExitCode::FAILURE
        }
    }
}
