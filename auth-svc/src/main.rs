//! The `auth-svc` binary: parse the config, start logging, bind, and hand
//! over to [`auth_svc::run`] until SIGINT/SIGTERM. `auth-svc healthcheck`
//! probes a running server instead (for container health checks).

use std::process::ExitCode;

use auth_svc::{Command, Config};
use clap::{CommandFactory, Parser};
use p2p_services::{health, listen, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Manual(manual)) = config.command {
        return manual.print(Config::command());
    }
    if let Some(Command::Healthcheck { addr }) = &config.command {
        let addr = addr.clone().unwrap_or_else(|| config.probe_addr());
        let tls = match config.setup.client(&config.tls) {
            Ok(tls) => tls,
            Err(err) => {
                eprintln!("auth-svc healthcheck: {err}");
                return ExitCode::FAILURE;
            }
        };
        return match health::probe(&addr, "", &tls).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(problem) => {
                eprintln!("auth-svc unhealthy: {problem}");
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
    match auth_svc::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("auth-svc stopped: {err}");
            ExitCode::FAILURE
        }
    }
}
