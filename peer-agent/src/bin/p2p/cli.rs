//! The `p2p` command line: every command, flag and help text. Parsing only;
//! `commands` does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use p2p_services::local::Target;

/// The control socket's name in the agent's data dir.
const SOCKET_FILE: &str = "control.sock";
/// The TCP control token's name in the agent's data dir.
const TOKEN_FILE: &str = "control.token";

const AFTER_HELP: &str = "\
Examples:
  p2p login alice                 log the local agent in (prompts for the password)
  p2p share ~/videos/talk.mp4     publish a file to the network
  p2p ls                          every file in the network
  p2p get talk.mp4 -o ~/Downloads download it from the swarm
  p2p web                         open the agent's web app (a one-time link)
  p2p invite --token-for printer  an invite another machine joins with
  p2p --json status | jq .        machine-readable output for scripts

The client talks to the peer-agent running on this machine through the
agent's Unix socket, <data-dir>/control.sock (data dir from --data-dir or
P2P_DATA_DIR, as for peer-agent), which only the agent's own user may open.
--agent names another socket, or a HOST:PORT the agent serves with
--control-listen; over TCP the agent's control token is read from
<data-dir>/control.token (or --agent-token-file).
Exit codes: 0 success, 1 failure, 2 bad usage, 3 agent unreachable,
4 not logged in, 5 no such file, user or join token, 6 permission denied,
7 destination exists.";

/// Command-line client of the P2P File Transfer network.
#[derive(Debug, Parser)]
#[command(
    name = "p2p",
    version,
    about = "Share and download files on your LAN's peer-to-peer network",
    long_about = "Share and download files on your LAN's peer-to-peer network.\n\n\
        `p2p` is a thin client of the local peer-agent: the agent holds your \
        session, serves your shared files to other peers and downloads from \
        many peers at once. Start the agent with `peer-agent`, then `p2p login`.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub agent: AgentArgs,

    /// Machine-readable output: one JSON document per command (for `get`,
    /// one JSON object per line: progress events, then the result).
    #[arg(long, global = true, env = "P2P_JSON")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Invocation,
}

/// Every subcommand: those the agent answers, and the manual, which needs
/// no agent.
#[derive(Debug, Subcommand)]
pub enum Invocation {
    #[command(flatten)]
    Agent(Command),
    /// Join this machine to a deployment: trust its CA, get this agent's
    /// certificate, remember the servers.
    #[command(
        long_about = "Join this machine to a deployment, once per machine.\n\n\
            `p2p join` opens TLS to auth-svc and trusts the server only if its \
            CA has the fingerprint you give (the server prints it at its first \
            start; an admin's invite carries it). It then proves who you are \
            (your password, or the join token in an invite), makes this \
            agent's own key, and gets a certificate that names this machine's \
            address. What it learned goes to the agent's data dir \
            (<data-dir>/deployment/), so the agent needs no server flags: an \
            agent waiting to be joined starts by itself, and is logged in.\n\n\
            Without SERVER, servers announcing themselves on this LAN (mDNS) \
            are listed; with --fingerprint, the one that has it is joined. \
            Routed networks and VLANs that block multicast need the address.",
        after_help = "Examples:\n  p2p join 10.0.0.1 --fingerprint sha256:3b1f...\n  \
            p2p join 'p2p-invite:eyJ2IjoxLC...'\n  \
            p2p join --fingerprint sha256:3b1f...     find the server on this LAN\n  \
            p2p join                                list the servers on this LAN"
    )]
    Join(JoinArgs),
    /// Shell completions and the man page.
    #[command(flatten)]
    Manual(p2p_services::manual::Manual),
}

/// Where the agent's control API is and how to prove we may use it.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's control API: a Unix socket (`/path/control.sock` or
    /// `unix:/path`) or `host:port` (TCP, needs the control token).
    /// Default: <data-dir>/control.sock.
    #[arg(long, global = true, env = "P2P_AGENT")]
    pub agent: Option<String>,

    /// The agent's data dir, where its socket and token are found (and
    /// where `p2p join` keeps what it learned). Default: the agent's,
    /// $XDG_DATA_HOME/p2p (~/.local/share/p2p).
    #[arg(long, global = true, env = "P2P_DATA_DIR", default_value_os_t = peer_agent::config::default_data_dir())]
    pub data_dir: PathBuf,

    /// File holding the agent's control token, sent on TCP connections.
    /// Default: <data-dir>/control.token.
    #[arg(long, global = true, env = "P2P_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,
}

