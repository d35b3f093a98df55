//! Checks on mail from the internet: what port 25 verifies before it stores a message from an
//! unauthenticated sender, by SMTP phase.
//!
//! - connect: DNS block lists (RFC 5782), when configured;
//! - MAIL: SPF for the HELO and the MAIL FROM identities (RFC 7208), iprev (RFC 8601 3);
//! - RCPT: greylisting (RFC 6647), through the backend's state;
//! - end of DATA: DKIM (RFC 6376, RFC 8463), ARC (RFC 8617), DMARC (RFC 7489) with its policy, our
//!   own domains protected from outside spoofing, and one Authentication-Results header
//!   (RFC 8601) after any forged one claiming our name is removed.
//!
//! The protocol checks themselves are `mail-auth`'s; this module holds Postern's policy around
//! them (which result refuses, defers or quarantines) and the two small pieces no crate does: the
//! removal of forged Authentication-Results fields and the RFC 7489 `pct` sampling, which
//! `mail-auth` (implementing DMARCbis, where `pct` became `t`) no longer reads.

use std::net::IpAddr;

use postern_config::{GreylistConfig, InboundConfig};
use postern_dns::mail_auth::common::headers::HeaderWriter;
use postern_dns::mail_auth::dmarc::verify::DmarcParameters;
use postern_dns::mail_auth::dmarc::Policy;
use postern_dns::mail_auth::report::{
    ActionDisposition, PolicyOverride, PolicyOverrideReason, PolicyPublished, Record,
    SPFDomainScope,
};
use postern_dns::mail_auth::spf::verify::SpfParameters;
use postern_dns::mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevOutput, IprevResult,
    SpfOutput, SpfResult,
};
use postern_dns::{Dns, Listing};

/// The inbound policy of the MX listeners, shared by their sessions.
pub struct Inbound {
    pub dns: Dns,
    pub cfg: InboundConfig,
    pub greylist: GreylistConfig,
}

/// What MAIL learned about the sender, kept for DMARC at the end of DATA.
pub struct SenderChecks {
    pub helo: String,
    pub spf_helo: Option<SpfOutput>,
    pub spf_mail: SpfOutput,
    pub iprev: IprevOutput,
}

/// The decision at the end of DATA.
pub enum Verdict {
    /// Store it: `message` is the body with forged Authentication-Results removed, `header` our
    /// Authentication-Results line (with CRLF).
    Accept {
        message: Vec<u8>,
        header: String,
        quarantine: bool,
        /// The sender domain that authenticated (aligned SPF or DKIM pass), for greylisting.
        authenticated_domain: Option<String>,
        summary: String,
    },
    /// A permanent refusal (5xx reply) and the reason for the log.
    Reject(String, String),
    /// A temporary refusal (4xx reply) and the reason for the log.
    Defer(String, String),
}

/// How a MAIL command fared.
pub enum MailCheck {
    Checked(Box<SenderChecks>),
    /// A DNS failure made SPF undecidable: a temporary reply, never a pass or a refusal.
    TempError(String),
}

impl Inbound {
    pub fn new(dns: Dns, cfg: InboundConfig, greylist: GreylistConfig) -> Inbound {
        Inbound { dns, cfg, greylist }
    }

    /// The first DNS block list that lists `ip`, as (zone, answer). A list that cannot be asked
    /// never blocks mail.
    pub async fn listed(&self, ip: IpAddr) -> Option<(String, String)> {
        for zone in &self.cfg.dnsbl {
            if let Listing::Listed(a) = self.dns.dnsbl(zone, ip).await {
                postern_metrics::inbound_check("dnsbl", "listed");
                return Some((zone.clone(), a.to_string()));
            }
        }
        None
    }

