import ArgumentParser
import SBXJSON
import Sandbox

#if canImport(Glibc)
import Glibc
#endif

/// `sbx run`: one jailed command, no daemon.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one command in a fresh jail, without a daemon.",
        discussion: """
            Exit status: the command's; 124 on timeout; 128+N when killed by signal N; \
            125 when sbx itself fails (one line on stderr); 127 when the command is not found in the jail.
            """
    )

    @Option(name: .long, help: "Profile name (searched in the profile path) or a JSON file.")
    var profile: String = "default"

    @Option(name: .long, help: "Wall-clock limit in seconds; the whole process tree is killed when it passes.")
    var timeout: Double?

    @Option(name: .customLong("max-output"), help: "Bytes of stdout and of stderr kept (head and tail); 0 keeps everything.")
    var maxOutput: String?

    @Option(name: .long, help: "Memory limit (bytes, or 512M, 2G).")
    var memory: String?

    @Option(name: .long, help: "Maximum number of processes and threads.")
    var pids: String?

    @Option(name: .long, help: "Network: none (default, own empty namespace) or host.")
    var net: String?

    @Option(name: .long, help: "Host directory mounted at /workspace (default: an empty private tmpfs).")
    var workspace: String?

    @Option(name: .long, help: "Working directory inside the jail.")
    var cwd: String = "/workspace"

    @Option(name: .customLong("env"), help: "Set KEY=VALUE in the jail's environment (repeatable).")
    var env: [String] = []

    @Flag(name: .long, help: "Print one JSON object with the result instead of streaming output.")
    var json = false

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    var options: RunOptions {
        RunOptions(profile: profile, timeout: timeout, maxOutput: maxOutput, memory: memory, pids: pids, net: net,
                   workspace: workspace, cwd: cwd, env: env, json: json, command: command)
    }

    func run() throws {
        throw ExitCode(options.execute())
    }
}

/// The options of `sbx run`, apart from how they were parsed.
struct RunOptions {
    var profile = "default"
    var timeout: Double?
    var maxOutput: String?
    var memory: String?
    var pids: String?
    var net: String?
    var workspace: String?
    var cwd = "/workspace"
    var env: [String] = []
    var json = false
    var command: [String] = []

    /// Parses the common, well-formed `sbx run` command line without swift-argument-parser,
    /// whose reflection costs about 2 ms per start (a third of a jail launch). Anything it does
    /// not recognise (help, unknown or malformed options) returns nil, and swift-argument-parser,
    /// which owns the interface, parses it and reports the error.
    static func fastParse(_ args: [String]) -> RunOptions? {
        guard args.first == "run" else { return nil }
        var o = RunOptions()
        var i = 1
        while i < args.count {
            var arg = args[i]
            if arg == "--" {
                o.command = Array(args[(i + 1)...])
                return o
            }
            if arg == "--json" { o.json = true; i += 1; continue }
            var value: String
            if let eq = arg.firstIndex(of: "="), arg.hasPrefix("--") {
                value = String(arg[arg.index(after: eq)...])
                arg = String(arg[..<eq])
            } else {
                guard i + 1 < args.count else { return nil }
                value = args[i + 1]
                i += 1
            }
            i += 1
            switch arg {
            case "--profile": o.profile = value
            case "--timeout":
                guard let t = Double(value) else { return nil }
                o.timeout = t
            case "--max-output": o.maxOutput = value
            case "--memory": o.memory = value
            case "--pids": o.pids = value
            case "--net": o.net = value
            case "--workspace": o.workspace = value
            case "--cwd": o.cwd = value
            case "--env": o.env.append(value)
            default: return nil
            }
        }
        return nil
    }

    /// Runs the jail and prints; returns the exit status.
    func execute() -> Int32 {
        do {
            let result = try launch()
            if json { printOut(resultJSON(result).text) }
            if let setupError = result.setupError { complain(setupError) }
            return result.exitCode
        } catch {
            complain(error.description)
            return 125
        }
    }

    func launch() throws(SandboxError) -> ExecResult {
        guard !command.isEmpty else {
            throw .invalidArgument(name: "command", reason: "missing command: sbx run [OPTIONS] -- CMD [ARG...]")
        }
        var profile = try ProfileLoader.load(self.profile)
        if let timeout {
            guard timeout > 0, timeout.isFinite, timeout <= 604_800 else {
                throw .invalidArgument(name: "--timeout", reason: "expected seconds between 0 and 604800, got \(timeout)")
            }
            profile.limits.timeoutSeconds = timeout
        }
        if let maxOutput {
            guard let v = parseSize(maxOutput) else { throw .invalidArgument(name: "--max-output", reason: "expected a byte count, got '\(maxOutput)'") }
            profile.limits.maxOutputBytes = v
        }
        if let memory {
            guard let v = parseSize(memory), v >= 4 << 20 else {
                throw .invalidArgument(name: "--memory", reason: "expected a size of at least 4M (bytes, or 512M, 2G), got '\(memory)'")
            }
            profile.limits.memoryBytes = v
        }
        if let pids {
            guard let v = UInt64(pids), v > 0, v < 1 << 22 else {
                throw .invalidArgument(name: "--pids", reason: "expected a positive number of processes, got '\(pids)'")
            }
            profile.limits.pids = v
        }
        if let net {
            guard let mode = Profile.Network(rawValue: net) else { throw .invalidArgument(name: "--net", reason: "expected none or host, got '\(net)'") }
            profile.network = mode
        }
        var request = JailRequest(profile: profile, argv: command, workspace: workspace)
        request.cwd = cwd
        for pair in env {
            guard let eq = pair.firstIndex(of: "="), pair.startIndex != eq else {
                throw .invalidArgument(name: "--env", reason: "expected KEY=VALUE, got '\(pair)'")
            }
            request.env[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        request.stdinFD = 0
        return try Jail.run(request, stdoutSink: json ? nil : 1, stderrSink: json ? nil : 2)
    }
}

/// The `exec` result object of DESIGN §6.
func resultJSON(_ r: ExecResult) -> JSON {
    var members: [(String, JSON)] = [
        ("exit_code", .int(Int64(r.exitCode))),
        ("signal", r.signal.map { .int(Int64($0)) } ?? .null),
        ("reason", .string(r.reason.rawValue)),
        ("stdout", .string(String(decoding: r.stdout, as: UTF8.self))),
        ("stderr", .string(String(decoding: r.stderr, as: UTF8.self))),
        ("stdout_truncated_bytes", .int(Int64(r.stdoutTruncatedBytes))),
        ("stderr_truncated_bytes", .int(Int64(r.stderrTruncatedBytes))),
        ("duration_ms", .double((r.durationMs * 1000).rounded() / 1000)),
        ("peak_memory_bytes", r.peakMemoryBytes.map { .int(Int64($0)) } ?? .null),
        ("cpu_ms", .double((r.cpuMs * 1000).rounded() / 1000)),
    ]
    if let e = r.setupError { members.append(("error", .string(e))) }
    return .object(members)
}
