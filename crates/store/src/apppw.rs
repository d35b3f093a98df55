//! App passwords: generated secrets for mail clients, scoped to protocols, networks and a
//! lifetime. Only a SHA-256 digest is stored (the secret is shown once at creation).

use postern_auth::guard::Cidr;
use postern_auth::AppPasswordCred;
use sqlx::Row;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct AppPasswordInfo {
    pub name: String,
    pub protocols: Vec<String>,
    pub networks: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
}

/// A new app password as stored: its digest, scope and SCRAM verifier (never the secret).
pub struct NewAppPassword<'a> {
    pub name: &'a str,
    pub digest: &'a [u8; 32],
    pub protocols: &'a [String],
    pub networks: &'a [String],
    pub expires_at: Option<i64>,
    pub scram: Option<&'a postern_auth::scram::Verifier>,
}

impl Store {
    pub async fn add_app_password(&self, account_id: i64, new: NewAppPassword<'_>) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO app_passwords (account_id, name, digest, protocols, networks, expires_at, created_at, scram_verifier)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(account_id)
        .bind(new.name)
        .bind(hex::encode(new.digest))
        .bind(new.protocols.join(","))
        .bind(new.networks.join(","))
        .bind(new.expires_at)
        .bind(now())
        .bind(new.scram.map(|v| v.to_bytes().to_vec()))
        .execute(&self.write)
        .await;
        crate::inserted(r, format!("app password {:?}", new.name))
    }

    pub async fn list_app_passwords(&self, account_id: i64) -> Result<Vec<AppPasswordInfo>> {
        let rows = sqlx::query(
            "SELECT name, protocols, networks, expires_at, created_at, last_used_at, last_used_ip
             FROM app_passwords WHERE account_id = $1 ORDER BY name",
        )
        .bind(account_id)
        .fetch_all(&self.read)
        .await?;
        let split = |s: String| -> Vec<String> {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        rows.iter()
            .map(|r| {
                Ok(AppPasswordInfo {
                    name: r.try_get("name")?,
                    protocols: split(r.try_get("protocols")?),
                    networks: split(r.try_get("networks")?),
                    expires_at: r.try_get("expires_at")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    last_used_ip: r.try_get("last_used_ip")?,
                })
            })
            .collect()
    }

    pub async fn revoke_app_password(&self, account_id: i64, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM app_passwords WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("app password {name:?}")));
        }
        Ok(())
    }

    pub(crate) async fn app_password_creds(&self, account_id: i64) -> Result<Vec<AppPasswordCred>> {
        let rows = sqlx::query(
            "SELECT id, name, digest, protocols, networks, expires_at, scram_verifier
             FROM app_passwords WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut digest = [0u8; 32];
            let hexd: String = r.try_get("digest")?;
            if hex::decode_to_slice(&hexd, &mut digest).is_err() {
                continue;
            }
            let protocols: String = r.try_get("protocols")?;
            let networks: String = r.try_get("networks")?;
            out.push(AppPasswordCred {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                digest,
                protocols: protocols
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect(),
                networks: networks
                    .split(',')
                    .filter_map(|n| Cidr::parse(n).ok())
                    .collect(),
                expires_at: r
                    .try_get::<Option<i64>, _>("expires_at")?
                    .map(|e| e.max(0) as u64),
                scram: r
                    .try_get::<Option<Vec<u8>>, _>("scram_verifier")?
                    .and_then(|v| postern_auth::scram::Verifier::from_bytes(&v)),
            });
        }
        Ok(out)
    }
}
