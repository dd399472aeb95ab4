//! `wgkeep completions SHELL` and `wgkeep man [--dir DIR]`: shell completions and man pages
//! generated from the clap definitions, so they cannot drift from the real command line.
//!
//! The binary owns its `Cli` type; these functions take the built [`clap::Command`] from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

/// The name every generated file uses for the program.
pub const BIN_NAME: &str = "wgkeep";

/// `wgkeep completions --help` epilogue.
pub const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  wgkeep completions bash > /etc/bash_completion.d/wgkeep
  wgkeep completions zsh > /usr/local/share/zsh/site-functions/_wgkeep
  wgkeep completions fish > ~/.config/fish/completions/wgkeep.fish

The Debian package installs the bash, zsh and fish scripts already.";

/// `wgkeep man --help` epilogue.
pub const MAN_EXAMPLES: &str = "\
Examples:
  wgkeep man | man -l -                       # read wgkeep(1) without installing it
  wgkeep man --dir /usr/local/share/man/man1  # wgkeep.1, wgkeep-agent.1, wgkeep-probe.1, ...

The Debian package installs the pages already.";

/// `wgkeep completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// `wgkeep man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write wgkeep.1 and one page per subcommand (wgkeep-agent.1, …) into this directory
    /// (created if needed) instead of printing wgkeep.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Where the completion script for `shell` is usually installed (what the .deb uses).
pub fn completion_file_name(shell: Shell) -> &'static str {
    match shell {
        Shell::Bash => "wgkeep",
        Shell::Zsh => "_wgkeep",
        Shell::Fish => "wgkeep.fish",
        Shell::Elvish => "wgkeep.elv",
        Shell::PowerShell => "_wgkeep.ps1",
        // `Shell` is non-exhaustive.
        _ => "wgkeep.completion",
    }
}

/// The completion script for `shell`.
pub fn completion_script(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail (clap_complete panics on write errors, so a closed stdout
    // must not be its writer).
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut buf);
    buf
}

/// `wgkeep completions SHELL`: the script on `out`.
pub fn completions(
    cmd: clap::Command,
    args: &CompletionsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    out.write_all(&completion_script(cmd, args.shell))
        .and_then(|()| out.flush())
        .context("writing the completion script to stdout")
}

/// The man pages: `(file name, roff source)` for the program and each visible subcommand,
/// e.g. `("wgkeep-agent.1", …)`. The help subcommand has none.
pub fn man_pages(cmd: clap::Command) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cmd.bin_name(BIN_NAME).disable_help_subcommand(true);
    cmd.build();
    let source = format!("{BIN_NAME} {}", cmd.get_version().unwrap_or_default());
    let mut pages = Vec::new();
    collect_pages(&cmd, &source, &mut pages)?;
    Ok(pages)
}

fn collect_pages(
    cmd: &clap::Command,
    source: &str,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(source)
        .manual("wgkeep manual");
    let mut roff = Vec::new();
    man.render(&mut roff)
        .with_context(|| format!("rendering {}", man.get_filename()))?;
    pages.push((man.get_filename(), roff));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, source, pages)?;
    }
    Ok(())
}

/// `wgkeep man [--dir DIR]`: every page into DIR (printing the paths written), or wgkeep.1 on
/// `out`.
pub fn man(cmd: clap::Command, args: &ManArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let pages = man_pages(cmd)?;
    match &args.dir {
        None => {
            let (_, top) = pages.first().context("no man page was generated")?;
            out.write_all(top)
                .and_then(|()| out.flush())
                .context("writing the man page to stdout")
        }
        Some(dir) => write_pages(&pages, dir, out),
    }
}

fn write_pages(pages: &[(String, Vec<u8>)], dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, roff) in pages {
        let path = dir.join(name);
        std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "{}", path.display()).context("writing to stdout")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("wgkeep")
            .version("1.2.3")
            .subcommand(
                clap::Command::new("agent")
                    .about("Run")
                    .arg(clap::Arg::new("max-sockets").long("max-sockets")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_subcommand() {
        let pages = man_pages(demo()).unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["wgkeep.1", "wgkeep-agent.1"]);
        let agent = String::from_utf8(pages[1].1.clone()).unwrap();
        assert!(agent.contains("max\\-sockets"), "{agent}");
        assert!(agent.contains("wgkeep 1.2.3"), "{agent}");
    }

    #[test]
    fn completion_scripts_name_the_binary() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = String::from_utf8(completion_script(demo(), shell)).unwrap();
            assert!(script.contains("wgkeep"), "{shell}: {script}");
            assert!(script.contains("max-sockets"), "{shell}: {script}");
        }
    }

    #[test]
    fn man_dir_writes_every_page() {
        let dir = std::env::temp_dir().join(format!("wgkeep-man-test-{}", std::process::id()));
        let mut listed = Vec::new();
        man(
            demo(),
            &ManArgs {
                dir: Some(dir.clone()),
            },
            &mut listed,
        )
        .unwrap();
        assert!(dir.join("wgkeep.1").is_file());
        assert!(dir.join("wgkeep-agent.1").is_file());
        assert!(!dir.join("wgkeep-secret.1").exists());
        assert_eq!(String::from_utf8(listed).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