    /// SPF for both identities and iprev, at MAIL (RFC 7208 2.3, 2.4: the null sender is checked
    /// as postmaster@HELO).
    pub async fn check_sender(
        &self,
        ip: IpAddr,
        helo: &str,
        hostname: &str,
        sender: &str,
    ) -> MailCheck {
        let auth = self.dns.authenticator();
        let helo_is_domain = postern_types::Domain::parse(helo).is_ok();
        let spf_helo = if helo_is_domain {
            Some(
                auth.verify_spf(SpfParameters::verify_ehlo(ip, helo, hostname))
                    .await,
            )
        } else {
            None
        };
        let spf_mail = if sender.is_empty() {
            match &spf_helo {
                Some(h) => h.clone(),
                None => SpfOutput::new(String::new()).with_result(SpfResult::None),
            }
        } else {
            auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, hostname, sender))
                .await
        };
        postern_metrics::inbound_check("spf", spf_word(spf_mail.result()));
        if spf_mail.result() == SpfResult::TempError {
            return MailCheck::TempError(format!(
                "SPF of {} could not be checked (DNS failure)",
                spf_mail.domain()
            ));
        }
        let iprev = auth.verify_iprev(ip).await;
        postern_metrics::inbound_check(
            "iprev",
            match &iprev.result {
                IprevResult::Pass => "pass",
                IprevResult::Fail(_) => "fail",
                IprevResult::TempError(_) => "temperror",
                IprevResult::PermError(_) => "permerror",
                IprevResult::None => "none",
            },
        );
        MailCheck::Checked(Box::new(SenderChecks {
            helo: helo.to_owned(),
            spf_helo,
            spf_mail,
            iprev,
        }))
    }

    /// DKIM, ARC and DMARC at the end of DATA, and the decision. `local` says whether a domain
    /// is one of ours.
    pub async fn check_message(
        &self,
        ip: IpAddr,
        hostname: &str,
        sender: &str,
        checks: &SenderChecks,
        message: Vec<u8>,
        backend: &dyn crate::MailBackend,
    ) -> Verdict {
        let auth = self.dns.authenticator();
        let Some(parsed) = AuthenticatedMessage::parse(&message) else {
            return Verdict::Reject(
                "550 5.6.0 Message refused: its header cannot be parsed".into(),
                "unparsable header".into(),
            );
        };
        let dkim = auth.verify_dkim(&parsed).await;
        let arc = auth.verify_arc(&parsed).await;
        let mail_domain = domain_of(sender)
            .unwrap_or(&checks.helo)
            .to_ascii_lowercase();
        let dmarc = auth
            .verify_dmarc(DmarcParameters::new(
                &parsed,
                &dkim,
                &mail_domain,
                &checks.spf_mail,
            ))
            .await;
        for d in &dkim {
            postern_metrics::inbound_check("dkim", dkim_word(d.result()));
        }
        postern_metrics::inbound_check("arc", dkim_word(arc.result()));
        postern_metrics::inbound_check("dmarc", dmarc_word(&dmarc.result()));
        let from = parsed.from.first().cloned().unwrap_or_default();
        let header = AuthenticationResults::new(hostname)
            .with_iprev_result(&checks.iprev, ip)
            .with_spf_mailfrom_result(&checks.spf_mail, ip, sender, &checks.helo);
        let header = match &checks.spf_helo {
            Some(h) => header.with_spf_ehlo_result(h, ip, &checks.helo),
            None => header,
        };
        let header = header
            .with_dkim_results(&dkim, &from)
            .with_arc_result(&arc, ip)
            .with_dmarc_result(&dmarc)
            .to_header();
        let dkim_pass: Vec<String> = dkim
            .iter()
            .filter(|d| d.result() == &DkimResult::Pass)
            .filter_map(|d| d.signature().map(|s| s.d.to_ascii_lowercase()))
            .collect();
        let dkim_temp = dkim
            .iter()
            .any(|d| matches!(d.result(), DkimResult::TempError(_)));
        let spf_pass = checks.spf_mail.result() == SpfResult::Pass;
        let summary = format!(
            "spf={} dkim={} dmarc={} policy={}",
            checks.spf_mail.result(),
            if dkim_pass.is_empty() {
                "none/fail"
            } else {
                "pass"
            },
            dmarc_word(&dmarc.result()),
            dmarc.policy()
        );

        // Our own domains are never spoofed from outside, whatever their DMARC record says.
        let from_domains: Vec<String> = parsed
            .from
            .iter()
            .filter_map(|a| domain_of(a).map(str::to_ascii_lowercase))
            .collect();
        let exempt = |d: &str| {
            self.cfg
                .skip_checks_for
                .iter()
                .any(|s| aligned(s.to_ascii_lowercase().as_str(), d))
        };
        let mut claimed: Vec<(&str, bool)> =
            from_domains.iter().map(|d| (d.as_str(), true)).collect();
        if !sender.is_empty() {
            claimed.push((mail_domain.as_str(), false));
        }
        for (d, is_from) in claimed {
            if exempt(d) {
                continue;
            }
            match backend.is_local_domain(d).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    return Verdict::Defer(
                        "451 4.3.0 Temporary failure, please try again later".into(),
                        format!("domain look-up failed: {e}"),
                    )
                }
            }
            let by_spf = spf_pass && aligned(&mail_domain, d);
            let by_dkim = dkim_pass.iter().any(|s| aligned(s, d));
            if !by_spf && !by_dkim {
                let what = if is_from { "From" } else { "envelope sender" };
                postern_metrics::inbound_check(
                    "own_domain",
                    if dkim_temp { "temperror" } else { "reject" },
                );
                if dkim_temp {
                    return Verdict::Defer(
                        "451 4.4.3 Temporary DNS failure while checking the message; try again later".into(),
                        format!("own domain {d} in {what}: DKIM undecided (DNS failure); {summary}"),
                    );
                }
                return Verdict::Reject(
                    format!("550 5.7.1 Message refused: {d} is a domain of this server and the message did not authenticate as it"),
                    format!("own domain {d} in {what} without SPF or aligned DKIM; {summary}"),
                );
            }
        }

        let exempted = from_domains.iter().any(|d| exempt(d));
        let mut quarantine = false;
        // what is done, for the aggregate report (RFC 7489 7.2 "disposition")
        let report = |action: ActionDisposition, overridden: Option<PolicyOverride>| {
            self.report(
                backend,
                ReportInput {
                    ip,
                    sender,
                    dkim: &dkim,
                    spf: &checks.spf_mail,
                    dmarc: &dmarc,
                    action,
                    overridden,
                },
            )
        };
        match dmarc.result() {
            DmarcResult::TempError(_) if !exempted => {
                return Verdict::Defer(
                    "451 4.4.3 Temporary DNS failure while checking DMARC; try again later".into(),
                    format!("DMARC undecided (DNS failure); {summary}"),
                );
            }
            DmarcResult::Fail(_) if !exempted => {
                let policy = match dmarc.policy() {
                    Policy::Reject | Policy::Quarantine => {
                        let pct = self.pct(dmarc.domain()).await;
                        sampled(dmarc.policy(), pct, rand::random::<u32>() % 100)
                    }
                    other => other,
                };
                // RFC 7489 6.6.4: sampled out by pct (RFC 9990 reports it as a test mode)
                let sampled_out =
                    (policy != dmarc.policy()).then_some(PolicyOverride::PolicyTestMode);
                match policy {
                    Policy::Reject => {
                        report(ActionDisposition::Reject, None).await;
                        return Verdict::Reject(
                            format!(
                                "550 5.7.1 Message refused by the DMARC policy of {}",
                                dmarc.domain()
                            ),
                            format!("DMARC reject; {summary}"),
                        );
                    }
                    Policy::Quarantine => {
                        quarantine = true;
                        report(ActionDisposition::Quarantine, sampled_out).await;
                    }
                    _ => report(ActionDisposition::None, sampled_out).await,
                }
            }
            // an exempted domain ([inbound] skip_checks_for)
            DmarcResult::Fail(_) => {
                report(ActionDisposition::None, Some(PolicyOverride::LocalPolicy)).await
            }
            DmarcResult::Pass => report(ActionDisposition::Pass, None).await,
            _ => {}
        }
        let authenticated_domain = if spf_pass && !sender.is_empty() {
            Some(mail_domain.clone())
        } else {
            dkim_pass
                .iter()
                .find(|s| from_domains.iter().any(|f| aligned(s, f)))
                .cloned()
        };
        Verdict::Accept {
            message: strip_forged_results(message, hostname),
            header,
            quarantine,
            authenticated_domain,
            summary,
        }
    }

    /// Records one evaluation for the aggregate report, when the domain asked for reports. A
    /// failure to record is logged, never a reason to refuse mail.
    async fn report(&self, backend: &dyn crate::MailBackend, r: ReportInput<'_>) {
        let Some(record) = r.dmarc.dmarc_record() else {
            return;
        };
        if record.rua().is_empty() {
            return;
        }
        let rua: Vec<String> = record.rua().iter().map(|u| u.uri().to_owned()).collect();
        let policy = PolicyPublished::from_record(r.dmarc.domain(), record);
        let mut row = Record::new()
            .with_dkim_output(r.dkim)
            .with_spf_output(r.spf, SPFDomainScope::MailFrom)
            .with_dmarc_output(r.dmarc)
            .with_source_ip(r.ip)
            .with_action_disposition(r.action)
            .with_header_from(r.dmarc.domain())
            .with_envelope_from(domain_of(r.sender).unwrap_or(""));
        if let Some(why) = r.overridden {
            // RFC 7489 7.2: a failing message not given the published policy
            row = row.with_policy_override_reason(PolicyOverrideReason::new(why));
        }
        let (Ok(policy), Ok(row)) = (serde_json::to_string(&policy), serde_json::to_string(&row))
        else {
            return;
        };
        if let Err(e) = backend
            .dmarc_evaluated(r.dmarc.domain(), &rua, &policy, &row)
            .await
        {
            tracing::warn!(error = %e, domain = r.dmarc.domain(), "DMARC result not recorded for the aggregate report");
        }
    }

    /// The RFC 7489 6.3 `pct` of the DMARC record that applies to `domain` (its own, else its
    /// parents', as the tree walk finds it); 100 when absent or unreadable.
    async fn pct(&self, domain: &str) -> u32 {
        let mut d = domain.trim_end_matches('.');
        loop {
            let name = format!("_dmarc.{d}.");
            if let Ok(l) = self.dns.resolver().txt_lookup(name.as_str()).await {
                for r in l.answers() {
                    if let postern_dns::hickory_resolver::proto::rr::RData::TXT(t) = &r.data {
                        let text: String = t
                            .txt_data
                            .iter()
                            .map(|c| String::from_utf8_lossy(c).into_owned())
                            .collect();
                        if text.trim_start().starts_with("v=DMARC1") {
                            return record_pct(&text);
                        }
                    }
                }
            }
            match d.split_once('.') {
                Some((_, rest)) if rest.contains('.') => d = rest,
                _ => return 100,
            }
        }
    }
}

