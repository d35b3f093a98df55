//! Administrators of the admin API, their login sessions and API keys. Passwords are argon2id
//! PHC strings; session tokens and API keys are generated (256 bits) and stored as SHA-256
//! digests. No administrator exists until `postern admin bootstrap` creates the first.

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// Domains a domain-admin manages (empty for other roles).
    pub domains: Vec<String>,
    pub disabled: bool,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiKeyInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub domains: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub created_by: String,
    pub last_used_at: Option<i64>,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn admin(r: &sqlx::any::AnyRow) -> std::result::Result<AdminInfo, sqlx::Error> {
    Ok(AdminInfo {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        domains: split(&r.try_get::<String, _>("domains")?),
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

fn api_key(r: &sqlx::any::AnyRow) -> std::result::Result<ApiKeyInfo, sqlx::Error> {
    Ok(ApiKeyInfo {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        domains: split(&r.try_get::<String, _>("domains")?),
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

const ADMIN_COLS: &str = "id, name, role, domains, disabled, created_at, created_by";
const KEY_COLS: &str = "id, name, role, domains, expires_at, created_at, created_by, last_used_at";

impl Store {
    /// Whether the administrator `name` exists and came from a directory.
    pub async fn admin_from_directory(&self, name: &str) -> Result<Option<bool>> {
        Ok(
            sqlx::query("SELECT directory IS NOT NULL FROM admins WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.read)
                .await?
                .map(|r| r.try_get::<crate::Flag, _>(0).map(bool::from))
                .transpose()?,
        )
    }

    /// Creates, or brings up to date, an administrator the directory just vouched for: its
    /// role and domains are the ones its groups give now. A local administrator of the same
    /// name is never touched (Conflict).
    pub async fn sync_directory_admin(
        &self,
        name: &str,
        unusable_phc: &str,
        role: &str,
        domains: &[String],
    ) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO admins (name, password_hash, role, domains, created_at, created_by, directory)
             VALUES ($1, $2, $3, $4, $5, 'directory', 'ldap')
             ON CONFLICT (name) DO UPDATE SET role = $3, domains = $4 WHERE admins.directory IS NOT NULL",
        )
        .bind(name)
        .bind(unusable_phc)
        .bind(role)
        .bind(domains.join(","))
        .bind(now())
        .execute(&self.write)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a local administrator is named {name:?}"
            )));
        }
        Ok(())
    }

    pub async fn count_admins(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM admins")
            .fetch_one(&self.read)
            .await?
            .try_get("n")?)
    }

    pub async fn create_admin(
        &self,
        name: &str,
        password_hash: &str,
        role: &str,
        domains: &[String],
        created_by: &str,
    ) -> Result<i64> {
        let r = sqlx::query(
            "INSERT INTO admins (name, password_hash, role, domains, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role)
        .bind(domains.join(","))
        .bind(now())
        .bind(created_by)
        .fetch_one(&self.write)
        .await;
        let id = r.as_ref().map_or(Ok(0), |r| r.try_get::<i64, _>("id"))?;
        crate::inserted(r, format!("administrator {name:?}"))?;
        Ok(id)
    }

    /// The administrator and its password hash.
    pub async fn admin_login(&self, name: &str) -> Result<Option<(AdminInfo, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ADMIN_COLS}, password_hash FROM admins WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        match row {
            Some(r) => Ok(Some((admin(&r)?, r.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    pub async fn admin(&self, name: &str) -> Result<AdminInfo> {
        match self.admin_login(name).await? {
            Some((a, _)) => Ok(a),
            None => Err(StoreError::NotFound(format!("administrator {name:?}"))),
        }
    }

    pub async fn list_admins(&self) -> Result<Vec<AdminInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ADMIN_COLS} FROM admins ORDER BY name"
        )))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(admin)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// A new password hash for an administrator; its sessions end (they were opened with the
    /// old password).
    pub async fn set_admin_password(&self, name: &str, password_hash: &str) -> Result<()> {
        let n = sqlx::query("UPDATE admins SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("administrator {name:?}")));
        }
        let a = self.admin(name).await?;
        self.end_admin_sessions_of(a.id).await?;
        Ok(())
    }

    /// Stops (or allows again) an administrator's logins; disabling ends its sessions.
    pub async fn set_admin_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let n = sqlx::query("UPDATE admins SET disabled = $1 WHERE name = $2")
            .bind(disabled as i64)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("administrator {name:?}")));
        }
        if disabled {
            let a = self.admin(name).await?;
            self.end_admin_sessions_of(a.id).await?;
        }
        Ok(())
    }

    /// Removes an administrator and ends its sessions.
    pub async fn remove_admin(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM admins WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("administrator {name:?}")));
        }
        Ok(())
    }

    pub async fn create_admin_session(
        &self,
        digest: &[u8; 32],
        admin_id: i64,
        kind: &str,
        expires_at: i64,
        ip: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_sessions (digest, admin_id, kind, created_at, expires_at, ip)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hex::encode(digest))
        .bind(admin_id)
        .bind(kind)
        .bind(now())
        .bind(expires_at)
        .bind(ip)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The administrator of a live session of this kind (not expired, admin not disabled).
    pub async fn admin_session(&self, digest: &[u8; 32], kind: &str) -> Result<Option<AdminInfo>> {
        let row = sqlx::query(
            "SELECT a.id, a.name, a.role, a.domains, a.disabled, a.created_at, a.created_by
             FROM admin_sessions s JOIN admins a ON a.id = s.admin_id
             WHERE s.digest = $1 AND s.kind = $2 AND s.expires_at > $3 AND a.disabled = 0",
        )
        .bind(hex::encode(digest))
        .bind(kind)
        .bind(now())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(admin).transpose()?)
    }

    pub async fn end_admin_session(&self, digest: &[u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM admin_sessions WHERE digest = $1 OR expires_at <= $2")
            .bind(hex::encode(digest))
            .bind(now())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn end_admin_sessions_of(&self, admin_id: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM admin_sessions WHERE admin_id = $1")
                .bind(admin_id)
                .execute(&self.write)
                .await?
                .rows_affected(),
        )
    }

    pub async fn create_api_key(
        &self,
        name: &str,
        digest: &[u8; 32],
        role: &str,
        domains: &[String],
        expires_at: Option<i64>,
        created_by: &str,
    ) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO api_keys (name, digest, role, domains, expires_at, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(name)
        .bind(hex::encode(digest))
        .bind(role)
        .bind(domains.join(","))
        .bind(expires_at)
        .bind(now())
        .bind(created_by)
        .execute(&self.write)
        .await;
        crate::inserted(r, format!("API key {name:?}"))
    }

    /// The API key with this digest if it has not expired; records its use.
    pub async fn api_key(&self, digest: &[u8; 32]) -> Result<Option<ApiKeyInfo>> {
        let t = now();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE api_keys SET last_used_at = $1 WHERE digest = $2 AND (expires_at IS NULL OR expires_at > $3)
             RETURNING {KEY_COLS}"
        )))
        .bind(t)
        .bind(hex::encode(digest))
        .bind(t)
        .fetch_optional(&self.write)
        .await?;
        Ok(row.as_ref().map(api_key).transpose()?)
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLS} FROM api_keys ORDER BY name"
        )))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(api_key)
            .collect::<std::result::Result<_, _>>()?)
    }

    pub async fn revoke_api_key(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM api_keys WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("API key {name:?}")));
        }
        Ok(())
    }
}
