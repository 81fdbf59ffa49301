// Test harness for the end-to-end battery: finds the built `sbx`, runs it (and
// host-side control commands) as real processes, parses `--json` results, and
// makes and removes temporary workspaces. Every helper is parallel-safe: temp
// dirs are unique, markers are UUIDs.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Results

/// One finished process: exit status, captured output, wall time.
struct CommandResult {
    var status: Int32
    /// Set when the process itself died of a signal (not the same as sbx exiting 128+N).
    var terminatedBySignal: Int32?
    var stdout: Data
    var stderr: Data
    var duration: TimeInterval
    var pid: Int32
    var timedOut: Bool

    var out: String { String(decoding: stdout, as: UTF8.self) }
    var err: String { String(decoding: stderr, as: UTF8.self) }
    var stderrLines: [String] { err.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty } }

    /// The `--json` object sbx printed on stdout.
    func json(file: StaticString = #filePath, line: UInt = #line) throws -> SbxJSON {
        guard let object = try? JSONSerialization.jsonObject(with: stdout), let dict = object as? [String: Any] else {
            XCTFail("stdout is not one JSON object: \(out.prefix(500)) / stderr: \(err.prefix(500))", file: file, line: line)
            throw HarnessError.notJSON(out)
        }
        return SbxJSON(raw: dict)
    }
}

/// Typed access to the result object of `sbx run --json`.
struct SbxJSON {
    let raw: [String: Any]
    var exitCode: Int? { (raw["exit_code"] as? NSNumber)?.intValue }
    var signal: Int? { (raw["signal"] as? NSNumber)?.intValue }
    var signalIsNull: Bool { raw["signal"] is NSNull }
    var reason: String? { raw["reason"] as? String }
    var stdout: String { raw["stdout"] as? String ?? "" }
    var stderr: String { raw["stderr"] as? String ?? "" }
    var stdoutTruncated: Int? { (raw["stdout_truncated_bytes"] as? NSNumber)?.intValue }
    var stderrTruncated: Int? { (raw["stderr_truncated_bytes"] as? NSNumber)?.intValue }
    var durationMs: Double? { (raw["duration_ms"] as? NSNumber)?.doubleValue }
    var peakMemory: Int? { (raw["peak_memory_bytes"] as? NSNumber)?.intValue }
    var cpuMs: Double? { (raw["cpu_ms"] as? NSNumber)?.doubleValue }
}

enum HarnessError: Error, CustomStringConvertible {
    case notJSON(String)
    case spawn(String)
    case timeout(String)
    case system(String)
    var description: String {
        switch self {
        case .notJSON(let s): return "not JSON: \(s.prefix(300))"
        case .spawn(let s): return "cannot start: \(s)"
        case .timeout(let s): return "timed out: \(s)"
        case .system(let s): return s
        }
    }
}

/// Collects bytes from a reader thread.
final class DataBox: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ d: Data) { lock.lock(); data.append(d); lock.unlock() }
    var value: Data { lock.lock(); defer { lock.unlock() }; return data }
}

/// Drains one pipe on its own thread until EOF, or until told to stop (a
/// descendant that outlives the process may hold the write end forever).
final class PipeReader: @unchecked Sendable {
    let box = DataBox()
    private let fd: Int32
    private let lock = NSLock()
    private var stopAt: Date? = nil
    private let finished = DispatchSemaphore(value: 0)

    init(fd: Int32) {
        self.fd = fd
        Thread.detachNewThread { [self] in loop() }
    }

    private func loop() {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 20)
            if ready > 0 {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 { box.append(Data(buffer[0..<n])); continue }
                if n < 0 && errno == EINTR { continue }
                break  // EOF or error
            }
            lock.lock(); let deadline = stopAt; lock.unlock()
            if let deadline, Date() > deadline { break }
        }
        close(fd)
        finished.signal()
    }

    /// Keeps reading for at most `grace` more seconds, then returns what arrived.
    func finish(grace: TimeInterval) -> Data {
        lock.lock(); stopAt = Date().addingTimeInterval(grace); lock.unlock()
        finished.wait()
        return box.value
    }
}

// MARK: - Running processes

/// A process started with posix_spawn (every inherited fd above 2 closed, default
/// signal mask), its stdout and stderr drained by background threads.
///
/// Not Foundation's Process: that one learns of the exit through an fd the child
/// inherits, so a daemon left behind by a host-side control command would make
/// it wait forever.
final class RunningCommand: @unchecked Sendable {
    let pid: Int32
    let description: String
    private let outReader: PipeReader
    private let errReader: PipeReader
    private let started = Date()
    private var exitStatus: Int32? = nil  // raw wait status once reaped

