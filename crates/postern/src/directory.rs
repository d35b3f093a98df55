//! Password checks against an LDAP directory (`[[directory]] kind = "ldap"`): the service
//! account finds the user with the configured filter (values escaped per RFC 4515, so a login
//! name cannot widen the search), optionally checks the access group, then binds as the user
//! with the password given: the directory decides, Postern never sees its hashes. Always over
//! TLS (ldaps, or StartTLS) with the certificate verified. One connection per check, under a
//! deadline; a directory that does not answer is a temporary failure, never a failed login.
//! Administrators of the admin API can come from it too (`admin_user_filter`, `admin_groups`):
//! their role follows their groups at each login, and TOTP stays required.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use postern_auth::{Directory, DirectoryAnswer};
use postern_config::DirectoryConfig;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

pub struct Ldap {
    cfg: DirectoryConfig,
    bind_password: Zeroizing<String>,
    tls: Arc<rustls::ClientConfig>,
    domains: Vec<String>,
}

/// LDAP result code 49: invalidCredentials.
const INVALID_CREDENTIALS: u32 = 49;

impl Ldap {
    pub async fn new(
        cfg: &DirectoryConfig,
        base: &postern_config::Config,
        keys: &crate::keys::Keys,
    ) -> anyhow::Result<Ldap> {
        let bind_password = keys
            .resolve(&cfg.bind_password, "directory service account")
            .await?;
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca_file {
            Some(p) => {
                use rustls_pki_types::pem::PemObject;
                let pem = std::fs::read(base.path(p))
                    .map_err(|e| anyhow::anyhow!("directory.ca_file {}: {e}", p.display()))?;
                for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots.add(c?)?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Ldap {
            cfg: cfg.clone(),
            bind_password,
            tls: Arc::new(tls),
            domains: cfg.domains.iter().map(|d| d.to_lowercase()).collect(),
        })
    }

    fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
        let mut out = template.to_owned();
        for (k, v) in pairs {
            out = out.replace(&format!("{{{k}}}"), &ldap3::ldap_escape(*v));
        }
        out
    }

    /// Service bind, one user found with `user_filter`, the first of `groups` it matches (if
    /// any are given), then a bind as the user. Returns the answer and the index of the group.
    async fn ask(
        &self,
        user_filter: &str,
        login: &str,
        password: &str,
        groups: &[&str],
    ) -> Result<(DirectoryAnswer, Option<usize>), String> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(self.cfg.timeout_secs))
            .set_starttls(self.cfg.starttls)
            .set_config(self.tls.clone());
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        ldap3::drive!(conn);
        ldap.simple_bind(&self.cfg.bind_dn, &self.bind_password)
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("service bind: {e}"))?;
        let (user, domain) = login.rsplit_once('@').unwrap_or((login, ""));
        let filter = Self::fill(
            user_filter,
            &[("login", login), ("user", user), ("domain", domain)],
        );
        let (entries, _) = ldap
            .search(&self.cfg.base_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("search: {e}"))?;
        if entries.len() != 1 {
            if entries.len() > 1 {
                tracing::warn!(
                    filter,
                    n = entries.len(),
                    "directory: the user filter matches several entries; refused"
                );
            }
            let _ = ldap.unbind().await;
            return Ok((DirectoryAnswer::NoSuchUser, None));
        }
        let dn = SearchEntry::construct(entries.into_iter().next().expect("one entry")).dn;
        let mut group = None;
        for (i, g) in groups.iter().enumerate() {
            let filter = Self::fill(g, &[("dn", &dn), ("login", login)]);
            let (found, _) = ldap
                .search(&self.cfg.base_dn, Scope::Subtree, &filter, vec!["1.1"])
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("group search: {e}"))?;
            if !found.is_empty() {
                group = Some(i);
                break;
            }
        }
        let r = ldap
            .simple_bind(&dn, password)
            .await
            .map_err(|e| format!("user bind: {e}"))?;
        let _ = ldap.unbind().await;
        let answer = match r.rc {
            // the password is checked first, so a wrong one is told as such
            0 if !groups.is_empty() && group.is_none() => DirectoryAnswer::NotAllowed,
            0 => DirectoryAnswer::Valid,
            INVALID_CREDENTIALS => DirectoryAnswer::BadPassword,
            rc => return Err(format!("user bind: result code {rc}")),
        };
        Ok((answer, group))
    }

    /// `ask` under the deadline; a failure to ask is `Unavailable`.
    async fn ask_bounded(
        &self,
        user_filter: &str,
        login: &str,
        password: &SecretString,
        groups: &[&str],
    ) -> (DirectoryAnswer, Option<usize>) {
        // An empty password is an anonymous bind to LDAP, which "succeeds": never ask.
        if password.expose_secret().is_empty() {
            return (DirectoryAnswer::BadPassword, None);
        }
        let deadline = Duration::from_secs(self.cfg.timeout_secs.saturating_mul(2));
        let ask = self.ask(user_filter, login, password.expose_secret(), groups);
        match tokio::time::timeout(deadline, ask).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!(url = %self.cfg.url, error = %e, "directory unavailable");
                (DirectoryAnswer::Unavailable, None)
            }
            Err(_) => {
                tracing::warn!(url = %self.cfg.url, "directory timed out");
                (DirectoryAnswer::Unavailable, None)
            }
        }
    }

    /// Whether administrators come from the directory.
    pub fn serves_admins(&self) -> bool {
        self.cfg.admin_user_filter.is_some()
    }

    /// An administrator's login: the answer and, when valid, the role its groups give (the
    /// first in the order superadmin, domain-admin, helpdesk, auditor) and its domains.
    pub async fn check_admin(
        &self,
        name: &str,
        password: &SecretString,
    ) -> (DirectoryAnswer, Option<(&'static str, Vec<String>)>) {
        let Some(filter) = &self.cfg.admin_user_filter else {
            return (DirectoryAnswer::NoSuchUser, None);
        };
        let roles: Vec<(&'static str, &str)> =
            ["superadmin", "domain-admin", "helpdesk", "auditor"]
                .into_iter()
                .filter_map(|r| self.cfg.admin_groups.get(r).map(|f| (r, f.as_str())))
                .collect();
        let filters: Vec<&str> = roles.iter().map(|(_, f)| *f).collect();
        let (answer, group) = self.ask_bounded(filter, name, password, &filters).await;
        let role = group.map(|i| {
            let r = roles[i].0;
            (
                r,
                if r == "domain-admin" {
                    self.domains.clone()
                } else {
                    Vec::new()
                },
            )
        });
        (answer, role)
    }
}

#[async_trait::async_trait]
impl Directory for Ldap {
    fn serves(&self, login: &str) -> bool {
        let domain = login.rsplit_once('@').map_or("", |(_, d)| d);
        !domain.is_empty() && (self.domains.is_empty() || self.domains.iter().any(|d| d == domain))
    }

    async fn check(&self, login: &str, password: &SecretString) -> DirectoryAnswer {
        let groups: Vec<&str> = self.cfg.group_filter.iter().map(String::as_str).collect();
        self.ask_bounded(&self.cfg.user_filter, login, password, &groups)
            .await
            .0
    }
}
