//! What the Debian package ships, and the package itself:
//!
//! - `wgkeep completions SHELL`: the bash script parses (`bash -n`), names every subcommand and
//!   flag, and completes in a real bash;
//! - `wgkeep man`: one page per subcommand, rendered by groff and man without a warning, each
//!   documenting every flag its subcommand's `--help` lists;
//! - `scripts/build-deb.sh`: the .deb holds the binary, units, conffiles, gzipped man pages,
//!   completions and docs; dpkg installs it into a throwaway root (`dpkg --root`, never the
//!   host), keeps a changed conffile on reinstall, and purges every file again.
//!
//! Needs bash, groff (Debian: groff-base), man (man-db), dpkg, and for the package test
//! cargo-deb (`cargo install cargo-deb --locked`). Missing tools skip a test with a loud message,
//! or fail it under CI=true.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wgkeep_tests::deploy::{repo, run, run_ok, skip, TempDir};
use wgkeep_tests::wgkeep_bin;

/// Whether the test may go on without `what`: never; a loud skip notice, or a panic under CI=true.
fn missing(test: &str, what: &str) -> bool {
    skip(test, what);
    false
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wgkeep(args: &[&str]) -> String {
    run_ok(Command::new(wgkeep_bin()).args(args))
}

/// The subcommands `wgkeep --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let help = wgkeep(&["--help"]);
    let section = help
        .split("Commands:\n")
        .nth(1)
        .expect("`wgkeep --help` lists commands");
    let subs: Vec<String> = section
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_owned)
        .collect();
    for want in ["agent", "probe", "reflect", "lab", "completions", "man"] {
        assert!(subs.iter().any(|s| s == want), "{want} missing: {subs:?}");
    }
    subs
}

/// The long flags `wgkeep SUB --help` documents.
fn flags_of(sub: &str) -> BTreeSet<String> {
    let help = wgkeep(&[sub, "--help"]);
    let options = help.split("Options:\n").nth(1).expect("an Options section");
    options
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| l.split([' ', ',', '=', '[', ']', '<']))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

/// Roff source as plain text: `\-` is `-`, font changes dropped.
fn roff_text(roff: &str) -> String {
    roff.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\fI", "")
        .replace("\\fP", "")
}

#[test]
fn bash_completion_parses_and_completes() {
    let test = "deploy_deb::bash_completion_parses_and_completes";
    if !have("bash", "--version") && !missing(test, "bash") {
        return;
    }
    let dir = TempDir::new("completions");
    let script = wgkeep(&["completions", "bash"]);
    let path = dir.path().join("wgkeep.bash");
    std::fs::write(&path, &script).unwrap();
    run_ok(Command::new("bash").arg("-n").arg(&path));

    for sub in subcommands() {
        assert!(script.contains(&sub), "the bash completion lacks {sub}");
    }
    for flag in [
        "--timeouts-from",
        "--max-sockets",
        "--follow-up-method",
        "--listen",
    ] {
        assert!(script.contains(flag), "the bash completion lacks {flag}");
    }

    // Completes in a real bash: `wgkeep ag<TAB>`, `wgkeep probe --max-so<TAB>`, …
    for (words, want) in [
        ("wgkeep ag", "agent"),
        ("wgkeep probe --max-so", "--max-sockets"),
        ("wgkeep agent --timeouts-f", "--timeouts-from"),
        ("wgkeep agent --mode ad", "adapt"),
        ("wgkeep completions fi", "fish"),
    ] {
        let program = format!(
            "source {path}\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             COMP_LINE='{words}'\nCOMP_POINT=${{#COMP_LINE}}\n\
             _wgkeep wgkeep \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            path = path.display()
        );
        let out = run_ok(Command::new("bash").arg("-c").arg(&program));
        assert!(
            out.lines().any(|l| l.trim() == want),
            "`{words}<TAB>` completed to {out:?}, not {want}"
        );
    }
}

