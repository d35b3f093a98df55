//! Records the git commit the binary is built from, for `postern --version`.
//! Order: $POSTERN_GIT_COMMIT (for builds from a tarball), then `git rev-parse`, else "unknown".
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=POSTERN_GIT_COMMIT");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = root.join(".git");
    if git.exists() {
        // Only files that exist: cargo treats a missing one as changed on every build.
        for f in ["HEAD", "refs", "packed-refs", "index"] {
            let p = git.join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    let commit = std::env::var("POSTERN_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&root)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let mut c = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        // GIT_OPTIONAL_LOCKS=0: `git status` must not refresh and rewrite .git/index, which is
        // one of this script's rebuild triggers (a second `cargo run` would rebuild for nothing).
        let dirty = Command::new("git")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&root)
            .output()
            .ok()
            .is_some_and(|o| !o.stdout.is_empty());
        if dirty {
            c.push_str("-dirty");
        }
        Some(c)
    });
    println!(
        "cargo:rustc-env=POSTERN_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    // When the commit was made (Unix time; 0 when unknown), so `postern audit` can tell an old
    // build. $POSTERN_GIT_COMMIT_TIME for builds from a tarball.
    println!("cargo:rerun-if-env-changed=POSTERN_GIT_COMMIT_TIME");
    let time = std::env::var("POSTERN_GIT_COMMIT_TIME").ok().or_else(|| {
        let out = Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(&root)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    let time: i64 = time.and_then(|t| t.parse().ok()).unwrap_or(0);
    println!("cargo:rustc-env=POSTERN_COMMIT_TIME={time}");
}