impl AgentArgs {
    /// Where to reach the agent.
    pub fn target(&self) -> Target {
        match self.agent.as_deref().map(str::trim) {
            Some(agent) if !agent.is_empty() => Target::parse(agent),
            _ => Target::Unix(self.data_dir.join(SOCKET_FILE)),
        }
    }

    /// The token file for a TCP agent, and whether the user named it (a
    /// missing default file just means no token is sent).
    pub fn token_file(&self) -> (PathBuf, bool) {
        match &self.agent_token_file {
            Some(path) => (path.clone(), true),
            None => (self.data_dir.join(TOKEN_FILE), false),
        }
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log the agent in as a user.
    #[command(
        long_about = "Log the agent in as a user. The agent keeps the session, \
            refreshes its token and announces itself to the index until \
            `p2p logout`.\n\n\
            The password is read without echo from the terminal, from the first \
            line of standard input with --password-stdin, or from P2P_PASSWORD.",
        after_help = "Examples:\n  p2p login alice\n  \
            echo \"$PASS\" | p2p login alice --password-stdin"
    )]
    Login(LoginArgs),

    /// Log the agent out. Downloaded and shared files stay on disk.
    #[command(after_help = "Example:\n  p2p logout")]
    Logout,

    /// List the files in the network.
    #[command(
        visible_alias = "list",
        long_about = "List the files in the network with what this agent holds \
            of each.\n\n\
            HOLDERS is online holders / complete copies. LOCAL is the share of \
            the file on this machine (\"-\" when none). ID is abbreviated; any \
            unique prefix works wherever a file is expected.\n\n\
            The table shows one page (100 entries unless --limit says \
            otherwise) and says on stderr which page it is and how to get \
            the next; --all prints every entry. With --json, every entry \
            is printed unless --page or --limit asks for one page, so \
            scripts see what they always did.\n\n\
            With --watch, the table is printed again whenever it changes \
            (files published or removed, holders coming and going, this \
            agent's downloads moving) until Ctrl-C; with --json, one JSON \
            line per change.",
        after_help = "Examples:\n  p2p ls\n  p2p ls .iso\n  p2p ls --sort size --desc --page 2\n  p2p ls --owner ann --kind folder\n  p2p ls --watch\n  p2p ls --all > every-file.txt\n  p2p --json ls | jq '.files[].name'"
    )]
    Ls {
        /// Show only files whose name contains this (case-insensitive).
        filter: Option<String>,
        /// Keep listing: print the table again at every change.
        #[arg(long, short = 'w')]
        watch: bool,
        #[command(flatten)]
        page: LsPage,
    },

    /// Publish local files and folders to the network.
    #[command(
        long_about = "Publish local files and folders to the network. The agent \
            hashes each file into chunks, publishes its manifest to the index and \
            serves it from where it is (the file is not copied). Prints each \
            file's id.\n\n\
            A folder is one entry: every regular file under it, with its path, \
            and its empty folders. Symbolic links (to files or folders, inside \
            the folder or out of it), sockets, FIFOs and devices are skipped and \
            listed, never followed, so nothing outside the folder is shared. \
            Names must be UTF-8 without control characters or `..`, at most 255 \
            bytes each, and a folder holds at most 100,000 entries. A file edited \
            or deleted inside a shared folder stops the folder being served \
            until you share it again.\n\n\
            Paths are made absolute here and read by the agent, so the agent \
            must be able to read them.",
        after_help = "Examples:\n  p2p share report.pdf\n  p2p share ~/isos/*.iso\n  \
            p2p share ~/courses/networks"
    )]
    Share {
        /// Files or folders to share.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A file shared before and changed since replaces its old entry:
        /// the old content is removed from the network (you must own it).
        #[arg(long)]
        replace: bool,
    },

    /// Download a file from the swarm.
    #[command(
        long_about = "Download a file from every peer that has it, verifying \
            each chunk. The file appears under its final name only once it is \
            complete and verified. An interrupted download resumes from the \
            chunks already verified.\n\n\
            Without -o the file goes to the agent's downloads directory. \
            Ctrl-C detaches: the agent keeps downloading (see `p2p cancel`).",
        after_help = "Examples:\n  p2p get talk.mp4\n  p2p get 3f9a1c -o ~/Downloads/\n  \
            p2p get talk.mp4 -o talk.mp4 --force"
    )]
    Get {
        /// File name, id, or unique id prefix.
        file: String,
        /// Destination file, or an existing directory to put it in.
        #[arg(short = 'o', long = "output", env = "P2P_OUTPUT")]
        output: Option<PathBuf>,
        /// Replace the destination if it exists.
        #[arg(long, env = "P2P_FORCE")]
        force: bool,
    },

    /// Stop a running download (verified chunks are kept).
    #[command(
        long_about = "Stop a running download. Verified chunks are kept, so \
            `p2p get` later resumes where it stopped.",
        after_help = "Example:\n  p2p cancel talk.mp4"
    )]
    Cancel {
        /// File name, id, or unique id prefix.
        file: String,
    },

    /// Stop sharing a file and delete this agent's copy.
    #[command(
        long_about = "Stop sharing a file and delete this agent's copy of it. \
            Other peers keep their copies. With --network, also remove the \
            file from the network's index: only its owner or an admin may.",
        after_help = "Examples:\n  p2p rm talk.mp4\n  p2p rm talk.mp4 --network"
    )]
    Rm {
        /// File name, id, or unique id prefix.
        file: String,
        /// Also remove the file from the network (owner or admin only).
        #[arg(long, env = "P2P_RM_NETWORK")]
        network: bool,
    },

    /// List the peers the index knows.
    #[command(after_help = "Examples:\n  p2p peers\n  p2p peers --all")]
    Peers {
        /// Include peers that are offline.
        #[arg(long, env = "P2P_PEERS_ALL")]
        all: bool,
    },

    /// Show the agent's session, addresses, transfers and counters.
    #[command(after_help = "Examples:\n  p2p status\n  p2p --json status")]
    Status,

    /// Open the agent's web app: print a one-time link, and open it in the
    /// browser when a desktop is present.
    #[command(
        long_about = "Open the agent's web app in a browser.\n\n\
            The web app acts for the OS user who runs the agent, so a browser \
            gets in only through a link that only that user can make: this \
            command asks the agent for one over its control socket. The link \
            works once, within a few minutes (the agent's \
            --web-link-lifetime); the web app then asks for the password of \
            the account the agent is logged in as. Run it again for another \
            browser, or after logging out of the web app.",
        after_help = "Examples:\n  p2p web\n  p2p web --no-open        print the link only\n  \
            docker compose exec peer-a /p2p web   an agent in a container"
    )]
    Web {
        /// Print the link without starting a browser (the default when no
        /// desktop is present: neither DISPLAY nor WAYLAND_DISPLAY is set).
        #[arg(long, env = "P2P_WEB_NO_OPEN")]
        no_open: bool,
    },

    /// Manage accounts (admins only).
    #[command(subcommand)]
    Users(UsersCommand),

    /// Make an invite for another machine to join this network (admins only).
    #[command(
        long_about = "Make an invite: one string that tells a new machine where \
            auth-svc is and which CA to trust, so `p2p join INVITE` there needs \
            nothing else. The server is this agent's --auth-url, so make \
            invites on an agent that reaches auth-svc at an address the new \
            machine can reach too.\n\n\
            Without --token-for, the person on the new machine logs in with \
            their own password. With --token-for USER the invite also carries \
            a new join token for an unattended machine: it gets certificates \
            for USER's account, --uses times, until it --expires or is revoked \
            (`p2p join-tokens revoke ID`). The token is shown only now: treat \
            the invite like a password.",
        after_help = "Examples:\n  p2p invite\n  \
            p2p invite --token-for printer\n  \
            p2p invite --token-for lab --uses 20 --expires 7d --description \"lab PCs\"\n  \
            p2p --json invite --token-for printer | jq -r .invite"
    )]
    Invite(InviteArgs),

    /// List join tokens, or revoke one (admins only).
    #[command(
        name = "join-tokens",
        long_about = "List every join token, newest first, spent, expired and \
            revoked ones too: its id, the account it joins machines to, the \
            uses left of the uses it was made for, when it expires and its \
            state. `p2p join-tokens revoke ID` stops one at once; machines \
            that already joined with it keep their certificates.",
        after_help = "Examples:\n  p2p join-tokens\n  p2p join-tokens revoke 3f9a1c0d5e7b2a46\n  \
            p2p --json join-tokens | jq '.tokens[] | select(.state == \"active\")'"
    )]
    JoinTokens {
        #[command(subcommand)]
        action: Option<JoinTokensCommand>,
    },
}

