import BranchFS
import Logging
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Where the daemon keeps and serves things (the command-line options).
struct DaemonConfiguration {
    var socket: String
    var state: String
    var workspace: String
    /// nil: BranchFS's default, `<state>/mnt`.
    var mount: String?
}

/// Startup and shutdown, in order.
///
/// Start: refuse if a live daemon answers on the socket (before touching anything it might
/// own); lock the state directory; open BranchFS (recovery, mount); then publish the socket.
/// Clients can connect only once every part is ready.
///
/// Stop (SIGTERM, SIGINT, SIGHUP): stop accepting and remove the socket file, let requests in
/// flight finish, close BranchFS (unmounts), exit 0.
enum Daemon {
    static func run(_ config: DaemonConfiguration, log: Logger) -> Int32 {
        do throws(DaemonError) {
            try serve(config, log: log)
            return 0
        } catch {
            log.error("\(error)")
            return 1
        }
    }

    private static func serve(_ config: DaemonConfiguration, log: Logger) throws(DaemonError) {
        let startedAt = monotonicSeconds()
        if let slash = config.socket.lastIndex(of: "/"), slash != config.socket.startIndex {
            try makeDirectories(String(config.socket[..<slash]), mode: 0o755)
        }
        if try Listener.clearStale(config.socket) { log.info("removed a stale socket at \(config.socket)") }
        try makeDirectories(config.state, mode: 0o700)
        let stateLock = try StateLock(stateDirectory: config.state)
        defer { close(stateLock.fd) }

        let branches: BranchFS
        do throws(BranchError) {
            branches = try BranchFS(workspace: config.workspace, stateDirectory: config.state, mountPoint: config.mount)
        } catch {
            throw .branches(error)
        }
        defer { branches.close() }

        let counters = Counters()
        let audit = try AuditLog(path: branches.stateDirectory + "/audit.jsonl", log: log)
        let methods = Methods(branches: branches, counters: counters, socket: config.socket, startedAt: startedAt)
        let dispatcher = Dispatcher(methods: methods, idempotency: IdempotencyCache(), audit: audit, counters: counters, log: log)
        let listener = try Listener.create(config.socket)
        let server: Server
        do throws(DaemonError) {
            server = try Server(listener: listener, dispatcher: dispatcher, counters: counters, log: log)
            try TerminationSignals.startWaiting { signal in
                log.info("signal \(signal): stopping")
                server.stop()
            }
        } catch {
            listener.remove()
            throw error
        }
        log.info("sandboxd \(SandboxVersion.current) listening on \(config.socket) (pid \(getpid()), workspace \(branches.workspace), state \(branches.stateDirectory), mount \(branches.mountPoint))")
        server.serve()
        branches.close()  // unmounts; the deferred call is for the error paths (close is idempotent)
        log.info("stopped: \(counters[.requests]) requests served")
    }
}
