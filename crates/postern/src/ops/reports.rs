//! Sending the DMARC aggregate reports: by the server once an hour for finished days, or from the
//! host shell (`postern reports send`), recorded with who asked.

use anyhow::Result;
use postern_store::Store;

use crate::actor::{record, Actor};
use crate::reports::{Reporter, Sent};

/// Sends the reports of every day before `until_day` (days since the epoch, UTC).
pub async fn send_dmarc(
    store: &Store,
    dns: &postern_dns::Dns,
    cfg: &postern_config::Config,
    actor: &Actor,
    until_day: i64,
) -> Result<Sent> {
    let from = crate::reports::reports_from(cfg);
    let sent = Reporter {
        store,
        dns,
        hostname: &cfg.server.hostname,
        from: &from,
    }
    .send(until_day)
    .await?;
    if sent.reports > 0 || sent.dropped > 0 {
        let detail = format!(
            "{} reports to {} recipients, {} dropped",
            sent.reports, sent.recipients, sent.dropped
        );
        record(store, actor, "dmarc_reports_sent", "", &detail).await?;
    }
    Ok(sent)
}
