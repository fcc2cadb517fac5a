//! The shutdown signal. Binaries wait for SIGINT or SIGTERM and pass the
//! resulting future down to `run`, which hands it to the server; tests pass
//! their own future instead.

use std::future::Future;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (docker stop).
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a binary calls it before it binds anything, so a SIGTERM
/// that arrives while `run` is still starting (its control socket already
/// up) is a clean shutdown, never the default action that kills the process
/// and leaves the socket behind. Must be called inside a Tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let received =
                |name: &'static str, sig: std::io::Result<tokio::signal::unix::Signal>| async move {
                    match sig {
                        Ok(mut sig) => {
                            sig.recv().await;
                            name
                        }
                        Err(err) => {
                            tracing::warn!(%err, "cannot listen for {name}");
                            std::future::pending().await
                        }
                    }
                };
            let name = tokio::select! {
                name = received("Ctrl-C", interrupt) => name,
                name = received("SIGTERM", terminate) => name,
            };
            tracing::info!("received {name}, shutting down");
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("received Ctrl-C, shutting down");
    }
}