/// `p2p invite` arguments.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// Also make a join token for this account, for an unattended machine.
    #[arg(long, value_name = "USER")]
    pub token_for: Option<String>,
    /// How many machines the token may join (1-1000).
    #[arg(long, default_value_t = 1, requires = "token_for")]
    pub uses: u32,
    /// How long the token stays good, e.g. 1h, 24h, 7d (at most 30d).
    #[arg(long, default_value = "24h", value_parser = p2p_services::config::parse_duration, requires = "token_for")]
    pub expires: std::time::Duration,
    /// A note shown in `p2p join-tokens`, e.g. "lab printers".
    #[arg(long, default_value = "", requires = "token_for")]
    pub description: String,
}

/// `p2p join-tokens ...`.
#[derive(Debug, Subcommand)]
pub enum JoinTokensCommand {
    /// Revoke a join token at once (its id from `p2p join-tokens`).
    #[command(after_help = "Example:\n  p2p join-tokens revoke 3f9a1c0d5e7b2a46")]
    Revoke {
        /// The token's id (not its secret).
        id: String,
    },
}

/// `p2p join` arguments.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// auth-svc's address (`HOST` or `HOST:PORT`, port 50051 by default),
    /// or an invite (`p2p-invite:...`) from `p2p invite`. Omit it to look
    /// for servers on this LAN.
    pub server: Option<String>,
    /// The CA fingerprint to trust (`sha256:` and 64 hex digits), as the
    /// server printed it at its first start.
    #[arg(long, env = "P2P_JOIN_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Read the fingerprint from this file instead (on a server made with
    /// --state-dir: STATE/pki/ca.fingerprint).
    #[arg(
        long,
        env = "P2P_JOIN_FINGERPRINT_FILE",
        conflicts_with = "fingerprint"
    )]
    pub fingerprint_file: Option<std::path::PathBuf>,
    /// A join token from an admin, instead of a password (unattended
    /// machines; the agent then logs in with its certificate).
    #[arg(long, env = "P2P_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The account to join as; prompted for when missing (not needed with
    /// a join token).
    #[arg(long, env = "P2P_USER")]
    pub user: Option<String>,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Do nothing (and exit 0) when this data dir already joined the
    /// deployment with this CA: for scripts and compose, which run the join
    /// at every start.
    #[arg(long, env = "P2P_JOIN_IF_NOT_JOINED")]
    pub if_not_joined: bool,
    /// How long to listen for servers on the LAN when no SERVER is given
    /// (e.g. 3s).
    #[arg(long, env = "P2P_JOIN_BROWSE", default_value = "3s", value_parser = p2p_services::config::parse_duration)]
    pub browse: std::time::Duration,
}

