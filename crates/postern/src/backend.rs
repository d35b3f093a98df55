//! Adapts the store to the SMTP server's [`MailBackend`]: local delivery gets a Return-Path header
//! (RFC 5321 4.4), the outbound queue keeps the message as submitted plus our Received header.

use postern_auth::{Principal, PrincipalKind};
use postern_smtp::{BackendError, Delivery, GreyCheck, MailBackend};
use postern_store::greylist::{GreyVerdict, Triplet};
use postern_store::Store;
use postern_types::EmailAddress;

pub struct StoreBackend {
    pub store: Store,
    /// The delivery workers, woken when a message is queued.
    pub delivery: Option<std::sync::Arc<postern_queue::Delivery>>,
    /// DKIM signing of submitted mail that leaves the server.
    pub dkim: Option<std::sync::Arc<postern_queue::dkim::Signer>>,
    /// Greylisting timings (`[greylist]`).
    pub grey: postern_store::greylist::GreyPolicy,
    /// Where DMARC-quarantined mail goes (`[inbound] quarantine_mailbox`).
    pub quarantine_mailbox: String,
    /// Mail sent by an authenticated principal is an audit event (`mail_sent`): the incident
    /// timeline shows what a stolen credential sent.
    pub audit: Option<std::sync::Arc<postern_store::audit::AuditWriter>>,
}

/// `[greylist]` as the store's policy, in seconds.
pub fn grey_policy(g: &postern_config::GreylistConfig) -> postern_store::greylist::GreyPolicy {
    let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / 4);
    postern_store::greylist::GreyPolicy {
        delay: secs(g.delay_secs),
        retry_window: secs(g.retry_window_hours.saturating_mul(3600)),
        expire: secs(g.expire_days.saturating_mul(86400)),
        auto_allow_after: i64::from(g.auto_allow_after.max(1)),
    }
}

fn err(e: postern_store::StoreError) -> BackendError {
    BackendError {
        storage_full: e.is_storage_full(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl MailBackend for StoreBackend {
    async fn is_local_domain(&self, domain: &str) -> Result<bool, BackendError> {
        self.store.is_local_domain(domain).await.map_err(err)
    }

    async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Option<i64>, BackendError> {
        self.store.resolve_recipient(address).await.map_err(err)
    }

    async fn mailbox_full(&self, account_id: i64) -> Result<bool, BackendError> {
        let (used, limit) = self.store.quota(account_id).await.map_err(err)?;
        Ok(limit.is_some_and(|l| used >= l))
    }

    async fn allowed_senders(&self, p: &Principal) -> Result<Vec<String>, BackendError> {
        match p.kind {
            PrincipalKind::Account => self.store.owned_addresses(p.account_id).await,
            PrincipalKind::Application => self
                .store
                .application_by_id(p.account_id)
                .await
                .map(|a| a.allow_from),
        }
        .map_err(err)
    }

    async fn received_details(&self, p: &Principal) -> Result<bool, BackendError> {
        match p.kind {
            PrincipalKind::Account => Ok(self
                .store
                .account_by_id(p.account_id)
                .await
                .map_err(err)?
                .received_details),
            PrincipalKind::Application => Ok(false),
        }
    }

    async fn greylist(
        &self,
        network: &str,
        sender: &str,
        recipient: &str,
        authenticated_domain: Option<&str>,
    ) -> Result<GreyCheck, BackendError> {
        let t = Triplet {
            network,
            sender,
            recipient,
            authenticated_domain,
        };
        let v = self
            .store
            .greylist(&t, postern_store::now(), self.grey)
            .await
            .map_err(err)?;
        Ok(match v {
            GreyVerdict::AllowedNetwork => GreyCheck::Pass("network retried before"),
            GreyVerdict::AllowedSender => GreyCheck::Pass("sender authenticated before"),
            GreyVerdict::Known => GreyCheck::Pass("known triplet"),
            GreyVerdict::Retried => GreyCheck::Pass("retried after the delay"),
            GreyVerdict::Defer(s) => GreyCheck::Defer(u64::try_from(s).unwrap_or(0)),
        })
    }

    async fn sender_authenticated(&self, domain: &str) -> Result<(), BackendError> {
        self.store
            .greylist_allow_domain(domain, postern_store::now())
            .await
            .map_err(err)
    }

    async fn dmarc_evaluated(
        &self,
        domain: &str,
        rua: &[String],
        policy: &str,
        record: &str,
    ) -> Result<(), BackendError> {
        let day = postern_store::now().div_euclid(86400);
        self.store
            .dmarc_record(day, domain, rua, policy, record)
            .await
            .map_err(err)
    }

    async fn send_limits(&self, p: &Principal) -> Result<(Option<u32>, Option<u32>), BackendError> {
        match p.kind {
            PrincipalKind::Account => self.store.send_limits(p.account_id).await.map_err(err),
            PrincipalKind::Application => {
                let a = self
                    .store
                    .application_by_id(p.account_id)
                    .await
                    .map_err(err)?;
                Ok((a.send_messages_per_hour, a.send_recipients_per_hour))
            }
        }
    }

    async fn deliver(&self, d: Delivery) -> Result<(), BackendError> {
        let Delivery {
            sender,
            account_id,
            authenticated,
            local,
            remote,
            received,
            mut body,
            quarantine,
            client_ip,
            listener,
            login,
            message_id,
        } = d;
        let size = body.len();
        let (n_local, n_remote) = (local.len(), remote.len());
        // Remote first: if queueing fails the client retries and nothing was delivered locally.
        if !remote.is_empty() {
            let queued = if local.is_empty() {
                std::mem::take(&mut body)
            } else {
                body.clone()
            };
            // Submitted mail (an authenticated sender) is signed for its From domain.
            let signature = match &self.dkim {
                Some(s) if authenticated => s.sign(&queued).await,
                _ => None,
            };
            let mut parts = Vec::with_capacity(3);
            if let Some(sig) = signature {
                parts.push(sig.into_bytes());
            }
            parts.push(received.clone().into_bytes());
            parts.push(queued);
            self.store
                .enqueue(parts, &sender, account_id, &remote)
                .await
                .map_err(err)?;
            if let Some(d) = &self.delivery {
                d.wake();
            }
        }
        if !local.is_empty() {
            let return_path = format!("Return-Path: <{sender}>\r\n").into_bytes();
            self.store
                .deliver_local_to(
                    vec![return_path, received.into_bytes(), body],
                    &local,
                    postern_store::now(),
                    quarantine.then_some(self.quarantine_mailbox.as_str()),
                )
                .await
                .map_err(err)?;
        }
        if let (Some(a), true, Some(login)) = (&self.audit, authenticated, login) {
            a.record(postern_store::audit::NewAudit {
                ts: postern_store::now(),
                event: "mail_sent".into(),
                protocol: Some(listener.into()),
                ip: Some(client_ip.to_string()),
                username: Some(login),
                account_id,
                mechanism: None,
                tls: None,
                result: "ok".into(),
                reason: Some(format!(
                    "id {message_id}, from <{sender}>, {n_remote} remote and {n_local} local recipients, {size} bytes"
                )),
                actor: None,
            });
        }
        Ok(())
    }
}
