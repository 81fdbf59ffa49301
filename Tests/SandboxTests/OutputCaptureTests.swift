import XCTest
@testable import Sandbox

final class OutputCaptureTests: XCTestCase {
    private func capture(_ chunks: [[UInt8]], cap: UInt64) -> OutputCapture {
        var c = OutputCapture(cap: cap)
        for chunk in chunks { chunk.withUnsafeBytes { c.append($0) } }
        return c
    }

    func testOutputWithinTheCapIsKeptWhole() {
        let c = capture([Array("hello\n".utf8), Array("world\n".utf8)], cap: 100)
        XCTAssertEqual(String(decoding: c.result(), as: UTF8.self), "hello\nworld\n")
        XCTAssertEqual(c.truncatedBytes, 0)
    }

    func testOverflowKeepsHeadAndTailWithAMarkerCountingTheDroppedBytes() {
        let input = (0..<1000).map { UInt8(ascii: "a") + UInt8($0 % 26) }
        let c = capture([input], cap: 300)
        let out = c.result()
        XCTAssertEqual(c.truncatedBytes, 700)
        XCTAssertEqual(Array(out.prefix(100)), Array(input.prefix(100)), "the first third of the cap is the head")
        XCTAssertEqual(Array(out.suffix(200)), Array(input.suffix(200)), "the last two thirds are the tail")
        XCTAssertTrue(String(decoding: out, as: UTF8.self).contains("\n[... 700 bytes truncated ...]\n"))
    }

    func testTailIsTheSameWhateverTheChunking() {
        let input = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) & 0x7f }
        let whole = capture([input], cap: 999)
        let pieces = capture(stride(from: 0, to: input.count, by: 37).map { Array(input[$0..<min($0 + 37, input.count)]) }, cap: 999)
        XCTAssertEqual(whole.result(), pieces.result())
        XCTAssertEqual(whole.truncatedBytes, pieces.truncatedBytes)
    }

    func testCutsFallOnUTF8Boundaries() {
        // 3-byte characters: no cut point lands on a boundary unless moved.
        let text = String(repeating: "€", count: 400)
        let c = capture([Array(text.utf8)], cap: 100)
        let out = c.result()
        XCTAssertNotNil(String(validating: out, as: UTF8.self), "kept output must be valid UTF-8")
        let kept = String(decoding: out, as: UTF8.self).replacingOccurrences(of: "€", with: "")
        XCTAssertTrue(kept.hasPrefix("\n[... ") && kept.hasSuffix(" bytes truncated ...]\n"), kept)
        XCTAssertEqual(UInt64(out.count) - UInt64(kept.utf8.count) + c.truncatedBytes, 1200, "every byte is kept or counted")
    }

    func testZeroCapKeepsEverything() {
        let input = [UInt8](repeating: 65, count: 100_000)
        let c = capture([input], cap: 0)
        XCTAssertEqual(c.result().count, 100_000)
        XCTAssertEqual(c.truncatedBytes, 0)
    }

    func testStreamingWritesExactlyWhatResultReturns() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        defer { close(fds[0]) }
        let input = Array(String(repeating: "line with ünïcödé\n", count: 200).utf8)
        var c = OutputCapture(cap: 500, sinkFD: fds[1])
        for i in stride(from: 0, to: input.count, by: 64) {
            input[i..<min(i + 64, input.count)].withUnsafeBytes { c.append($0) }
        }
        c.finish()
        close(fds[1])
        var written: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n <= 0 { break }
            written += buf[0..<n]
        }
        XCTAssertEqual(written, c.result())
        XCTAssertGreaterThan(c.truncatedBytes, 0)
    }

    func testMemoryStaysBoundedUnderAFlood() {
        var c = OutputCapture(cap: 1000)
        let chunk = [UInt8](repeating: 66, count: 1 << 16)
        for _ in 0..<800 { chunk.withUnsafeBytes { c.append($0) } }  // 50 MiB
        XCTAssertEqual(c.total, 800 << 16)
        XCTAssertLessThan(c.result().count, 1100)
    }
}
