//! Greylisting state (RFC 6647): triplets of (client network, envelope sender, recipient), and
//! the networks and sender domains that are let through at once. The decision for one RCPT is one
//! transaction here, so two sessions retrying the same triplet at once cannot both insert it.

use sqlx::Row;

use crate::{Result, Store};

/// The timing policy (from `[greylist]`), in seconds.
#[derive(Debug, Clone, Copy)]
pub struct GreyPolicy {
    /// A new triplet's retry is accepted after this long.
    pub delay: i64,
    /// A deferred triplet not retried within this long is forgotten.
    pub retry_window: i64,
    /// Passed triplets and auto-allowed networks and domains are forgotten this long after last use.
    pub expire: i64,
    /// Triplets a network must have retried correctly before it is auto-allowed.
    pub auto_allow_after: i64,
}

/// One RCPT to decide on.
#[derive(Debug, Clone)]
pub struct Triplet<'a> {
    /// The client's /24 (IPv4) or /64 (IPv6), as text.
    pub network: &'a str,
    /// Envelope sender, lower-cased ("" for the null sender).
    pub sender: &'a str,
    pub recipient: &'a str,
    /// The envelope sender's domain when SPF passed for it in this session: such a sender that
    /// authenticated before is let through at once. None when SPF did not pass (a domain cannot
    /// be claimed by a spoofer).
    pub authenticated_domain: Option<&'a str>,
}

/// Why a RCPT passed, or how long until its retry may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreyVerdict {
    /// The network retried correctly often enough before.
    AllowedNetwork,
    /// The sender's domain authenticated before (and SPF passed now).
    AllowedSender,
    /// The triplet passed before.
    Known,
    /// The triplet was deferred and retried after the delay: passes, and is remembered.
    Retried,
    /// Deferred; the retry may pass in this many seconds.
    Defer(i64),
}

impl Store {
    /// Decides on one RCPT: pass (and why) or defer (and for how long).
    pub async fn greylist(&self, t: &Triplet<'_>, now: i64, p: GreyPolicy) -> Result<GreyVerdict> {
        let mut tx = self.write.begin().await?;
        let fresh = now - p.expire;
        let allowed = |kind: &'static str, value: &str| {
            sqlx::query("UPDATE greylist_allow SET last_seen = $4 WHERE kind = $1 AND value = $2 AND passes >= $3 AND last_seen > $5")
                .bind(kind)
                .bind(value.to_owned())
                .bind(if kind == "network" { p.auto_allow_after } else { 1 })
                .bind(now)
                .bind(fresh)
        };
        if allowed("network", t.network)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0
        {
            tx.commit().await?;
            return Ok(GreyVerdict::AllowedNetwork);
        }
        if let Some(d) = t.authenticated_domain {
            if allowed("domain", d)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0
            {
                tx.commit().await?;
                return Ok(GreyVerdict::AllowedSender);
            }
        }
        let row = sqlx::query("SELECT first_seen, last_seen, passed FROM greylist WHERE network = $1 AND sender = $2 AND recipient = $3")
            .bind(t.network)
            .bind(t.sender)
            .bind(t.recipient)
            .fetch_optional(&mut *tx)
            .await?;
        let state = match row {
            Some(r) => Some((
                r.try_get::<i64, _>(0)?,
                r.try_get::<i64, _>(1)?,
                r.try_get::<i64, _>(2)? != 0,
            )),
            None => None,
        };
        let verdict = match state {
            Some((_, last, true)) if last > fresh => {
                sqlx::query("UPDATE greylist SET last_seen = $1 WHERE network = $2 AND sender = $3 AND recipient = $4")
                    .bind(now)
                    .bind(t.network)
                    .bind(t.sender)
                    .bind(t.recipient)
                    .execute(&mut *tx)
                    .await?;
                GreyVerdict::Known
            }
            Some((first, _, false)) if first > now - p.retry_window => {
                let waited = now - first;
                if waited < p.delay {
                    GreyVerdict::Defer(p.delay - waited)
                } else {
                    sqlx::query("UPDATE greylist SET last_seen = $1, passed = 1 WHERE network = $2 AND sender = $3 AND recipient = $4")
                        .bind(now)
                        .bind(t.network)
                        .bind(t.sender)
                        .bind(t.recipient)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO greylist_allow (kind, value, passes, last_seen) VALUES ('network', $1, 1, $2)
                                 ON CONFLICT (kind, value) DO UPDATE SET passes = greylist_allow.passes + 1, last_seen = $2")
                        .bind(t.network)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    GreyVerdict::Retried
                }
            }
            // New, or forgotten (expired pass, or a retry that never came in time): start over.
            _ => {
                sqlx::query("INSERT INTO greylist (network, sender, recipient, first_seen, last_seen, passed) VALUES ($1, $2, $3, $4, $4, 0)
                             ON CONFLICT (network, sender, recipient) DO UPDATE SET first_seen = $4, last_seen = $4, passed = 0")
                    .bind(t.network)
                    .bind(t.sender)
                    .bind(t.recipient)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                GreyVerdict::Defer(p.delay)
            }
        };
        tx.commit().await?;
        Ok(verdict)
    }

