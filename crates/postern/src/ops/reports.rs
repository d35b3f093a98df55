//! Sending the DMARC aggregate reports and the TLS reports: by the server once an hour for
//! finished days, or from the host shell (`postern reports send`), recorded with who asked.

use anyhow::Result;
use postern_store::Store;

use crate::actor::{record, Actor};
use crate::reports::{Reporter, Sent};

/// What one run sent.
#[derive(Debug, Default, serde::Serialize)]
pub struct AllSent {
    pub dmarc: Sent,
    pub tls: Sent,
}

/// Sends the reports of every day before `until_day` (days since the epoch, UTC): DMARC
/// aggregate reports when `[inbound] dmarc_reports`, TLS reports when `[delivery] tls_reports`.
pub async fn send(
    store: &Store,
    dns: &postern_dns::Dns,
    cfg: &postern_config::Config,
    actor: &Actor,
    until_day: i64,
) -> Result<AllSent> {
    let from = crate::reports::reports_from(cfg);
    let reporter = Reporter {
        store,
        dns,
        hostname: &cfg.server.hostname,
        from: &from,
        ca_file: cfg.delivery.ca_file.as_deref(),
    };
    let mut all = AllSent::default();
    if cfg.inbound.dmarc_reports {
        all.dmarc = reporter.send(until_day).await?;
        audit(store, actor, "dmarc_reports_sent", &all.dmarc).await?;
    }
    if cfg.delivery.tls_reports {
        all.tls = reporter.send_tls(until_day).await?;
        audit(store, actor, "tls_reports_sent", &all.tls).await?;
    }
    Ok(all)
}

async fn audit(store: &Store, actor: &Actor, event: &str, sent: &Sent) -> Result<()> {
    if sent.reports > 0 || sent.dropped > 0 {
        let detail = format!(
            "{} reports to {} recipients, {} dropped",
            sent.reports, sent.recipients, sent.dropped
        );
        record(store, actor, event, "", &detail).await?;
    }
    Ok(())
}
