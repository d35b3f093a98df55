//! Never serve as root. Started as root (`sudo postern serve`, an init script), Postern becomes
//! `[server] user` (default `postern`) before anything else happens: before the runtime's threads
//! exist, before a file is opened or created. `serve` keeps exactly one capability,
//! CAP_NET_BIND_SERVICE, so it can still bind ports 25, 465, 587, 993 … as the shipped systemd
//! unit grants it; every other command keeps none. The data directory must belong to that user
//! (`postern init --user NAME` makes it so), so every file the server creates is the user's.
//!
//! Why here and not after binding: Linux capabilities and the kernel's credentials are
//! per-thread; glibc's `setuid` changes every thread, but capabilities kept through it with
//! KEEPCAPS are only the calling thread's. Done while the process has one thread, the change is
//! whole and every thread started later inherits it.

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Uid, User};

use crate::cli::args::{Cli, Command};

/// What happened, for the server's first log lines (tracing is not set up yet when this runs).
pub static OUTCOME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Called from `main` before the runtime starts.
pub fn before_runtime(cli: &Cli) -> Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let serve = matches!(cli.command, Command::Serve);
    // commands without a data directory, or that make one, stay as they are: `init` (which
    // hands the directory to `--user`), `demo` (a throw-away on loopback), `backup keygen|restore`
    match &cli.command {
        Command::Init { .. } | Command::Demo => return Ok(()),
        Command::Backup(b)
            if !matches!(
                b,
                crate::cli::args::BackupCmd::Create { .. }
                    | crate::cli::args::BackupCmd::List { .. }
            ) =>
        {
            return Ok(())
        }
        _ => {}
    }
    let Ok(cfg) = cli.load_config() else {
        // the command reports the configuration error itself
        return Ok(());
    };
    let name = cfg.server.user.clone().unwrap_or_else(|| "postern".into());
    if name == "root" {
        let _ = OUTCOME.set("running as root ([server] user = \"root\"): not recommended".into());
        return Ok(());
    }
    let user = match User::from_name(&name).context("reading the user database")? {
        Some(u) => u,
        None if serve => bail!(
            "started as root, and Postern does not serve as root: the user {name:?} does not exist. \
             Create it (useradd --system --home-dir {dir} --shell /usr/sbin/nologin {name}; chown -R {name}: {dir}) \
             or name another with [server] user",
            dir = data_dir(&cfg).display()
        ),
        None => return Ok(()),
    };
    let dir = data_dir(&cfg);
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?,
    );
    if owner != user.uid.as_raw() {
        if serve {
            bail!(
                "started as root to run as {name}, but the data directory {} belongs to uid {owner}: \
                 chown -R {name}: {}",
                dir.display(),
                dir.display()
            );
        }
        // a command beside a directory that is not the service user's: leave it be
        return Ok(());
    }
    become_user(&user, serve)?;
    let _ = OUTCOME.set(format!(
        "started as root; now user {name} (uid {}), {}",
        user.uid,
        if serve {
            "keeping only CAP_NET_BIND_SERVICE"
        } else {
            "no capabilities"
        }
    ));
    Ok(())
}

fn data_dir(cfg: &postern_config::Config) -> std::path::PathBuf {
    cfg.data_dir()
}

fn become_user(user: &User, keep_bind: bool) -> Result<()> {
    use caps::{CapSet, Capability};
    if keep_bind {
        nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
    }
    nix::unistd::setgroups(&[user.gid]).context("setgroups")?;
    nix::unistd::setgid(user.gid).context("setgid")?;
    nix::unistd::setuid(user.uid).context("setuid")?;
    let mut keep = caps::CapsHashSet::new();
    if keep_bind {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
        nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS)")?;
    }
    caps::set(None, CapSet::Effective, &keep).context("capset (effective)")?;
    caps::set(None, CapSet::Permitted, &keep).context("capset (permitted)")?;
    caps::clear(None, CapSet::Inheritable).context("capset (inheritable)")?;
    // the way back must be closed
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
    {
        bail!("root could be regained after dropping it; refusing to continue");
    }
    Ok(())
}

/// For `postern init --user NAME`: hands a new data directory to a user.
pub fn give_to(dir: &std::path::Path, name: &str) -> Result<User> {
    let user = User::from_name(name)
        .context("reading the user database")?
        .with_context(|| format!("the user {name:?} does not exist (useradd --system {name})"))?;
    fn walk(p: &std::path::Path, u: &User) -> Result<()> {
        nix::unistd::chown(p, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {}", p.display()))?;
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), u)?;
            }
        }
        Ok(())
    }
    walk(dir, &user)?;
    Ok(user)
}
