#if canImport(Glibc)
import Glibc
#endif

/// Collects one output stream of a jailed command within a fixed memory bound.
///
/// Keeps the first third and the last two thirds of `cap` bytes (the tail
/// usually holds the error) and, when more arrived, puts a marker
/// `[... N bytes truncated ...]` between them, cutting on UTF-8 boundaries.
/// With a sink fd, the head is written through as it arrives and the rest
/// at the end. A cap of 0 keeps (or passes through) everything.
public struct OutputCapture {
    public let cap: UInt64
    public let headCap: Int
    public let tailCap: Int
    public private(set) var total: UInt64 = 0

    private var head: [UInt8] = []
    private var ring: [UInt8]
    private var ringStart = 0
    private var sinkFD: Int32?
    private var headWritten = 0
    /// The sink's reader has gone (as for `sbx run … | head`): like a shell pipeline, the command should stop.
    public private(set) var sinkClosed = false

    public init(cap: UInt64, sinkFD: Int32? = nil) {
        self.cap = cap
        self.sinkFD = sinkFD
        if cap == 0 {
            headCap = Int.max
            tailCap = 0
        } else {
            headCap = Int(cap / 3)
            tailCap = Int(cap) - Int(cap / 3)
        }
        ring = []
        ring.reserveCapacity(min(tailCap, 1 << 20))
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        total += UInt64(bytes.count)
        if cap == 0 {
            if let sinkFD { if !writeAll(sinkFD, bytes) { sinkClosed = true } } else { head.append(contentsOf: bytes) }
            return
        }
        var rest = bytes[...]
        if head.count < headCap {
            let take = min(rest.count, headCap - head.count)
            head.append(contentsOf: rest.prefix(take))
            rest = rest.dropFirst(take)
            if let sinkFD {
                let boundary = utf8PrefixEnd(head)
                if boundary > headWritten {
                    if !head[headWritten..<boundary].withUnsafeBytes({ writeAll(sinkFD, $0) }) { sinkClosed = true }
                    headWritten = boundary
                }
            }
        }
        if !rest.isEmpty { pushTail(UnsafeRawBufferPointer(rebasing: rest)) }
    }

    /// Appends to the tail ring, overwriting its oldest bytes, in at most two copies.
    private mutating func pushTail(_ bytes: UnsafeRawBufferPointer) {
        var input = bytes[...]
        if input.count >= tailCap {
            ring = Array(input.suffix(tailCap))
            ringStart = 0
            return
        }
        if ring.count < tailCap {
            let take = min(input.count, tailCap - ring.count)
            ring.append(contentsOf: input.prefix(take))
            input = input.dropFirst(take)
        }
        while !input.isEmpty {
            let take = min(input.count, tailCap - ringStart)
            ring.withUnsafeMutableBytes { dst in
                dst.baseAddress!.advanced(by: ringStart).copyMemory(from: UnsafeRawPointer(bytes.baseAddress!.advanced(by: input.startIndex)), byteCount: take)
            }
            input = input.dropFirst(take)
            ringStart = (ringStart + take) % tailCap
        }
    }

    public var truncatedBytes: UInt64 {
        guard cap > 0, total > cap else { return 0 }
        let (h, t) = cutPieces()
        return total - UInt64(h + t.count)
    }

    /// The kept bytes (with the marker when truncated).
    public func result() -> [UInt8] {
        guard cap > 0, total > cap else { return head + orderedTail() }
        let (h, tail) = cutPieces()
        return Array(head[0..<h]) + marker(total - UInt64(h + tail.count)) + tail
    }

    /// Writes to the sink whatever the head did not already write.
    public mutating func finish() {
        guard let sinkFD, cap > 0 else { return }
        if total <= cap {
            let rest = Array(head[headWritten...]) + orderedTail()
            rest.withUnsafeBytes { writeAll(sinkFD, $0) }
        } else {
            let (h, tail) = cutPieces()
            let rest = Array(head[min(headWritten, h)..<h]) + marker(total - UInt64(h + tail.count)) + tail
            rest.withUnsafeBytes { writeAll(sinkFD, $0) }
        }
        headWritten = head.count
    }

    private func orderedTail() -> [UInt8] {
        Array(ring[ringStart...]) + Array(ring[..<ringStart])
    }

    /// Head length cut back to a character boundary, and the tail cut forward to one.
    private func cutPieces() -> (Int, [UInt8]) {
        let h = utf8PrefixEnd(head)
        var tail = orderedTail()
        var skip = 0
        while skip < min(3, tail.count), tail[skip] & 0xC0 == 0x80 { skip += 1 }
        tail.removeFirst(skip)
        return (h, tail)
    }

    private func marker(_ n: UInt64) -> [UInt8] {
        Array("\n[... \(n) bytes truncated ...]\n".utf8)
    }
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence.
func utf8PrefixEnd(_ bytes: [UInt8]) -> Int {
    var i = bytes.count
    var back = 0
    while i > 0, back < 4 {
        let b = bytes[i - 1]
        if b & 0xC0 == 0x80 { i -= 1; back += 1; continue }
        if b & 0x80 == 0 { return bytes.count }  // ASCII: complete
        let need = b & 0xE0 == 0xC0 ? 2 : b & 0xF0 == 0xE0 ? 3 : b & 0xF8 == 0xF0 ? 4 : 1
        return back + 1 >= need ? bytes.count : i - 1
    }
    return bytes.count
}

/// Writes everything; false when the reader has gone (EPIPE) or the fd failed.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var off = 0
    while off < bytes.count {
        let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
        if n < 0 {
            if errno == EINTR { continue }
            if errno == EAGAIN {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 100)
                continue
            }
            return false
        }
        off += n
    }
    return true
}
