import ArgumentParser
import Logging
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// sandboxd: serves branches (and later jails and shells) to sbx and agent harnesses over a Unix socket.
struct Sandboxd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandboxd",
        abstract: "The sbx daemon: copy-on-write branches of a workspace, served over a Unix socket (JSON-RPC 2.0, one object per line).",
        discussion: """
            Stops cleanly on SIGTERM, SIGINT or SIGHUP: in-flight requests finish, the branch view is unmounted, \
            the socket file is removed, exit status 0. Refuses to start (exit 1) while another sandboxd answers on \
            the socket or uses the state directory. Every call is appended to <state>/audit.jsonl.
            """
    )

    @Option(name: .long, help: "Unix socket to listen on (mode 0600).")
    var socket: String = SocketPath.defaultPath

    @Option(name: .long, help: "State directory: branch registry, deltas, audit log.")
    var state: String = "/var/lib/sbx"

    @Option(name: .long, help: "The workspace: the directory that branch main is (default: the current directory).")
    var workspace: String?

    @Option(name: .long, help: "Where branch views are mounted (default: <state>/mnt).")
    var mount: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let config = DaemonConfiguration(socket: socket, state: state, workspace: workspace ?? ".", mount: mount)
        let status = Daemon.run(config, log: Logger(label: "sandboxd"))
        if status != 0 { throw ExitCode(status) }
    }
}

// Before anything can start a thread: every thread inherits this mask, so only the signal
// thread ever takes SIGTERM/SIGINT/SIGHUP.
TerminationSignals.block()
// A client that hangs up while we answer is an EPIPE for its connection, never our death.
signal(SIGPIPE, SIG_IGN)
Sandboxd.main()