/// What an aggregate-report row is made of.
struct ReportInput<'a> {
    ip: IpAddr,
    sender: &'a str,
    dkim: &'a [postern_dns::mail_auth::DkimOutput<'a>],
    spf: &'a SpfOutput,
    dmarc: &'a postern_dns::mail_auth::DmarcOutput,
    action: ActionDisposition,
    overridden: Option<PolicyOverride>,
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Fail(_) => "fail",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::TempError(_) => "temperror",
        DkimResult::PermError(_) => "permerror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// Relaxed alignment (RFC 7489 3.1), approximated without the public suffix list: the same
/// domain, or one a subdomain of the other.
pub fn aligned(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('.'), b.trim_end_matches('.'));
    a.eq_ignore_ascii_case(b) || is_sub(a, b) || is_sub(b, a)
}

fn is_sub(child: &str, parent: &str) -> bool {
    // bytes, not str slices: a domain from a From header may be UTF-8, and a slice inside a
    // character panics (found by the auth_results fuzz target)
    let (c, p) = (child.as_bytes(), parent.as_bytes());
    c.len() > p.len() + 1
        && c[c.len() - p.len()..].eq_ignore_ascii_case(p)
        && c[c.len() - p.len() - 1] == b'.'
}

/// The `pct` tag of a DMARC record (0-100; 100 when absent or invalid, RFC 7489 6.3).
pub fn record_pct(record: &str) -> u32 {
    for tag in record.split(';') {
        if let Some((k, v)) = tag.split_once('=') {
            if k.trim().eq_ignore_ascii_case("pct") {
                return v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .unwrap_or(100);
            }
        }
    }
    100
}

