//! Shell completions and man pages for every binary, generated from its
//! clap command so they never drift from `--help`: each binary offers the
//! [`Manual`] subcommands (`completions SHELL`, `man`).

use std::io::Write;

use clap::Subcommand;
pub use clap_complete::Shell;

/// The subcommands that print a binary's own documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Manual {
    /// Print a shell completion script to stdout.
    ///
    /// Put it where the shell looks for completions, for example
    /// `p2p completions bash > /etc/bash_completion.d/p2p`,
    /// `p2p completions zsh > ~/.zfunc/_p2p` or
    /// `p2p completions fish > ~/.config/fish/completions/p2p.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) to stdout.
    ///
    /// Read it with `p2p man | man -l -`, or install it with
    /// `p2p man > /usr/local/share/man/man1/p2p.1`.
    Man,
}

impl Manual {
    /// Writes what was asked, for the binary whose clap command is
    /// `command`, to `out`.
    pub fn write(self, mut command: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Manual::Completions { shell } => {
                let name = command.get_name().to_string();
                clap_complete::generate(shell, &mut command, name, out);
                out.flush()
            }
            Manual::Man => clap_mangen::Man::new(command).render(out),
        }
    }

    /// Writes it to stdout; the exit code says whether that worked.
    pub fn print(self, command: clap::Command) -> std::process::ExitCode {
        let name = command.get_name().to_string();
        match self.write(command, &mut std::io::stdout().lock()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{name}: cannot write to stdout: {err}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "demo", version, about = "A demo")]
    struct Demo {
        /// A flag to complete.
        #[arg(long)]
        colour: Option<String>,
        #[command(subcommand)]
        command: Option<Manual>,
    }

    fn written(manual: Manual) -> String {
        let mut out = Vec::new();
        manual.write(Demo::command(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_and_man_page_come_from_the_clap_command() {
        let bash = written(Manual::Completions { shell: Shell::Bash });
        assert!(bash.contains("--colour"), "{bash}");
        assert!(bash.contains("completions"), "{bash}");
        let man = written(Manual::Man);
        assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
        assert!(man.contains("colour"), "{man}");
        assert!(Demo::try_parse_from(["demo", "completions", "fish"]).is_ok());
        assert!(Demo::try_parse_from(["demo", "completions", "tcsh"]).is_err());
    }
}