    init(_ executable: String, _ arguments: [String], stdin: Data? = nil, environment: [String: String]? = nil) throws {
        description = ([executable] + arguments).joined(separator: " ")
        var outFDs: [Int32] = [-1, -1], errFDs: [Int32] = [-1, -1], inFDs: [Int32] = [-1, -1]
        guard Self.cloexecPipe(&outFDs), Self.cloexecPipe(&errFDs) else { throw HarnessError.spawn("pipe: errno \(errno)") }
        if stdin != nil {
            guard Self.cloexecPipe(&inFDs) else { throw HarnessError.spawn("pipe: errno \(errno)") }
        } else {
            inFDs[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inFDs[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errFDs[1], 2)
        if let closefrom = RunningCommand.addCloseFrom {
            _ = closefrom(&actions, 3)
        } else {
            RunningCommand.markInheritedFDsCloseOnExec()
        }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let env = environment ?? ProcessInfo.processInfo.environment
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv { free(p) }; for p in envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attr, argv, envp)
        close(outFDs[1]); close(errFDs[1]); close(inFDs[0])
        guard rc == 0 else {
            close(outFDs[0]); close(errFDs[0]); if inFDs[1] >= 0 { close(inFDs[1]) }
            throw HarnessError.spawn("\(description): \(String(cString: strerror(rc)))")
        }
        pid = child
        outReader = PipeReader(fd: outFDs[0])
        errReader = PipeReader(fd: errFDs[0])
        if let stdin {
            let fd = inFDs[1]
            Thread.detachNewThread {
                stdin.withUnsafeBytes { raw in
                    var off = 0
                    while off < raw.count {
                        let n = write(fd, raw.baseAddress! + off, raw.count - off)
                        if n < 0 { if errno == EINTR { continue }; break }
                        off += n
                    }
                }
                close(fd)
            }
        }
    }

    private static func cloexecPipe(_ fds: inout [Int32]) -> Bool {
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+; Swift's Glibc module does not declare it).
    static let addCloseFrom: AddCloseFrom? = {
        guard let handle = dlopen(nil, RTLD_NOW), let sym = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(sym, to: AddCloseFrom.self)
    }()

    /// Fallback without closefrom: every fd of ours above 2 gets FD_CLOEXEC.
    static func markInheritedFDsCloseOnExec() {
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for name in fds { if let fd = Int32(name), fd > 2 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) } }
    }

    /// Reaps the child if it has exited (never blocks).
    private func poll() {
        guard exitStatus == nil else { return }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { exitStatus = status }
    }

    var isRunning: Bool { poll(); return exitStatus == nil }
    var stdoutSoFar: Data { outReader.box.value }
    var stderrSoFar: Data { errReader.box.value }

    /// Sends a signal, unless the child was already reaped (its pid may be reused).
    func signal(_ sig: Int32) {
        poll()
        if exitStatus == nil { kill(pid, sig) }
    }

    /// Waits for exit (SIGKILLing the process after `timeout`), then collects its output.
    func wait(timeout: TimeInterval = 120) -> CommandResult {
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while isRunning {
            if Date() > deadline {
                timedOut = true
                kill(pid, SIGKILL)
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                exitStatus = status
                break
            }
            usleep(1_000)
        }
        let duration = Date().timeIntervalSince(started)
        let out = outReader.finish(grace: 3)
        let err = errReader.finish(grace: 1)
        let status = exitStatus ?? 0
        let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        return CommandResult(
            status: signaled ? 128 + (status & 0x7f) : (status >> 8) & 0xff, terminatedBySignal: signaled ? status & 0x7f : nil,
            stdout: out, stderr: err, duration: duration, pid: pid, timedOut: timedOut)
    }

    /// Polls until `condition` holds or `timeout` passes; returns whether it held.
    @discardableResult
    func waitUntil(timeout: TimeInterval = 20, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            if !isRunning { return condition() }
            usleep(5_000)
        }
        return condition()
    }
}

// MARK: - Harness

enum Harness {
    /// The repository root, derived from this file's path (Tests/SbxEndToEndTests/SbxHarness.swift).
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static let python = "/usr/bin/python3"

    /// The `sbx` binary under test: next to the test bundle (it is built with the
    /// tests and `sbx-init` must sit beside it), else in the usual build dirs.
    static let sbxPath: String? = locate()