    /// Remembers that mail from `domain` authenticated (SPF pass or aligned DKIM pass): its later
    /// mail skips greylisting whenever SPF passes for it.
    pub async fn greylist_allow_domain(&self, domain: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO greylist_allow (kind, value, passes, last_seen) VALUES ('domain', $1, 1, $2)
                     ON CONFLICT (kind, value) DO UPDATE SET passes = greylist_allow.passes + 1, last_seen = $2")
            .bind(domain.to_ascii_lowercase())
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Forgets what expired. Returns the rows removed.
    pub async fn greylist_expire(&self, now: i64, p: GreyPolicy) -> Result<u64> {
        let a = sqlx::query("DELETE FROM greylist WHERE (passed = 1 AND last_seen <= $1) OR (passed = 0 AND first_seen <= $2)")
            .bind(now - p.expire)
            .bind(now - p.retry_window)
            .execute(&self.write)
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM greylist_allow WHERE last_seen <= $1")
            .bind(now - p.expire)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: GreyPolicy = GreyPolicy {
        delay: 300,
        retry_window: 48 * 3600,
        expire: 35 * 86400,
        auto_allow_after: 2,
    };

    fn t<'a>(rcpt: &'a str, domain: Option<&'a str>) -> Triplet<'a> {
        Triplet {
            network: "192.0.2.0/24",
            sender: "a@remote.example",
            recipient: rcpt,
            authenticated_domain: domain,
        }
    }

    #[tokio::test]
    async fn defer_then_pass_then_auto_allow() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), &dir.path().join("blobs"))
            .await
            .unwrap();
        let now = 1_000_000;
        assert_eq!(
            s.greylist(&t("x@l", None), now, P).await.unwrap(),
            GreyVerdict::Defer(300)
        );
        // an early retry is deferred for what is left; it does not restart the clock
        assert_eq!(
            s.greylist(&t("x@l", None), now + 100, P).await.unwrap(),
            GreyVerdict::Defer(200)
        );
        assert_eq!(
            s.greylist(&t("x@l", None), now + 300, P).await.unwrap(),
            GreyVerdict::Retried
        );
        assert_eq!(
            s.greylist(&t("x@l", None), now + 301, P).await.unwrap(),
            GreyVerdict::Known
        );
        // a second triplet from the network: deferred until the network has retried twice
        assert_eq!(
            s.greylist(&t("y@l", None), now + 400, P).await.unwrap(),
            GreyVerdict::Defer(300)
        );
        assert_eq!(
            s.greylist(&t("y@l", None), now + 800, P).await.unwrap(),
            GreyVerdict::Retried
        );
        assert_eq!(
            s.greylist(&t("z@l", None), now + 900, P).await.unwrap(),
            GreyVerdict::AllowedNetwork
        );
        // all of it is forgotten after `expire`; a retry that comes after the window starts over
        assert_eq!(
            s.greylist_expire(now + P.expire + 1000, P).await.unwrap(),
            3
        );
        let late = now + P.expire + 2000;
        assert_eq!(
            s.greylist(&t("x@l", None), late, P).await.unwrap(),
            GreyVerdict::Defer(300)
        );
        assert_eq!(
            s.greylist(&t("x@l", None), late + P.retry_window + 1, P)
                .await
                .unwrap(),
            GreyVerdict::Defer(300)
        );
        // a domain that authenticated before passes at once, but only with SPF passing now
        s.greylist_allow_domain("Remote.Example", late)
            .await
            .unwrap();
        assert_eq!(
            s.greylist(&t("v@l", None), late, P).await.unwrap(),
            GreyVerdict::Defer(300)
        );
        assert_eq!(
            s.greylist(&t("u@l", Some("remote.example")), late, P)
                .await
                .unwrap(),
            GreyVerdict::AllowedSender
        );
    }
}