/// RFC 7489 6.6.4: a message outside the sampled `pct` gets the next policy down.
pub fn sampled(policy: Policy, pct: u32, roll: u32) -> Policy {
    if roll < pct {
        return policy;
    }
    match policy {
        Policy::Reject => Policy::Quarantine,
        _ => Policy::None,
    }
}

/// Removes every Authentication-Results header field whose authserv-id is `hostname`
/// (RFC 8601 5: a forged "pass" under our name must not reach the user), folded lines included.
/// Fields of other authserv-ids stay. Only the header section is looked at. A message without
/// such a field (nearly all) is returned as it is, not copied.
pub fn strip_forged_results(message: Vec<u8>, hostname: &str) -> Vec<u8> {
    let end = header_end(&message);
    let (head, body) = message.split_at(end);
    if !(Fields { rest: head }).any(|f| claims(f, hostname)) {
        return message;
    }
    let mut out = Vec::with_capacity(message.len());
    for field in (Fields { rest: head }) {
        if !claims(field, hostname) {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(body);
    out
}

/// Where the header section ends: after the empty line, or the whole message when there is none.
fn header_end(m: &[u8]) -> usize {
    if m.starts_with(b"\r\n") {
        return 0;
    }
    m.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(m.len(), |p| p + 2)
}

/// Header fields, each with its continuation lines and line endings.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let mut i = 0;
        loop {
            match self.rest[i..].iter().position(|&b| b == b'\n') {
                Some(p) => {
                    i += p + 1;
                    if i >= self.rest.len() || !matches!(self.rest[i], b' ' | b'\t') {
                        break;
                    }
                }
                None => {
                    i = self.rest.len();
                    break;
                }
            }
        }
        let (f, r) = self.rest.split_at(i);
        self.rest = r;
        Some(f)
    }
}