    static func locate() -> String? {
        var dirs: [String] = []
        if let override = ProcessInfo.processInfo.environment["SBX_E2E_BIN_DIR"] { dirs.append(override) }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            dirs.append((exe as NSString).deletingLastPathComponent)
        }
        let bundle = Bundle.main.bundlePath
        dirs.append(bundle)
        dirs.append((bundle as NSString).deletingLastPathComponent)
        for b in Bundle.allBundles {
            dirs.append(b.bundlePath)
            dirs.append((b.bundlePath as NSString).deletingLastPathComponent)
        }
        if let arg0 = CommandLine.arguments.first {
            let abs = arg0.hasPrefix("/") ? arg0 : FileManager.default.currentDirectoryPath + "/" + arg0
            dirs.append((abs as NSString).deletingLastPathComponent)
        }
        for scratch in [".build-e2e", ".build"] {
            dirs.append(repoRoot + "/" + scratch + "/debug")
            dirs.append(repoRoot + "/" + scratch + "/release")
        }
        for dir in dirs {
            let sbx = dir + "/sbx", initPath = dir + "/sbx-init"
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: sbx, isDirectory: &isDir), !isDir.boolValue,
               access(sbx, X_OK) == 0, access(initPath, X_OK) == 0 {
                return sbx
            }
        }
        return nil
    }

    /// The shipped default profile (what `extends` in a temporary profile points at).
    static var defaultProfilePath: String { repoRoot + "/profiles/default.json" }

    static func run(_ executable: String, _ arguments: [String], stdin: Data? = nil, environment: [String: String]? = nil,
                    timeout: TimeInterval = 120) throws -> CommandResult {
        try RunningCommand(executable, arguments, stdin: stdin, environment: environment).wait(timeout: timeout)
    }

    /// Runs a shell command on the host (the control half of a test).
    static func host(_ script: String, timeout: TimeInterval = 60) throws -> CommandResult {
        try run("/bin/sh", ["-c", script], timeout: timeout)
    }

    static func hostPython(_ script: String, _ args: [String] = [], timeout: TimeInterval = 60) throws -> CommandResult {
        try run(python, ["-c", script] + args, timeout: timeout)
    }

    // MARK: host observation

    /// Host pids whose command line contains `marker` (excluding `except`).
    static func pids(withCmdlineContaining marker: String, except: Set<Int32> = []) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var found: [Int32] = []
        let me = getpid()
        for e in entries {
            guard let pid = Int32(e), pid != me, !except.contains(pid) else { continue }
            guard let data = FileManager.default.contents(atPath: "/proc/\(e)/cmdline"), !data.isEmpty else { continue }
            let text = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            if text.contains(marker) {
                // Zombies hold no resources but still count as "alive" for us: report them too.
                found.append(pid)
            }
        }
        return found
    }

    /// Waits up to `timeout` for every process with `marker` to vanish; returns the survivors.
    static func survivors(of marker: String, except: Set<Int32> = [], timeout: TimeInterval = 0.5) -> [Int32] {
        let deadline = Date().addingTimeInterval(timeout)
        var left = pids(withCmdlineContaining: marker, except: except)
        while !left.isEmpty && Date() < deadline {
            usleep(10_000)
            left = pids(withCmdlineContaining: marker, except: except)
        }
        return left
    }

    static func statusField(pid: Int32, _ field: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// Host mounts, one mountinfo line each (FUSE mounts of concurrently running tools are ignored).
    static func hostMounts() -> Set<String> {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return Set(text.split(separator: "\n").map(String.init).filter { !$0.contains(" - fuse") })
    }

    static let cgroupParents = ["/sys/fs/cgroup/memory/sbx", "/sys/fs/cgroup/pids/sbx", "/sys/fs/cgroup/sbx"]

    /// The cgroup directories of one `sbx` process (named run-PID-N).
    static func cgroupDirs(ofSbxPID pid: Int32) -> [String] {
        var dirs: [String] = []
        for parent in cgroupParents {
            guard let entries = try? FileManager.default.contentsOfDirectory(atPath: parent) else { continue }
            dirs += entries.filter { $0.hasPrefix("run-\(pid)-") }.map { parent + "/" + $0 }
        }
        return dirs
    }

    static func cgroupVersion() -> String? {
        if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cgroup.controllers") { return "v2" }
        if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/cgroup.procs") { return "v1" }
        return nil
    }

    static func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    static func owner(of path: String) -> (uid: uid_t, gid: gid_t)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (st.st_uid, st.st_gid)
    }

    /// The first line only, trimmed.
    static func firstLine(_ s: String) -> String { String(s.split(separator: "\n").first ?? "").trimmingCharacters(in: .whitespaces) }

    static func uniqueMarker(_ tag: String) -> String { "sbxe2e\(tag)\(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16))" }

    /// The test process's pid namespace ("pid:[N]"): a jailed process must be in another one.
    static let hostPidNamespace: String = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/pid")) ?? "unknown"

    /// Python prologue for destructive probes (kill(-1), writes to /proc/sys, rename of /etc files, ...):
    /// exits 3 unless it runs in a pid namespace other than the host's, so a broken jail (or an
    /// unjailed stand-in for sbx) fails the test instead of damaging the host. (Not /proc/1/comm:
    /// the command starts before pid 1 has become sbx-init.)
    static var pythonJailGuard: String {
        """
        import os as _os, sys as _sys
        if _os.readlink("/proc/self/ns/pid") == "\(hostPidNamespace)" or _os.getpid() > 1000:
            print("REFUSING: not inside an sbx jail", file=_sys.stderr); _sys.exit(3)

        """
    }

    /// Shell prologue with the same purpose as `pythonJailGuard`.
    static var shellJailGuard: String {
        "{ [ \"$(readlink /proc/self/ns/pid)\" != \"\(hostPidNamespace)\" ] && [ $$ -lt 1000 ]; } || { echo 'REFUSING: not inside an sbx jail' >&2; exit 3; }; "
    }

    static var isX86_64: Bool {
        var u = utsname()
        uname(&u)
        let machine = withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return machine == "x86_64"
    }
}

