//! Signals of a serving process: SIGTERM and SIGINT shut it down, SIGHUP reloads the model.

use std::sync::mpsc::SyncSender;

use crate::shutdown::Shutdown;

/// Runs until `shutdown`: SIGTERM/SIGINT trigger it, SIGHUP asks the model watcher to reload
/// (a full request queue means a reload is already pending).
pub async fn handle(shutdown: Shutdown, reload: SyncSender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); shutdown.trigger(); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); shutdown.trigger(); }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the model");
                let _ = reload.try_send(());
            }
            _ = shutdown.wait() => return,
        }
    }
}
