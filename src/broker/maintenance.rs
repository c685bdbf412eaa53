//! The background pass: expired leases go back to pending (or to failed
//! after `--max-attempts`), and jobs ended longer than `--result-ttl` ago
//! are forgotten. Every change goes through the store's conditional
//! transitions, so running this on several nodes at once is safe.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Broker;

/// Purge at most this often; rescue runs every `maintenance_interval`.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled.
pub async fn run(broker: Broker, stop: CancellationToken) {
    let mut tick = tokio::time::interval(broker.config().maintenance_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let purge = last_purge.elapsed() >= PURGE_EVERY;
        if purge {
            last_purge = tokio::time::Instant::now();
        }
        match broker.maintain(purge).await {
            Ok((rescued, purged)) if rescued > 0 || purged > 0 => {
                tracing::debug!(rescued, purged, "maintenance pass")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "maintenance pass failed; will retry"),
        }
    }
}
