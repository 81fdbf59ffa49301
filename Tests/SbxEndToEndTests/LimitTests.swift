// Bounds: wall-clock timeout (whole tree, daemons included), memory and pids
// through cgroups, rlimits, /tmp size, and what happens when sbx itself is
// interrupted. After sbx returns, no process it started may be alive.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class LimitTests: SbxTestCase {

    /// Double-forks a setsid daemon that ignores SIGTERM/SIGHUP, keeps (or drops)
    /// stdout, records its pid, and sleeps with `marker` in its argv. The
    /// foreground part then sleeps (argv[2] = seconds, 0 = exit at once).
    static let daemonScript = """
    import os, signal, sys, time
    marker, ws, linger, keep_stdout = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "keep"
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if not keep_stdout:
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2): os.dup2(devnull, fd)
            with open(ws + "/daemon.pid.tmp", "w") as f: f.write(str(os.getpid()))
            os.rename(ws + "/daemon.pid.tmp", ws + "/daemon.pid")
            os.execv(sys.executable, [sys.executable, "-c", "import time\\nwhile True: time.sleep(1)", marker])
        os._exit(0)
    os.wait()
    while not os.path.exists(ws + "/daemon.pid"): time.sleep(0.01)
    print("daemon started", flush=True)
    time.sleep(linger)
    """

    // MARK: - timeout

    func testTimeoutKillsTheCommandAndExits124() throws {
        let started = Date()
        let r = try sbxRun(["--timeout", "1"], ["sh", "-c", "trap '' TERM INT HUP; echo before; sleep 60; echo after"])
        XCTAssertEqual(r.status, 124)
        XCTAssertEqual(r.out, "before\n", "output before the timeout is kept")
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
        let (jr, j) = try sbxJSON(["--timeout", "0.5"], ["sleep", "60"])
        XCTAssertEqual(jr.status, 124)
        XCTAssertEqual(j.exitCode, 124)
        XCTAssertEqual(j.reason, "timeout")
        XCTAssertEqual(j.signal, 9)
        XCTAssertGreaterThanOrEqual(j.durationMs ?? 0, 450)
        XCTAssertLessThan(j.durationMs ?? 1e9, 5000)
    }

    func testTimeoutKillsDoubleForkedSetsidDaemons() throws {
        // Host control: outside a jail, `timeout` leaves the daemon running.
        let hostWS = try makeTempDir(owner: nil)
        let hostMarker = Harness.uniqueMarker("hostdaemon")
        let host = try Harness.run("/usr/bin/timeout", ["1", Harness.python, "-c", Self.daemonScript, hostMarker, hostWS, "60", "drop"], timeout: 30)
        XCTAssertEqual(host.status, 124)
        let hostSurvivors = Harness.pids(withCmdlineContaining: hostMarker)
        for pid in hostSurvivors { killInTearDown(pid) }
        XCTAssertFalse(hostSurvivors.isEmpty, "host control: the daemon should escape `timeout`")

        let ws = try makeWorkspace()
        let marker = Harness.uniqueMarker("daemon")
        let (r, j) = try sbxJSON(["--workspace", ws, "--timeout", "1.5"], ["python3", "-c", Self.daemonScript, marker, "/workspace", "60", "drop"], timeout: 30)
        XCTAssertEqual(r.status, 124)
        XCTAssertEqual(j.reason, "timeout")
        XCTAssertEqual(j.stdout, "daemon started\n", "the daemon must have started for the test to mean anything: \(j.raw)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: ws + "/daemon.pid"))
        let left = Harness.survivors(of: marker)
        for pid in left { killInTearDown(pid) }
        XCTAssertEqual(left, [], "processes started in the jail outlived sbx")
    }

    func testDaemonsAreKilledWhenTheCommandExitsNormally() throws {
        let ws = try makeWorkspace()
        let marker = Harness.uniqueMarker("leftover")
        // The daemon keeps stdout open: sbx must still return promptly.
        let started = Date()
        let r = try sbxRun(["--workspace", ws, "--timeout", "60"], ["python3", "-c", Self.daemonScript, marker, "/workspace", "0", "keep"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "daemon started\n")
        XCTAssertLessThan(Date().timeIntervalSince(started), 10, "sbx waited for a daemon holding its stdout")
        let left = Harness.survivors(of: marker)
        for pid in left { killInTearDown(pid) }
        XCTAssertEqual(left, [], "a daemon outlived the jail")
    }

    // MARK: - interrupting sbx

    func testSignallingSbxKillsTheJailAndCleansUp() throws {
        let ws = try makeWorkspace()
        let marker = Harness.uniqueMarker("interrupt")
        let mountsBefore = Harness.hostMounts()
        let p = try sbxStart(["--workspace", ws, "--memory", "100M", "--pids", "33"],
                             ["python3", "-c", Self.daemonScript, marker, "/workspace", "60", "drop"])
        XCTAssertTrue(p.waitUntil { FileManager.default.fileExists(atPath: ws + "/daemon.pid") }, "jail did not start")
        // While it runs: its cgroups exist with the requested limits.
        let dirs = Harness.cgroupDirs(ofSbxPID: p.pid)
        XCTAssertFalse(dirs.isEmpty, "no cgroup directory for sbx pid \(p.pid)")
        if Harness.cgroupVersion() == "v1" {
            let mem = dirs.first { $0.contains("/memory/") }
            let pids = dirs.first { $0.contains("/pids/") }
            XCTAssertEqual(mem.flatMap { Harness.read($0 + "/memory.limit_in_bytes") }?.trimmingCharacters(in: .whitespacesAndNewlines), "104857600")
            XCTAssertEqual(pids.flatMap { Harness.read($0 + "/pids.max") }?.trimmingCharacters(in: .whitespacesAndNewlines), "33")
            XCTAssertFalse((pids.flatMap { Harness.read($0 + "/cgroup.procs") } ?? "").isEmpty, "the jail's processes are in the cgroup")
        }
        XCTAssertFalse(Harness.pids(withCmdlineContaining: marker, except: [p.pid]).isEmpty)

        p.signal(SIGTERM)
        let r = p.wait(timeout: 10)
        XCTAssertFalse(r.timedOut)
        XCTAssertEqual(r.status, 128 + SIGTERM)
        let left = Harness.survivors(of: marker)
        for pid in left { killInTearDown(pid) }
        XCTAssertEqual(left, [], "jailed processes survived an interrupted sbx")
        XCTAssertEqual(Harness.cgroupDirs(ofSbxPID: p.pid), [], "cgroup directories left behind")
        XCTAssertEqual(Harness.hostMounts().subtracting(mountsBefore), [])
    }

    func testKillingSbxWithSIGKILLStillKillsTheJail() throws {
        let ws = try makeWorkspace()
        let marker = Harness.uniqueMarker("orphan")
        let p = try sbxStart(["--workspace", ws], ["python3", "-c", Self.daemonScript, marker, "/workspace", "60", "drop"])
        XCTAssertTrue(p.waitUntil { FileManager.default.fileExists(atPath: ws + "/daemon.pid") }, "jail did not start")
        XCTAssertFalse(Harness.pids(withCmdlineContaining: marker, except: [p.pid]).isEmpty)
        p.signal(SIGKILL)
        _ = p.wait(timeout: 10)
        let left = Harness.survivors(of: marker, timeout: 3)
        for pid in left { killInTearDown(pid) }
        // sbx had no chance to clean its cgroups: remove them (empty once the jail is dead).
        for dir in Harness.cgroupDirs(ofSbxPID: p.pid).reversed() { rmdir(dir) }
        XCTAssertEqual(left, [], "the jail outlived a SIGKILLed sbx")
    }

    // MARK: - memory and pids

    func testDefaultProfileLimitsReachTheCgroup() throws {
        guard Harness.cgroupVersion() == "v1" else { throw XCTSkip("this check reads cgroup v1 files; host is \(Harness.cgroupVersion() ?? "without cgroups")") }
        let ws = try makeWorkspace()
        let p = try sbxStart(["--workspace", ws, "--timeout", "30"], ["sh", "-c", "touch /workspace/ready; exec sleep 60"])
        XCTAssertTrue(p.waitUntil { FileManager.default.fileExists(atPath: ws + "/ready") })
        let dirs = Harness.cgroupDirs(ofSbxPID: p.pid)
        let mem = dirs.first { $0.contains("/memory/") }.flatMap { Harness.read($0 + "/memory.limit_in_bytes") }
        let pids = dirs.first { $0.contains("/pids/") }.flatMap { Harness.read($0 + "/pids.max") }
        XCTAssertEqual(mem?.trimmingCharacters(in: .whitespacesAndNewlines), String(2 << 30), "default memory limit is 2 GiB")
        XCTAssertEqual(pids?.trimmingCharacters(in: .whitespacesAndNewlines), "512", "default pids limit is 512")
        p.signal(SIGTERM)
        _ = p.wait(timeout: 10)
        XCTAssertEqual(Harness.cgroupDirs(ofSbxPID: p.pid), [])
    }

    func testBuildProfileRaisesTheLimitsForCompilers() throws {
        guard Harness.cgroupVersion() == "v1" else { throw XCTSkip("this check reads cgroup v1 files; host is \(Harness.cgroupVersion() ?? "without cgroups")") }
        let ws = try makeWorkspace()
        let p = try sbxStart(["--profile", "build", "--workspace", ws], ["sh", "-c", "ulimit -n > /workspace/nofile; touch /workspace/ready; exec sleep 60"])
        XCTAssertTrue(p.waitUntil { FileManager.default.fileExists(atPath: ws + "/ready") })
        let dirs = Harness.cgroupDirs(ofSbxPID: p.pid)
        let mem = dirs.first { $0.contains("/memory/") }.flatMap { Harness.read($0 + "/memory.limit_in_bytes") }
        let pids = dirs.first { $0.contains("/pids/") }.flatMap { Harness.read($0 + "/pids.max") }
        XCTAssertEqual(mem?.trimmingCharacters(in: .whitespacesAndNewlines), String(8 << 30), "build: 8 GiB")
        XCTAssertEqual(pids?.trimmingCharacters(in: .whitespacesAndNewlines), "4096", "build: 4096 pids")
        var hostLimit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &hostLimit)
        let nofile = Harness.read(ws + "/nofile")?.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(nofile, String(min(65536, hostLimit.rlim_max)), "build: 65536 files, clamped to sbx's own hard limit")
        p.signal(SIGTERM)
        _ = p.wait(timeout: 10)
    }

    func testNetworkProfileSharesTheHostNetworkAndItsResolverConfiguration() throws {
        let r = try sbxRun(["--profile", "network"], ["sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '; test -e /etc/resolv.conf && echo resolv"])
        XCTAssertEqual(r.status, 0, r.err)
        let hostIfaces = (try? String(contentsOfFile: "/proc/net/dev", encoding: .utf8))?.split(separator: "\n").dropFirst(2)
            .compactMap { $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces) }.sorted() ?? []
        XCTAssertGreaterThan(hostIfaces.count, 1, "host control: more than lo")
        XCTAssertTrue(r.out.hasPrefix(hostIfaces.joined(separator: " ")), "the network profile sees the host's interfaces: \(r.out)")
        if FileManager.default.fileExists(atPath: "/etc/resolv.conf") {
            XCTAssertTrue(r.out.contains("resolv"), "resolv.conf is exposed for package installs: \(r.out)")
        }
        let none = try sbxRun([], ["sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"])
        XCTAssertEqual(none.out, "lo\n", "the default profile has only lo")
    }

    func testMemoryLimitKillsWithReasonOOM() throws {
        guard Harness.cgroupVersion() != nil else { throw XCTSkip("no cgroup memory controller here") }
        let hog = "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('allocated')"
        // Control: the same allocation passes without a tight limit.
        let (_, fine) = try sbxJSON(["--memory", "512M"], ["python3", "-c", hog])
        XCTAssertEqual(fine.exitCode, 0, "\(fine.raw)")
        XCTAssertEqual(fine.stdout, "allocated\n")

        let (r, j) = try sbxJSON(["--memory", "64M"], ["python3", "-c", hog])
        XCTAssertEqual(j.reason, "oom", "\(j.raw)")
        XCTAssertEqual(r.status, 137)
        XCTAssertEqual(j.signal, 9)
        XCTAssertFalse(j.stdout.contains("allocated"))
        if let peak = j.peakMemory {
            XCTAssertLessThanOrEqual(peak, 64 << 20, "peak memory above the limit")
            XCTAssertGreaterThan(peak, 32 << 20)
        } else {
            XCTFail("peak_memory_bytes missing")
        }
    }

    func testPidsLimitCapsProcessesAndThreads() throws {
        let script = """
        import os, time, sys
        n = 0
        try:
            for _ in range(int(sys.argv[1])):
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                n += 1
            print("forked", n)
        except OSError as e:
            print("stopped", n, e.errno)
        """
        // Control: 60 forks work under the default limit.
        let ok = try jailPython(script, ["60"])
        XCTAssertEqual(ok.out, "forked 60\n", ok.err)
        let r = try jailPython(script, ["60"], options: ["--pids", "16"])
        let parts = r.out.split(separator: " ")
        XCTAssertEqual(parts.first, "stopped", "fork must fail under --pids 16: \(r.out)")
        if parts.count == 3, let n = Int(parts[1]) {
            XCTAssertLessThan(n, 16)
            XCTAssertEqual(Int(parts[2].trimmingCharacters(in: .whitespacesAndNewlines)), Int(EAGAIN))
        }
    }

    func testForkBombIsContainedAndCleanedUp() throws {
        let marker = Harness.uniqueMarker("bomb")
        let started = Date()
        let r = try sbxRun(["--pids", "64", "--timeout", "2"], ["sh", "-c", Harness.shellJailGuard + "bomb() { bomb | bomb & }; bomb; exec sleep 30", marker], timeout: 60)
        XCTAssertEqual(r.status, 124)
        XCTAssertLessThan(Date().timeIntervalSince(started), 20)
        XCTAssertEqual(Harness.survivors(of: marker), [])
        XCTAssertEqual(Harness.cgroupDirs(ofSbxPID: r.pid), [])
    }

    func testConcurrentJailsStayIndependentAndCleanUp() throws {
        let count = 8
        var workspaces: [String] = []
        var runs: [RunningCommand] = []
        for i in 0..<count {
            let ws = try makeWorkspace()
            workspaces.append(ws)
            let script = "echo \(i) > /workspace/id; ls /workspace | wc -l; grep -c ':/$' /proc/self/cgroup; exit \(i)"
            runs.append(try sbxStart(["--workspace", ws, "--memory", "\(64 + i)M"], ["sh", "-c", script]))
        }
        for (i, p) in runs.enumerated() {
            let r = p.wait(timeout: 60)
            XCTAssertEqual(r.status, Int32(i), "jail \(i): \(r.err)")
            XCTAssertEqual(r.out.split(separator: "\n").first, "1", "jail \(i) saw another jail's files: \(r.out)")
            XCTAssertEqual(Harness.read(workspaces[i] + "/id"), "\(i)\n")
            XCTAssertEqual(Harness.cgroupDirs(ofSbxPID: p.pid), [], "jail \(i) left its cgroups")
        }
    }

    // MARK: - rlimits and tmp size

    func testRlimitsAreSetAndCannotBeRaised() throws {
        let script = """
        import resource, json
        res = {}
        for name in ["RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_FSIZE"]:
            r = getattr(resource, name)
            soft, hard = resource.getrlimit(r)
            res[name] = [soft, hard]
            try:
                resource.setrlimit(r, (hard + 1, hard + 1) if hard != resource.RLIM_INFINITY else (hard, hard)); res[name + "_raise"] = "raised"
            except (ValueError, OSError) as e:
                res[name + "_raise"] = "refused"
        print(json.dumps(res))
        """
        let r = try jailPython(script)
        let res = try parseObject(r.out)
        XCTAssertEqual((res["RLIMIT_NOFILE"] as? [NSNumber])?.map(\.intValue), [4096, 4096])
        XCTAssertEqual((res["RLIMIT_CORE"] as? [NSNumber])?.map(\.intValue), [0, 0])
        XCTAssertEqual((res["RLIMIT_FSIZE"] as? [NSNumber])?.map(\.intValue), [4 << 30, 4 << 30])
        for name in ["RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_FSIZE"] {
            XCTAssertEqual(res[name + "_raise"] as? String, "refused", "\(name) hard limit could be raised")
        }
    }

    func testOpenFileLimitIsEnforced() throws {
        let r = try jailPython("""
            import os
            fds = []
            try:
                while len(fds) < 10000: fds.append(os.open("/dev/null", os.O_RDONLY))
                print("opened", len(fds))
            except OSError as e:
                print("stopped", len(fds), e.errno)
            """)
        let parts = r.out.split(separator: " ")
        XCTAssertEqual(parts.first, "stopped", r.out)
        if parts.count == 3 {
            XCTAssertLessThanOrEqual(Int(parts[1]) ?? 99999, 4096)
            XCTAssertEqual(Int(parts[2].trimmingCharacters(in: .whitespacesAndNewlines)), Int(EMFILE))
        }
    }

    func testFileSizeLimitFromProfileIsEnforced() throws {
        let profile = try makeProfile(limits: ["file_size_bytes": 1 << 20])
        let ws = try makeWorkspace()
        let r = try sbxRun(["--profile", profile, "--workspace", ws], ["sh", "-c", "head -c 3000000 /dev/zero > /workspace/big"])
        XCTAssertEqual(r.status, 128 + SIGXFSZ, "writing past RLIMIT_FSIZE must raise SIGXFSZ: \(r.err)")
        var st = stat()
        XCTAssertEqual(stat(ws + "/big", &st), 0)
        XCTAssertLessThanOrEqual(Int(st.st_size), 1 << 20)
    }

    func testTmpSizeFromProfileIsEnforced() throws {
        let profile = try makeProfile(limits: ["tmp_bytes": "8M"])
        let r = try sbxRun(["--profile", profile], ["sh", "-c", Harness.shellJailGuard + "head -c 16000000 /dev/zero > /tmp/big; echo status=$?; stat -c %s /tmp/big"])
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, r.out + r.err)
        XCTAssertNotEqual(lines.first, "status=0", "a 16 MB file fit into an 8 MiB /tmp")
        XCTAssertLessThanOrEqual(Int(lines.last ?? "") ?? Int.max, 8 << 20)
        XCTAssertTrue(r.err.contains("No space left"), r.err)
    }
}
