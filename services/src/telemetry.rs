//! Logging through tracing-subscriber. The filter comes from `RUST_LOG`
//! (default `info`); `--log-format json` or `LOG_FORMAT=json` switches to one
//! JSON object per line for log collectors.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Telemetry flags every binary accepts.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log line format. The level filter comes from RUST_LOG (default "info").
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests that start several servers in one process can call
/// it freely.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
