#if canImport(Glibc)
import Glibc
#endif

/// The framing of DESIGN §6: one JSON text per line, lines end with "\n" (a "\r" before it is
/// dropped too). Both ends read with `LineReader` and write with `sendAll`.
public enum NDJSON {
    /// The longest request line the daemon reads (newline excluded): 1 MiB.
    public static let maxRequestBytes = 1 << 20
    /// The longest response line a client reads: results such as a large diff may be big.
    public static let maxResponseBytes = 256 << 20
}

/// Why a socket read or write failed.
public enum FramingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A line is longer than the reader's limit (the rest of it is left unread).
    case lineTooLong(max: Int)
    case io(String, errno: Int32)

    public var description: String {
        switch self {
        case .lineTooLong(let max): return "line longer than \(max) bytes"
        case let .io(what, e): return "\(what): \(String(cString: strerror(e))) (errno \(e))"
        }
    }
}

/// Reads NDJSON lines from a blocking socket, a chunk at a time, never buffering more than
/// one line past `maxLineBytes`.
public struct LineReader {
    public let fd: Int32
    public let maxLineBytes: Int
    private var buffer: [UInt8] = []
    /// Where the unread part of `buffer` starts.
    private var start = 0
    /// Bytes from `start` already known to hold no newline.
    private var scanned = 0
    private var atEOF = false

    public init(fd: Int32, maxLineBytes: Int) {
        self.fd = fd
        self.maxLineBytes = maxLineBytes
    }

    /// The next line without its terminator; nil once the peer has closed and everything was read.
    /// Bytes after the last newline at end of stream come back as a final line (`printf '{...}' | nc -U`).
    public mutating func next() throws(FramingError) -> [UInt8]? {
        while true {
            if let newline = buffer[(start + scanned)...].firstIndex(of: UInt8(ascii: "\n")) {
                if newline - start > maxLineBytes { throw .lineTooLong(max: maxLineBytes) }
                return take(upTo: newline, skipping: 1)
            }
            scanned = buffer.count - start
            if scanned > maxLineBytes { throw .lineTooLong(max: maxLineBytes) }
            if atEOF { return scanned == 0 ? nil : take(upTo: buffer.count, skipping: 0) }
            try fill()
        }
    }

    private mutating func take(upTo end: Int, skipping: Int) -> [UInt8] {
        var line = Array(buffer[start..<end])
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        start = end + skipping
        scanned = 0
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 20)
            start = 0
        }
        return line
    }

    private mutating func fill() throws(FramingError) {
        if start > 0 && start * 2 >= buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
        let chunk = 64 << 10
        let old = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: chunk))
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + old, chunk) }
        let e = errno
        buffer.removeLast(chunk - max(n, 0))
        if n == 0 { atEOF = true }
        if n < 0 {
            if e == EINTR { return }
            throw .io("read", errno: e)
        }
    }
}

/// Writes all of `bytes` to a socket. MSG_NOSIGNAL: a peer that went away is an EPIPE error
/// here, never a SIGPIPE that would kill the process.
public func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(FramingError) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw .io("send", errno: errno)
        }
        offset += n
    }
}
