//! [`ReporterHandle`]: the running reporter's controls: stats, a report summary,
//! graceful shutdown.

use super::*;
use crate::report::reporter::checkpoint::{compact, snapshot_accounts};

/// Controls a running reporter. Dropping it stops the reporter after one last checkpoint,
/// without sending the open window: call [`ReporterHandle::shutdown`] for a graceful stop.
pub struct ReporterHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) stopping: watch::Sender<bool>,
    pub(super) checkpoint_tx: mpsc::Sender<CheckpointCmd>,
    pub(super) checkpoint_task: JoinHandle<()>,
    pub(super) prune_task: JoinHandle<()>,
    pub(super) providers: Vec<ProviderTask>,
}

impl std::fmt::Debug for ReporterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterHandle")
            .field(
                "providers",
                &self.providers.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ReporterHandle {
    /// The reporter's counters.
    pub fn stats(&self) -> ReporterStats {
        self.shared.counters.snapshot()
    }

    /// Checkpoints now, then sends everything pending to every provider, the open window
    /// included (its entry is sealed: later usage of the window goes to the next part),
    /// except open windows of non-additive meters (`max`, `latest`, `unique_count`): a
    /// provider would sum their parts, so they wait until the window closes. Failed
    /// deliveries stay pending for the next round.
    pub async fn flush_now(&self) -> Result<ReportSummary, ReporterError> {
        let (reply, rx) = oneshot::channel();
        self.checkpoint_tx
            .send(CheckpointCmd::Now(reply))
            .await
            .map_err(|_| ReporterError::Stopped)?;
        rx.await.map_err(|_| ReporterError::Stopped)??;
        let mut replies = Vec::new();
        for p in &self.providers {
            let (reply, rx) = oneshot::channel();
            p.tx.send(ProviderCmd::Round {
                include_open: true,
                reply,
            })
            .await
            .map_err(|_| ReporterError::Stopped)?;
            replies.push(rx);
        }
        for rx in replies {
            rx.await.map_err(|_| ReporterError::Stopped)?;
        }
        self.summary().await
    }

    /// After the final checkpoint and the drain: usage recorded meanwhile (requests still
    /// running) is merged into the spool for the next reporter, counted and logged once.
    async fn sweep_late_usage(&self) -> u64 {
        let late = self.shared.engine.checkpoint();
        let accounts = snapshot_accounts(&self.shared.engine, &late);
        if late.is_empty() && accounts.is_empty() {
            return 0;
        }
        let routes = Arc::clone(&self.shared.routes);
        let window_secs = self.shared.options.window_secs();
        let checkpoint = Checkpoint::unsequenced(unix_now(), compact(late)).with_accounts(accounts);
        if checkpoint.deltas.is_empty() {
            // Operator changes after the final checkpoint: saved, nothing to report.
            if let Err(e) = self
                .shared
                .spool(move |s| s.merge_checkpoints(&routes, &[checkpoint], window_secs))
                .await
            {
                tracing::error!(error = %e, "customer states changed at shutdown could not be saved");
            }
            return 0;
        }
        let late = &checkpoint.deltas;
        let cells = late.len() as u64;
        tracing::error!(
            cells,
            "usage was recorded after the final checkpoint (requests still running at shutdown): \
             kept in the spool for the next run; stop the server before the reporter"
        );
        self.shared
            .engine
            .emit(Event::new(None, EventKind::UsageAfterShutdown { cells }));
        if let Err(e) = self
            .shared
            .spool(move |s| s.merge_checkpoints(&routes, &[checkpoint], window_secs))
            .await
        {
            tracing::error!(error = %e, cells, "late usage could not be saved");
        }
        cells
    }

    async fn summary(&self) -> Result<ReportSummary, ReporterError> {
        let pending_left = self.shared.spool(|s| s.pending_count(None)).await?;
        let stats = self.shared.counters.snapshot();
        Ok(ReportSummary {
            records_sent: stats.records_sent,
            dead_letters: stats.dead_letters,
            pending_left,
            stats,
            late_cells: 0,
        })
    }

    /// The one obvious way to stop a monetized server: waits for `server` to finish (give
    /// it a graceful shutdown, such as axum's `with_graceful_shutdown`, so that requests
    /// in flight finish and are metered), then [`shutdown`](Self::shutdown)s the reporter.
    /// A server error is logged and the reporter is still shut down (usage is never left
    /// behind because the server failed).
    ///
    /// ```no_run
    /// # async fn run(reporter: monetize_core::report::ReporterHandle, listener: tokio::net::TcpListener) {
    /// # let server = async { Ok::<(), std::io::Error>(()) }; // axum::serve(listener, app).with_graceful_shutdown(ctrl_c)
    /// let summary = reporter.shutdown_after(server).await;
    /// # }
    /// ```
    pub async fn shutdown_after<F, E>(self, server: F) -> Result<ReportSummary, ReporterError>
    where
        F: std::future::IntoFuture<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the server stopped with an error; saving and reporting usage anyway");
        }
        self.shutdown().await
    }

    /// Stops the reporter gracefully: a final checkpoint, then everything pending is sent,
    /// the open window included (windows of non-additive meters stay pending until they
    /// close: see [`TakeRequest::include_open`]), retrying until nothing is left or
    /// `shutdown_timeout` passes. What is still pending then stays in the spool
    /// (`pending_left`) for the next reporter. Fails with [`ReporterError::Unsaved`]
    /// (carrying the usage) if the final merge kept failing.
    ///
    /// Stop the server first ([`shutdown_after`](Self::shutdown_after)): usage recorded
    /// after the final checkpoint (by requests still running) is merged into the spool at
    /// the end for the next reporter, counted in [`ReportSummary::late_cells`], logged
    /// once and raised as [`EventKind::UsageAfterShutdown`]; usage recorded after this
    /// returns is lost.
    pub async fn shutdown(self) -> Result<ReportSummary, ReporterError> {
        let deadline = Instant::now() + self.shared.options.shutdown_timeout;
        tracing::info!("reporter shutting down");
        // Cut backoff waits of rounds in progress short.
        let _ = self.stopping.send(true);
        let (reply, rx) = oneshot::channel();
        let saved = match self
            .checkpoint_tx
            .send(CheckpointCmd::Stop { deadline, reply })
            .await
        {
            Ok(()) => rx.await.unwrap_or(Err(ReporterError::Stopped)),
            Err(_) => Err(ReporterError::Stopped),
        };
        let mut replies = Vec::new();
        for p in &self.providers {
            let (reply, rx) = oneshot::channel();
            if p.tx
                .send(ProviderCmd::Drain { deadline, reply })
                .await
                .is_ok()
            {
                replies.push((p.name.clone(), rx));
            }
        }
        let mut stopped = replies.len() != self.providers.len();
        for (name, rx) in replies {
            match rx.await {
                Ok(round) => tracing::info!(
                    provider = %name,
                    sent = round.accepted,
                    left = round.left,
                    "provider drained"
                ),
                Err(_) => stopped = true,
            }
        }
        let late_cells = self.sweep_late_usage().await;
        let summary = self.summary().await.map(|mut s| {
            s.late_cells = late_cells;
            s
        });
        let ReporterHandle {
            checkpoint_task,
            prune_task,
            providers,
            ..
        } = self;
        stopped |= checkpoint_task.await.is_err();
        stopped |= prune_task.await.is_err();
        for p in providers {
            stopped |= p.task.await.is_err();
        }
        saved?;
        if stopped {
            return Err(ReporterError::Stopped);
        }
        let summary = summary?;
        tracing::info!(
            sent = summary.records_sent,
            pending_left = summary.pending_left,
            dead_letters = summary.dead_letters,
            "reporter stopped"
        );
        Ok(summary)
    }
}