#[test]
fn completions_for_every_shell() {
    for (shell, checker) in [
        ("bash", Some(("bash", "-n"))),
        ("zsh", Some(("zsh", "-n"))),
        ("fish", Some(("fish", "--no-execute"))),
        ("elvish", None),
        ("powershell", None),
    ] {
        let script = wgkeep(&["completions", shell]);
        assert!(
            script.contains("wgkeep") && script.contains("max-sockets"),
            "{shell}: {script}"
        );
        // Syntax check where the shell is installed (bash always is; zsh and fish optional).
        if let Some((bin, flag)) = checker {
            if have(bin, "--version") {
                let dir = TempDir::new(&format!("completions-{shell}"));
                let path = dir.path().join("script");
                std::fs::write(&path, &script).unwrap();
                run_ok(Command::new(bin).arg(flag).arg(&path));
            } else {
                eprintln!("note: {bin} not installed; its completion script is not parsed");
            }
        }
    }
    let out = run(Command::new(wgkeep_bin()).args(["completions", "tcsh"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_render_without_warnings_and_document_every_flag() {
    let test = "deploy_deb::man_pages_render_without_warnings_and_document_every_flag";
    if !have("groff", "--version") && !missing(test, "groff (Debian package groff-base)") {
        return;
    }
    let man_ok = have("man", "--version") || missing(test, "man (Debian package man-db)");
    let dir = TempDir::new("man");
    let listed = wgkeep(&["man", "--dir", &dir.path().display().to_string()]);

    let subs = subcommands();
    let mut want: BTreeSet<String> = subs.iter().map(|s| format!("wgkeep-{s}.1")).collect();
    want.insert("wgkeep.1".into());
    let written: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, want, "wgkeep man --dir wrote other pages");
    assert_eq!(listed.lines().count(), want.len(), "{listed}");
    // Without --dir: wgkeep.1 on stdout.
    assert_eq!(
        wgkeep(&["man"]),
        std::fs::read_to_string(dir.path().join("wgkeep.1")).unwrap()
    );

    for page in &want {
        let path = dir.path().join(page);
        // groff with every warning enabled (-ww), the input through preconv (-k: UTF-8).
        let out = run(Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "groff warns about {page}: {stderr}"
        );
        if man_ok {
            let out = run(Command::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l"])
                .arg(&path)
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_FORMATTING", "0")
                .env("LC_ALL", "C.UTF-8"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty() && !out.stdout.is_empty(),
                "man -l {page}: {}: {stderr}",
                out.status
            );
        }
    }

    let top = roff_text(&std::fs::read_to_string(dir.path().join("wgkeep.1")).unwrap());
    for sub in &subs {
        assert!(
            top.contains(&format!("wgkeep-{sub}(1)")),
            "wgkeep.1 does not point to wgkeep-{sub}(1)"
        );
        let text = roff_text(
            &std::fs::read_to_string(dir.path().join(format!("wgkeep-{sub}.1"))).unwrap(),
        );
        assert!(
            text.contains(&format!("wgkeep {sub}")),
            "wgkeep-{sub}.1: synopsis"
        );
        let flags = flags_of(sub);
        assert!(flags.contains("--help"), "{sub}: {flags:?}");
        for flag in flags {
            assert!(
                text.contains(&flag),
                "wgkeep-{sub}.1 does not document {flag}"
            );
        }
    }
    assert!(
        roff_text(&std::fs::read_to_string(dir.path().join("wgkeep-agent.1")).unwrap())
            .contains("--timeouts-from")
    );
}

/// `scripts/build-deb.sh --output DIR`: the path of the .deb.
fn build_deb(out_dir: &Path) -> PathBuf {
    let out = run(Command::new(repo().join("scripts/build-deb.sh"))
        .arg("--output")
        .arg(out_dir)
        .current_dir(repo())
        .stderr(Stdio::inherit()));
    assert!(out.status.success(), "scripts/build-deb.sh: {}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let deb = PathBuf::from(stdout.lines().last().expect("the .deb's path").trim());
    assert!(deb.is_file(), "{}: no such file ({stdout})", deb.display());
    deb
}

/// `dpkg --root=ROOT ARGS…` with an empty package database in ROOT: installs into ROOT only,
/// without the host's packages (so libc6 is "missing": --force-depends).
fn dpkg_in(root: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "--force-not-root", "--force-confold"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )
}

const EXPECTED: &[&str] = &[
    "./usr/bin/wgkeep",
    "./lib/systemd/system/wgkeep@.service",
    "./lib/systemd/system/wgkeep-reflect.service",
    "./etc/default/wgkeep",
    "./etc/default/wgkeep-reflect",
    "./usr/share/man/man1/wgkeep.1.gz",
    "./usr/share/man/man1/wgkeep-agent.1.gz",
    "./usr/share/man/man1/wgkeep-probe.1.gz",
    "./usr/share/man/man1/wgkeep-reflect.1.gz",
    "./usr/share/man/man1/wgkeep-lab.1.gz",
    "./usr/share/man/man1/wgkeep-completions.1.gz",
    "./usr/share/man/man1/wgkeep-man.1.gz",
    "./usr/share/bash-completion/completions/wgkeep",
    "./usr/share/zsh/vendor-completions/_wgkeep",
    "./usr/share/fish/vendor_completions.d/wgkeep.fish",
    "./usr/share/doc/wgkeep/README.md",
    "./usr/share/doc/wgkeep/copyright",
    "./usr/share/doc/wgkeep/LICENSE",
];

#[test]
fn deb_package_builds_installs_and_purges() {
    let test = "deploy_deb::deb_package_builds_installs_and_purges";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let have_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_deb && !missing(test, "cargo-deb (cargo install cargo-deb --locked)") {
        return;
    }
    if !have("dpkg", "--version") && !missing(test, "dpkg") {
        return;
    }
    let tmp = TempDir::new("deb");
    let deb = build_deb(&tmp.path().join("out"));
    eprintln!("built {}", deb.display());

    // Contents.
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let paths: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in EXPECTED {
        assert!(
            paths.contains(want),
            "{want} is not in the package:\n{listing}"
        );
    }
    let man_pages: Vec<&&str> = paths.iter().filter(|p| p.contains("/man/")).collect();
    assert!(
        man_pages
            .iter()
            .all(|p| p.ends_with('/') || p.ends_with(".1.gz")),
        "man pages must be gzipped: {man_pages:?}"
    );
    let mode = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_owned()
    };
    assert_eq!(mode("./usr/bin/wgkeep"), "-rwxr-xr-x");
    assert_eq!(mode("./lib/systemd/system/wgkeep@.service"), "-rw-r--r--");

    let field = |name: &str| {
        run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "wgkeep");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    assert!(field("Recommends").contains("wireguard-tools"));

    // Install into a throwaway root.
    let root = tmp.path().join("root");
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    let deb_arg = deb.display().to_string();
    dpkg_in(&root, &["-i", &deb_arg]);
    let status = dpkg_in(&root, &["-s", "wgkeep"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    for conffile in ["/etc/default/wgkeep ", "/etc/default/wgkeep-reflect "] {
        assert!(
            status.contains(conffile),
            "{conffile}is not a conffile:\n{status}"
        );
    }

    let version = run_ok(Command::new(root.join("usr/bin/wgkeep")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("wgkeep {}", env!("CARGO_PKG_VERSION"))
    );
    // The shipped units and env files are the repository's.
    for (installed, source) in [
        (
            "lib/systemd/system/wgkeep@.service",
            "deploy/systemd/wgkeep@.service",
        ),
        (
            "lib/systemd/system/wgkeep-reflect.service",
            "deploy/systemd/wgkeep-reflect.service",
        ),
        ("etc/default/wgkeep", "deploy/systemd/wgkeep.default"),
        (
            "etc/default/wgkeep-reflect",
            "deploy/systemd/wgkeep-reflect.default",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.join(installed)).unwrap(),
            std::fs::read(repo().join(source)).unwrap(),
            "{installed}"
        );
    }
    // The installed page renders (man reads .gz).
    if have("man", "--version") {
        let page = root.join("usr/share/man/man1/wgkeep-agent.1.gz");
        let text = run_ok(
            Command::new("man")
                .arg("-l")
                .arg(&page)
                .env("MANWIDTH", "200")
                .env("LC_ALL", "C.UTF-8"),
        );
        assert!(text.contains("--timeouts-from"), "{text}");
    }
    // The installed bash completion is the binary's.
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/wgkeep")).unwrap(),
        run_ok(Command::new(root.join("usr/bin/wgkeep")).args(["completions", "bash"]))
    );

    // A changed conffile survives a reinstall (upgrade path).
    let conf = root.join("etc/default/wgkeep");
    let changed = "WGKEEP_ARGS=\"--nat-profile routeros\"\n";
    std::fs::write(&conf, changed).unwrap();
    dpkg_in(&root, &["-i", &deb_arg]);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), changed);

    // Purge removes every file, conffiles included.
    dpkg_in(&root, &["-P", "wgkeep"]);
    let mut left = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.starts_with(&admin) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                left.push(path);
            }
        }
    }
    assert!(left.is_empty(), "left after dpkg -P: {left:?}");
}