/// `p2p login` arguments.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name; prompted for when missing.
    #[arg(env = "P2P_USER")]
    pub user: Option<String>,
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// Where a password comes from, for commands that need one.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of standard input.
    #[arg(long, env = "P2P_PASSWORD_STDIN")]
    pub password_stdin: bool,
    /// The password itself. Only through the environment: a flag would
    /// leave it in shell history and `ps`.
    #[arg(long, env = "P2P_PASSWORD", hide = true, hide_env_values = true)]
    pub password: Option<String>,
}

/// `p2p users ...`: account administration through the agent's session.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an account.
    #[command(after_help = "Examples:\n  p2p users add bob\n  \
        echo \"$PASS\" | p2p users add carol --admin --password-stdin")]
    Add {
        /// Login name: letters, digits, `.`, `_` and `-`.
        name: String,
        /// Make the account an admin.
        #[arg(long, env = "P2P_USER_ADMIN")]
        admin: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List every account.
    #[command(visible_alias = "list", after_help = "Example:\n  p2p users ls")]
    Ls,
    /// Delete an account and end its sessions.
    #[command(visible_alias = "delete", after_help = "Example:\n  p2p users rm bob")]
    Rm {
        /// Login name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn get_takes_output_and_force() {
        let cli = Cli::try_parse_from(["p2p", "get", "abc", "-o", "/tmp/x", "--force"]).unwrap();
        match cli.command {
            Invocation::Agent(Command::Get {
                file,
                output,
                force,
            }) => {
                assert_eq!(file, "abc");
                assert_eq!(output, Some(PathBuf::from("/tmp/x")));
                assert!(force);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn json_and_agent_are_accepted_after_the_command() {
        let cli = Cli::try_parse_from(["p2p", "ls", "--json", "--agent", "h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.agent.target(), Target::Tcp("h:1".into()));
    }

    #[test]
    fn the_agent_is_found_by_its_data_dir_socket_by_default() {
        let cli = Cli::try_parse_from(["p2p", "status", "--data-dir", "/data"]).unwrap();
        assert_eq!(
            cli.agent.target(),
            Target::Unix("/data/control.sock".into())
        );
        assert_eq!(
            cli.agent.token_file(),
            (PathBuf::from("/data/control.token"), false)
        );
        let cli = Cli::try_parse_from(["p2p", "status", "--agent", "unix:/run/a.sock"]).unwrap();
        assert_eq!(cli.agent.target(), Target::Unix("/run/a.sock".into()));
    }

    #[test]
    fn invite_takes_token_options_only_with_a_token() {
        let cli = Cli::try_parse_from([
            "p2p",
            "invite",
            "--token-for",
            "lab",
            "--uses",
            "5",
            "--expires",
            "7d",
        ])
        .unwrap();
        match cli.command {
            Invocation::Agent(Command::Invite(args)) => {
                assert_eq!(args.token_for.as_deref(), Some("lab"));
                assert_eq!(args.uses, 5);
                assert_eq!(args.expires.as_secs(), 7 * 86_400);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["p2p", "invite", "--uses", "5"]).is_err());
        assert!(Cli::try_parse_from(["p2p", "invite"]).is_ok());
    }

    #[test]
    fn join_tokens_lists_or_revokes() {
        let cli = Cli::try_parse_from(["p2p", "join-tokens"]).unwrap();
        assert!(matches!(
            cli.command,
            Invocation::Agent(Command::JoinTokens { action: None })
        ));
        let cli = Cli::try_parse_from(["p2p", "join-tokens", "revoke", "abc"]).unwrap();
        assert!(matches!(
            cli.command,
            Invocation::Agent(Command::JoinTokens {
                action: Some(JoinTokensCommand::Revoke { .. })
            })
        ));
    }

    #[test]
    fn share_needs_a_path() {
        assert!(Cli::try_parse_from(["p2p", "share"]).is_err());
    }
}

/// Which page of `p2p ls`, in which order, of which entries.
#[derive(Debug, Args, Default)]
pub struct LsPage {
    /// Only entries this user published (exact username).
    #[arg(long)]
    pub owner: Option<String>,
    /// Only files, or only folders.
    #[arg(long, value_enum)]
    pub kind: Option<LsKind>,
    /// The order: name, size, date (added) or holders; newest first when
    /// not given.
    #[arg(long, value_enum)]
    pub sort: Option<LsSort>,
    /// Largest (Z, newest, most held) first.
    #[arg(long)]
    pub desc: bool,
    /// The page to print, 1 for the first.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub page: Option<u32>,
    /// Entries per page (1 to 1000; 100 unless given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Print every entry instead of one page.
    #[arg(long, conflicts_with_all = ["page", "limit"])]
    pub all: bool,
}

/// `p2p ls --kind`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LsKind {
    /// Single files.
    File,
    /// Shared folders.
    Folder,
}

/// `p2p ls --sort`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LsSort {
    /// By name, ignoring case.
    Name,
    /// By size.
    Size,
    /// By when it was first shared.
    Date,
    /// By how many agents hold it.
    Holders,
}
