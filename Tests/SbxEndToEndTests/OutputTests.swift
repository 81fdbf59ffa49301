// Output capture: drained continuously, capped per stream to a head third and
// a tail two thirds with a marker, cut on UTF-8 boundaries, truncation counted,
// floods handled in bounded memory, and a hard kill above output_kill_bytes.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class OutputTests: SbxTestCase {

    /// What sbx promises to keep of `full` under `cap` (head third, tail two thirds, UTF-8 cuts).
    static func expectedKept(_ full: [UInt8], cap: Int) -> (kept: [UInt8], truncated: Int) {
        guard cap > 0, full.count > cap else { return (full, 0) }
        let headCap = cap / 3, tailCap = cap - cap / 3
        // Head: back off to the start of a character that does not fit whole.
        var lead = headCap - 1
        while lead >= 0 && full[lead] & 0xC0 == 0x80 { lead -= 1 }
        var h = headCap
        if lead >= 0 {
            let b = full[lead]
            let need = b < 0x80 ? 1 : b & 0xE0 == 0xC0 ? 2 : b & 0xF0 == 0xE0 ? 3 : 4
            if headCap - lead < need { h = lead }
        }
        var tailStart = full.count - tailCap
        while tailStart < full.count && full[tailStart] & 0xC0 == 0x80 { tailStart += 1 }
        let tail = Array(full[tailStart...])
        let truncated = full.count - h - tail.count
        return (Array(full[..<h]) + Array("\n[... \(truncated) bytes truncated ...]\n".utf8) + tail, truncated)
    }

    private func numberedLines(_ n: Int) -> [UInt8] {
        Array((0..<n).map { String(format: "%05d\n", $0) }.joined().utf8)
    }

    private let numberedScript = "import sys; sys.stdout.write(''.join('%05d\\n' % i for i in range(int(sys.argv[1]))))"

    // MARK: - head and tail

    func testMaxOutputKeepsFirstThirdAndLastTwoThirdsWithMarker() throws {
        let full = numberedLines(2000)  // 12,000 bytes
        let (kept, truncated) = Self.expectedKept(full, cap: 600)
        XCTAssertEqual(truncated, 11_400)
        // Sanity of the expectation itself: 200 bytes of head, 400 of tail.
        XCTAssertEqual(String(decoding: kept, as: UTF8.self),
                       String(decoding: full[..<200], as: UTF8.self) + "\n[... 11400 bytes truncated ...]\n" + String(decoding: full[(12_000 - 400)...], as: UTF8.self))

        let (_, j) = try sbxJSON(["--max-output", "600"], ["python3", "-c", numberedScript, "2000"])
        XCTAssertEqual(j.exitCode, 0)
        XCTAssertEqual(j.stdout, String(decoding: kept, as: UTF8.self))
        XCTAssertEqual(j.stdoutTruncated, 11_400)
        XCTAssertEqual(j.stderrTruncated, 0)

        // Streaming mode writes the same bytes.
        let streamed = try sbxRun(["--max-output", "600"], ["python3", "-c", numberedScript, "2000"])
        XCTAssertEqual(streamed.status, 0)
        XCTAssertEqual(Array(streamed.stdout), kept)
    }

    func testStderrIsCappedIndependentlyOfStdout() throws {
        let script = "import sys; sys.stdout.write('small'); sys.stderr.write(''.join('%05d\\n' % i for i in range(2000)))"
        let (kept, truncated) = Self.expectedKept(numberedLines(2000), cap: 900)
        let (_, j) = try sbxJSON(["--max-output", "900"], ["python3", "-c", script])
        XCTAssertEqual(j.stdout, "small")
        XCTAssertEqual(j.stdoutTruncated, 0)
        XCTAssertEqual(j.stderr, String(decoding: kept, as: UTF8.self))
        XCTAssertEqual(j.stderrTruncated, truncated)
        let streamed = try sbxRun(["--max-output", "900"], ["python3", "-c", script])
        XCTAssertEqual(streamed.out, "small")
        XCTAssertEqual(Array(streamed.stderr), kept)
    }

    func testTruncationCutsOnUTF8Boundaries() throws {
        for (char, count, cap) in [("\u{e9}", 1500, 100), ("\u{20ac}", 1000, 100), ("\u{1F600}", 500, 100), ("\u{20ac}", 1000, 301)] {
            let full = Array(String(repeating: char, count: count).utf8)
            let (kept, truncated) = Self.expectedKept(full, cap: cap)
            let script = "import sys; sys.stdout.write(sys.argv[1] * int(sys.argv[2]))"
            let streamed = try sbxRun(["--max-output", String(cap)], ["python3", "-c", script, char, String(count)])
            XCTAssertEqual(streamed.status, 0, streamed.err)
            let bytes = Array(streamed.stdout)
            XCTAssertNotNil(String(validating: bytes, as: UTF8.self), "\(char) cap \(cap): kept output is not valid UTF-8")
            XCTAssertEqual(bytes, kept, "\(char) cap \(cap)")
            XCTAssertLessThanOrEqual(bytes.count - "\n[... \(truncated) bytes truncated ...]\n".utf8.count, cap)

            let (_, j) = try sbxJSON(["--max-output", String(cap)], ["python3", "-c", script, char, String(count)])
            XCTAssertFalse(j.stdout.contains("\u{FFFD}"), "replacement character: a character was cut")
            XCTAssertEqual(j.stdout, String(decoding: kept, as: UTF8.self))
            XCTAssertEqual(j.stdoutTruncated, truncated)
        }
    }

    func testTruncationCutsOnUTF8BoundariesWhenOutputDribbles() throws {
        // One byte per write: characters straddle every read and the head/tail boundary.
        let text = String(repeating: "a\u{1F600}\u{e9}\u{20ac}", count: 120)  // 10 bytes per group
        let full = Array(text.utf8)
        let script = "import os, sys\nb = sys.argv[1].encode()\nfor i in range(len(b)): os.write(1, b[i:i+1])"
        for cap in [50, 97, 200] {
            let (kept, truncated) = Self.expectedKept(full, cap: cap)
            let streamed = try sbxRun(["--max-output", String(cap)], ["python3", "-c", script, text])
            XCTAssertEqual(streamed.status, 0, streamed.err)
            XCTAssertNotNil(String(validating: Array(streamed.stdout), as: UTF8.self), "cap \(cap): not valid UTF-8")
            XCTAssertEqual(Array(streamed.stdout), kept, "cap \(cap)")
            let (_, j) = try sbxJSON(["--max-output", String(cap)], ["python3", "-c", script, text])
            XCTAssertEqual(j.stdout, String(decoding: kept, as: UTF8.self), "cap \(cap)")
            XCTAssertEqual(j.stdoutTruncated, truncated)
        }
    }

    func testOutputWithinTheCapIsKeptWhole() throws {
        let full = numberedLines(100)  // 600 bytes
        let (_, j) = try sbxJSON(["--max-output", "600"], ["python3", "-c", numberedScript, "100"])
        XCTAssertEqual(j.stdout, String(decoding: full, as: UTF8.self))
        XCTAssertEqual(j.stdoutTruncated, 0)
    }

    func testMaxOutputZeroKeepsEverything() throws {
        let full = numberedLines(40_000)  // 240,000 bytes
        let (_, j) = try sbxJSON(["--max-output", "0"], ["python3", "-c", numberedScript, "40000"])
        XCTAssertEqual(j.stdout.utf8.count, full.count)
        XCTAssertEqual(j.stdout, String(decoding: full, as: UTF8.self))
        XCTAssertEqual(j.stdoutTruncated, 0)
        let streamed = try sbxRun(["--max-output", "0"], ["python3", "-c", numberedScript, "40000"])
        XCTAssertEqual(Array(streamed.stdout), full)
    }

    func testDefaultCapKeeps30000Bytes() throws {
        let full = numberedLines(20_000)  // 120,000 bytes
        let (kept, truncated) = Self.expectedKept(full, cap: 30_000)
        XCTAssertEqual(truncated, 90_000)
        let (_, j) = try sbxJSON([], ["python3", "-c", numberedScript, "20000"])
        XCTAssertEqual(j.stdout, String(decoding: kept, as: UTF8.self))
        XCTAssertEqual(j.stdoutTruncated, 90_000)
    }

    // MARK: - draining

    func testOutputStreamsWhileTheCommandRuns() throws {
        let marker = Harness.uniqueMarker("stream")
        let p = try sbxStart(["--timeout", "30"], ["sh", "-c", "echo \(marker)-ready; exec sleep 60"])
        let seen = p.waitUntil(timeout: 15) { String(decoding: p.stdoutSoFar, as: UTF8.self).contains("\(marker)-ready") }
        XCTAssertTrue(seen, "output did not arrive while the command was still running")
        XCTAssertTrue(p.isRunning, "the command should still be running")
        p.signal(SIGINT)
        let r = p.wait(timeout: 10)
        XCTAssertEqual(r.status, 128 + SIGINT)
    }

    func testFlood300MBWithSmallCapEndsInSecondsWithBoundedMemory() throws {
        // A host-side wrapper reports sbx's peak RSS (ru_maxrss of its children).
        let wrapper = """
        import resource, subprocess, sys, time, json
        t = time.time()
        p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        print(json.dumps({"status": p.returncode, "secs": time.time() - t,
                          "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                          "out": p.stdout.decode(errors="replace"), "out_len": len(p.stdout), "err": p.stderr.decode(errors="replace")}))
        """
        let total = 300_000_000
        let flood = ["sh", "-c", "yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c \(total)"]
        for json in [true, false] {
            let r = try Harness.hostPython(wrapper, [sbx, "run"] + (json ? ["--json"] : []) + ["--max-output", "3000", "--timeout", "100", "--"] + flood, timeout: 150)
            let w = try parseObject(r.out)
            XCTAssertEqual(w.int("status"), 0, "\(w["err"] ?? "")")
            let secs = (w["secs"] as? NSNumber)?.doubleValue ?? 999
            XCTAssertLessThan(secs, 30, "a 300 MB flood took \(secs) s")
            let rssMB = Double(w.int("maxrss_kb") ?? Int.max) / 1024
            XCTAssertLessThan(rssMB, 100, "sbx grew to \(rssMB) MB for a 300 MB flood")
            if json {
                let j = try parseObject(w["out"] as? String ?? "")
                XCTAssertEqual(j["reason"] as? String, "exited")
                XCTAssertEqual(j.int("stdout_truncated_bytes"), total - 3000)
                XCTAssertEqual((j["stdout"] as? String)?.utf8.count, 3000 + "\n[... \(total - 3000) bytes truncated ...]\n".utf8.count)
            } else {
                XCTAssertEqual(w.int("out_len"), 3000 + "\n[... \(total - 3000) bytes truncated ...]\n".utf8.count)
            }
            print("flood (json: \(json)): \(String(format: "%.2f", secs)) s, peak RSS \(String(format: "%.1f", rssMB)) MB")
        }
    }

    // MARK: - output kill

    func testOutputAboveKillBytesKillsWithReasonOutputLimit() throws {
        let profile = try makeProfile(limits: ["output_kill_bytes": 100_000])
        // Control: below the threshold nothing happens.
        let (_, below) = try sbxJSON(["--profile", profile], ["head", "-c", "50000", "/dev/zero"])
        XCTAssertEqual(below.reason, "exited")
        XCTAssertEqual(below.exitCode, 0)

        for stream in ["", " >&2"] {
            let started = Date()
            let (r, j) = try sbxJSON(["--profile", profile, "--timeout", "60"], ["sh", "-c", "yes flood\(stream)"], timeout: 90)
            XCTAssertEqual(j.reason, "output_limit", "stream\(stream): \(j.raw)")
            XCTAssertEqual(r.status, 137)
            XCTAssertEqual(j.signal, 9)
            XCTAssertLessThan(Date().timeIntervalSince(started), 20)
            let truncated = (j.stdoutTruncated ?? 0) + (j.stderrTruncated ?? 0)
            XCTAssertGreaterThan(truncated, 100_000 - 2 * 30_000, "the flood was counted")
        }
    }
}
