//! `coi-proxy generate`: the man pages and shell completions, made from the clap definitions so
//! they never disagree with `--help`. The Debian package installs the copies committed under
//! `packaging/` (a test keeps them current), so `cargo deb` needs no extra build step.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// The shells completions are generated (and packaged) for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes `coi-proxy.1` and one page per visible subcommand (`coi-proxy-setup.1`, …) into `dir`.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<(), GenerateError> {
    std::fs::create_dir_all(dir).map_err(|source| GenerateError::Write { path: dir.to_owned(), source })?;
    clap_mangen::generate_to(cmd, dir).map_err(|source| GenerateError::Write { path: dir.to_owned(), source })
}

/// The completion script for `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Where a completion script goes under `dir`, named as each shell looks for it (and as the
/// package installs it).
pub fn completion_file(dir: &Path, shell: Shell) -> PathBuf {
    match shell {
        Shell::Zsh => dir.join("_coi-proxy"),
        Shell::Fish => dir.join("coi-proxy.fish"),
        _ => dir.join("coi-proxy.bash"),
    }
}

/// Everything the package installs: `dir/man/*.1` and `dir/completions/*`.
pub fn all(cmd: clap::Command, dir: &Path) -> Result<(), GenerateError> {
    man_pages(cmd.clone(), &dir.join("man"))?;
    let completions_dir = dir.join("completions");
    std::fs::create_dir_all(&completions_dir)
        .map_err(|source| GenerateError::Write { path: completions_dir.clone(), source })?;
    for shell in SHELLS {
        let path = completion_file(&completions_dir, shell);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&completions(cmd.clone(), shell)))
            .map_err(|source| GenerateError::Write { path, source })?;
    }
    Ok(())
}
