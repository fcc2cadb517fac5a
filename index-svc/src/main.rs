//! The index-svc binary: parse the config, start logging, bind, run.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use index_svc::{Command, Config};
use p2p_services::{health, listen, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Manual(manual)) = config.command {
        return manual.print(Config::command());
    }
    if let Some(Command::Healthcheck { .. }) = &config.command {
        let tls = match config.setup.client(&config.tls) {
            Ok(tls) => tls,
            Err(err) => {
                eprintln!("index-svc healthcheck: {err}");
                return ExitCode::FAILURE;
            }
        };
        return match health::probe(&config.probe_addr(), "p2p.index.v1.IndexService", &tls).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("index-svc unhealthy: {err}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.telemetry.log_format);
    let shutdown = shutdown::signal();
    let listener = match listen::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    match index_svc::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}
