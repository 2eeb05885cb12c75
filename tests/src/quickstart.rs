//! Runs `examples/quickstart` as a user would: the already-built
//! `<target>/debug/examples/quickstart` when there is one (`cargo test --workspace` builds
//! examples first), else `cargo run --example quickstart` from the workspace root
//! (`MONETIZE_QUICKSTART_VIA_CARGO=1` forces the latter).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The workspace root (the quickstart's working directory, where `examples/` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The target directory cargo builds into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// A command running the quickstart with no arguments yet, in the workspace root, with
/// `RUST_LOG` unset, no standard input and both outputs piped; and a description of what
/// runs, for failure messages.
pub fn command() -> (Command, String) {
    let built = target_dir()
        .join("debug")
        .join("examples")
        .join(format!("quickstart{}", std::env::consts::EXE_SUFFIX));
    let forced = std::env::var_os("MONETIZE_QUICKSTART_VIA_CARGO").is_some();
    let (mut cmd, what) = if built.is_file() && !forced {
        (Command::new(&built), built.display().to_string())
    } else {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(&cargo);
        c.args(["run", "--quiet", "--example", "quickstart", "--"]);
        (c, format!("{cargo} run --example quickstart"))
    };
    cmd.current_dir(workspace_root())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    (cmd, what)
}
