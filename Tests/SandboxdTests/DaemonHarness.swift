// Runs the real `sandboxd` and `sbx` binaries: each test gets its own temp dir holding the
// workspace, the state directory and the socket, and its daemons are stopped (SIGTERM, then
// checked) and the dir removed in tearDown. Parallel-safe: nothing is shared between tests.
import Foundation
import SBXJSON
import SandboxProtocol
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A finished process: its exit status (128+N when killed by signal N) and what it printed.
struct Finished {
    let pid: pid_t
    let status: Int32
    let out: String
    let err: String
    var errLines: [String] { err.split(separator: "\n").map(String.init) }
    var outLines: [String] { out.split(separator: "\n").map(String.init) }

    /// stdout as one JSON value.
    func json(file: StaticString = #filePath, line: UInt = #line) throws -> JSON {
        do { return try JSON.parse(out) } catch {
            XCTFail("stdout is not JSON: \(out.prefix(300)) / stderr: \(err.prefix(300))", file: file, line: line)
            throw error
        }
    }
}

struct HarnessFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Base of the daemon tests: a temp dir per test with `ws/` (the workspace), `state/` and the
/// socket; daemons started here are stopped and checked in tearDown.
class DaemonTestCase: XCTestCase {
    private(set) var root = ""
    var workspace: String { root + "/ws" }
    var state: String { root + "/state" }
    var socket: String { root + "/d.sock" }
    private var daemons: [Spawned] = []
    private var spawned = 0

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard BuiltBinaries.directory != nil else {
            XCTFail("sandboxd and sbx not found beside the test bundle; build with `swift build --build-tests` (or set SBX_E2E_BIN_DIR)")
            throw HarnessFailure("binaries not found")
        }
        var template = Array("/tmp/sbxd-test-XXXXXX".utf8CString)
        guard let dir = mkdtemp(&template) else { throw HarnessFailure("mkdtemp: \(String(cString: strerror(errno)))") }
        root = String(cString: dir)
        guard mkdir(workspace, 0o755) == 0 else { throw HarnessFailure("mkdir \(workspace): errno \(errno)") }
    }

    override func tearDownWithError() throws {
        for daemon in daemons where daemon.isRunning {
            daemon.signal(SIGTERM)
            if daemon.wait(timeout: 15) == nil {
                XCTFail("sandboxd \(daemon.pid) did not stop within 15 s of SIGTERM; log:\n\(daemon.stderr.suffix(2000))")
                daemon.signal(SIGKILL)
                // Threads waiting on their own FUSE mount cannot die until its connection is aborted.
                if daemon.wait(timeout: 5) == nil { abortFUSE(under: root) }
                daemon.wait(timeout: 5)
            }
        }
        let left = mounts(under: root)
        if !left.isEmpty {
            XCTFail("mounts left under \(root) after the daemons stopped: \(left.map(\.point))")
            // Ours (made by our daemon under our temp dir): abort and detach them so that removing
            // the dir can neither hang on a dead FUSE server nor reach through a mount.
            abortFUSE(under: root)
            for m in left.reversed() { umount2(m.point, Int32(MNT_DETACH)) }
        }
        if !root.isEmpty { try? FileManager.default.removeItem(atPath: root) }
        try super.tearDownWithError()
    }

    // MARK: processes

    private func nextOutputPaths(_ tag: String) -> (String, String) {
        spawned += 1
        return (root + "/\(tag)-\(spawned).out", root + "/\(tag)-\(spawned).err")
    }

    /// Starts `sandboxd` on this test's workspace, state and socket unless told otherwise, and
    /// waits until it accepts connections (connect only: no call, so no audit line).
    @discardableResult
    func startDaemon(socket: String? = nil, state: String? = nil, arguments: [String] = [],
                     file: StaticString = #filePath, line: UInt = #line) throws -> Spawned {
        let socketPath = socket ?? self.socket
        let daemon = try launchDaemon(socket: socketPath, state: state, arguments: arguments)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let address = try? UnixAddress(socketPath), let fd = try? connectUnix(address) {
                close(fd)
                return daemon
            }
            if !daemon.isRunning {
                XCTFail("sandboxd exited with \(daemon.exitStatus!) before listening: \(daemon.stderr)", file: file, line: line)
                throw HarnessFailure("sandboxd did not start")
            }
            usleep(5_000)
        }
        XCTFail("sandboxd did not listen on \(socketPath) within 20 s: \(daemon.stderr)", file: file, line: line)
        throw HarnessFailure("sandboxd did not start")
    }

    /// Starts `sandboxd` without waiting for it (for daemons expected to refuse to start).
    func launchDaemon(socket: String? = nil, state: String? = nil, arguments: [String] = []) throws -> Spawned {
        let (out, err) = nextOutputPaths("sandboxd")
        let args = ["--socket", socket ?? self.socket, "--state", state ?? self.state, "--workspace", workspace] + arguments
        let daemon = try Spawned(BuiltBinaries.sandboxd, args, environment: ProcessInfo.processInfo.environment, outPath: out, errPath: err)
        daemons.append(daemon)
        return daemon
    }

    /// Stops a daemon with `signal` and returns its exit status (nil: still running after 15 s).
    func stop(_ daemon: Spawned, signal: Int32 = SIGTERM) -> Int32? {
        daemon.signal(signal)
        return daemon.wait(timeout: 15)
    }

    /// Runs `sbx` with `$SBX_SOCKET` pointing at this test's socket (or as `environment` says:
    /// a nil value removes the variable).
    func sbx(_ arguments: [String], environment overrides: [String: String?] = [:],
             file: StaticString = #filePath, line: UInt = #line) throws -> Finished {
        var env = ProcessInfo.processInfo.environment
        env[SocketPath.environmentVariable] = socket
        for (key, value) in overrides { env[key] = value }
        let (out, err) = nextOutputPaths("sbx")
        let process = try Spawned(BuiltBinaries.sbx, arguments, environment: env, outPath: out, errPath: err)
        guard let status = process.wait(timeout: 60) else {
            process.signal(SIGKILL)
            process.wait(timeout: 5)
            XCTFail("sbx \(arguments) did not finish within 60 s", file: file, line: line)
            throw HarnessFailure("sbx hung")
        }
        return Finished(pid: process.pid, status: status, out: process.stdout, err: process.stderr)
    }

    /// `sbx <arguments> --json`, expected to succeed; its stdout parsed.
    func sbxJSON(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> JSON {
        let r = try sbx(arguments + ["--json"], file: file, line: line)
        XCTAssertEqual(r.status, 0, "sbx \(arguments): \(r.err)", file: file, line: line)
        return try r.json(file: file, line: line)
    }

    // MARK: the socket

    func client(_ path: String? = nil) throws -> SandboxClient { try SandboxClient(socketPath: path ?? socket) }

    /// One call on a new connection.
    func call(_ method: String, _ params: [(String, JSON)] = []) throws -> Result<JSON, RPCError> {
        try client().call(method, .object(params))
    }

    /// One call that must succeed; its result.
    func result(_ method: String, _ params: [(String, JSON)] = [], file: StaticString = #filePath, line: UInt = #line) throws -> JSON {
        switch try call(method, params) {
        case .success(let r): return r
        case .failure(let e):
            XCTFail("\(method) failed: \(e.json.text)", file: file, line: line)
            throw e
        }
    }

    /// Sends `text` as it is on `client` and reads one line back, parsed.
    func exchange(_ client: SandboxClient, _ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> JSON {
        try client.sendRaw(Array(text.utf8))
        guard let reply = try client.readLine() else {
            XCTFail("the daemon closed the connection instead of answering \(text.prefix(200))", file: file, line: line)
            throw HarnessFailure("no answer")
        }
        return try JSON.parse(String(decoding: reply, as: UTF8.self))
    }

    /// Forks `count` branches of `from` through the socket; their ids.
    func createBranches(_ count: Int = 1, from: String = "main") throws -> [String] {
        let r = try result("branch.create", [("from", .string(from)), ("count", .int(Int64(count)))])
        return r["branches"]?.arrayValue?.compactMap { $0["id"]?.stringValue } ?? []
    }

    /// Forks a branch of main in which `rel` (a file of the workspace, made if missing) is
    /// rewritten, then rewrites it in the workspace directly as a host tool would: its commit
    /// must be refused. Needs the daemon running and its FUSE view; returns the branch's id.
    func branchWithAnExternalChange(at rel: String) throws -> String {
        if access(workspace + "/" + rel, F_OK) != 0 { try "before\n".write(toFile: workspace + "/" + rel, atomically: false, encoding: .utf8) }
        let id = try XCTUnwrap(try createBranches(1).first)
        try "from the branch\n".write(toFile: state + "/mnt/" + id + "/" + rel, atomically: false, encoding: .utf8)
        // Past the fork's tick of the kernel's coarse clock, which stamps the ctime of a file
        // nobody stat'ed since its last change (at most 4 ms): a change within that tick
        // may not be told from one before the fork.
        usleep(20_000)
        try "from the host\n".write(toFile: workspace + "/" + rel, atomically: false, encoding: .utf8)
        return id
    }

    /// The branch objects of `branch.list`, by id.
    func branchesByID() throws -> [String: JSON] {
        var out: [String: JSON] = [:]
        for b in try result("branch.list")["branches"]?.arrayValue ?? [] { if let id = b["id"]?.stringValue { out[id] = b } }
        return out
    }

    /// Asserts the daemon still answers `status` on a fresh connection.
    func assertDaemonAnswers(_ context: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            let status = try result("status", file: file, line: line)
            XCTAssertNotNil(status["pid"]?.intValue, "\(context): status without pid", file: file, line: line)
        } catch {
            XCTFail("\(context): the daemon no longer answers status: \(error)", file: file, line: line)
        }
    }

    /// Mounts at or below `dir` (from /proc/self/mountinfo): mount point, device, filesystem type.
    func mounts(under dir: String) -> [(point: String, device: String, type: String)] {
        guard !dir.isEmpty, let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let halves = line.components(separatedBy: " - ")
            let fields = halves[0].split(separator: " ")
            guard fields.count > 4, halves.count > 1 else { return nil }
            let point = String(fields[4]).replacingOccurrences(of: "\\040", with: " ")
            guard point == dir || point.hasPrefix(dir + "/") else { return nil }
            return (point, String(fields[2]), String(halves[1].split(separator: " ").first ?? ""))
        }
    }

    /// Aborts the FUSE connections of the mounts under `dir` (only ever this test's temp dir):
    /// the one way to free processes stuck waiting on a FUSE server that no longer answers.
    func abortFUSE(under dir: String) {
        for m in mounts(under: dir) where m.type.hasPrefix("fuse") {
            let parts = m.device.split(separator: ":").compactMap { UInt32($0) }
            guard parts.count == 2 else { continue }
            let connection = parts[0] << 20 | parts[1]  // the kernel's dev_t, as /sys/fs/fuse/connections names it
            try? "1".write(toFile: "/sys/fs/fuse/connections/\(connection)/abort", atomically: false, encoding: .utf8)
        }
    }

    /// Whether `path` is a directory, asked by a child process with a deadline: a FUSE view that
    /// stopped answering blocks the asking process uninterruptibly, and that must not be us.
    /// nil when no answer came within `timeout` (the view's connection is then aborted).
    func isDirectory(_ path: String, timeout: TimeInterval = 10) throws -> Bool? {
        let (out, err) = nextOutputPaths("probe")
        let probe = try Spawned("/usr/bin/test", ["-d", path], environment: [:], outPath: out, errPath: err)
        if let status = probe.wait(timeout: timeout) { return status == 0 }
        abortFUSE(under: root)
        probe.signal(SIGKILL)
        probe.wait(timeout: 5)
        return nil
    }

    /// The audit log, one parsed record per line.
    func auditRecords() throws -> [JSON] {
        let text = try String(contentsOfFile: state + "/audit.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { try JSON.parse(String($0)) }
    }
}
