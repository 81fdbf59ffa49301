// The command-line contract of `sbx run`: exit statuses, the --json object,
// and what bad input does (exit 125, one "sbx: " line, nothing left behind).
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLITests: SbxTestCase {

    // MARK: - exit statuses

    func testExitStatusIsTheCommandsOwn() throws {
        for code in [0, 1, 42, 255] {
            let r = try sbxRun([], ["sh", "-c", "echo out-\(code); exit \(code)"])
            XCTAssertEqual(r.status, Int32(code), "stderr: \(r.err)")
            XCTAssertEqual(r.out, "out-\(code)\n")
        }
    }

    func testStdoutAndStderrAreSeparateStreams() throws {
        let r = try sbxRun([], ["sh", "-c", "echo to-stdout; echo to-stderr >&2"])
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.out, "to-stdout\n")
        XCTAssertEqual(r.err, "to-stderr\n")
    }

    func testStdinIsPassedToTheCommand() throws {
        let input = "line one\nline two \u{00e9}\n"
        let r = try sbxRun([], ["cat"], stdin: Data(input.utf8))
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.out, input)
    }

    func testCommandKilledBySignalExitsWith128PlusSignal() throws {
        // On the host the same shell dies of SIGTERM (status 143 through sh -c's parent).
        let host = try Harness.host("sh -c 'kill -TERM $$'; echo $?")
        XCTAssertEqual(host.out.trimmingCharacters(in: .whitespacesAndNewlines), "143")

        let term = try sbxRun([], ["sh", "-c", "kill -TERM $$"])
        XCTAssertEqual(term.status, 143)
        let (_, segv) = try sbxJSON([], ["python3", "-c", "import os; os.kill(os.getpid(), 11)"])
        XCTAssertEqual(segv.exitCode, 139)
        XCTAssertEqual(segv.signal, 11)
        XCTAssertEqual(segv.reason, "signaled")
        let (_, kill9) = try sbxJSON([], ["sh", "-c", "kill -KILL $$"])
        XCTAssertEqual(kill9.exitCode, 137)
        XCTAssertEqual(kill9.signal, 9)
        XCTAssertEqual(kill9.reason, "signaled")
    }

    func testCommandMissingInJailExits127WithCommandNotFound() throws {
        // An executable that exists on the host (in a root-only dir) but not in the jail.
        let dir = try makeTempDir(owner: nil, mode: 0o700)
        let tool = try writeFile(dir + "/host-only-tool", "#!/bin/sh\necho host-ran\n", mode: 0o755, owner: nil)
        let host = try Harness.run(tool, [])
        XCTAssertEqual(host.status, 0)
        XCTAssertEqual(host.out, "host-ran\n")

        let r = try sbxRun([], [tool])
        XCTAssertEqual(r.status, 127)
        XCTAssertEqual(r.err, "sbx: \(tool): command not found\n")
        XCTAssertEqual(r.out, "")

        let name = "no-such-command-\(UUID().uuidString.prefix(8))"
        let byName = try sbxRun([], [name, "arg"])
        XCTAssertEqual(byName.status, 127)
        XCTAssertEqual(byName.err, "sbx: \(name): command not found\n")
    }

    func testNonExecutableFileExits126() throws {
        let ws = try makeWorkspace()
        try writeFile(ws + "/script.sh", "#!/bin/sh\necho should-not-run\n", mode: 0o644)
        let r = try sbxRun(["--workspace", ws], ["./script.sh"])
        XCTAssertEqual(r.status, 126, "stderr: \(r.err)")
        XCTAssertTrue(r.err.hasPrefix("sbx: ./script.sh"), r.err)
        XCTAssertFalse(r.out.contains("should-not-run"))

        let dir = try sbxRun([], ["/usr"])
        XCTAssertEqual(dir.status, 126, "a directory is not executable: \(dir.err)")
    }

    // MARK: - the JSON result

    func testJSONResultHasEveryFieldWithTheRightType() throws {
        let (r, j) = try sbxJSON([], ["sh", "-c", "printf out; printf err >&2; exit 3"])
        XCTAssertEqual(r.status, 3)
        let keys = ["exit_code", "signal", "reason", "stdout", "stderr", "stdout_truncated_bytes", "stderr_truncated_bytes",
                    "duration_ms", "peak_memory_bytes", "cpu_ms"]
        for k in keys { XCTAssertNotNil(j.raw[k], "missing field \(k) in \(j.raw)") }
        XCTAssertEqual(j.exitCode, 3)
        XCTAssertTrue(j.signalIsNull, "signal must be null for a normal exit: \(String(describing: j.raw["signal"]))")
        XCTAssertEqual(j.reason, "exited")
        XCTAssertEqual(j.stdout, "out")
        XCTAssertEqual(j.stderr, "err")
        XCTAssertEqual(j.stdoutTruncated, 0)
        XCTAssertEqual(j.stderrTruncated, 0)
        XCTAssertNotNil(j.durationMs)
        XCTAssertGreaterThan(j.durationMs ?? 0, 0)
        XCTAssertNotNil(j.peakMemory, "peak_memory_bytes should be a number when cgroups work")
        XCTAssertGreaterThan(j.peakMemory ?? 0, 0)
        XCTAssertNotNil(j.cpuMs)
        XCTAssertEqual(r.stdout.filter { $0 == UInt8(ascii: "\n") }.count, 1, "exactly one line of JSON: \(r.out)")
        XCTAssertEqual(r.err, "", "--json prints nothing on stderr for a normal run")
    }

    func testJSONCarriesEveryCharacterOfTheOutputIntact() throws {
        // Control characters, quotes, backslashes, line/paragraph separators, BOM, astral characters on
        // stdout; invalid UTF-8 on stderr, which must still give a valid object. Checked with Python's
        // json module as the reference parser (Foundation's JSONSerialization on Linux drops U+FEFF).
        let produce = """
            import sys
            sys.stdout.write("".join(chr(i) for i in range(128)) + "\\u2028\\u2029\\ufeff\\U0001F600\\ud7ff\\ue000\\uffff")
            sys.stdout.flush()
            sys.stderr.buffer.write(b"\\xff\\xfe ok \\xc3")
            """
        let check = """
            import json, sys
            d = json.loads(sys.stdin.read())
            want = "".join(chr(i) for i in range(128)) + "\\u2028\\u2029\\ufeff\\U0001F600\\ud7ff\\ue000\\uffff"
            print("stdout-intact" if d["stdout"] == want else "stdout-differs: %r" % d["stdout"][120:])
            print("stderr-ok" if " ok " in d["stderr"] else "stderr-lost: %r" % d["stderr"])
            """
        let (r, _) = try sbxJSON([], ["python3", "-c", produce])
        XCTAssertEqual(r.status, 0, r.err)
        let parsed = try Harness.run(Harness.python, ["-c", check], stdin: r.stdout)
        XCTAssertEqual(parsed.out, "stdout-intact\nstderr-ok\n", parsed.err)
    }

    func testDurationAndCPUTimeAreMeasured() throws {
        let (_, sleepy) = try sbxJSON([], ["sleep", "0.3"])
        XCTAssertGreaterThanOrEqual(sleepy.durationMs ?? 0, 290)
        XCTAssertLessThan(sleepy.cpuMs ?? 1e9, 200, "sleeping burns no CPU")
        let (_, busy) = try sbxJSON([], ["python3", "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t < 0.5: pass"])
        XCTAssertEqual(busy.exitCode, 0)
        XCTAssertGreaterThanOrEqual(busy.cpuMs ?? 0, 450, "cpu_ms must include the command's own CPU time")
    }

    func testEnvAndCwdOptionsReachTheCommand() throws {
        let r = try sbxRun(["--env", "GREETING=hello world", "--env", "EMPTY=", "--env", "EQ=a=b", "--cwd", "/tmp"],
                           ["sh", "-c", "printf '%s|%s|%s|%s' \"$GREETING\" \"${EMPTY-unset}\" \"$EQ\" \"$(pwd)\""])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "hello world||a=b|/tmp")
        let def = try sbxRun([], ["pwd"])
        XCTAssertEqual(def.out, "/workspace\n", "the default working directory is /workspace")
    }

    // MARK: - bad input: exit 125, one line

    func testUnknownProfileExits125WithOneLine() throws {
        let name = "no-such-profile-\(UUID().uuidString.prefix(8))"
        let r = try sbxRun(["--profile", name], ["true"])
        assertSbxFailure(r, mentioning: [name], "unknown profile")
        let file = try sbxRun(["--profile", "/nonexistent/\(name).json"], ["true"])
        assertSbxFailure(file, mentioning: ["\(name).json"], "missing profile file")
    }

    func testMalformedProfileExits125NamingFileFieldAndExpectation() throws {
        let dir = try makeTempDir(owner: nil)
        // Not JSON at all.
        let broken = try writeFile(dir + "/broken.json", "{\"extends\": \"default\", \"limits\": {", owner: nil)
        assertSbxFailure(try sbxRun(["--profile", broken], ["true"]), mentioning: [broken], "invalid JSON")
        // A field of the wrong type.
        let wrongType = try writeFile(dir + "/wrongtype.json",
                                      "{\"extends\": \"\(Harness.defaultProfilePath)\", \"limits\": {\"pids\": \"lots\"}}", owner: nil)
        let r = try sbxRun(["--profile", wrongType], ["true"])
        assertSbxFailure(r, mentioning: [wrongType, "limits.pids", "expected"], "wrong type")
        // A typo must not silently weaken the jail.
        let typo = try writeFile(dir + "/typo.json", "{\"extends\": \"\(Harness.defaultProfilePath)\", \"netwrk\": \"host\"}", owner: nil)
        assertSbxFailure(try sbxRun(["--profile", typo], ["true"]), mentioning: [typo, "netwrk"], "unknown field")
        let badNet = try writeFile(dir + "/badnet.json", "{\"extends\": \"\(Harness.defaultProfilePath)\", \"network\": \"everything\"}", owner: nil)
        assertSbxFailure(try sbxRun(["--profile", badNet], ["true"]), mentioning: [badNet, "network"], "bad enum")
        let cycle = try writeFile(dir + "/cycle.json", "{\"extends\": \"\(dir)/cycle.json\"}", owner: nil)
        assertSbxFailure(try sbxRun(["--profile", cycle], ["true"]), mentioning: [cycle], "extends cycle")
    }

    func testMissingCommandExits125() throws {
        assertSbxFailure(try sbxRaw(["run"]), "no command at all")
        assertSbxFailure(try sbxRaw(["run", "--"]), "nothing after --")
        assertSbxFailure(try sbxRaw(["run", "--json", "--"]), "--json, nothing after --")
        assertSbxFailure(try sbxRaw(["run", "--", ""]), "empty command name")
    }

    func testFailureMessageIsOneLineEvenWhenTheInputHasNewlines() throws {
        // A caller parsing stderr must get exactly one "sbx: " line, whatever the bad value contains;
        // otherwise a crafted value can forge extra "sbx: ..." lines.
        let cases: [[String]] = [
            ["--memory", "3x\nsbx: forged second line"],
            ["--workspace", "/tmp/sbx-e2e-missing-\(UUID().uuidString)\nsbx: forged"],
            ["--profile", "bad\nname"],
            ["--pids", "1\n2"],
        ]
        for options in cases {
            assertSbxFailure(try sbxRun(options, ["true"]), options.joined(separator: " ").debugDescription)
        }
    }

    func testProfileErrorsAreOneLineAndNameTheField() throws {
        let dir = try makeTempDir(owner: nil)
        let deny = try writeFile(dir + "/deny.json", """
            {"extends": "\(Harness.defaultProfilePath)", "seccomp": {"deny": ["no_such_syscall_xyz"]}}
            """, owner: nil)
        assertSbxFailure(try sbxRun(["--profile", deny], ["true"]), mentioning: ["no_such_syscall_xyz"], "unknown syscall in seccomp.deny")
        let mount = try writeFile(dir + "/mount.json", """
            {"extends": "\(Harness.defaultProfilePath)", "mounts": [{"source": "/nonexistent-\(UUID().uuidString)", "target": "/data"}]}
            """, owner: nil)
        assertSbxFailure(try sbxRun(["--profile", mount], ["true"]), mentioning: ["/nonexistent-"], "missing mount source")
        let limit = try writeFile(dir + "/limit.json", """
            {"extends": "\(Harness.defaultProfilePath)", "limits": {"memory_bytes": "1K"}}
            """, owner: nil)
        assertSbxFailure(try sbxRun(["--profile", limit], ["true"]), mentioning: [limit, "limits.memory_bytes"], "tiny memory")
    }

    func testProfileCannotMapTheJailToHostRoot() throws {
        let dir = try makeTempDir(owner: nil)
        for (field, value) in [("uid", 0), ("gid", 0), ("uid", -1)] {
            let file = try writeFile(dir + "/root-\(field)\(value).json", """
                {"extends": "\(Harness.defaultProfilePath)", "host_user": {"\(field)": \(value)}}
                """, owner: nil)
            let r = try sbxRun(["--profile", file], ["id", "-u"])
            assertSbxFailure(r, mentioning: [file, "host_user.\(field)"], "host_user.\(field) = \(value)")
            XCTAssertEqual(r.out, "", "the command ran with host_user.\(field) = \(value)")
        }
    }

    func testNonexistentWorkspaceExits125() throws {
        let path = "/tmp/sbx-e2e-missing-\(UUID().uuidString)"
        assertSbxFailure(try sbxRun(["--workspace", path], ["true"]), mentioning: [path], "missing workspace")
        let dir = try makeTempDir()
        let file = try writeFile(dir + "/plainfile", "x")
        assertSbxFailure(try sbxRun(["--workspace", file], ["true"]), mentioning: [file], "workspace is a file")
    }

    func testNonsenseLimitsExit125() throws {
        let cases: [[String]] = [
            ["--memory", "3x"], ["--memory", "-1"], ["--memory", "1K"], ["--memory", ""],
            ["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "abc"], ["--timeout", "nan"], ["--timeout", "inf"],
            ["--pids", "0"], ["--pids", "-3"], ["--pids", "many"],
            ["--max-output", "-5"], ["--max-output", "lots"],
            ["--net", "bridge"], ["--env", "NOEQUALS"], ["--env", "=value"],
            ["--cwd", "relative/dir"],
            ["--no-such-option"],
        ]
        for options in cases {
            let r = try sbxRun(options, ["echo", "must-not-run"])
            assertSbxFailure(r, options.joined(separator: " "))
            XCTAssertFalse(r.out.contains("must-not-run"), "\(options): the command must not run")
        }
    }

    func testRootOwnedWorkspaceOthersCannotWriteIsRefused() throws {
        let ws = try makeTempDir(owner: (0, 0), mode: 0o755)
        try writeFile(ws + "/readme", "root-owned content\n", owner: (0, 0))
        let r = try sbxRun(["--workspace", ws], ["true"])
        assertSbxFailure(r, mentioning: [ws], "root-owned rw workspace")

        // Read-only is fine: nothing can be written as root.
        let ro = try sbxRun(["--profile", "readonly", "--workspace", ws],
                            ["sh", "-c", "cat /workspace/readme; touch /workspace/new 2>/dev/null && echo WROTE || echo REFUSED"])
        XCTAssertEqual(ro.status, 0, ro.err)
        XCTAssertEqual(ro.out, "root-owned content\nREFUSED\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: ws + "/new"))

        // World-writable root-owned dirs are accepted: the jail writes as 65534.
        let open = try makeTempDir(owner: (0, 0), mode: 0o777)
        let w = try sbxRun(["--workspace", open], ["touch", "/workspace/made-by-jail"])
        XCTAssertEqual(w.status, 0, w.err)
        let owner = Harness.owner(of: open + "/made-by-jail")
        XCTAssertEqual(owner?.uid, 65534)
    }

    func testSetupFailureReportsSetupFailedAndExits125() throws {
        let r = try sbxRun(["--cwd", "/no/such/dir"], ["echo", "must-not-run"])
        assertSbxFailure(r, mentioning: ["chdir"], "nonexistent cwd")
        XCTAssertFalse(r.out.contains("must-not-run"))

        let (jr, j) = try sbxJSON(["--cwd", "/no/such/dir"], ["echo", "must-not-run"])
        XCTAssertEqual(jr.status, 125)
        XCTAssertEqual(j.exitCode, 125)
        XCTAssertEqual(j.reason, "setup_failed")
        XCTAssertEqual(jr.stderrLines.count, 1, "one line on stderr: \(jr.err)")
        XCTAssertTrue(jr.err.hasPrefix("sbx: "), jr.err)
    }

    // MARK: - nothing left behind

    func testFailedAndSuccessfulRunsLeaveNoMountsCgroupsOrTempFiles() throws {
        let privateTmp = try makeTempDir(owner: nil, mode: 0o700)
        var env = ProcessInfo.processInfo.environment
        env["TMPDIR"] = privateTmp
        let mountsBefore = Harness.hostMounts()
        let ws = try makeWorkspace()
        let runs: [[String]] = [
            ["run", "--workspace", ws, "--", "sh", "-c", "echo hi > /workspace/f; echo done"],   // success
            ["run", "--cwd", "/no/such/dir", "--", "true"],                                       // setup failure in the child
            ["run", "--memory", "3x", "--", "true"],                                              // bad limit
            ["run", "--profile", "no-such-profile-xyz", "--", "true"],                            // bad profile
            ["run", "--workspace", "/nonexistent-ws-\(UUID().uuidString)", "--", "true"],         // bad workspace
            ["run", "--", "no-such-command-xyz"],                                                 // 127
            ["run", "--timeout", "0.2", "--", "sleep", "5"],                                      // timeout
        ]
        for args in runs {
            let r = try Harness.run(sbx, args, environment: env)
            XCTAssertEqual(Harness.cgroupDirs(ofSbxPID: r.pid), [], "\(args): cgroup dirs left behind")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: privateTmp), [], "sbx left files in TMPDIR")
        let mountsAfter = Harness.hostMounts()
        XCTAssertEqual(mountsAfter.subtracting(mountsBefore), [], "new host mounts appeared")
        XCTAssertEqual(mountsBefore.subtracting(mountsAfter), [], "host mounts disappeared")
        XCTAssertEqual(Harness.read(ws + "/f"), "hi\n")
    }
}
