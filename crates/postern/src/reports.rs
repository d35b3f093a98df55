//! Reports to other domains, built by `mail-auth`, once a day (and on `postern reports send`):
//! - DMARC aggregate reports (RFC 7489 7.2; the XML of RFC 9990, gzip): the results counted for
//!   each policy domain on each finished UTC day go to the domain's `rua` addresses; an address
//!   outside the policy domain only if it agreed (RFC 7489 7.1: `<domain>._report._dmarc.<its
//!   domain>`);
//! - TLS reports (RFC 8460, gzip JSON): the TLS sessions and failures with each recipient
//!   domain's MX hosts go to the destinations of its `_smtp._tls` record: mailed to `mailto:`
//!   addresses, POSTed to `https:` URLs (certificate verified).
//!
//! Local recipients get a report in their INBOX; others through the outbound queue.

use anyhow::Context;
use postern_dns::mail_auth::common::cache::NoCache;
use postern_dns::mail_auth::mta_sts::{ReportUri, TlsRpt};
use postern_dns::mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use postern_dns::mail_auth::report::{PolicyPublished, Record, Report};
use postern_dns::mail_auth::Txt;
use postern_store::dmarc::ReportKind;
use postern_store::Store;
use postern_types::EmailAddress;

/// Who sends the reports: `[inbound] reports_from`.
pub struct Reporter<'a> {
    pub store: &'a Store,
    pub dns: &'a postern_dns::Dns,
    pub hostname: &'a str,
    pub from: &'a str,
    /// CA for `https:` report destinations (`[delivery] ca_file`; default: the system's roots).
    pub ca_file: Option<&'a std::path::Path>,
}

/// What one run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Sent {
    pub reports: usize,
    pub recipients: usize,
    /// Reports dropped because no address was allowed to receive them.
    pub dropped: usize,
}