/// Whether `field` is an Authentication-Results field with `hostname` as its authserv-id
/// (RFC 8601 2.2: the id comes first, before any version and the first ';'; comments allowed).
fn claims(field: &[u8], hostname: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = String::from_utf8_lossy(&field[..colon]);
    if !name.trim().eq_ignore_ascii_case("Authentication-Results") {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let value = strip_comments(&value);
    let id = value
        .split(';')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches('"');
    id.trim_end_matches('.')
        .eq_ignore_ascii_case(hostname.trim_end_matches('.'))
}

/// RFC 5322 3.2.2 comments (nested, with quoted pairs) removed.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0u32;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' => depth = depth.saturating_add(1),
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_are_removed_others_kept() {
        let m = b"Authentication-Results: MX.example.test;\r\n\tdkim=pass header.d=bank.test\r\nAuthentication-Results: (c) mx.example.test. ; spf=pass\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n";
        let out = strip_forged_results(m.to_vec(), "mx.example.test");
        assert_eq!(
            out,
            b"Authentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n"
        );
        // a look-alike name is not ours; a header without an empty line is all header
        let m = b"Authentication-Results: mx.example.test.evil; x=y\r\nAuthentication-Results: mx.example.test";
        assert_eq!(
            strip_forged_results(m.to_vec(), "mx.example.test"),
            b"Authentication-Results: mx.example.test.evil; x=y\r\n"
        );
        assert_eq!(strip_forged_results(Vec::new(), "h"), b"");
        assert_eq!(strip_forged_results(b"\r\nbody".to_vec(), "h"), b"\r\nbody");
        // nothing to remove: the same buffer comes back (no copy)
        let m = b"Subject: hi\r\n\r\nbody".to_vec();
        let at = m.as_ptr();
        let out = strip_forged_results(m, "h");
        assert_eq!(out.as_ptr(), at);
    }

    #[test]
    fn pct_and_sampling() {
        assert_eq!(record_pct("v=DMARC1; p=reject; pct=20"), 20);
        assert_eq!(record_pct("v=DMARC1; p=reject; PCT = 0 "), 0);
        assert_eq!(record_pct("v=DMARC1; p=reject; pct=200"), 100);
        assert_eq!(record_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(sampled(Policy::Reject, 20, 19), Policy::Reject);
        assert_eq!(sampled(Policy::Reject, 20, 20), Policy::Quarantine);
        assert_eq!(sampled(Policy::Quarantine, 0, 0), Policy::None);
    }

    #[test]
    fn alignment() {
        assert!(aligned("example.test", "EXAMPLE.test"));
        assert!(aligned("mail.example.test", "example.test"));
        assert!(aligned("example.test", "news.example.test"));
        assert!(!aligned("badexample.test", "example.test"));
        assert!(!aligned("example.test.evil", "example.test"));
        // regression (fuzz): a suffix that starts inside a UTF-8 character
        assert!(!aligned(
            "mail.examion-Reswlts[:\u{710}a\0ple.2test",
            "example.test"
        ));
        assert!(aligned("bücher.example.test", "example.test"));
    }
}
