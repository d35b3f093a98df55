//! Every administrative operation, once: validate, change, and record who did it. The command
//! line (`cli`, `admin`) and the admin HTTP API (`api`) are thin callers of these functions; none
//! of them takes a change without an [`Actor`](crate::actor::Actor), so an unaudited change
//! cannot be written by accident.
//!
//! One file per resource: domains, accounts, aliases, app passwords, client certificates,
//! applications, bans, queue,
//! reports, incident response.
//! (Administrators, secrets and DKIM keys record their events the same way from `cli/admins`,
//! `api/admins`, `cli/secret` and `dkim`.)

pub mod accounts;
pub mod aliases;
pub mod app_passwords;
pub mod applications;
pub mod bans;
pub mod client_certs;
pub mod domains;
pub mod incident;
pub mod queue;
pub mod reports;