impl Reporter<'_> {
    /// Sends every report of the days before `until_day` (days since the epoch, UTC).
    pub async fn send(&self, until_day: i64) -> anyhow::Result<Sent> {
        let mut sent = Sent::default();
        for (day, domain) in self
            .store
            .reports_pending(ReportKind::Dmarc, until_day)
            .await?
        {
            let rows = self.store.dmarc_rows(day, &domain).await?;
            let wanted: Vec<String> = rows
                .rua
                .iter()
                // mail-auth keeps mailto: URIs as their address (size limits after '!')
                .map(|u| u.strip_prefix("mailto:").unwrap_or(u))
                .map(|a| a.split('!').next().unwrap_or(a).to_owned())
                .filter(|a| EmailAddress::parse(a).is_ok())
                .collect();
            let Some(allowed) = self
                .dns
                .authenticator()
                .verify_dmarc_report_address(&domain, &wanted, None::<&NoCache<Box<str>, Txt>>)
                .await
            else {
                // DNS failure: try again at the next run
                tracing::warn!(
                    domain,
                    "DMARC report addresses could not be verified (DNS); retrying later"
                );
                continue;
            };
            let to: Vec<String> = allowed.into_iter().cloned().collect();
            if to.is_empty() {
                tracing::info!(
                    domain,
                    "no DMARC report address accepts reports; report dropped"
                );
                self.store
                    .report_done(ReportKind::Dmarc, day, &domain)
                    .await?;
                sent.dropped += 1;
                continue;
            }
            let policy: PolicyPublished =
                serde_json::from_str(&rows.policy).context("stored DMARC policy")?;
            let mut report = Report::new()
                .with_version(1.0)
                .with_org_name(self.hostname)
                .with_email(self.from)
                .with_report_id(format!(
                    "{day}.{domain}.{}",
                    hex::encode(rand::random::<[u8; 6]>())
                ))
                .with_date_range_begin((day * 86400) as u64)
                .with_date_range_end((day * 86400 + 86399) as u64)
                .with_generator("Postern")
                .with_policy_published(policy);
            for (json, count) in &rows.records {
                let record: Record = serde_json::from_str(json).context("stored DMARC row")?;
                report = report
                    .with_record(record.with_count(u32::try_from(*count).unwrap_or(u32::MAX)));
            }
            let message = report
                .to_rfc5322(
                    self.hostname,
                    ("Postern DMARC reports", self.from),
                    to.iter().map(String::as_str),
                )
                .context("building the DMARC report")?;
            self.deliver(message.into_bytes(), &to).await?;
            self.store
                .report_done(ReportKind::Dmarc, day, &domain)
                .await?;
            tracing::info!(
                domain,
                day,
                recipients = to.len(),
                "DMARC aggregate report sent"
            );
            sent.reports += 1;
            sent.recipients += to.len();
        }
        Ok(sent)
    }

    /// Sends every TLS report of the days before `until_day`.
    pub async fn send_tls(&self, until_day: i64) -> anyhow::Result<Sent> {
        let mut sent = Sent::default();
        for (day, domain) in self
            .store
            .reports_pending(ReportKind::Tls, until_day)
            .await?
        {
            let name = format!("_smtp._tls.{domain}.");
            let rua = match self
                .dns
                .authenticator()
                .txt_lookup::<TlsRpt>(name.as_str(), None::<&NoCache<Box<str>, Txt>>)
                .await
            {
                Ok(r) => r.rua.clone(),
                Err(postern_dns::mail_auth::Error::Dns(
                    postern_dns::mail_auth::DnsError::Resolver(_),
                )) => {
                    tracing::warn!(
                        domain,
                        "TLS report address look-up failed (DNS); retrying later"
                    );
                    continue;
                }
                Err(_) => Vec::new(),
            };
            let to: Vec<String> = rua
                .iter()
                .filter_map(|u| match u {
                    ReportUri::Mail(a) => Some(a.clone()),
                    ReportUri::Http(_) => None,
                })
                .filter(|a| EmailAddress::parse(a).is_ok())
                .collect();
            let urls: Vec<String> = rua
                .iter()
                .filter_map(|u| match u {
                    ReportUri::Http(url) if url.starts_with("https://") => Some(url.clone()),
                    _ => None,
                })
                .collect();
            if to.is_empty() && urls.is_empty() {
                // the domain asks for no reports
                self.store
                    .report_done(ReportKind::Tls, day, &domain)
                    .await?;
                sent.dropped += 1;
                continue;
            }
            let rows = self.store.tlsrpt_rows(day, &domain).await?;
            let mut policies: Vec<Policy> = Vec::new();
            for r in &rows {
                let policy_type = if r.policy_type == "sts" {
                    PolicyType::Sts
                } else {
                    PolicyType::NoPolicyFound
                };
                let idx = match policies
                    .iter()
                    .position(|p| p.policy.policy_type == policy_type)
                {
                    Some(i) => i,
                    None => {
                        let lines: Vec<String> =
                            serde_json::from_str(&r.policy).unwrap_or_default();
                        let mx_host = lines
                            .iter()
                            .filter_map(|l| l.strip_prefix("mx:").map(|m| m.trim().to_owned()))
                            .collect();
                        policies.push(Policy {
                            policy: PolicyDetails {
                                policy_type,
                                policy_string: lines,
                                policy_domain: domain.clone(),
                                mx_host,
                            },
                            summary: Summary {
                                total_success: 0,
                                total_failure: 0,
                            },
                            failure_details: Vec::new(),
                        });
                        policies.len() - 1
                    }
                };
                let n = u32::try_from(r.count).unwrap_or(u32::MAX);
                let p = &mut policies[idx];
                if r.result == "success" {
                    p.summary.total_success = p.summary.total_success.saturating_add(n);
                } else {
                    p.summary.total_failure = p.summary.total_failure.saturating_add(n);
                    p.failure_details.push(FailureDetails {
                        result_type: result_type(&r.result),
                        sending_mta_ip: None,
                        receiving_mx_hostname: Some(r.mx.clone()),
                        receiving_mx_helo: None,
                        receiving_ip: None,
                        failed_session_count: n,
                        additional_information: None,
                        failure_reason_code: None,
                    });
                }
            }
            let report = TlsReport {
                organization_name: Some(self.hostname.to_owned()),
                date_range: DateRange {
                    start_datetime: mail_parser::DateTime::from_timestamp(day * 86400),
                    end_datetime: mail_parser::DateTime::from_timestamp(day * 86400 + 86399),
                },
                contact_info: Some(self.from.to_owned()),
                report_id: format!("{day}.{domain}.{}", hex::encode(rand::random::<[u8; 6]>())),
                policies,
            };
            if !urls.is_empty() {
                use std::io::Write as _;
                let mut gz = postern_dns::mail_auth::flate2::write::GzEncoder::new(
                    Vec::new(),
                    postern_dns::mail_auth::flate2::Compression::default(),
                );
                gz.write_all(report.to_json().as_bytes())?;
                let body = gz.finish()?;
                let connector = postern_queue::mta_sts::connector(self.ca_file)
                    .map_err(|e| anyhow::anyhow!("TLS client: {e}"))?;
                for url in &urls {
                    // RFC 8460 3: a failed POST is not retried here; the next report comes tomorrow
                    match postern_queue::mta_sts::post_report(
                        url,
                        body.clone(),
                        self.dns.resolver(),
                        &connector,
                    )
                    .await
                    {
                        Ok(()) => sent.recipients += 1,
                        Err(e) => tracing::warn!(domain, url, error = %e, "TLS report POST failed"),
                    }
                }
            }
            if !to.is_empty() {
                let message = report
                    .to_rfc5322(
                        &domain,
                        self.hostname,
                        ("Postern TLS reports", self.from),
                        to.iter().map(String::as_str),
                    )
                    .context("building the TLS report")?;
                self.deliver(message.into_bytes(), &to).await?;
                sent.recipients += to.len();
            }
            self.store
                .report_done(ReportKind::Tls, day, &domain)
                .await?;
            tracing::info!(
                domain,
                day,
                mail = to.len(),
                https = urls.len(),
                "TLS report sent"
            );
            sent.reports += 1;
        }
        Ok(sent)
    }

    async fn deliver(&self, message: Vec<u8>, to: &[String]) -> anyhow::Result<()> {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for a in to {
            let addr = EmailAddress::parse(a).context("report address")?;
            match self.store.resolve_recipient(&addr).await? {
                Some(id) if self.store.is_local_domain(addr.domain()).await? => local.push(id),
                _ => remote.push(addr.as_str().to_owned()),
            }
        }
        local.sort_unstable();
        local.dedup();
        let date = chrono::Utc::now().to_rfc2822();
        let received = format!(
            "Received: by {} (Postern DMARC reports); {date}\r\n",
            self.hostname
        );
        if !remote.is_empty() {
            self.store
                .enqueue(
                    vec![received.clone().into_bytes(), message.clone()],
                    self.from,
                    None,
                    &remote,
                )
                .await?;
        }
        if !local.is_empty() {
            let return_path = format!("Return-Path: <{}>\r\n", self.from);
            self.store
                .deliver_local(
                    vec![return_path.into_bytes(), received.into_bytes(), message],
                    &local,
                    postern_store::now(),
                )
                .await?;
        }
        Ok(())
    }
}

/// `[inbound] reports_from`, or `postmaster@` the host name.
pub fn reports_from(cfg: &postern_config::Config) -> String {
    cfg.inbound
        .reports_from
        .clone()
        .unwrap_or_else(|| format!("postmaster@{}", cfg.server.hostname))
}

fn result_type(r: &str) -> ResultType {
    match r {
        "starttls-not-supported" => ResultType::StartTlsNotSupported,
        "certificate-host-mismatch" => ResultType::CertificateHostMismatch,
        "certificate-expired" => ResultType::CertificateExpired,
        "certificate-not-trusted" => ResultType::CertificateNotTrusted,
        _ => ResultType::ValidationFailure,
    }
}
