import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A process started with posix_spawn: stdin from /dev/null, stdout and stderr into files,
/// default signal dispositions and an empty signal mask whatever the test process has.
/// Shared by the test targets that drive sandboxd, sbx and helper tools as real processes.
public final class Spawned {
    public let pid: pid_t
    public let outPath: String
    public let errPath: String
    public private(set) var exitStatus: Int32?

    public init(_ executable: String, _ arguments: [String], environment: [String: String], outPath: String, errPath: String) throws {
        self.outPath = outPath
        self.errPath = errPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attr, argv, envp)
        guard rc == 0 else { throw SpawnError(message: "posix_spawn \(executable): \(String(cString: strerror(rc)))") }
        pid = child
    }

    /// Output files `<dir>/<tag>-<random>.out|.err`; by default the test's own environment
    /// without `$SBX_SOCKET` (so no test reaches another test's daemon by accident).
    public convenience init(_ executable: String, _ arguments: [String], dir: String, tag: String, environment: [String: String]? = nil) throws {
        let n = UInt32.random(in: 0...UInt32.max)
        try self.init(executable, arguments,
                      environment: environment ?? ProcessInfo.processInfo.environment.filter { $0.key != "SBX_SOCKET" },
                      outPath: dir + "/\(tag)-\(n).out", errPath: dir + "/\(tag)-\(n).err")
    }

    public var isRunning: Bool {
        guard exitStatus == nil else { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid {
            let signal = status & 0x7f
            exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        }
        return exitStatus == nil
    }

    /// Waits up to `timeout` seconds; the exit status (128+N for signal N), or nil if it is still running.
    @discardableResult
    public func wait(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning && Date() < deadline { usleep(1_000) }
        return exitStatus
    }

    /// Sends a signal unless the process was already reaped (its pid may have been reused).
    public func signal(_ signal: Int32) { if isRunning { kill(pid, signal) } }

    public var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }
}

public struct SpawnError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