// MARK: - Base class

/// Base of every end-to-end test: checks the preconditions (root, a built sbx),
/// hands out temp dirs and removes them, and runs sbx.
class SbxTestCase: XCTestCase {
    private var tempDirs: [String] = []
    private var backgroundProcesses: [RunningCommand] = []
    private var hostPIDsToKill: [Int32] = []

    var sbx: String { Harness.sbxPath ?? "/nonexistent/sbx" }

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard getuid() == 0 else {
            print("SKIP \(name): sbx run must run as root (it creates cgroups and maps the jail to an unprivileged uid)")
            throw XCTSkip("sbx run needs root; this test process runs as uid \(getuid())")
        }
        guard Harness.sbxPath != nil else {
            XCTFail("cannot find the built sbx/sbx-init next to the test bundle or in \(Harness.repoRoot)/.build*/debug; "
                + "build with `swift build --build-tests` first (or set SBX_E2E_BIN_DIR)")
            throw HarnessError.spawn("sbx binary not found")
        }
        guard FileManager.default.isExecutableFile(atPath: Harness.python) else {
            throw XCTSkip("\(Harness.python) is missing: the battery uses it on the host and in the jail")
        }
    }

    override func tearDown() {
        for p in backgroundProcesses where p.isRunning {
            p.signal(SIGKILL)
            _ = p.wait(timeout: 5)
        }
        for pid in hostPIDsToKill { kill(pid, SIGKILL) }
        for dir in tempDirs { try? FileManager.default.removeItem(atPath: dir) }
        super.tearDown()
    }

    /// A fresh directory under /tmp, owned by `owner` (the jail's host uid by default) so the jail can write it.
    func makeTempDir(owner: (uid_t, gid_t)? = (65534, 65534), mode: mode_t = 0o755, file: StaticString = #filePath,
                     line: UInt = #line) throws -> String {
        var template = Array("/tmp/sbx-e2e-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw HarnessError.system("mkdtemp: errno \(errno)") }
        let path = String(cString: p)
        tempDirs.append(path)
        chmod(path, mode)
        if let owner { guard chown(path, owner.0, owner.1) == 0 else { throw HarnessError.system("chown \(path): errno \(errno)") } }
        return path
    }

    /// A workspace the jail's root can write (owned by 65534:65534).
    func makeWorkspace() throws -> String { try makeTempDir() }

    /// Writes a file (owned by `owner`) and returns its path.
    @discardableResult
    func writeFile(_ path: String, _ contents: String, mode: mode_t = 0o644, owner: (uid_t, gid_t)? = (65534, 65534)) throws -> String {
        try Data(contents.utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, mode)
        if let owner { chown(path, owner.0, owner.1) }
        return path
    }

    /// A profile file extending the shipped default with the given limits.
    func makeProfile(limits: [String: Any] = [:], extra: [String: Any] = [:]) throws -> String {
        let dir = try makeTempDir(owner: nil)
        var obj: [String: Any] = ["extends": Harness.defaultProfilePath]
        if !limits.isEmpty { obj["limits"] = limits }
        for (k, v) in extra { obj[k] = v }
        let data = try JSONSerialization.data(withJSONObject: obj)
        let path = dir + "/profile.json"
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// `sbx <args>`.
    func sbxRaw(_ args: [String], stdin: Data? = nil, environment: [String: String]? = nil, timeout: TimeInterval = 120) throws -> CommandResult {
        try Harness.run(sbx, args, stdin: stdin, environment: environment, timeout: timeout)
    }

    /// `sbx run <options> -- <command>`.
    func sbxRun(_ options: [String] = [], _ command: [String], stdin: Data? = nil, environment: [String: String]? = nil,
                timeout: TimeInterval = 120) throws -> CommandResult {
        let r = try sbxRaw(["run"] + options + ["--"] + command, stdin: stdin, environment: environment, timeout: timeout)
        XCTAssertFalse(r.timedOut, "sbx itself did not finish within \(timeout) s: sbx run \(options) -- \(command)")
        return r
    }

    /// `sbx run --json <options> -- <command>`, parsed.
    func sbxJSON(_ options: [String] = [], _ command: [String], stdin: Data? = nil, timeout: TimeInterval = 120,
                 file: StaticString = #filePath, line: UInt = #line) throws -> (CommandResult, SbxJSON) {
        let r = try sbxRun(["--json"] + options, command, stdin: stdin, timeout: timeout)
        return (r, try r.json(file: file, line: line))
    }

    /// Starts `sbx run` without waiting; it is killed in tearDown if still running.
    func sbxStart(_ options: [String] = [], _ command: [String], environment: [String: String]? = nil) throws -> RunningCommand {
        let p = try RunningCommand(sbx, ["run"] + options + ["--"] + command, environment: environment)
        backgroundProcesses.append(p)
        return p
    }

    /// Starts a host process (killed in tearDown if still running).
    func hostStart(_ executable: String, _ args: [String]) throws -> RunningCommand {
        let p = try RunningCommand(executable, args)
        backgroundProcesses.append(p)
        return p
    }

    func killInTearDown(_ pid: Int32) { hostPIDsToKill.append(pid) }

    /// Runs a destructive python probe in the jail, behind `Harness.pythonJailGuard`.
    func jailPythonGuarded(_ script: String, _ args: [String] = [], options: [String] = [], timeout: TimeInterval = 120) throws -> CommandResult {
        let r = try jailPython(Harness.pythonJailGuard + script, args, options: options, timeout: timeout)
        XCTAssertFalse(r.err.contains("REFUSING"), "the probe did not run inside a jail: \(r.err)")
        return r
    }

    /// Runs a python script in the jail (`python3 -c`).
    func jailPython(_ script: String, _ args: [String] = [], options: [String] = [], timeout: TimeInterval = 120) throws -> CommandResult {
        try sbxRun(options, ["python3", "-c", script] + args, timeout: timeout)
    }

    // MARK: assertions

    /// sbx's own failure: exit 125 and exactly one stderr line, starting with "sbx: ".
    func assertSbxFailure(_ r: CommandResult, mentioning needles: [String] = [], _ context: String = "",
                          file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 125, "\(context): expected exit 125, stderr: \(r.err)", file: file, line: line)
        let lines = r.err.split(separator: "\n", omittingEmptySubsequences: false)
        let nonEmpty = lines.filter { !$0.isEmpty }
        XCTAssertEqual(nonEmpty.count, 1, "\(context): expected exactly one stderr line, got: \(r.err.debugDescription)", file: file, line: line)
        XCTAssertTrue(r.err.hasPrefix("sbx: "), "\(context): stderr must start with 'sbx: ', got: \(r.err.debugDescription)", file: file, line: line)
        XCTAssertTrue(r.err.hasSuffix("\n") && lines.count == 2, "\(context): stderr must be one newline-terminated line: \(r.err.debugDescription)", file: file, line: line)
        for n in needles {
            XCTAssertTrue(r.err.contains(n), "\(context): stderr should mention '\(n)': \(r.err)", file: file, line: line)
        }
    }

    /// Splits a JSON object printed by a jailed (or host) python script.
    func parseObject(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let lastLine = text.split(separator: "\n").last.map(String.init) ?? ""
        guard let obj = try? JSONSerialization.jsonObject(with: Data(lastLine.utf8)) as? [String: Any] else {
            XCTFail("expected a JSON object from the script, got: \(text.prefix(1000))", file: file, line: line)
            throw HarnessError.notJSON(text)
        }
        return obj
    }

    func requireX86_64() throws {
        guard Harness.isX86_64 else { throw XCTSkip("syscall numbers and ABI attacks in this test are x86_64-specific") }
    }
}

extension Array {
    /// nil instead of a crash when a jailed command printed fewer lines than expected.
    subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}

extension Dictionary where Key == String, Value == Any {
    func int(_ key: String) -> Int? { (self[key] as? NSNumber)?.intValue }
}
