//! Least-privilege roles of the admin API and what each may do. One table, [`allows`], decides;
//! every handler asks it before doing anything, then checks the domain scope of a domain-admin.
//!
//! | permission            | superadmin | domain-admin (its domains) | helpdesk | auditor |
//! |-----------------------|:---:|:---:|:---:|:---:|
//! | read domains/users    |  ✓  |  ✓  |  ✓  |  ✓  |
//! | manage domains        |  ✓  |     |     |     |
//! | create/remove users   |  ✓  |  ✓  |     |     |
//! | reset password, unlock, reset 2FA | ✓ | ✓ | ✓ |  |
//! | read app passwords / applications | ✓ | ✓ | ✓ | ✓ |
//! | create app passwords / applications (secrets) | ✓ | ✓ |  |  |
//! | revoke app passwords  |  ✓  |  ✓  |  ✓  |     |
//! | read bans             |  ✓  |     |  ✓  |  ✓  |
//! | add/lift bans         |  ✓  |     |  ✓  |     |
//! | read the audit log    |  ✓  |     |     |  ✓  |
//! | administrators, roles, API keys | ✓ |  |  |  |

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Superadmin,
    DomainAdmin,
    Helpdesk,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Superadmin,
        Role::DomainAdmin,
        Role::Helpdesk,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Superadmin => "superadmin",
            Role::DomainAdmin => "domain-admin",
            Role::Helpdesk => "helpdesk",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    ReadDirectory,
    ManageDomains,
    ManageUsers,
    ResetCredentials,
    ReadCredentials,
    IssueSecrets,
    RevokeAppPasswords,
    ReadBans,
    ManageBans,
    ReadAudit,
    ManageAdmins,
    /// Incident response: lock a compromised account (helpdesk may).
    LockAccounts,
    /// Lift an incident lock (helpdesk may not).
    UnlockAccounts,
    /// See the outbound queue (senders, recipients, states).
    ReadQueue,
    /// Retry, hold, release or remove queued messages.
    ManageQueue,
    /// See the stored secrets' names and metadata (never a value).
    ReadSecrets,
}

/// Whether `role` may do `perm` at all (a domain-admin is further limited to its domains).
pub fn allows(role: Role, perm: Perm) -> bool {
    use Perm::*;
    match role {
        Role::Superadmin => true,
        Role::DomainAdmin => matches!(
            perm,
            ReadDirectory
                | ManageUsers
                | ResetCredentials
                | ReadCredentials
                | IssueSecrets
                | RevokeAppPasswords
                | LockAccounts
                | UnlockAccounts
        ),
        Role::Helpdesk => matches!(
            perm,
            ReadDirectory
                | ResetCredentials
                | ReadCredentials
                | RevokeAppPasswords
                | ReadBans
                | ManageBans
                | LockAccounts
        ),
        Role::Auditor => matches!(
            perm,
            ReadDirectory | ReadCredentials | ReadBans | ReadAudit | ReadQueue | ReadSecrets
        ),
    }
}

/// Checks a role's domain list: a domain-admin needs at least one local domain; other roles none.
pub async fn check_role_domains(
    store: &postern_store::Store,
    role: Role,
    domains: &[String],
) -> anyhow::Result<Vec<String>> {
    if role != Role::DomainAdmin {
        if !domains.is_empty() {
            anyhow::bail!("only a domain-admin has domains");
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for d in domains {
        let d =
            postern_types::Domain::parse(d).map_err(|_| anyhow::anyhow!("invalid domain {d:?}"))?;
        if !store.is_local_domain(d.as_str()).await? {
            anyhow::bail!("{d} is not a local domain");
        }
        out.push(d.as_str().to_owned());
    }
    if out.is_empty() {
        anyhow::bail!("a domain-admin needs at least one domain");
    }
    Ok(out)
}

pub fn valid_admin_name(n: &str) -> bool {
    crate::ops::applications::valid_name(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix() {
        use Perm::*;
        let all = [
            ReadDirectory,
            ManageDomains,
            ManageUsers,
            ResetCredentials,
            ReadCredentials,
            IssueSecrets,
            RevokeAppPasswords,
            ReadBans,
            ManageBans,
            ReadAudit,
            ManageAdmins,
        ];
        assert!(all.iter().all(|p| allows(Role::Superadmin, *p)));
        // nobody but a superadmin manages administrators or domains
        for r in [Role::DomainAdmin, Role::Helpdesk, Role::Auditor] {
            assert!(!allows(r, ManageAdmins) && !allows(r, ManageDomains));
            assert!(allows(r, ReadDirectory));
        }
        // helpdesk: resets and unlocks, never issues secrets
        assert!(allows(Role::Helpdesk, ResetCredentials) && !allows(Role::Helpdesk, IssueSecrets));
        assert!(!allows(Role::Helpdesk, ReadAudit) && !allows(Role::Helpdesk, ManageUsers));
        // auditor: read-only, including the audit log
        assert!(allows(Role::Auditor, ReadAudit));
        for p in [
            ManageUsers,
            ResetCredentials,
            IssueSecrets,
            RevokeAppPasswords,
            ManageBans,
        ] {
            assert!(!allows(Role::Auditor, p));
        }
        // domain-admin: no bans, no audit log
        assert!(!allows(Role::DomainAdmin, ManageBans) && !allows(Role::DomainAdmin, ReadAudit));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
