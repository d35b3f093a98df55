//! Application credentials: principals that may only submit mail, as listed sender addresses or
//! domains, from listed networks, within their own send quotas, until they expire. Secrets are
//! generated and stored as SHA-256 digests; a rotation keeps the previous digest working until
//! the end of a grace period.

use postern_auth::guard::Cidr;
use postern_auth::{AppSecret, PrincipalKind, StoredCredential};
use sqlx::Row;

use crate::{now, Result, Store, StoreError};

/// An application as listed and shown (never its secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplicationInfo {
    pub id: i64,
    pub name: String,
    /// Addresses ("billing@example.com") or whole domains ("@example.com").
    pub allow_from: Vec<String>,
    pub networks: Vec<String>,
    pub send_messages_per_hour: Option<u32>,
    pub send_recipients_per_hour: Option<u32>,
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
    /// During a rotation: when the previous secret stops working.
    pub previous_secret_valid_until: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
}

/// What a new application may do.
#[derive(Debug, Clone, Default)]
pub struct NewApplication {
    pub allow_from: Vec<String>,
    pub networks: Vec<String>,
    pub expires_at: Option<i64>,
    pub send_messages_per_hour: Option<u32>,
    pub send_recipients_per_hour: Option<u32>,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

const COLUMNS: &str =
    "id, name, allow_from, networks, send_messages_per_hour, send_recipients_per_hour,
     expires_at, disabled, created_at, rotated_at, old_valid_until, last_used_at, last_used_ip";

fn info(r: &sqlx::any::AnyRow) -> std::result::Result<ApplicationInfo, sqlx::Error> {
    Ok(ApplicationInfo {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        allow_from: split(&r.try_get::<String, _>("allow_from")?),
        networks: split(&r.try_get::<String, _>("networks")?),
        send_messages_per_hour: r
            .try_get::<Option<i64>, _>("send_messages_per_hour")?
            .map(|v| v.clamp(0, u32::MAX as i64) as u32),
        send_recipients_per_hour: r
            .try_get::<Option<i64>, _>("send_recipients_per_hour")?
            .map(|v| v.clamp(0, u32::MAX as i64) as u32),
        expires_at: r.try_get("expires_at")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        created_at: r.try_get("created_at")?,
        rotated_at: r.try_get("rotated_at")?,
        previous_secret_valid_until: r.try_get("old_valid_until")?,
        last_used_at: r.try_get("last_used_at")?,
        last_used_ip: r.try_get("last_used_ip")?,
    })
}

pub use postern_types::sender_allowed;

impl Store {
    pub async fn create_application(
        &self,
        name: &str,
        digest: &[u8; 32],
        app: &NewApplication,
    ) -> Result<i64> {
        let r = sqlx::query(
            "INSERT INTO applications (name, digest, allow_from, networks, send_messages_per_hour,
                 send_recipients_per_hour, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(name)
        .bind(hex::encode(digest))
        .bind(app.allow_from.join(","))
        .bind(app.networks.join(","))
        .bind(app.send_messages_per_hour.map(i64::from))
        .bind(app.send_recipients_per_hour.map(i64::from))
        .bind(app.expires_at)
        .bind(now())
        .fetch_one(&self.write)
        .await;
        let id = r.as_ref().map_or(Ok(0), |r| r.try_get::<i64, _>("id"))?;
        crate::inserted(r, format!("application {name:?}"))?;
        Ok(id)
    }

    pub async fn list_applications(&self) -> Result<Vec<ApplicationInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM applications ORDER BY name"
        )))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(info)
            .collect::<std::result::Result<_, _>>()?)
    }

    pub async fn application(&self, name: &str) -> Result<ApplicationInfo> {
        self.find_application("name", name.to_owned()).await
    }

    pub async fn application_by_id(&self, id: i64) -> Result<ApplicationInfo> {
        self.find_application("id", id).await
    }

    async fn find_application<T>(&self, column: &'static str, key: T) -> Result<ApplicationInfo>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Any>
            + sqlx::Type<sqlx::Any>
            + Send
            + std::fmt::Debug
            + 'static,
    {
        let what = format!("application {key:?}");
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM applications WHERE {column} = $1"
        )))
        .bind(key)
        .fetch_optional(&self.read)
        .await?;
        match row {
            Some(r) => Ok(info(&r)?),
            None => Err(StoreError::NotFound(what)),
        }
    }

    /// Issues a new secret; the current one keeps working until `old_valid_until` (Unix time).
    /// A rotation during a rotation ends the oldest secret at once.
    pub async fn rotate_application(
        &self,
        name: &str,
        digest: &[u8; 32],
        old_valid_until: i64,
    ) -> Result<()> {
        let n = sqlx::query(
            "UPDATE applications SET old_digest = digest, old_valid_until = $1, digest = $2, rotated_at = $3
             WHERE name = $4",
        )
        .bind(old_valid_until)
        .bind(hex::encode(digest))
        .bind(now())
        .bind(name)
        .execute(&self.write)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("application {name:?}")));
        }
        Ok(())
    }

    /// Forgets previous secrets whose grace period ended; returns the applications concerned.
    pub async fn retire_previous_secrets(&self, at: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE applications SET old_digest = NULL, old_valid_until = NULL
             WHERE old_digest IS NOT NULL AND old_valid_until <= $1 RETURNING name",
        )
        .bind(at)
        .fetch_all(&self.write)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>("name").ok())
            .collect())
    }

    pub async fn set_application_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let n = sqlx::query("UPDATE applications SET disabled = $1 WHERE name = $2")
            .bind(disabled as i64)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("application {name:?}")));
        }
        Ok(())
    }

    pub async fn remove_application(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM applications WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("application {name:?}")));
        }
        Ok(())
    }

    pub(crate) async fn application_credential(
        &self,
        name: &str,
    ) -> Result<Option<StoredCredential>> {
        let row = sqlx::query(
            "SELECT id, name, digest, old_digest, old_valid_until, networks, expires_at, disabled
             FROM applications WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let digest = |col: &str| -> Option<[u8; 32]> {
            let h: Option<String> = r.try_get(col).ok()?;
            let mut d = [0u8; 32];
            hex::decode_to_slice(h?, &mut d).ok()?;
            Some(d)
        };
        let mut app_secrets = Vec::new();
        if let Some(d) = digest("digest") {
            app_secrets.push(AppSecret {
                digest: d,
                valid_until: None,
            });
        }
        if let (Some(d), Some(u)) = (
            digest("old_digest"),
            r.try_get::<Option<i64>, _>("old_valid_until")?,
        ) {
            app_secrets.push(AppSecret {
                digest: d,
                valid_until: Some(u.max(0) as u64),
            });
        }
        let id: i64 = r.try_get("id")?;
        let name: String = r.try_get("name")?;
        Ok(Some(StoredCredential {
            kind: PrincipalKind::Application,
            disabled: r.try_get::<i64, _>("disabled")? != 0,
            allowed_networks: split(&r.try_get::<String, _>("networks")?)
                .iter()
                .filter_map(|n| Cidr::parse(n).ok())
                .collect(),
            app_secrets,
            expires_at: r
                .try_get::<Option<i64>, _>("expires_at")?
                .map(|e| e.max(0) as u64),
            ..StoredCredential::account(id, &name, "")
        }))
    }
}
