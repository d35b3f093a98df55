//! Every administrative operation, once: validate, change, and record who did it. The command
//! line (`cli`, `admin`) and the admin HTTP API (`api`) are thin callers of these functions; none
//! of them takes a change without an [`Actor`](crate::actor::Actor), so an unaudited change
//! cannot be written by accident.
//!
//! One file per resource: domains, accounts, aliases, bans, queue. (Application credentials,
//! administrators, secrets and DKIM keys have their operations in `apps`, `admins`,
//! `secret_cli` and `dkim`, which record their events the same way.)

pub mod accounts;
pub mod aliases;
pub mod bans;
pub mod domains;
pub mod queue;
