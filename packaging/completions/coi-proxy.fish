# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_coi_proxy_global_optspecs
    string join \n c/config= state-dir= upstream= log-format= h/help V/version
end

function __fish_coi_proxy_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_coi_proxy_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_coi_proxy_using_subcommand
    set -l cmd (__fish_coi_proxy_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -l upstream -d 'Accepted before the subcommand too (`coi-proxy --upstream URL run`); see `run --help`' -r
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -l log-format -d 'Accepted before the subcommand too; see `run --help`' -r -f -a "human\t''
json\t''"
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -s V -l version -d 'Print version'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "run" -d 'Runs the proxy until SIGTERM or Ctrl-C; SIGHUP reloads the configuration'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "check" -d 'Validates the configuration and runs what the daemon will run: its listeners, every provider and route, each ca_file, and each account\'s password_command with a login'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "cert" -d 'Manages the local TLS certificate that mail clients connect to'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "queue" -d 'Shows and steers the outgoing mail queue (works while the daemon runs)'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "key" -d 'The OpenPGP key coi-proxy holds for an account (works while the daemon runs)'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "invite" -d 'Prints a SecureJoin invite link for an account (last line): a Delta Chat user who opens it becomes a verified contact; the daemon answers the handshake (works while it runs)'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "join" -d 'Joins a Delta Chat user\'s invite link (https://i.delta.chat/#...) for an account: the daemon completes the handshake as their answers arrive (works while it runs)'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "setup" -d 'Finds the provider\'s servers from an e-mail address, tries the login and adds the account to the configuration; then prints what to enter in the mail client'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "profile" -d 'Writes a file that sets up a mail client in one step (to stdout)'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "generate" -d 'Writes the man pages or shell completions (for packaging)'
complete -c coi-proxy -n "__fish_coi_proxy_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand run" -l upstream -d 'The provider\'s IMAP server, e.g. imaps://imap.example.org:993 (overrides [upstream] imap)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand run" -l log-format -d 'Log lines as human-readable text (default) or as one JSON object per line (journald, Loki)' -r -f -a "human\t''
json\t''"
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand run" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand run" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand run" -l trace-protocol -d 'Logs every IMAP line of every session, with passwords, AUTHENTICATE data and message bodies replaced by markers (for bug reports; verbose)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand run" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand check" -l upstream -d 'The provider\'s IMAP server, e.g. imaps://imap.example.org:993 (overrides [upstream] imap)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand check" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand check" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand check" -l offline -d 'Only validate the configuration: contact no provider (exit status 1 if none is configured)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand check" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -f -a "export" -d 'Writes the PEM certificate (the local CA) that mail clients must trust. Reads the state directory only: it never creates a CA'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -f -a "install" -d 'Adds the local CA to this user\'s trust stores where the command line can (system store as root, Thunderbird/Firefox/Chromium NSS databases, macOS login keychain) and says what is left'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -f -a "create" -d 'Creates the local CA and server certificate in the state directory now, as the daemon does at its first start (for installers; an existing CA is kept)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -f -a "rotate" -d 'Replaces the local CA with a new one (with name constraints). Clients that trust the current CA still connect for the overlap; within it, give every client the new CA (`cert export`/`cert install`). Reload the daemon afterwards to serve it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and not __fish_seen_subcommand_from export install create rotate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from export" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from export" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from install" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from install" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from install" -l dry-run -d 'Only show what would be done'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from install" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from create" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from create" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from rotate" -l overlap-days -d 'Days during which clients that still trust only the current CA connect (0: none)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from rotate" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from rotate" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "export" -d 'Writes the PEM certificate (the local CA) that mail clients must trust. Reads the state directory only: it never creates a CA'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "install" -d 'Adds the local CA to this user\'s trust stores where the command line can (system store as root, Thunderbird/Firefox/Chromium NSS databases, macOS login keychain) and says what is left'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "create" -d 'Creates the local CA and server certificate in the state directory now, as the daemon does at its first start (for installers; an existing CA is kept)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Replaces the local CA with a new one (with name constraints). Clients that trust the current CA still connect for the overlap; within it, give every client the new CA (`cert export`/`cert install`). Reload the daemon afterwards to serve it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -f -a "list" -d 'Lists queued messages (recipients, state, why each waits, next try) and recent deliveries'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -f -a "retry" -d 'Tries a message again now'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -f -a "drop" -d 'Removes a message from the queue without sending it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and not __fish_seen_subcommand_from list retry drop help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from list" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from list" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from retry" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from retry" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from drop" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from drop" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from drop" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "list" -d 'Lists queued messages (recipients, state, why each waits, next try) and recent deliveries'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Tries a message again now'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "drop" -d 'Removes a message from the queue without sending it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and not __fish_seen_subcommand_from export import help" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and not __fish_seen_subcommand_from export import help" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and not __fish_seen_subcommand_from export import help" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and not __fish_seen_subcommand_from export import help" -f -a "export" -d 'Writes the account\'s key, ASCII-armored, to stdout (made now if it has none yet)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and not __fish_seen_subcommand_from export import help" -f -a "import" -d 'Makes an ASCII-armored secret key (Delta Chat\'s or Thunderbird\'s export) the account\'s key, so that one identity serves both'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and not __fish_seen_subcommand_from export import help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from export" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from export" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from export" -l secret -d 'The secret key instead of the public one (importable into Delta Chat or Thunderbird; keep it safe: it reads all the account\'s encrypted mail)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from import" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from import" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "export" -d 'Writes the account\'s key, ASCII-armored, to stdout (made now if it has none yet)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "import" -d 'Makes an ASCII-armored secret key (Delta Chat\'s or Thunderbird\'s export) the account\'s key, so that one identity serves both'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand invite" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand invite" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand invite" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand join" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand join" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand join" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l login -d 'The login, if the provider wants something other than what it publishes (usually the address)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l ca-file -d 'An extra trust anchor (PEM) for a provider with a private CA; written as the account\'s ca_file' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l timeout -d 'Seconds each network step (HTTP request, DNS question, connection, login) may take' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l dns -d 'The DNS server to ask instead of those in /etc/resolv.conf, e.g. 127.0.0.1:5353 (tests point this at a local server)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l autoconfig-url -d 'A base URL that stands in for both https://autoconfig.DOMAIN and https://DOMAIN/.well-known/autoconfig (tests point this at a local server; http:// is accepted for loopback addresses only)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l password-stdin -d 'Read the provider\'s password from the first line of standard input and try the login (IMAP and SMTP) before anything is written. Without it the login is not tried'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -l dry-run -d 'Print the configuration that would be written, and write nothing'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand setup" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and not __fish_seen_subcommand_from apple thunderbird help" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and not __fish_seen_subcommand_from apple thunderbird help" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and not __fish_seen_subcommand_from apple thunderbird help" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and not __fish_seen_subcommand_from apple thunderbird help" -f -a "apple" -d 'An Apple configuration profile (.mobileconfig) for Mail on macOS and iOS: the IMAP and SMTP account and the local CA certificate; open the file to install it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and not __fish_seen_subcommand_from apple thunderbird help" -f -a "thunderbird" -d 'An autoconfig file (config-v1.1.xml) in Thunderbird\'s format'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and not __fish_seen_subcommand_from apple thunderbird help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from apple" -l address -d 'The e-mail address, if the login is not one' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from apple" -l host -d 'The name clients connect to (default: localhost for a loopback listener, this machine\'s name for 0.0.0.0); the local certificate must cover it (`coi-proxy check` lists the names)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from apple" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from apple" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from apple" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from thunderbird" -l address -d 'The e-mail address, if the login is not one' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from thunderbird" -l host -d 'The name clients connect to (default: localhost for a loopback listener, this machine\'s name for 0.0.0.0); the local certificate must cover it (`coi-proxy check` lists the names)' -r
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from thunderbird" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from thunderbird" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from thunderbird" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from help" -f -a "apple" -d 'An Apple configuration profile (.mobileconfig) for Mail on macOS and iOS: the IMAP and SMTP account and the local CA certificate; open the file to install it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from help" -f -a "thunderbird" -d 'An autoconfig file (config-v1.1.xml) in Thunderbird\'s format'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand profile; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -f -a "man" -d 'coi-proxy.1 and one page per subcommand, into DIR'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -f -a "completions" -d 'The completion script for SHELL, to stdout'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -f -a "all" -d 'Man pages into DIR/man and completions into DIR/completions (what the package installs)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and not __fish_seen_subcommand_from man completions all help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from man" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from man" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from man" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from completions" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from completions" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from completions" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from all" -s c -l config -d 'The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from all" -l state-dir -d 'Where the proxy keeps its state (overrides state_dir; the default is the config\'s, or /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy)' -r -F
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from all" -s h -l help -d 'Print help'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "man" -d 'coi-proxy.1 and one page per subcommand, into DIR'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "completions" -d 'The completion script for SHELL, to stdout'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "all" -d 'Man pages into DIR/man and completions into DIR/completions (what the package installs)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "run" -d 'Runs the proxy until SIGTERM or Ctrl-C; SIGHUP reloads the configuration'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "check" -d 'Validates the configuration and runs what the daemon will run: its listeners, every provider and route, each ca_file, and each account\'s password_command with a login'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "cert" -d 'Manages the local TLS certificate that mail clients connect to'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "queue" -d 'Shows and steers the outgoing mail queue (works while the daemon runs)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "key" -d 'The OpenPGP key coi-proxy holds for an account (works while the daemon runs)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "invite" -d 'Prints a SecureJoin invite link for an account (last line): a Delta Chat user who opens it becomes a verified contact; the daemon answers the handshake (works while it runs)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "join" -d 'Joins a Delta Chat user\'s invite link (https://i.delta.chat/#...) for an account: the daemon completes the handshake as their answers arrive (works while it runs)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "setup" -d 'Finds the provider\'s servers from an e-mail address, tries the login and adds the account to the configuration; then prints what to enter in the mail client'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "profile" -d 'Writes a file that sets up a mail client in one step (to stdout)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "generate" -d 'Writes the man pages or shell completions (for packaging)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and not __fish_seen_subcommand_from run check cert queue key invite join setup profile generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "export" -d 'Writes the PEM certificate (the local CA) that mail clients must trust. Reads the state directory only: it never creates a CA'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "install" -d 'Adds the local CA to this user\'s trust stores where the command line can (system store as root, Thunderbird/Firefox/Chromium NSS databases, macOS login keychain) and says what is left'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "create" -d 'Creates the local CA and server certificate in the state directory now, as the daemon does at its first start (for installers; an existing CA is kept)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "rotate" -d 'Replaces the local CA with a new one (with name constraints). Clients that trust the current CA still connect for the overlap; within it, give every client the new CA (`cert export`/`cert install`). Reload the daemon afterwards to serve it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from queue" -f -a "list" -d 'Lists queued messages (recipients, state, why each waits, next try) and recent deliveries'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from queue" -f -a "retry" -d 'Tries a message again now'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from queue" -f -a "drop" -d 'Removes a message from the queue without sending it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "export" -d 'Writes the account\'s key, ASCII-armored, to stdout (made now if it has none yet)'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "import" -d 'Makes an ASCII-armored secret key (Delta Chat\'s or Thunderbird\'s export) the account\'s key, so that one identity serves both'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from profile" -f -a "apple" -d 'An Apple configuration profile (.mobileconfig) for Mail on macOS and iOS: the IMAP and SMTP account and the local CA certificate; open the file to install it'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from profile" -f -a "thunderbird" -d 'An autoconfig file (config-v1.1.xml) in Thunderbird\'s format'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "man" -d 'coi-proxy.1 and one page per subcommand, into DIR'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "completions" -d 'The completion script for SHELL, to stdout'
complete -c coi-proxy -n "__fish_coi_proxy_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "all" -d 'Man pages into DIR/man and completions into DIR/completions (what the package installs)'
