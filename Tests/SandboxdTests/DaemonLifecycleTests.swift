// sandboxd as a process: how it starts (and refuses to), stops on signals, survives a restart,
// and what it writes to the audit log.
import Foundation
import SBXJSON
import SandboxProtocol
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class DaemonLifecycleTests: DaemonTestCase {

    // MARK: - stopping

    func testSIGTERMStopsCleanly() throws {
        let daemon = try startDaemon()
        _ = try createBranches(2)
        XCTAssertEqual(stop(daemon), 0, "exit status after SIGTERM; log:\n\(daemon.stderr)")
        XCTAssertEqual(access(socket, F_OK), -1, "the socket file is removed")
        XCTAssertEqual(mounts(under: root).map(\.point), [], "nothing stays mounted")
        XCTAssertTrue(daemon.stderr.contains("stopped"), daemon.stderr)
    }

    func testSIGINTAndSIGHUPAlsoStopCleanly() throws {
        for signal in [SIGINT, SIGHUP] {
            let daemon = try startDaemon()
            XCTAssertEqual(stop(daemon, signal: signal), 0, "signal \(signal); log:\n\(daemon.stderr)")
            XCTAssertEqual(access(socket, F_OK), -1, "signal \(signal): socket removed")
        }
    }

    func testStopDoesNotWaitForIdleClientsAndHangsUpOnThem() throws {
        let daemon = try startDaemon()
        let idle = try client()
        _ = try idle.call(.status)  // connected and served, now idle
        let started = Date()
        XCTAssertEqual(stop(daemon), 0)
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "an idle client does not hold up the stop")
        XCTAssertNil(try? idle.readLine() ?? nil, "the idle client sees the connection end")
    }

    func testStopUnderLoadStillExitsZero() throws {
        let daemon = try startDaemon()
        let socket = self.socket
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<4 {
            Thread.detachNewThread {
                // Hammer until the daemon is gone; every failure after the stop is expected.
                while let c = try? SandboxClient(socketPath: socket), (try? c.call(.branchCreate)) != nil {}
                done.signal()
            }
        }
        usleep(200_000)
        XCTAssertEqual(stop(daemon), 0, "log:\n\(daemon.stderr.suffix(2000))")
        for _ in 0..<4 { XCTAssertEqual(done.wait(timeout: .now() + 10), .success, "a client hung after the stop") }
        XCTAssertEqual(access(socket, F_OK), -1)
        XCTAssertEqual(mounts(under: root).map(\.point), [])
    }

    // MARK: - starting, and refusing to

    func testSecondDaemonOnTheSameSocketRefusesWhileTheFirstLives() throws {
        let first = try startDaemon()
        let second = try launchDaemon(state: root + "/state2")
        XCTAssertEqual(second.wait(timeout: 20), 1, "the second daemon exits 1")
        XCTAssertTrue(second.stderr.contains("another sandboxd is already listening on \(socket)"), second.stderr)
        XCTAssertTrue(first.isRunning)
        assertDaemonAnswers("the first daemon after the second refused")
        XCTAssertEqual(try result("status")["pid"], .int(Int64(first.pid)), "the socket still leads to the first daemon")
    }

    func testSecondDaemonOnTheSameStateRefuses() throws {
        try startDaemon()
        let second = try launchDaemon(socket: root + "/other.sock")
        XCTAssertEqual(second.wait(timeout: 20), 1)
        XCTAssertTrue(second.stderr.contains("another sandboxd is using the state directory"), second.stderr)
        XCTAssertEqual(access(root + "/other.sock", F_OK), -1, "the refused daemon left no socket behind")
        assertDaemonAnswers("the first daemon")
    }

    func testStaleSocketOfADeadDaemonIsReplaced() throws {
        // A socket file nobody listens on, as a SIGKILLed daemon leaves it.
        let fd = unixStreamSocket()
        let address = try UnixAddress(socket)
        XCTAssertEqual(address.withSockaddr { bind(fd, $0, $1) }, 0)
        close(fd)
        let daemon = try startDaemon()
        XCTAssertTrue(daemon.stderr.contains("removed a stale socket"), daemon.stderr)
        assertDaemonAnswers("over the replaced socket")
    }

    func testSIGKILLedDaemonCanBeRestartedOnTheSameSocketAndState() throws {
        let daemon = try startDaemon()
        let ids = try createBranches(1)
        daemon.signal(SIGKILL)
        daemon.wait(timeout: 10)
        // Its socket and (once BranchFS mounts) a dead FUSE mount are left behind: the new daemon
        // replaces the one and BranchFS recovers the other; tearDown checks no mount is left.
        try startDaemon()
        XCTAssertEqual(try branchesByID()[ids[0]]?["state"], .string("active"))
    }

    func testFileThatIsNotASocketIsNeverReplaced() throws {
        try "precious".write(toFile: socket, atomically: false, encoding: .utf8)
        let daemon = try launchDaemon()
        XCTAssertEqual(daemon.wait(timeout: 20), 1)
        XCTAssertTrue(daemon.stderr.contains("is not a socket"), daemon.stderr)
        XCTAssertEqual(try String(contentsOfFile: socket, encoding: .utf8), "precious")
    }

    func testSocketPathTooLongIsRefusedWithAClearMessage() throws {
        let long = root + "/" + String(repeating: "s", count: 120) + ".sock"
        let daemon = try launchDaemon(socket: long)
        XCTAssertEqual(daemon.wait(timeout: 20), 1)
        XCTAssertTrue(daemon.stderr.contains("too long"), daemon.stderr)
    }

    func testSocketIsOwnerOnly() throws {
        try startDaemon()
        var st = stat()
        XCTAssertEqual(lstat(socket, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(st.st_uid, geteuid())
    }

    func testRestartOnTheSameStateKeepsBranches() throws {
        let daemon = try startDaemon()
        let ids = try createBranches(3)
        _ = try result("branch.commit", [("branch", .string(ids[0]))])
        let nested = try createBranches(1, from: "main")
        _ = try result("branch.abort", [("branch", .string(nested[0]))])
        let before = try result("branch.list")
        XCTAssertEqual(stop(daemon), 0)

        try startDaemon()
        XCTAssertEqual(try result("branch.list"), before, "ids, parents, epochs and states survive the restart")
    }

    // MARK: - audit log

    func testAuditLogHasOneLinePerCallWithPeerCredentials() throws {
        try startDaemon()
        _ = try call("status")
        _ = try call("branch.info", [("branch", .string("nope"))])
        _ = try exchange(try client(), "{broken\n")
        let cli = try sbx(["branch", "create"])
        XCTAssertEqual(cli.status, 0, cli.err)

        let records = try auditRecords()
        XCTAssertEqual(records.compactMap { $0["method"]?.stringValue ?? "-" }, ["status", "branch.info", "-", "branch.create"])
        XCTAssertEqual(records.compactMap { $0["outcome"]?.stringValue }, ["ok", "not_found", "invalid_request", "ok"])
        XCTAssertEqual(records[1]["branch"], .string("nope"))
        XCTAssertEqual(records[1]["code"], .int(-32001))
        XCTAssertEqual(records[2]["code"], .int(-32700))
        XCTAssertEqual(records[3]["created"]?.arrayValue?.count, 1, "create records what it made")
        XCTAssertEqual(Set(records.compactMap { $0["call_id"]?.stringValue }).count, 4, "call ids are distinct")

        let rfc3339 = try NSRegularExpression(pattern: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#)
        for (i, r) in records.enumerated() {
            let time = r["time"]?.stringValue ?? ""
            XCTAssertEqual(rfc3339.numberOfMatches(in: time, range: NSRange(time.startIndex..., in: time)), 1, "time: \(time)")
            let expectedPID = i < 3 ? getpid() : cli.pid
            XCTAssertEqual(r["peer"]?["pid"], .int(Int64(expectedPID)), "record \(i): the peer is the calling process")
            XCTAssertEqual(r["peer"]?["uid"], .int(Int64(getuid())))
            XCTAssertEqual(r["peer"]?["gid"], .int(Int64(getgid())))
            XCTAssertNotNil(r["duration_ms"]?.doubleValue)
        }
    }

    func testAuditLogIsOwnerOnlyAndAppendedAcrossRestarts() throws {
        let daemon = try startDaemon()
        _ = try call("status")
        XCTAssertEqual(stop(daemon), 0)
        try startDaemon()
        _ = try call("status")
        XCTAssertEqual(try auditRecords().count, 2)
        var st = stat()
        XCTAssertEqual(stat(state + "/audit.jsonl", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }
}
